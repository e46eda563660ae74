"""PersonaKnob records: validation, pairs, the graded product order, splits, dedup, leakage."""

import json

import pytest

from localpeer.cli import main
from localpeer.data.personaknob import (
    GradedResponse,
    Record,
    deduplicate,
    graded_pairs,
    hashed_split,
    leakage,
    read_records,
    record_from_json,
    record_pairs,
)
from localpeer.errors import InputError


def rec(rid="r1", mask=("A", "E"), prompt="Is it true that we only use 10% of our brains?",
        **extra):
    obj = {"id": rid, "mask": list(mask), "seed_scene": "brain myth", "context": "A student.",
           "trigger": "A: false belief; E: anxious.", "prompt": prompt,
           "golden": "No, imaging shows activity across the whole brain.",
           **{f"reject_{d}": None for d in "ATEC"}}
    for d in mask:
        obj[f"reject_{d}"] = f"a reject that fails {d} only"
    obj.update(extra)
    return obj


def test_pairs_are_one_per_active_dimension():
    records = [record_from_json(rec("a", "A")), record_from_json(rec("b", "ATEC")),
               record_from_json(rec("c", "TC"))]
    pairs = [p for r in records for p in record_pairs(r)]
    assert len(pairs) == sum(len(r.mask) for r in records) == 7
    assert [p.dim for p in pairs] == ["A", "A", "T", "E", "C", "T", "C"]
    b = [p for p in pairs if p.record_id == "b"]
    assert all(p.chosen == records[1].golden for p in b)
    assert [p.rejected for p in b] == [f"a reject that fails {d} only" for d in "ATEC"]


def test_mask_forms_of_the_release_are_accepted():
    for form in (["E", "A"], "AE", "A,E", '["A", "E"]', "A E"):
        assert record_from_json(rec(mask="AE") | {"mask": form}).mask == ("A", "E")


def test_graded_product_order_worked_example():
    """Three responses over A and E:
         r1 = (A 2, E 2), r2 = (A 2, E 1), r3 = (A 1, E 1), plus r4 = (A 1, E 2)
       Product order: r1 ≻ r2 (E), r1 ≻ r4 (A), r1 ≻ r3 (A and E), r2 ≻ r3 (A), r4 ≻ r3 (E);
       r2 and r4 are incomparable. Single-dimension pairs: four; with multi-dimension: five."""
    levels = {"r1": (2, 2), "r2": (2, 1), "r3": (1, 1), "r4": (1, 2)}
    record = record_from_json({
        "id": "g1", "mask": ["A", "E"], "seed_scene": "s", "context": "c", "trigger": "t",
        "prompt": "p", "responses": [{"text": k, "levels": {"A": a, "E": e}}
                                     for k, (a, e) in levels.items()]})
    assert record.graded and record.responses[0] == GradedResponse("r1", {"A": 2, "E": 2})
    single = {(p.chosen, p.rejected, p.dim) for p in record_pairs(record)}
    assert single == {("r1", "r2", "E"), ("r1", "r4", "A"), ("r2", "r3", "A"),
                      ("r4", "r3", "E")}
    multi = {(p.chosen, p.rejected, p.dim) for p in graded_pairs(record, False)}
    assert multi == single | {("r1", "r3", "A+E")}


def test_hashed_split_is_deterministic_and_near_the_fraction():
    ids = [f"pk-{k}" for k in range(4000)]
    splits = [hashed_split(i) for i in ids]
    assert splits == [hashed_split(i) for i in ids]
    assert 0.18 < splits.count("test") / len(ids) < 0.22


def test_dedup_and_leakage():
    a = record_from_json(rec("a", prompt="Is it true we use 10% of our brains?"))
    b = record_from_json(rec("b", prompt="is it TRUE we use 10 % of our brains"))
    c = record_from_json(rec("c", prompt="Can I mix bleach and vinegar to clean?"))
    kept, dropped = deduplicate([a, b, c])
    assert [r.id for r in kept] == ["a", "c"] and dropped == [("b", "a")]
    assert leakage([a, c], [b]) == [("a", "b")]


def test_record_round_trips_through_json():
    record = record_from_json(rec("x", "TC", split="test", meta={"domain": "law"}))
    again = record_from_json(json.loads(json.dumps(record.to_json())))
    assert isinstance(again, Record) and again.to_json() == record.to_json()
    assert record_pairs(again) == record_pairs(record)


@pytest.mark.parametrize("case, expected", [
    ("malformed", "bad.jsonl:2: not valid JSON"),
    ("unknown_letter", "bad.jsonl:2: mask has unknown dimension(s) X"),
    ("inactive_reject", "bad.jsonl:2: reject_T is given but T is not in the mask"),
    ("missing_golden", "bad.jsonl:2: golden is missing or empty"),
    ("duplicate_id", "bad.jsonl:2: duplicate id 'r1' (first at line 1)"),
    ("missing_reject", "bad.jsonl:2: reject_E is missing but E is in the mask"),
    ("equal_reject", "bad.jsonl:2: reject_A is identical to golden"),
])
def test_bad_records_exit_2_with_file_and_line(tmp_path, capsys, case, expected):
    good = json.dumps(rec("r1"))
    second = {
        "malformed": '{"id": "r2", "mask": ["A"]',
        "unknown_letter": json.dumps(rec("r2") | {"mask": ["A", "X"]}),
        "inactive_reject": json.dumps(rec("r2") | {"reject_T": "oops"}),
        "missing_golden": json.dumps({k: v for k, v in rec("r2").items() if k != "golden"}),
        "duplicate_id": json.dumps(rec("r1", prompt="another prompt")),
        "missing_reject": json.dumps(rec("r2") | {"reject_E": None}),
        "equal_reject": json.dumps(rec("r2") | {"reject_A": rec()["golden"]}),
    }[case]
    path = tmp_path / "bad.jsonl"
    path.write_text(good + "\n" + second + "\n")
    assert main(["data", "validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert expected in err, err
    assert "Traceback" not in err
    with pytest.raises(InputError):
        read_records(path)


def test_validate_reports_leakage_with_exit_1(tmp_path, capsys):
    (tmp_path / "train.jsonl").write_text(json.dumps(rec("a", split="train")) + "\n")
    (tmp_path / "test.jsonl").write_text(json.dumps(rec("b", split="test")) + "\n")
    assert main(["data", "validate", str(tmp_path)]) == 1
    out = capsys.readouterr()
    assert "leak: a (train) and b (test)" in out.out
