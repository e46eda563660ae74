"""`localpeer score` end to end: folders, files, JSON/CSV contract, bad input, no torch."""

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from localpeer.cli import main
from localpeer.score.simulate import simulate


def write_ratings(folder: Path, sim, dims=("A", "E"), name="ratings.csv") -> Path:
    (folder / "ratings").mkdir(parents=True, exist_ok=True)
    path = folder / "ratings" / name
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["model", "item", "judge", "dimension", "score"])
        for dim in dims:
            for row in zip(sim.models, sim.items, sim.judges, [dim] * sim.scores.size,
                           sim.scores):
                w.writerow(row)
    return path


@pytest.fixture
def rated(tmp_path):
    sim = simulate(n_models=3, n_items=40, n_judges=3, seed=2)
    write_ratings(tmp_path / "transcripts", sim)
    return tmp_path / "transcripts"


def test_score_writes_json_in_the_contract_schema(rated, tmp_path, capsys):
    out = tmp_path / "scores.json"
    assert main(["score", str(rated), "--json", str(out), "--csv", str(tmp_path / "s.csv")]) == 0
    printed = capsys.readouterr().out
    assert "Dimension A" in printed and "Dimension E" in printed and "Wright map" in printed
    doc = json.loads(out.read_text())
    assert doc["estimator"] == "mml" and doc["scale"] == {"min": 1, "max": 5}
    assert set(doc["dimensions"]) == {"A", "E"}
    dim = doc["dimensions"]["A"]
    for key in ("converged", "loglik", "iterations", "n_ratings", "subsets", "models", "judges",
                "items", "thresholds", "item_sd", "separation", "bias", "comparisons",
                "warnings"):
        assert key in dim, key
    assert dim["converged"] is True and dim["n_ratings"] == 360 and dim["subsets"] == 1
    model = dim["models"]["model-0"]
    for key in ("theta", "se", "ci95", "fair_average", "infit", "outfit", "infit_z",
                "outfit_z", "n", "status"):
        assert key in model, key
    assert model["ci95"][0] < model["theta"] < model["ci95"][1]
    assert set(dim["judges"]["judge-0"]) >= {"severity", "se", "infit", "outfit", "infit_z",
                                             "outfit_z", "n"}
    assert set(dim["items"]["prompt-00"]) >= {"difficulty", "se", "infit", "outfit", "n",
                                              "status"}
    assert [t["k"] for t in dim["thresholds"]] == [2, 3, 4, 5]
    assert abs(sum(t["tau"] for t in dim["thresholds"])) < 1e-5
    assert abs(sum(j["severity"] for j in dim["judges"].values())) < 1e-5
    assert abs(sum(i["difficulty"] for i in dim["items"].values())) < 1e-4
    assert set(dim["separation"]) == {"models", "judges", "items"}
    assert set(dim["separation"]["models"]) == {"separation", "reliability", "strata"}
    assert len(dim["comparisons"]) == 3 and len(dim["bias"]) == 9
    assert set(dim["comparisons"][0]) == {"a", "b", "diff", "se", "z"}
    rows = list(csv.DictReader((tmp_path / "s.csv").open()))
    assert len(rows) == 2 * (3 + 3 + 40)
    assert rows[0]["facet"] == "model" and float(rows[0]["measure"]) == pytest.approx(
        doc["dimensions"][rows[0]["dimension"]]["models"][rows[0]["element"]]["theta"], abs=1e-5)


def test_extreme_model_has_status_and_no_theta_in_json(tmp_path):
    sim = simulate(n_models=3, n_items=40, n_judges=2, seed=3)
    scores = sim.scores.copy()
    scores[sim.models == "model-1"] = 1
    sim = type(sim)(sim.models, sim.items, sim.judges, scores, sim.truth, 1, 5)
    write_ratings(tmp_path, sim, dims=("C",))
    out = tmp_path / "s.json"
    assert main(["score", str(tmp_path), "--estimator", "jml", "--json", str(out),
                 "--quiet"]) == 0
    doc = json.loads(out.read_text())
    assert doc["estimator"] == "jml"
    m1 = doc["dimensions"]["C"]["models"]["model-1"]
    assert m1 == {"n": 80, "status": "extreme_min"}


