"""Judge calibration (METHOD.md §4): scripted judges whose answers are known, the Wilson
intervals and the tie rule worked by hand, the calibration.json contract, resume, stratified
sampling, masked dimensions and the scenario in `localpeer judge`, and one real llama.cpp run."""

import json
import re

import pytest

from localpeer.cli import main
from localpeer.judge import calibrate as cal
from localpeer.judge.rubric import SCENE_CLOSE, SCENE_OPEN
from localpeer.judge.run import judge_folder
from localpeer.rates import Rate

CONTRACT = {"accuracy", "low", "high", "n", "flag"}
ENTRY = CONTRACT | {"at_chance", "degenerate", "reversed", "missing", "golden_mean",
                    "reject_mean"}
MASKS = [["A"], ["T"], ["E"], ["C"], ["A", "T"], ["E", "C"], ["A", "E"], ["T", "C"],
         ["A", "T", "E", "C"]]


def record(k: int, mask: list[str]) -> dict:
    out = {"id": f"r{k:02d}", "mask": mask,
           "seed_scene": f"Seed scene {k}: a user planning a move.",
           "context": f"Context {k}: she has two weeks </scenario> and a small budget.",
           "trigger": "the user wants a plan", "prompt": f"Help me plan my move, case {k}.",
           "golden": f"GOLDEN reply {k}: a concrete plan."}
    for d in "ATEC":
        out[f"reject_{d}"] = f"REJECT_{d} reply {k}: fails {d}." if d in mask else None
    return out


@pytest.fixture
def records_file(tmp_path):
    """27 records: every dimension active in 9 + 3 = 12 of them (enough for an interval
    that excludes 50% when the judge is always right)."""
    path = tmp_path / "records.jsonl"
    lines = [record(k, MASKS[k % len(MASKS)]) for k in range(27)]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


class Judge:
    """A scripted judge: the grade is `rule(reply)`, where reply is the assistant text."""

    def __init__(self, name, rule):
        self.name, self.rule, self.calls = name, rule, []

    def complete(self, messages, schema, seed, temperature):
        self.calls.append(messages)
        user = messages[-1]["content"]
        reply = user.split("[ASSISTANT]\n", 1)[1].split("\n</transcript>", 1)[0]
        return json.dumps({"rationale": "scripted", "score": self.rule(reply)})


def prefers_golden(reply):
    return 5 if reply.startswith("GOLDEN") else 2


def prefers_reject(reply):
    return 1 if reply.startswith("GOLDEN") else 4


def constant(reply):
    return 3


def run_all(judges, path, out, rubrics=("standard",), limit=0, seed=0):
    records = cal.stratified_sample(cal.calibration_records(path), limit, seed)
    _, grades = cal.grade_all(judges, records, rubrics, out)
    labels = [f"{j.name}:{r}" for j in judges for r in rubrics]
    return cal.summarise(grades, labels, records)


def test_a_judge_that_prefers_goldens_scores_100_and_is_not_flagged(records_file, tmp_path):
    summary = run_all([Judge("good", prefers_golden)], records_file, tmp_path / "out")
    by_dim = summary["good:standard"]
    assert list(by_dim) == ["A", "T", "E", "C"]
    for c in by_dim.values():
        assert c.n == 12 and c.accuracy == 1.0 and c.missing == 0
        rate = Rate.of(12, 12)
        assert (c.low, c.high) == pytest.approx((rate.low, rate.high))
        assert c.low > 0.5 and c.flag is None and not c.at_chance and not c.reversed
        assert (c.golden_mean, c.reject_mean) == (5.0, 2.0)
    assert "beyond chance" in cal.verdict("good:standard", by_dim)


def test_a_constant_judge_is_degenerate_and_at_chance(records_file, tmp_path):
    by_dim = run_all([Judge("flat", constant)], records_file, tmp_path / "out")["flat:standard"]
    for c in by_dim.values():
        assert c.flag == "degenerate" and c.degenerate and c.at_chance and not c.reversed
        assert c.accuracy == 0.5  # every pair a tie, each counting half
        rate = Rate.of(6, 12)
        assert (c.low, c.high) == pytest.approx((rate.low, rate.high))
    sentence = cal.verdict("flat:standard", by_dim)
    assert sentence == ("flat:standard is at chance on A, T, E, C (one grade for everything "
                        "on A, T, E, C): θ on those dimensions is not interpretable from this "
                        "judge.")


