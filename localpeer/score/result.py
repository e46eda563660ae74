"""Result objects of `localpeer score` and their JSON and CSV forms (ARCHITECTURE.md, Score JSON).

An extreme element carries its status and count but no measure: there is no finite estimate to
print, so none is invented.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from localpeer.score.stats import BiasTerm, Comparison, Separation

if TYPE_CHECKING:
    from localpeer.judge.calibrate import DimCalibration


@dataclass(frozen=True)
class ElementResult:
    """One model, judge or prompt of one dimension."""

    name: str
    status: str  # estimated | extreme_max | extreme_min | no_data
    n: int  # ratings of this element (before any drop)
    measure: float | None = None  # theta, severity or difficulty; None unless estimated
    se: float | None = None
    infit: float | None = None
    outfit: float | None = None
    infit_z: float | None = None
    outfit_z: float | None = None
    fair_average: float | None = None  # models: expected score, average prompt and judge

    @property
    def estimated(self) -> bool:
        return self.status == "estimated"

    @property
    def ci95(self) -> tuple[float, float] | None:
        if self.measure is None or self.se is None:
            return None
        return (self.measure - 1.959964 * self.se, self.measure + 1.959964 * self.se)


@dataclass(frozen=True)
class ThresholdResult:
    k: int  # scale value of the upper category of the step
    tau: float
    se: float


@dataclass(frozen=True)
class DimensionResult:
    """Everything `localpeer score` reports for one dimension."""

    dimension: str
    estimator: str
    converged: bool
    loglik: float
    iterations: int
    max_gradient: float
    n_ratings: int  # ratings used in the fit (extreme elements excluded)
    n_ratings_total: int
    subsets: int
    models: list[ElementResult]
    judges: list[ElementResult]
    items: list[ElementResult]
    thresholds: list[ThresholdResult]
    category_counts: dict[int, int]
    item_sd: float
    item_sd_se: float | None
    separation: dict[str, Separation]
    bias: list[BiasTerm]
    comparisons: list[Comparison]
    warnings: list[str] = field(default_factory=list)
    # judges that gave one grade to every rating of this dimension: judge -> (score, n)
    constant_judges: dict[str, tuple[int, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class ScoreResult:
    estimator: str
    scale_min: int
    scale_max: int
    dimensions: dict[str, DimensionResult]
    # calibration.json when one was found: judge label -> dimension -> calibration
    calibration: dict[str, dict[str, DimCalibration]] | None = None
    calibration_file: str | None = None

    def calibration_of(self, judge: str, dimension: str) -> DimCalibration | None:
        return (self.calibration or {}).get(judge, {}).get(dimension)


def _num(v):
    """JSON has no inf/nan: such a value is written as null."""
    if v is None:
        return None
    v = float(v)
    return round(v, 6) if math.isfinite(v) else None


def _element(e: ElementResult, measure_key: str, with_fair: bool) -> dict:
    out: dict = {}
    if e.estimated:
        out[measure_key] = _num(e.measure)
        out["se"] = _num(e.se)
        if measure_key == "theta":
            out["ci95"] = [_num(c) for c in e.ci95]
        if with_fair:
            out["fair_average"] = _num(e.fair_average)
        for key in ("infit", "outfit", "infit_z", "outfit_z"):
            out[key] = _num(getattr(e, key))
    out["n"] = e.n
    out["status"] = e.status
    return out


def _judges_dict(r: DimensionResult, calibration: dict | None) -> dict:
    """Each judge's entry; with a calibration file, its "calibration" (null when the file
    does not cover this judge and dimension)."""
    out = {e.name: _element(e, "severity", False) for e in r.judges}
    if calibration is not None:
        for name, entry in out.items():
            c = calibration.get(name, {}).get(r.dimension)
            entry["calibration"] = None if c is None else {k: (_num(v) if isinstance(v, float)
                                                                else v)
                                                           for k, v in c.to_json().items()}
    return out


def dimension_dict(r: DimensionResult, calibration: dict | None = None) -> dict:
    return {
        "converged": r.converged,
        "loglik": _num(r.loglik),
        "iterations": r.iterations,
        "max_gradient": float(r.max_gradient) if math.isfinite(r.max_gradient) else None,
        "n_ratings": r.n_ratings,
        "n_ratings_total": r.n_ratings_total,
        "subsets": r.subsets,
        "models": {e.name: _element(e, "theta", True) for e in r.models},
        "judges": _judges_dict(r, calibration),
        "items": {e.name: _element(e, "difficulty", False) for e in r.items},
        "thresholds": [{"k": t.k, "tau": _num(t.tau), "se": _num(t.se)} for t in r.thresholds],
        "categories": {str(k): v for k, v in r.category_counts.items()},
        "item_sd": _num(r.item_sd),
        "item_sd_se": _num(r.item_sd_se),
        "separation": {
            facet: {"separation": _num(s.separation), "reliability": _num(s.reliability),
                    "strata": _num(s.strata)}
            for facet, s in r.separation.items()
        },
        "bias": [{"judge": b.judge, "model": b.model, "estimate": _num(b.estimate),
                  "se": _num(b.se), "z": _num(b.z), "n": b.n} for b in r.bias],
        "comparisons": [{"a": c.a, "b": c.b, "diff": _num(c.diff), "se": _num(c.se),
                         "z": _num(c.z)} for c in r.comparisons],
        "warnings": list(r.warnings),
    }


def to_json_dict(result: ScoreResult) -> dict:
    out = {
        "estimator": result.estimator,
        "scale": {"min": result.scale_min, "max": result.scale_max},
        "dimensions": {name: dimension_dict(r, result.calibration)
                       for name, r in result.dimensions.items()},
    }
    if result.calibration_file is not None:
        out["calibration_file"] = result.calibration_file
    return out


CSV_COLUMNS = ["dimension", "facet", "element", "status", "measure", "se", "ci95_low",
               "ci95_high", "fair_average", "infit", "outfit", "infit_z", "outfit_z", "n"]


def to_csv(result: ScoreResult) -> str:
    """One row per element per dimension; measure is theta, severity or difficulty."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for dim, r in result.dimensions.items():
        for facet, elements in (("model", r.models), ("judge", r.judges), ("item", r.items)):
            for e in elements:
                ci = e.ci95 if facet == "model" else None
                row = [dim, facet, e.name, e.status, e.measure, e.se,
                       ci[0] if ci else None, ci[1] if ci else None, e.fair_average,
                       e.infit, e.outfit, e.infit_z, e.outfit_z, e.n]
                writer.writerow(["" if v is None else (f"{v:.6g}" if isinstance(v, float) else v)
                                 for v in row])
    return buf.getvalue()