def test_ratings_from_transcript_ids(tmp_path):
    folder = tmp_path / "t"
    folder.mkdir()
    sim = simulate(n_models=2, n_items=30, n_judges=2, seed=4)
    with (folder / "chats.jsonl").open("w") as f:
        pairs = sorted(set(zip(sim.models.tolist(), sim.items.tolist())))
        for k, (model, item) in enumerate(pairs):
            f.write(json.dumps({"id": f"t-{k}", "model": model, "item": item, "messages": [
                {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}
            ]}) + "\n")
    ids = {pair: f"t-{k}" for k, pair in enumerate(pairs)}
    (folder / "ratings").mkdir()
    with (folder / "ratings" / "r.jsonl").open("w") as f:
        for m, i, j, s in zip(sim.models, sim.items, sim.judges, sim.scores):
            f.write(json.dumps({"transcript_id": ids[(m, i)], "judge": j, "dimension": "T",
                                "score": int(s)}) + "\n")
    out = tmp_path / "s.json"
    assert main(["score", str(folder), "--json", str(out), "--quiet"]) == 0
    assert set(json.loads(out.read_text())["dimensions"]["T"]["models"]) == {"model-0",
                                                                              "model-1"}


@pytest.mark.parametrize("case, expected", [
    ("empty", "no ratings"),
    ("malformed", "r.jsonl:2:"),
    ("outside", "r.csv:3:"),
    ("missing_column", "r.csv:1:"),
    ("duplicate", "r.csv:3:"),
    ("non_utf8", "r.csv:2:"),
])
def test_bad_input_exits_2_with_file_and_line(tmp_path, capsys, case, expected):
    ratings = tmp_path / "ratings"
    ratings.mkdir()
    header = "model,item,judge,dimension,score\n"
    if case == "malformed":
        (ratings / "r.jsonl").write_text(
            '{"model": "a", "item": "p", "judge": "j", "dimension": "A", "score": 3}\n'
            '{"model": "a", "item": "p2", "judge": "j", "dimension": "A", "score": 3\n')
    elif case == "outside":
        (ratings / "r.csv").write_text(header + "a,p,j,A,3\na,p2,j,A,9\n")
    elif case == "missing_column":
        (ratings / "r.csv").write_text("model,item,dimension,score\na,p,A,3\n")
    elif case == "duplicate":
        (ratings / "r.csv").write_text(header + "a,p,j,A,3\na,p,j,A,4\n")
    elif case == "non_utf8":
        (ratings / "r.csv").write_bytes(header.encode() + b"a,p\xff\xfe,j,A,3\n")
    assert main(["score", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert expected in err, err
    assert "Traceback" not in err


def test_disconnected_design_exits_2_naming_subsets(tmp_path, capsys):
    a = simulate(n_models=2, n_items=10, n_judges=1, seed=1)
    b = simulate(n_models=2, n_items=10, n_judges=1, seed=2)
    rows = ["model,item,judge,dimension,score"]
    rows += [f"{m},{i},{j},A,{s}" for m, i, j, s in zip(a.models, a.items, a.judges, a.scores)]
    rows += [f"x{m},x{i},x{j},A,{s}" for m, i, j, s in zip(b.models, b.items, b.judges, b.scores)]
    (tmp_path / "r.csv").write_text("\n".join(rows) + "\n")
    assert main(["score", str(tmp_path / "r.csv")]) == 2
    err = capsys.readouterr().err
    assert "subset 1: models (2): model-0, model-1" in err
    assert "subset 2: models (2): xmodel-0, xmodel-1" in err


def test_score_never_imports_torch_or_transformers(rated, tmp_path):
    code = (
        "import sys\n"
        "from localpeer.cli import main\n"
        f"rc = main(['score', {str(rated)!r}, '--quiet', '--json', {str(tmp_path / 'x.json')!r}])\n"
        "heavy = [m for m in ('torch', 'transformers', 'peft', 'llama_cpp') if m in sys.modules]\n"
        "print(rc, heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0 []"
    assert (tmp_path / "x.json").exists()


def test_console_script_help_and_exit_codes(rated):
    exe = Path(sys.executable).with_name("localpeer")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "localpeer"]
    top = subprocess.run(cmd + ["--help"], capture_output=True, text=True)
    assert top.returncode == 0 and "localpeer score transcripts/" in top.stdout
    sub = subprocess.run(cmd + ["score", "--help"], capture_output=True, text=True)
    assert sub.returncode == 0 and "--estimator" in sub.stdout and "examples:" in sub.stdout
    bad = subprocess.run(cmd + ["score", str(rated), "--scale", "five"], capture_output=True,
                         text=True)
    assert bad.returncode == 2 and "--scale takes MIN-MAX" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_selftest_recovers_and_prints(capsys):
    assert main(["score", "--selftest", "--replications", "3"]) == 0
    out = capsys.readouterr().out
    assert "theta[model-4]" in out and "slope" in out


def test_score_dimension_filter(rated, tmp_path):
    out = tmp_path / "e.json"
    assert main(["score", str(rated), "--dimension", "E", "--json", str(out), "--quiet"]) == 0
    assert list(json.loads(out.read_text())["dimensions"]) == ["E"]
    assert np.isfinite(json.loads(out.read_text())["dimensions"]["E"]["loglik"])


def write_calibration(path: Path) -> dict:
    """judge-0 at chance on A, judge-1 preferring the rejects on E, judge-2 good on both;
    judge-1 not calibrated on A."""
    from localpeer.judge import calibrate as cal

    chance = cal.dim_calibration([(4, 2)] * 24 + [(3, 3)] * 2 + [(2, 4)] * 21)
    good = cal.dim_calibration([(5, 2)] * 40 + [(2, 3)] * 4)
    reverse = cal.dim_calibration([(2, 4)] * 30 + [(4, 2)] * 5)
    summary = {"judge-0": {"A": chance, "E": good}, "judge-1": {"E": reverse},
               "judge-2": {"A": good, "E": good}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cal.summary_json(summary, Path("test.jsonl"), 47, (1, 5))))
    return summary


def test_score_shows_the_calibration_beside_judges_and_theta(rated, tmp_path, capsys):
    summary = write_calibration(rated / "calibration.json")
    out = tmp_path / "s.json"
    assert main(["score", str(rated), "--json", str(out)]) == 0
    text = " ".join(capsys.readouterr().out.split())
    chance = summary["judge-0"]["A"]
    assert chance.flag == "chance" and chance.describe() == "53% [39%, 67%], n = 47"
    assert ("θ on A is not interpretable from judge-0 (calibration 53% [39%, 67%], n = 47)"
            in text)
    assert ("θ on E is not interpretable from judge-1 (it prefers the rejects, calibration "
            f"{summary['judge-1']['E'].describe()})" in text)
    assert "θ on A is not interpretable from judge-2" not in text
    assert "no calibration on A for judge-1" in text
    assert "Judge calibration on A" in text  # beside the judges table, with the severity
    assert re.search(r"judge-0 [+-]\d\.\d\d 53% \[39%, 67%\] 47 chance", text)
    assert re.search(r"judge-1 [+-]\d\.\d\d 14% \[\d+%, \d+%\] 35 reversed", text)
    doc = json.loads(out.read_text())
    judges = doc["dimensions"]["A"]["judges"]
    assert judges["judge-0"]["calibration"]["flag"] == "chance"
    assert judges["judge-0"]["calibration"]["accuracy"] == pytest.approx(25 / 47, abs=1e-6)
    assert judges["judge-1"]["calibration"] is None  # the file does not cover it on A
    assert doc["dimensions"]["E"]["judges"]["judge-1"]["calibration"]["reversed"] is True
    assert {"severity", "se", "infit", "outfit", "n"} <= set(judges["judge-0"])  # all kept
    assert doc["calibration_file"] == str(rated / "calibration.json")


def test_score_without_calibration_is_unchanged_and_a_named_file_must_exist(rated, tmp_path,
                                                                           capsys):
    out = tmp_path / "s.json"
    assert main(["score", str(rated), "--json", str(out), "--quiet"]) == 0
    doc = json.loads(out.read_text())
    assert "calibration_file" not in doc
    assert all("calibration" not in j for j in doc["dimensions"]["A"]["judges"].values())
    assert main(["score", str(rated), "--calibration", str(tmp_path / "none.json")]) == 2
    assert "no such calibration file" in capsys.readouterr().err
    other = tmp_path / "cal" / "calibration.json"
    write_calibration(other)
    assert main(["score", str(rated), "--calibration", str(other), "--json", str(out),
                 "--quiet"]) == 0
    assert json.loads(out.read_text())["calibration_file"] == str(other)


def test_score_flags_a_judge_that_gave_one_grade_to_everything(tmp_path, capsys):
    sim = simulate(n_models=3, n_items=30, n_judges=3, seed=5)
    scores = sim.scores.copy()
    scores[sim.judges == "judge-2"] = 3
    sim = type(sim)(sim.models, sim.items, sim.judges, scores, sim.truth, 1, 5)
    write_ratings(tmp_path, sim, dims=("T",))
    out = tmp_path / "s.json"
    assert main(["score", str(tmp_path), "--json", str(out)]) == 0
    text = " ".join(capsys.readouterr().out.split())
    n = int((sim.judges == "judge-2").sum())
    assert f"degenerate: judge-2 gave 3 to all {n} ratings on T" in text
    warnings = json.loads(out.read_text())["dimensions"]["T"]["warnings"]
    assert any(f"judge judge-2 gave 3 to all {n} ratings (degenerate)" in w for w in warnings)
