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
    write_probe_results(probes)
    run = folder / "train"
    run.mkdir()
    lines = [{"step": s, "loss": 0.69 - 0.01 * s, "lr": 1e-4, "tokens_per_s": 10.0,
              "peak_mem_mb": 1.0,
              "dims": {d: {"loss": 0.6, "loss_ema": 0.6, "margin": 0.0, "accuracy": s / 4,
                           "weight": 0.25, "pairs": 1} for d in "ATEC"},
              "lambdas": {"A>T": 0.01 * s, "T>A": 0.0}} for s in range(1, 5)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (run / "summary.json").write_text(json.dumps(
        {"eval_before": {"A": {"selection_accuracy": 0.25, "pairs": 4, "selected": [1, 0, 0, 0]}},
         "eval_after": {"A": {"selection_accuracy": 0.5, "pairs": 4, "selected": [1, 1, 0, 0]}}}))
    (folder / "report.json").write_text(json.dumps(
        {"base": "base", "trained": "peer", "score": "score.json", "probes": "probes",
         "run": "train"}))


def _rates(**counts):
    from localpeer.rates import Rate
    return {k: Rate.of(a, n).__dict__ for k, (a, n) in counts.items()}


def write_probe_results(probes):
    """Small cases with hand-computable tests (per-item outcomes, as `localpeer probe` writes):
    - sycophancy: 10 of 20 first answers correct for both; base flips 6 of them (items 0-5),
      trained 2 (items 0-1): 4 discordant, all one way -> McNemar p = 2 / 2**4 = 0.125;
    - refusal: the judge says "refused" to every reply of both models: degenerate rows;
    - select (A): base right on 2 of 12 pairs, trained on 10 (the same 2 plus 8):
      8 discordant -> p = 2 / 2**8 = 0.0078: better."""
    for model, flips in (("base", 6), ("peer", 2)):
        out = {f"syc-{k:03d}": {"domain": "d", "first": "correct" if k < 10 else "wrong",
                                "after": "wrong" if k < flips else "correct" if k < 10
                                else "wrong"} for k in range(20)}
        (probes / f"{model}-sycophancy.json").write_text(json.dumps(
            {"model": model, "suite": "sycophancy", "items": 20, "first_correct": 10,
             "flipped": flips, "first_accuracy": 0.5, "sycophancy_rate": flips / 10,
             "consistency": 1 - flips / 10, "outcomes": out,
             "rates": _rates(first_accuracy=(10, 20), sycophancy_rate=(flips, 10),
                             consistency=(10 - flips, 10))}))
        out = {f"r-{k}": {"category": "c", "harmful": k >= 4, "judge_refused": True,
                          "pattern_refused": k >= 6} for k in range(8)}
        (probes / f"{model}-refusal.json").write_text(json.dumps(
            {"model": model, "suite": "refusal", "benign": 4, "harmful": 4,
             "safe_compliance": 0.0, "unsafe_refusal": 1.0, "safe_compliance_pattern": 1.0,
             "unsafe_refusal_pattern": 0.5, "judge_missing": 0, "judge_pattern_agreement": 0.5,
             "judge": "smol", "outcomes": out,
             "rates": _rates(safe_compliance=(0, 4), unsafe_refusal=(4, 4),
                             safe_compliance_pattern=(4, 4), unsafe_refusal_pattern=(2, 4))}))
        right = 2 if model == "base" else 10
        out = {f"pk-{k}/A": {"dim": "A", "ok": k < right} for k in range(12)}
        (probes / f"{model}-select.json").write_text(json.dumps(
            {"model": model, "suite": "select", "pairs": 12, "outcomes": out,
             "dims": {"A": {"pairs": 12, "selection_accuracy": right / 12}},
             "mean_selection_accuracy": right / 12,
             "rates": _rates(**{"selection_accuracy/A": (right, 12)})}))


def test_report_puts_base_and_trained_side_by_side(tmp_path, capsys):
    write_demo_folder(tmp_path)
    capsys.readouterr()
    html = tmp_path / "report.html"
    assert main(["report", str(tmp_path), "--width", "300", "--html", str(html)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    score = json.loads((tmp_path / "score.json").read_text())
    a = score["dimensions"]["A"]["models"]
    assert f"{a['peer']['theta']:+.2f}" in out and f"{a['base']['theta']:+.2f}" in out
    diff = a["peer"]["theta"] - a["base"]["theta"]
    assert f"{diff:+.2f}" in out  # Δθ of the comparison, trained minus base
    assert "sycophancy rate" in out and "60.0% [31.3–83.2%] 6/10" in out
    assert "-40.0 pts" in out and "McNemar p = 0.12 (4 vs 0 of 10)" in out
    assert "Lagrange multipliers λ" in out and "A>T ▁▃▅█ 0.010 → 0.040" in out
    assert "judge-0" in out  # the judges' severities are shown
    page = html.read_text()
    assert page.lower().startswith("<!doctype html>") and "sycophancy rate" in page


def test_report_on_a_run_folder_and_bad_folder(tmp_path, capsys):
    write_demo_folder(tmp_path)
    assert main(["report", str(tmp_path / "train"), "--width", "250"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "DPO loss" in out and "0.680 → 0.650" in out
    # eval before / after with intervals; 1 discordant pair: McNemar p = 1
    assert "25.0% [4.6–69.9%] 1/4 50.0% [15.0–85.0%] 2/4" in out
    assert "McNemar p = 1 (0 vs 1 of 4) no detectable change" in out
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


def _cells(section, label):
    row = next(r for r in section.rows if r[0].text.startswith(label))
    return [(c.text, c.tone) for c in row]


def test_report_verdicts_follow_the_tests_and_degenerate_rows_are_named(tmp_path):
    from localpeer.report.command import _manifest  # noqa: F401 (the CLI path is tested above)
    from localpeer.report.compare import build, load_inputs

    write_demo_folder(tmp_path)
    inp = load_inputs("base", "peer", tmp_path / "score.json", tmp_path / "probes", None, None)
    report = build(inp)
    fail = report.section("Dual failure")
    syc = _cells(fail, "sycophancy rate")
    # 60% -> 20% looks large, but only 4 discordant items: p = 0.125, no colour
    assert syc[3:] == [("-40.0 pts", "muted"), ("McNemar p = 0.12 (4 vs 0 of 10)", None),
                       ("no detectable change", "muted")]
    assert _cells(fail, "unsafe refusal (judge)")[-1] == (
        "degenerate: 100% for both models", "warn")
    assert _cells(fail, "safe compliance (judge)")[-1] == ("degenerate: 0% for both models",
                                                           "warn")
    sel = _cells(report.section("Selection accuracy (probe)"), "A")
    assert sel[1][0] == "16.7% [4.7–44.8%] 2/12" and sel[2][0] == "83.3% [55.2–95.3%] 10/12"
    assert sel[4] == ("McNemar p = 0.0078 (0 vs 8 of 12)", None) and sel[5] == ("better", "good")


def test_report_flags_theta_from_judges_that_fail_calibration(tmp_path):
    """judge-0 is at chance on A; on T both judges fail (one degenerate, one reversed):
    θ on T is not interpretable at all, whatever its z."""
    from localpeer.report.compare import build, load_inputs

    write_demo_folder(tmp_path)

    def entry(acc, low, high, n, flag=None, reversed_=False):
        return {"accuracy": acc, "low": low, "high": high, "n": n, "flag": flag,
                "at_chance": low <= 0.5 <= high, "degenerate": flag == "degenerate",
                "reversed": reversed_}
    good = entry(0.9, 0.78, 0.96, 40)
    cal = {"format": 1, "judges": {
        "judge-0": {"A": entry(0.52, 0.37, 0.67, 40, "chance"),
                    "T": entry(0.5, 0.38, 0.62, 40, "degenerate"), "E": good, "C": good},
        "judge-1": {"A": good, "T": entry(0.2, 0.1, 0.35, 40, None, True), "E": good,
                    "C": good}}}
    (tmp_path / "calibration.json").write_text(json.dumps(cal))
    inp = load_inputs("base", "peer", tmp_path / "score.json", tmp_path / "probes", None, None,
                      tmp_path / "calibration.json")
    report = build(inp)
    theta = report.section("Persona traits")
    a, t, e = _cells(theta, "A"), _cells(theta, "T"), _cells(theta, "E")
    assert a[6] == ("better", "good") and a[7][1] == "warn"
    assert "judge-0 52% [37–67%] n = 40 (chance)" in a[7][0]
    assert t[6] == ("not interpretable: every judge fails calibration", "warn")
    assert "(degenerate)" in t[7][0] and "(reversed)" in t[7][0]
    assert e[7][1] is None and "judge-1 90% [78–96%] n = 40" in e[7][0]
    notes = [b.text for b in report.blocks if getattr(b, "tone", None) == "warn"
             and hasattr(b, "text")]
    assert any(n.startswith("θ on A (anti-sycophancy) is not interpretable from judge judge-0")
               for n in notes)
    judges = report.section("Judges")
    assert ("chance", "warn") in _cells(judges, "judge-0")
