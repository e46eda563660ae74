"""Counts and lengths of a PersonaKnob data set, for `localpeer data stats` and the tests.

    from localpeer.data.stats import data_stats
    stats = data_stats(records, tokenize=None)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from localpeer.data.personaknob import DIMS, Record, record_pairs


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
            LengthSummary.of([tokenize(p.chosen) for p in mine]) if tokenize else None,
            LengthSummary.of([tokenize(p.rejected) for p in mine]) if tokenize else None,
        )
    warnings = []
    for d, lengths in dims.items():
        if lengths.pairs and not 600 <= lengths.ratio.mean <= 1400:
            warnings.append(f"reject_{d} averages {lengths.ratio.mean / 10:.0f}% of its golden's "
                            "length: DPO may learn length instead of the dimension")
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
