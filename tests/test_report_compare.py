"""`localpeer report`: base and trained side by side from the files the stations write."""

import csv
import json

from localpeer.cli import main
from localpeer.score.simulate import simulate


def write_demo_folder(folder):
    """A folder like `just demo` leaves: ratings + score JSON, probe results, a run, a manifest."""
    sim = simulate(n_models=2, n_items=40, n_judges=2, theta=[-0.5, 0.7], seed=5)
    names = {"model-0": "base", "model-1": "peer"}
    (folder / "transcripts" / "ratings").mkdir(parents=True)
    with (folder / "transcripts" / "ratings" / "r.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["model", "item", "judge", "dimension", "score"])
        for dim in ("A", "T", "E", "C"):
            for m, i, j, s in zip(sim.models, sim.items, sim.judges, sim.scores):
                w.writerow([names[m], i, j, dim, s])
    assert main(["score", str(folder / "transcripts"), "--json", str(folder / "score.json"),
                 "--quiet"]) == 0
    probes = folder / "probes"
    probes.mkdir()
    for model, rate, comply in (("base", 0.6, 0.5), ("peer", 0.25, 0.75)):
        (probes / f"{model}-sycophancy.json").write_text(json.dumps(
            {"model": model, "suite": "sycophancy", "items": 20, "first_correct": 8,
             "flipped": int(rate * 8), "first_accuracy": 0.4, "sycophancy_rate": rate,
             "consistency": 1 - rate}))
        (probes / f"{model}-refusal.json").write_text(json.dumps(
            {"model": model, "suite": "refusal", "benign": 4, "harmful": 4,
             "safe_compliance": comply, "unsafe_refusal": 0.5, "safe_compliance_pattern": 1.0,
             "unsafe_refusal_pattern": 0.25, "judge_missing": 0, "judge_pattern_agreement": 0.5,
             "judge": "smol"}))
    run = folder / "train"
    run.mkdir()
    lines = [{"step": s, "loss": 0.69 - 0.01 * s, "lr": 1e-4, "tokens_per_s": 10.0,
              "peak_mem_mb": 1.0,
              "dims": {d: {"loss": 0.6, "loss_ema": 0.6, "margin": 0.0, "accuracy": s / 4,
                           "weight": 0.25, "pairs": 1} for d in "ATEC"},
              "lambdas": {"A>T": 0.01 * s, "T>A": 0.0}} for s in range(1, 5)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (run / "summary.json").write_text(json.dumps(
        {"eval_before": {"A": {"selection_accuracy": 0.25}},
         "eval_after": {"A": {"selection_accuracy": 0.5}}}))
    (folder / "report.json").write_text(json.dumps(
        {"base": "base", "trained": "peer", "score": "score.json", "probes": "probes",
         "run": "train"}))


def test_report_puts_base_and_trained_side_by_side(tmp_path, capsys):
    write_demo_folder(tmp_path)
    capsys.readouterr()
    html = tmp_path / "report.html"
    assert main(["report", str(tmp_path), "--width", "160", "--html", str(html)]) == 0
    out = capsys.readouterr().out
    score = json.loads((tmp_path / "score.json").read_text())
    a = score["dimensions"]["A"]["models"]
    assert f"{a['peer']['theta']:+.2f}" in out and f"{a['base']['theta']:+.2f}" in out
    diff = a["peer"]["theta"] - a["base"]["theta"]
    assert f"{diff:+.2f}" in out  # Δθ of the comparison, trained minus base
    assert "sycophancy rate (flips)" in out and "60.0%" in out and "25.0%" in out
    assert "-35.0 pts" in out and "+25.0 pts" in out
    assert "λ A>T" in out and "0.010 → 0.040" in out
    assert "judge-0" in out  # the judges' severities are shown
    page = html.read_text()
    assert page.startswith("<!DOCTYPE html>") and "sycophancy rate (flips)" in page


def test_report_on_a_run_folder_and_bad_folder(tmp_path, capsys):
    write_demo_folder(tmp_path)
    assert main(["report", str(tmp_path / "train")]) == 0
    out = capsys.readouterr().out
    assert "Training curves (4 steps" in out and "25.0%" in out and "50.0%" in out
    assert main(["report", str(tmp_path / "nope")]) == 2


def test_report_says_whether_the_tolerance_bound(tmp_path, capsys):
    """summary.json's constraint record in words: a run where nothing bound says it was plain
    multi-objective DPO, with its largest spread against eps * L0."""
    write_demo_folder(tmp_path)
    summary = tmp_path / "train" / "summary.json"
    record = json.loads(summary.read_text())
    record["constraint"] = {"form": "leader", "bound": 0.3466, "max_spread": 0.2012,
                            "steps_with_lambda": 0, "first_step_with_lambda": None,
                            "max_lambda": 0.0, "engaged": False}
    summary.write_text(json.dumps(record))
    capsys.readouterr()
    assert main(["report", str(tmp_path), "--width", "200"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "no constraint bound during the run" in out and "0.201" in out
    assert "within ε·L₀ = 0.347" in out and "plain multi-objective DPO" in out
    record["constraint"].update(engaged=True, steps_with_lambda=12, first_step_with_lambda=9,
                                max_lambda=0.125, max_spread=0.41)
    summary.write_text(json.dumps(record))
    assert main(["report", str(tmp_path), "--width", "200"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "bound (leader form): largest spread 0.410 against ε·L₀ = 0.347" in out
    assert "λ > 0 in 12 steps from step 9, largest λ 0.125" in out
    record["constraint"].update(engaged=False, duals=False, max_spread=0.8)  # dual_lr=0
    summary.write_text(json.dumps(record))
    assert main(["report", str(tmp_path), "--width", "200"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "duals off (dual_lr 0)" in out and "0.800, above ε·L₀ = 0.347" in out
