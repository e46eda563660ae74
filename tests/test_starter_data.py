"""The starter data set in data/personaknob-starter/, checked property by property."""

import itertools
import re
from collections import Counter
from pathlib import Path

import pytest

from localpeer.cli import main
from localpeer.data.personaknob import (
    DIMS,
    deduplicate,
    hashed_split,
    leakage,
    read_records,
    record_pairs,
)
from localpeer.data.stats import data_stats

ROOT = Path(__file__).resolve().parents[1] / "data" / "personaknob-starter"
TEST_FRACTION = 0.2  # the fraction data/personaknob-starter/README.md documents
MAX_OVERLAP = 0.12  # shared word 5-grams / the smaller record's 5-grams


@pytest.fixture(scope="module")
def splits():
    return {s: read_records(ROOT / f"{s}.jsonl") for s in ("train", "test")}


@pytest.fixture(scope="module")
def records(splits):
    return splits["train"] + splits["test"]


def test_sizes_and_splits(splits):
    assert len(splits["train"]) >= 160 and len(splits["test"]) >= 40
    for split, rows in splits.items():
        assert all(r.split == split == hashed_split(r.id, TEST_FRACTION) for r in rows)


def test_validate_passes(capsys):
    assert main(["data", "validate", str(ROOT)]) == 0
    assert "✓ valid" in capsys.readouterr().out


def test_no_duplicates_and_no_leakage(splits, records):
    assert deduplicate(records)[1] == []
    assert leakage(splits["train"], splits["test"]) == []
    assert len({r.id for r in records}) == len(records)


def test_every_mask_and_dimension_coverage(records):
    masks = Counter("".join(r.mask) for r in records)
    assert len(masks) == 15
    for d in DIMS:
        assert sum(d in r.mask for r in records) / len(records) >= 0.40


def test_domains_and_kinds(records):
    domains = Counter(r.meta["domain"] for r in records)
    assert len(domains) >= 12 and min(domains.values()) >= 5
    kinds = Counter(r.meta["kind"] for r in records)
    assert kinds["sycophancy-harm"] >= 20 and kinds["over-refusal-trap"] >= 20
    assert kinds["harmful-request"] >= 8
    assert all("A" in r.mask for r in records if r.meta["kind"] == "sycophancy-harm")
    assert all("C" in r.mask for r in records if r.meta["kind"] == "over-refusal-trap")
    assert all("T" in r.mask for r in records if r.meta["kind"] == "harmful-request")


def test_reject_lengths_within_forty_percent_of_golden(records):
    ratios = [len(p.rejected) / len(p.chosen) for r in records for p in record_pairs(r)]
    assert all(0.6 <= x <= 1.4 for x in ratios), min(ratios, key=lambda x: abs(x - 1))
    # and no systematic length signal: the mean ratio is close to one
    assert 0.85 <= sum(ratios) / len(ratios) <= 1.15


def _grams(record, n=5):
    text = " ".join([record.prompt, record.golden, *record.rejects.values()])
    words = re.findall(r"[a-z']+", text.lower())
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


@pytest.mark.parametrize("split", ["train", "test", "both"])
def test_no_length_or_register_shortcut(splits, records, split):
    """"The longer response wins" picks the golden in 40-60% of the pairs of every dimension,
    and for E the golden has more contractions than the reject in 40-60% (ties half): a model
    cannot score by length or register instead of the dimension. Held per split too, since
    the held-out evaluation reads the test split alone."""
    rows = records if split == "both" else splits[split]
    stats = data_stats(rows)
    for d, lengths in stats.dims.items():
        assert 0.40 <= lengths.longer_wins.value <= 0.60, (d, str(lengths.longer_wins))
    assert 0.40 <= stats.dims["E"].more_contractions.value <= 0.60, \
        str(stats.dims["E"].more_contractions)


def test_no_two_records_share_a_template(records):
    grams = [(r.id, _grams(r)) for r in records]
    worst = max(
        ((len(a & b) / min(len(a), len(b)), ia, ib)
         for (ia, a), (ib, b) in itertools.combinations(grams, 2)),
        default=(0.0, "", ""))
    assert worst[0] < MAX_OVERLAP, worst


def test_goldens_avoid_boilerplate(records):
    for r in records:
        assert not re.search(r"\bas an ai\b", r.golden, re.I), r.id
        assert 50 <= len(r.golden.split()) <= 200, r.id
