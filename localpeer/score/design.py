"""From ratings of one dimension to an estimable design.

Three things happen here, in order, before any estimator runs (METHOD.md §3):

1. extreme elements (every rating at the lowest or the highest category in use) have no finite
   ML estimate: they are dropped, and dropping is repeated until none is left;
2. the design must be connected (models, prompts and judges linked by shared ratings), checked
   with union-find; a disconnected design is refused with its subsets named;
3. categories nobody used are collapsed (localpeer defines this: the thresholds are estimated
   between the categories in use, and fair averages still score each category by its scale value).

    from localpeer.score.design import build_design
    design = build_design("A", models, items, judges, scores, scale_min=1, scale_max=5)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from localpeer.errors import InputError
from localpeer.formats import Labels

STATUS_MAX = "extreme_max"
STATUS_MIN = "extreme_min"
STATUS_NO_DATA = "no_data"  # every rating was removed with extreme partners; never estimated


@dataclass(frozen=True)
class Facet:
    """The elements of one facet that were rated, and what happened to each."""

    names: tuple[str, ...]  # every element seen in the ratings, in first-seen order
    n_ratings: np.ndarray  # (len(names),) ratings each element had before any drop
    status: dict[str, str]  # element -> extreme_max | extreme_min | no_data; absent = estimated
    kept: tuple[str, ...]  # elements left for estimation, in the order of the codes below


@dataclass(frozen=True)
class Design:
    """Integer-coded ratings of one dimension, ready for an estimator."""

    dimension: str
    models: Facet
    items: Facet
    judges: Facet
    m: np.ndarray  # (N,) model code into models.kept
    i: np.ndarray  # (N,) prompt code into items.kept
    j: np.ndarray  # (N,) judge code into judges.kept
    x: np.ndarray  # (N,) category code 0..K-1 over the categories in use
    category_values: np.ndarray  # (K,) scale value of each category in use
    category_counts: dict[int, int]  # scale value -> ratings (all ratings, every value)
    n_total: int  # ratings before extreme elements were dropped
    warnings: list[str] = field(default_factory=list)

    @property
    def n_categories(self) -> int:
        return int(self.category_values.size)


class UnionFind:
    """Disjoint sets over 0..n-1 with path halving and union by size."""

    def __init__(self, n: int):
        self.parent = list(range(n))
        self.size = [1] * n

    def find(self, a: int) -> int:
        parent = self.parent
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.size[ra] < self.size[rb]:
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.size[ra] += self.size[rb]


def connected_subsets(m, i, j, n_models, n_items, n_judges) -> list[np.ndarray]:
    """Components of the rating graph; node ids are models, then items, then judges."""
    uf = UnionFind(n_models + n_items + n_judges)
    # a rating links its model, prompt and judge; unique pairs keep the Python loop short
    for pair in np.unique(i.astype(np.int64) * n_models + m).tolist():
        uf.union(pair % n_models, n_models + pair // n_models)
    for pair in np.unique(j.astype(np.int64) * n_models + m).tolist():
        uf.union(pair % n_models, n_models + n_items + pair // n_models)
    roots = np.array([uf.find(k) for k in range(len(uf.parent))])
    return [np.flatnonzero(roots == r) for r in np.unique(roots)]


def _codes(labels) -> tuple[tuple[str, ...], np.ndarray]:
    """Names in first-seen order and the integer code of every rating, from an array of
    names or from `formats.Labels` (codes already: only integers are sorted, not strings)."""
    coded = isinstance(labels, Labels)
    uniq, first, inverse = np.unique(labels.codes if coded else np.asarray(labels),
                                     return_index=True, return_inverse=True)
    order = np.argsort(first)
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    names = [labels.names[u] for u in uniq[order]] if coded else uniq[order]
    return tuple(str(u) for u in names), rank[inverse]


def _extremes(codes, n, scores, keep, lo, hi):
    """Elements whose kept ratings are all `hi` (status max) or all `lo` (status min)."""
    counts = np.bincount(codes[keep], minlength=n)
    n_hi = np.bincount(codes[keep], weights=(scores[keep] == hi), minlength=n)
    n_lo = np.bincount(codes[keep], weights=(scores[keep] == lo), minlength=n)
    has = counts > 0
    return has & (n_hi == counts), has & (n_lo == counts)


def _drop_extremes(codes_by_facet, sizes, scores):
    """Iteratively drop extreme elements; returns the kept mask and each facet's statuses."""
    keep = np.ones(scores.size, bool)
    statuses = [dict() for _ in codes_by_facet]
    while keep.any():
        used = scores[keep]
        lo, hi = used.min(), used.max()
        dropped_any = False
        for f, (codes, n) in enumerate(zip(codes_by_facet, sizes)):
            is_max, is_min = _extremes(codes, n, scores, keep, lo, hi)
            for e in np.flatnonzero(is_max | is_min):
                statuses[f][int(e)] = STATUS_MAX if is_max[e] else STATUS_MIN
            bad = is_max | is_min
            if bad.any():
                keep &= ~bad[codes]
                dropped_any = True
        if not dropped_any or lo == hi:
            break
    return keep, statuses


