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
from functools import cached_property

import numpy as np

from localpeer.errors import InputError
from localpeer.formats import Labels

STATUS_MAX = "extreme_max"
STATUS_MIN = "extreme_min"
STATUS_NO_DATA = "no_data"  # every rating was removed with extreme partners; never estimated
_HASH_MULTIPLIER = np.uint64(1_000_003)  # a prime: text values hash to well-spread integers


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

    # Grouping keys, made once: every estimator sums per-rating quantities by these cells
    @cached_property
    def model_judge(self) -> np.ndarray:
        """(N,) the (model, judge) cell of each rating, m * J + j."""
        return self.m * len(self.judges.kept) + self.j

    @cached_property
    def item_model(self) -> np.ndarray:
        """(N,) the (prompt, model) cell of each rating, i * M + m."""
        return self.i * len(self.models.kept) + self.m

    @cached_property
    def item_judge(self) -> np.ndarray:
        """(N,) the (prompt, judge) cell of each rating, i * J + j."""
        return self.i * len(self.judges.kept) + self.j

    @cached_property
    def item_at_least(self) -> np.ndarray:
        """(I, K-1) how many of each prompt's ratings are at category h or above."""
        counts = np.bincount(self.i * self.n_categories + self.x,
                             minlength=len(self.items.kept) * self.n_categories)
        per_item = counts.reshape(-1, self.n_categories)
        return np.cumsum(per_item[:, ::-1], axis=1)[:, ::-1][:, 1:].astype(float)

    @cached_property
    def at_least(self) -> np.ndarray:
        """(K-1,) how many ratings are at category h or above, h = 1..K-1."""
        counts = np.bincount(self.x, minlength=self.n_categories)
        return np.cumsum(counts[::-1])[::-1][1:].astype(float)


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


def _distinct(key: np.ndarray, n_keys: int) -> np.ndarray:
    """Sorted distinct values of key (all in 0..n_keys-1): a bitmap where it is small."""
    if n_keys <= 8 * key.size:
        seen = np.zeros(n_keys, bool)
        seen[key] = True
        return np.flatnonzero(seen)
    return np.unique(key)


def _first_model(other: np.ndarray, m: np.ndarray, n_other: int, n_models: int):
    """For each distinct (other, model) pair: the other element, the model, and the lowest
    model that shares that element (every item or judge has at least one model)."""
    pairs = _distinct(other.astype(np.int64) * n_models + m, n_other * n_models)
    element, model = pairs // n_models, pairs % n_models
    starts = np.flatnonzero(np.r_[True, element[1:] != element[:-1]])
    lowest = np.repeat(model[starts], np.diff(np.r_[starts, element.size]))
    return element, model, lowest