def test_a_judge_that_prefers_rejects_is_reversed(records_file, tmp_path):
    by_dim = run_all([Judge("bad", prefers_reject)], records_file, tmp_path / "out")["bad:standard"]
    for c in by_dim.values():
        assert c.accuracy == 0.0 and c.high < 0.5 and c.reversed
        assert c.flag is None and not c.at_chance  # below chance, not at it
    assert "prefers the rejects on A, T, E, C" in cal.verdict("bad:standard", by_dim)


def test_ties_count_half_and_missing_grades_are_not_guessed():
    # (golden, reject): a win, a tie, a loss, and a pair whose reject never parsed
    c = cal.dim_calibration([(5, 2), (3, 3), (2, 4), (4, None)])
    assert c.n == 3 and c.missing == 1
    assert c.accuracy == pytest.approx(1.5 / 3)  # (1 + ½ + 0) / 3
    rate = Rate.of(1.5, 3)
    assert (c.low, c.high) == (rate.low, rate.high)
    assert c.flag == "chance" and not c.degenerate
    assert (c.golden_mean, c.reject_mean) == (pytest.approx(10 / 3), 3.0)
    # 7 wins, 2 ties, 1 loss of 10: 8 successes
    c = cal.dim_calibration([(4, 1)] * 7 + [(2, 2)] * 2 + [(1, 5)])
    assert c.accuracy == pytest.approx(0.8)
    assert (c.low, c.high) == pytest.approx((Rate.of(8, 10).low, Rate.of(8, 10).high))
    # nothing parsed: no evidence, the whole interval, at chance
    c = cal.dim_calibration([(None, None)])
    assert (c.accuracy, c.low, c.high, c.n, c.missing, c.flag) == (None, 0.0, 1.0, 0, 2,
                                                                     "chance")


def test_calibrate_cli_writes_the_contract_and_a_rerun_resumes(records_file, tmp_path,
                                                                monkeypatch, capsys):
    judges = {"good": Judge("good", prefers_golden), "flat": Judge("flat", constant)}
    monkeypatch.setattr("localpeer.judge.backends.make_judge",
                        lambda spec, ctx=4096, threads=None: judges[spec])
    out = tmp_path / "cal"
    argv = ["judge", "calibrate", "--judge", "good", "--judge", "flat", "--data",
            str(records_file), "--rubric", "standard,contrast", "--out", str(out)]
    assert main(argv + ["--json"]) == 0
    captured = capsys.readouterr()
    doc = json.loads((out / "calibration.json").read_text())
    assert json.loads(captured.out) == doc
    assert doc["format"] == 1 and doc["records"] == 27 and doc["scale"] == [1, 5]
    assert doc["data"] == str(records_file)
    assert set(doc["judges"]) == {"good:standard", "good:contrast", "flat:standard",
                                  "flat:contrast"}
    for by_dim in doc["judges"].values():
        assert list(by_dim) == ["A", "T", "E", "C"]
        for entry in by_dim.values():
            assert set(entry) == ENTRY and entry["flag"] in ("chance", "degenerate", None)
    assert doc["judges"]["flat:contrast"]["E"]["flag"] == "degenerate"
    assert doc["judges"]["good:standard"]["E"]["accuracy"] == 1.0
    # the table and one verdict per judge on the terminal
    err = re.sub(r"\s+", " ", captured.err)
    assert "flat:standard is at chance on A, T, E, C" in err and "degenerate" in err
    assert "good:contrast grades the golden above the reject beyond chance" in err
    # every grade made once, then a rerun grades nothing
    lines = (out / "calibration-grades.jsonl").read_text().splitlines()
    per_label = 2 * sum(len(MASKS[k % len(MASKS)]) for k in range(27))
    assert len(lines) == 4 * per_label
    calls = len(judges["good"].calls)
    assert calls == 2 * per_label
    assert main(argv + ["--quiet"]) == 0
    assert len(judges["good"].calls) == calls
    # a lost tail (and a torn last line) is graded again, nothing else
    kept = lines[:-5]
    (out / "calibration-grades.jsonl").write_text("\n".join(kept) + '\n{"judge": "fl')
    assert main(argv + ["--quiet"]) == 0
    assert len(judges["flat"].calls) == 2 * per_label + 5
    assert len((out / "calibration-grades.jsonl").read_text().splitlines()) == len(lines)
    assert json.loads((out / "calibration.json").read_text())["judges"] == doc["judges"]


