"""Counts and lengths of a PersonaKnob data set, for `localpeer data stats` and the tests.

Per dimension it also gives the shortcut baselines a selection accuracy must beat (METHOD.md
§4): how often "the longer response wins" picks the golden, and how often the golden has more
contractions (a register shortcut), each with its n and Wilson 95% interval.

    from localpeer.data.stats import data_stats
    stats = data_stats(records, tokenize=None)
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from localpeer.data.personaknob import DIMS, Record, record_pairs
from localpeer.rates import Rate

CONTRACTION = re.compile(r"\b\w+['’](?:s|t|re|ve|ll|d|m)\b", re.IGNORECASE)


def _wins(golden: list[float], reject: list[float]) -> Rate:
    """How often the golden has the larger value, ties counting half."""
    score = sum(1.0 if g > r else 0.5 if g == r else 0.0 for g, r in zip(golden, reject))
    return Rate.of(score, len(golden))


def contractions(text: str) -> int:
    """Contractions in a text ("don't", "you're", "it’s"): a marker of informal register."""
    return len(CONTRACTION.findall(text))


@dataclass(frozen=True)
class LengthSummary:
    """Mean and range of a set of lengths (characters, words or tokens)."""

    mean: float
    median: float
    min: int
    max: int

    @classmethod
    def of(cls, values: list[int]) -> LengthSummary:
        if not values:
            return cls(0.0, 0.0, 0, 0)
        a = np.asarray(values)
        return cls(float(a.mean()), float(np.median(a)), int(a.min()), int(a.max()))


@dataclass(frozen=True)
class DimensionLengths:
    """Golden vs reject lengths over the pairs of one dimension."""

    pairs: int
    golden_chars: LengthSummary
    reject_chars: LengthSummary
    ratio: LengthSummary  # reject / golden characters, x1000 (integers), per pair
    longer_wins: Rate  # share of pairs whose golden is the longer response (chars; ties half)
    more_contractions: Rate  # share whose golden has more contractions (ties half)
    golden_tokens: LengthSummary | None = None
    reject_tokens: LengthSummary | None = None


@dataclass(frozen=True)
class DataStats:
    records: int
    graded_records: int
    splits: dict[str, int]
    masks: dict[str, int]  # "AE" -> records
    active: dict[str, int]  # dimension -> records where it is active
    domains: dict[str, int]  # from meta.domain where present
    dims: dict[str, DimensionLengths]
    prompt_tokens: LengthSummary | None = None
    warnings: list[str] = field(default_factory=list)


def data_stats(records: list[Record], tokenize: Callable[[str], int] | None = None) -> DataStats:
    """Everything `data stats` shows; `tokenize` returns a text's token count when given."""
    masks = Counter("".join(r.mask) for r in records)
    pairs = [p for r in records for p in record_pairs(r)]
    dims = {}
    for d in DIMS:
        mine = [p for p in pairs if p.dim == d]
        dims[d] = DimensionLengths(
            len(mine),
            LengthSummary.of([len(p.chosen) for p in mine]),
            LengthSummary.of([len(p.rejected) for p in mine]),
            LengthSummary.of([round(1000 * len(p.rejected) / len(p.chosen)) for p in mine]),
            _wins([len(p.chosen) for p in mine], [len(p.rejected) for p in mine]),
            _wins([contractions(p.chosen) for p in mine],
                  [contractions(p.rejected) for p in mine]),
            LengthSummary.of([tokenize(p.chosen) for p in mine]) if tokenize else None,
            LengthSummary.of([tokenize(p.rejected) for p in mine]) if tokenize else None,
        )
    warnings = []
    for d, lengths in dims.items():
        if lengths.pairs and not 600 <= lengths.ratio.mean <= 1400:
            warnings.append(f"reject_{d} averages {lengths.ratio.mean / 10:.0f}% of its golden's "
                            "length: DPO may learn length instead of the dimension")
        if lengths.pairs and not 0.4 <= lengths.longer_wins.value <= 0.6:
            warnings.append(f"{d}: the longer response is the golden in "
                            f"{lengths.longer_wins}: a model can score that by length alone")
    return DataStats(
        records=len(records),
        graded_records=sum(r.graded for r in records),
        splits=dict(Counter(r.split or "(none)" for r in records)),
        masks=dict(sorted(masks.items(), key=lambda kv: (len(kv[0]), kv[0]))),
        active={d: sum(d in r.mask for r in records) for d in DIMS},
        domains=dict(Counter(str(r.meta.get("domain")) for r in records if "domain" in r.meta)),
        dims=dims,
        prompt_tokens=LengthSummary.of([tokenize(r.prompt) for r in records]) if tokenize else None,
        warnings=warnings,
    )