def connected_subsets(m, i, j, n_models, n_items, n_judges) -> list[np.ndarray]:
    """Components of the rating graph; node ids are models, then items, then judges.

    Items and judges link only through models, so the sets are found among the models
    (two models are linked when they share a prompt or a judge) and every item and judge
    joins the set of its lowest model; subsets come in order of their first model."""
    uf = UnionFind(n_models)
    firsts = []
    for codes, n in ((i, n_items), (j, n_judges)):
        element, model, lowest = _first_model(codes, m, n, n_models)
        for link in _distinct(lowest * n_models + model, n_models * n_models).tolist():
            uf.union(link // n_models, link % n_models)
        first = np.zeros(n, np.int64)
        first[element] = lowest  # every pair of an element carries the same lowest model
        firsts.append(first)
    model_root = np.array([uf.find(k) for k in range(n_models)])
    roots = np.concatenate([model_root, model_root[firsts[0]], model_root[firsts[1]]])
    _, order = np.unique(roots, return_inverse=True)
    comps = np.argsort(order, kind="stable")
    bounds = np.cumsum(np.bincount(order))
    # np.unique numbers roots in increasing order; a root is a model, so subset order follows
    # each subset's root, which union by size picks; sort by each subset's first model instead
    parts = np.split(comps, bounds[:-1])
    return sorted(parts, key=lambda part: int(part[0]))


def _codes(labels) -> tuple[tuple[str, ...], np.ndarray]:
    """Names in first-seen order and the integer code of every rating, from an array of
    names or from `formats.Labels` (codes already: only integers are sorted, not strings)."""
    coded = isinstance(labels, Labels)
    if coded and _first_seen_dense(labels.codes, len(labels.names)):
        return tuple(str(name) for name in labels.names), labels.codes
    values = labels.codes if coded else np.asarray(labels)
    first, inverse = _hashed_unique(values) if values.dtype.kind == "U" else (None, None)
    if first is None and values.dtype.kind in "iu" and values.ndim == 1:
        first, inverse = _int_unique(values)
    if first is None:
        _, first, inverse = np.unique(values, return_index=True, return_inverse=True)
    order = np.argsort(first)
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    names = [labels.names[u] for u in values[first[order]]] if coded else values[first[order]]
    return tuple(str(u) for u in names), rank[inverse.ravel()]


def _hashed_unique(values: np.ndarray):
    """np.unique's (first index, inverse) of a text array through a 64-bit hash of each value,
    which sorts 2-4x faster than the text; (None, None) if two values share a hash (checked)."""
    if values.ndim != 1 or values.size == 0 or values.dtype.itemsize == 0:
        return None, None
    chars = np.ascontiguousarray(values).view(np.uint32).reshape(values.size, -1)
    hashed = np.zeros(values.size, np.uint64)
    with np.errstate(over="ignore"):  # wrapping multiplication is the hash
        for column in chars.T:
            np.multiply(hashed, _HASH_MULTIPLIER, out=hashed)
            np.add(hashed, column, out=hashed)
    first, inverse = _int_unique(hashed)
    distinct = values[first]
    for lo in range(0, values.size, 1 << 16):  # in blocks: no second copy of all the text
        if not (distinct[inverse[lo : lo + (1 << 16)]] == values[lo : lo + (1 << 16)]).all():
            return None, None
    return first, inverse


def _int_unique(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """np.unique's (first index, inverse) of integers: a stable sort of integers is a radix
    sort in numpy, several times faster than the sort np.unique does."""
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    starts = np.empty(keys.size, bool)
    starts[:1] = True
    np.not_equal(ordered[1:], ordered[:-1], out=starts[1:])
    inverse = np.empty(keys.size, np.int64)
    inverse[order] = np.cumsum(starts) - 1
    return order[starts], inverse  # stable: each group's first position is its first index


def _first_seen_dense(codes: np.ndarray, n_names: int) -> bool:
    """Whether codes already number every name 0..n-1 in first-seen order (what the columnar
    reader gives for one dimension), so that coding them again would change nothing."""
    if codes.size == 0 or codes[0] != 0:
        return False
    running = np.maximum.accumulate(codes)
    return bool(running[-1] == n_names - 1 and (codes[1:] <= running[:-1] + 1).all())


def _extremes(codes, n, scores, keep, lo, hi):
    """Elements whose kept ratings are all `hi` (status max) or all `lo` (status min)."""
    if not keep.all():
        codes, scores = codes[keep], scores[keep]
    counts = np.bincount(codes, minlength=n)
    n_hi = np.bincount(codes, weights=(scores == hi), minlength=n)
    n_lo = np.bincount(codes, weights=(scores == lo), minlength=n)
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
    used = np.flatnonzero(np.bincount(kept_scores - scale_min, minlength=values.size)) + scale_min
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
    category = np.zeros(values.size, np.int64)
    category[used - scale_min] = np.arange(used.size)
    x = category[kept_scores - scale_min]
    return Design(dimension, models_f, items_f, judges_f, m_k, i_k, j_k, x,
                  used.astype(float), category_counts, int(scores.size), warnings)