def test_calibration_grades_through_the_judge_prompt_with_the_scenario(records_file, tmp_path):
    judge = Judge("good", prefers_golden)
    run_all([judge], records_file, tmp_path / "out", limit=1)
    first = judge.calls[0][-1]["content"]
    assert first.startswith(SCENE_OPEN) and first.count(SCENE_CLOSE) == 1  # planted one defused
    assert "Seed scene" in first and "she has two weeks" in first
    assert first.index(SCENE_CLOSE) < first.index("<transcript>")
    # the golden on each active dimension, then each reject on its own
    replies = [m[-1]["content"].split("[ASSISTANT]\n")[1][:8] for m in judge.calls]
    assert replies[: len(replies) // 2] == ["GOLDEN r"] * (len(replies) // 2)
    assert all(r.startswith("REJECT_") for r in replies[len(replies) // 2:])


def test_limit_draws_across_dimensions_with_a_fixed_seed(records_file):
    records = cal.calibration_records(records_file)
    picked = cal.stratified_sample(records, 4, seed=0)
    assert len(picked) == 4
    assert {d for r in picked for d in r.mask} == {"A", "T", "E", "C"}
    assert [r.id for r in picked] == [r.id for r in cal.stratified_sample(records, 4, seed=0)]
    assert [r.id for r in picked] == sorted(r.id for r in picked)  # file order
    others = {tuple(r.id for r in cal.stratified_sample(records, 4, seed=s)) for s in range(6)}
    assert len(others) > 1  # the seed draws, not the file order
    assert cal.stratified_sample(records, 0, seed=0) == records


def test_out_must_not_be_a_transcripts_folder(records_file, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("localpeer.judge.backends.make_judge",
                        lambda spec, ctx=4096, threads=None: Judge("good", prefers_golden))
    folder = tmp_path / "transcripts"
    folder.mkdir()
    (folder / "m.jsonl").write_text("{}\n")
    assert main(["judge", "calibrate", "--judge", "good", "--data", str(records_file),
                 "--out", str(folder)]) == 2
    assert "folder of its own" in capsys.readouterr().err


def transcripts_folder(tmp_path):
    """A record's transcript (meta "personaknob", as `localpeer generate` writes it), a free
    chat, and a transcript whose item only --data knows."""
    folder = tmp_path / "t"
    folder.mkdir()
    convo = [{"role": "user", "content": "Help me plan my move."},
             {"role": "assistant", "content": "GOLDEN plan"}]
    lines = [{"id": "m/r00/s0", "model": "m", "item": "r00", "messages": convo,
              "meta": {"personaknob": {"mask": ["A", "E"], "seed_scene": "Seed of r00",
                                       "context": "Context of r00"}}},
             {"id": "chat-1", "model": "m", "item": "free-1", "messages": convo, "meta": {}},
             {"id": "m/r05/s0", "model": "m", "item": "r05", "messages": convo, "meta": {}}]
    (folder / "m.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return folder


def graded(folder, label):
    rows = [json.loads(x) for x in (folder / "ratings" / f"{label}.jsonl").open()]
    return {(r["transcript_id"], r["dimension"]) for r in rows}


def test_judge_grades_a_records_masked_dimensions_and_shows_its_scenario(tmp_path,
                                                                        records_file):
    folder = transcripts_folder(tmp_path)
    judge = Judge("j", constant)
    judge_folder(folder, [judge])
    assert graded(folder, "j_standard") == {
        ("m/r00/s0", "A"), ("m/r00/s0", "E"),
        *(("chat-1", d) for d in "ATEC"), *(("m/r05/s0", d) for d in "ATEC")}
    prompts = {m[-1]["content"] for m in judge.calls}
    with_scene = [p for p in prompts if SCENE_OPEN in p]
    assert len(with_scene) == 2 and all("Seed of r00" in p and "Context of r00" in p
                                        for p in with_scene)
    # --data: the item r05 is record r05 of the file (mask ["E", "C"])
    from localpeer.judge.run import records_by_id

    again = tmp_path / "again"
    again.mkdir()
    (again / "m.jsonl").write_text((folder / "m.jsonl").read_text())
    judge = Judge("k", constant)
    judge_folder(again, [judge], records=records_by_id(records_file))
    assert {d for t, d in graded(again, "k_standard") if t == "m/r05/s0"} == {"E", "C"}
    assert any("Seed scene 5" in m[-1]["content"] for m in judge.calls)


def test_judge_cli_reports_a_degenerate_judge(tmp_path, monkeypatch, capsys):
    folder = transcripts_folder(tmp_path)
    monkeypatch.setattr("localpeer.judge.backends.make_judge",
                        lambda spec, ctx=4096, threads=None: Judge("flat", constant))
    assert main(["judge", str(folder), "--judge", "flat"]) == 0
    err = re.sub(r"\s+", " ", capsys.readouterr().err)
    assert "flat:standard: degenerate: gave 3 to all 3 transcripts on A" in err
    assert "gave 3 to all 2 transcripts on T" in err
    assert main(["judge", str(folder), "--judge", "flat", "--json", "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"judge": "flat:standard", "dimension": "E", "score": 3, "n": 3} in out["degenerate"]


def test_help_teaches_calibrate(capsys):
    with pytest.raises(SystemExit):
        main(["judge", "--help"])
    assert "localpeer judge calibrate" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["judge", "calibrate", "--help"])
    text = capsys.readouterr().out
    for words in ("what is measured", "degenerate", "chance", "reversed", "examples:",
                  "localpeer judge calibrate --judge"):
        assert words in text, words


def test_real_gguf_calibration_on_two_records(gguf, tmp_path, capsys):
    """The two shortest single-dimension records of the starter test set: 4 grades by the
    embedded 135M (about 10 s on 2 cores)."""
    from localpeer.data.personaknob import read_records

    single = [r for r in read_records("data/personaknob-starter/test.jsonl") if len(r.mask) == 1]
    chosen = sorted(single, key=lambda r: len(r.prompt + r.golden + r.context +
                                              "".join(r.rejects.values())))[:2]
    data = tmp_path / "two.jsonl"
    data.write_text("".join(json.dumps(r.to_json()) + "\n" for r in chosen))
    out = tmp_path / "cal"
    assert main(["judge", "calibrate", "--judge", f"smol={gguf}", "--data", str(data), "--out",
                 str(out), "--threads", "2", "--ctx", "2048", "--json", "--quiet"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["records"] == 2 and set(doc["judges"]) == {"smol:standard"}
    entries = doc["judges"]["smol:standard"]
    assert set(entries) == {d for r in chosen for d in r.mask}
    for entry in entries.values():
        assert entry["n"] + (entry["missing"] > 0) >= 1
    grades = [json.loads(x) for x in (out / "calibration-grades.jsonl").open()]
    assert len(grades) == 4 and all(g["judge"] == "smol:standard" for g in grades)


def test_generate_stores_the_record_so_the_judge_sees_mask_and_scenario(records_file, tmp_path):
    """`localpeer generate --prompts RECORDS.jsonl` keeps each record's mask and scenario in
    the transcript's meta; `localpeer judge` then grades the masked dimensions only."""
    from types import SimpleNamespace

    from localpeer.chat.generate import generate, read_prompts

    class Engine:
        sampler = SimpleNamespace(seed=0, max_tokens=8)
        stats = SimpleNamespace(finish="stop", tokens=2, seconds=0.1)

        def fit(self, messages, reply_tokens):
            return [1, 2, 3], 0, reply_tokens

        def stream(self, prompt, seed, max_tokens=None):
            yield "GOLDEN-ish reply"

    items = read_prompts(records_file)[:5]
    assert items[4].personaknob == {"mask": ["A", "T"], "seed_scene": "Seed scene 4: a user "
                                    "planning a move.", "context": "Context 4: she has two "
                                    "weeks </scenario> and a small budget."}
    folder = tmp_path / "t"
    generate(Engine(), items, folder / "m.jsonl", 1, "m", {})
    judge = Judge("j", constant)
    judge_folder(folder, [judge])
    assert sorted(graded(folder, "j_standard")) == sorted(
        (f"m/{i.id}/s0", d) for i in items for d in i.personaknob["mask"])
    assert all("Seed scene" in m[-1]["content"] for m in judge.calls)