def _facet(names, codes, keep, status_codes) -> tuple[Facet, np.ndarray]:
    """A Facet record and the recoded (kept-only) codes of the kept ratings."""
    n = len(names)
    counts = np.bincount(codes, minlength=n)
    remaining = np.bincount(codes[keep], minlength=n)
    status = {names[e]: s for e, s in status_codes.items()}
    for e in np.flatnonzero(remaining == 0):
        status.setdefault(names[e], STATUS_NO_DATA)
    kept_codes = np.flatnonzero(remaining > 0)
    remap = np.full(n, -1)
    remap[kept_codes] = np.arange(kept_codes.size)
    facet = Facet(tuple(names), counts, status, tuple(names[e] for e in kept_codes))
    return facet, remap[codes[keep]]


def _describe_subset(comp, models, items, judges) -> str:
    nm, ni = len(models), len(items)
    parts = []
    for label, names, sel in (
        ("models", models, comp[comp < nm]),
        ("judges", judges, comp[comp >= nm + ni] - nm - ni),
        ("prompts", items, comp[(comp >= nm) & (comp < nm + ni)] - nm),
    ):
        shown = ", ".join(names[k] for k in sel[:6]) + (", ..." if sel.size > 6 else "")
        parts.append(f"{label} ({sel.size}): {shown}" if sel.size else f"{label}: none")
    return "; ".join(parts)


def build_design(dimension, models, items, judges, scores, scale_min, scale_max) -> Design:
    """Code, clean and check the ratings of one dimension (arrays of equal length N)."""
    scores = np.asarray(scores, dtype=np.int64)
    if scores.size == 0:
        raise InputError(f"dimension {dimension!r} has no ratings")
    model_names, m = _codes(models)
    item_names, i = _codes(items)
    judge_names, j = _codes(judges)
    sizes = (len(model_names), len(item_names), len(judge_names))
    values = np.arange(scale_min, scale_max + 1)
    category_counts = {int(v): int(c) for v, c in zip(values, np.bincount(scores - scale_min,
                                                                            minlength=values.size))}

    keep, statuses = _drop_extremes((m, i, j), sizes, scores)
    models_f, m_k = _facet(model_names, m, keep, statuses[0])
    items_f, i_k = _facet(item_names, i, keep, statuses[1])
    judges_f, j_k = _facet(judge_names, j, keep, statuses[2])
    warnings = []
    kept_scores = scores[keep]
    used = np.unique(kept_scores)
    if kept_scores.size == 0 or used.size < 2:
        raise InputError(
            f"dimension {dimension!r}: after dropping extreme elements no ratings with two or "
            "more categories are left, so nothing can be estimated; every model, prompt or judge "
            "got the same score (check the judge prompts, or rate more varied responses)"
        )
    comps = connected_subsets(m_k, i_k, j_k, len(models_f.kept), len(items_f.kept),
                              len(judges_f.kept))
    if len(comps) > 1:
        listing = "\n".join(
            f"  subset {s + 1}: " + _describe_subset(c, models_f.kept, items_f.kept, judges_f.kept)
            for s, c in enumerate(comps)
        )
        raise InputError(
            f"dimension {dimension!r}: the design is not connected; {len(comps)} subsets share "
            f"no ratings and cannot be put on one scale:\n{listing}\n"
            "Have at least one judge rate models of every subset, or the models answer shared "
            "prompts."
        )
    unused = [int(v) for v in values if v not in set(used.tolist())]
    if unused:
        warnings.append(
            f"categories {unused} were never used (after dropping extremes): thresholds are "
            f"estimated between the {used.size} categories in use ({used.tolist()})"
        )
    x = np.searchsorted(used, kept_scores)
    return Design(dimension, models_f, items_f, judges_f, m_k, i_k, j_k, x,
                  used.astype(float), category_counts, int(scores.size), warnings)
