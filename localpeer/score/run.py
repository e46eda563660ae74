"""Score ratings: one many-facet Rasch fit per dimension, with every diagnostic.

    from localpeer.score.run import score_arrays
    result = score_arrays(models, items, judges, dimensions, scores, scale_min=1, scale_max=5)

This module never imports torch or transformers (a test checks it); `localpeer score` is pure
numpy and scipy.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np

from localpeer.formats import Labels
from localpeer.score.design import Design, _codes, build_design
from localpeer.score.estimates import Estimates
from localpeer.score.jml import fit_jml
from localpeer.score.result import DimensionResult, ElementResult, ScoreResult, ThresholdResult
from localpeer.score.rsm import expected_score
from localpeer.score.stats import (
    bias_terms,
    comparisons,
    fit_statistics,
    rating_fit,
    rating_moments,
    separation,
)

log = logging.getLogger(__name__)

ESTIMATORS = ("mml", "jml")
MISFIT_INFIT = 1.5  # Linacre's "unproductive for measurement" bound on mean-squares


def fit(design: Design, estimator: str = "mml", quad_points: int = 7,
        threads: int | None = None) -> Estimates:
    if estimator == "jml":
        return fit_jml(design)
    if estimator == "mml":
        from localpeer.score.mml import fit_mml  # scipy.special: a tenth of a second to import

        return fit_mml(design, quad_points=quad_points, threads=threads)
    raise ValueError(f"unknown estimator {estimator!r}; choose one of {', '.join(ESTIMATORS)}")


def _elements(facet, measures, ses, fit, fair=None) -> list[ElementResult]:
    """Kept elements with their numbers; dropped ones with their status only."""
    out, code = [], {name: k for k, name in enumerate(facet.kept)}
    for name, n in zip(facet.names, facet.n_ratings):
        k = code.get(name)
        if k is None:
            out.append(ElementResult(name, facet.status[name], int(n)))
            continue
        out.append(ElementResult(
            name, "estimated", int(n), float(measures[k]), float(ses[k]),
            float(fit.infit[k]), float(fit.outfit[k]), float(fit.infit_z[k]),
            float(fit.outfit_z[k]), None if fair is None else float(fair[k]),
        ))
    return out


def _threshold_warnings(design: Design, est: Estimates) -> list[str]:
    steps = np.diff(est.tau)
    if (steps > 0).all():
        return []
    values = design.category_values.astype(int)
    # tau[h] is the step from category h to h + 1
    bad = [f"{values[h - 1]}->{values[h]} ({est.tau[h - 1]:.2f}) >= "
           f"{values[h]}->{values[h + 1]} ({est.tau[h]:.2f})"
           for h in range(1, est.tau.size) if steps[h - 1] <= 0]
    return ["thresholds are disordered: " + "; ".join(bad) + ". Some categories are never "
            "the most probable; consider merging them or rewriting the rubric's anchors"]


def _misfit_warnings(judges: list[ElementResult]) -> list[str]:
    return [f"judge {e.name} misfits (infit {e.infit:.2f} > {MISFIT_INFIT}): its ratings are "
            "noisier than the model expects; check its prompt or drop it"
            for e in judges if e.estimated and e.infit > MISFIT_INFIT]


def score_design(design: Design, estimator: str = "mml", quad_points: int = 7,
                 threads: int | None = None) -> DimensionResult:
    est = fit(design, estimator, quad_points, threads)
    mom = rating_moments(design, est)
    M, I, J = len(design.models.kept), len(design.items.kept), len(design.judges.kept)
    parts = rating_fit(design.x, mom)
    fit_m = fit_statistics(design.m, M, design.x, mom, parts)
    fit_j = fit_statistics(design.j, J, design.x, mom, parts)
    fit_i = fit_statistics(design.i, I, design.x, mom, parts)
    fair = expected_score(est.theta, est.tau, design.category_values)
    models = _elements(design.models, est.theta, est.theta_se, fit_m, fair)
    judges = _elements(design.judges, est.rho, est.rho_se, fit_j)
    items = _elements(design.items, est.delta, est.delta_se, fit_i)
    bias, bias_notes = bias_terms(design, est)
    values = design.category_values.astype(int)
    thresholds = [ThresholdResult(int(values[h + 1]), float(est.tau[h]), float(est.tau_se[h]))
                  for h in range(est.tau.size)]
    warnings = list(design.warnings) + list(est.warnings)
    for facet, label in ((design.models, "model"), (design.judges, "judge"),
                         (design.items, "prompt")):
        dropped = [f"{n} ({s})" for n, s in facet.status.items()]
        if dropped:
            shown = ", ".join(dropped[:8]) + (", ..." if len(dropped) > 8 else "")
            warnings.append(f"{len(dropped)} extreme {label}(s) dropped, not estimated: {shown}")
    warnings += _threshold_warnings(design, est) + _misfit_warnings(judges) + bias_notes
    return DimensionResult(
        dimension=design.dimension, estimator=est.estimator, converged=est.converged,
        loglik=est.loglik, iterations=est.iterations, max_gradient=est.max_gradient,
        n_ratings=int(design.x.size), n_ratings_total=design.n_total, subsets=1,
        models=models, judges=judges, items=items, thresholds=thresholds,
        category_counts=design.category_counts, item_sd=est.item_sd, item_sd_se=est.item_sd_se,
        separation={
            "models": separation(est.theta, est.theta_se),
            "judges": separation(est.rho, est.rho_se),
            "items": separation(est.delta, est.delta_se),
        },
        bias=bias, comparisons=comparisons(design.models.kept, est.theta, est.theta_cov),
        warnings=warnings,
    )


def constant_judges(judges, scores: np.ndarray) -> dict[str, tuple[int, int]]:
    """Judges that gave one grade to all of their (at least two) ratings: judge -> (score, n).
    Such a judge cannot tell the replies apart, whatever its severity estimate says."""
    names, codes = _codes(judges)
    scores = np.asarray(scores, dtype=np.int64)
    n = np.bincount(codes, minlength=len(names))
    lo = np.full(len(names), np.iinfo(np.int64).max)
    hi = np.full(len(names), np.iinfo(np.int64).min)
    np.minimum.at(lo, codes, scores)
    np.maximum.at(hi, codes, scores)
    return {names[k]: (int(lo[k]), int(n[k])) for k in range(len(names))
            if n[k] >= 2 and lo[k] == hi[k]}


def _labels(values) -> Labels:
    return values if isinstance(values, Labels) else Labels(*_codes(values))


def score_arrays(models, items, judges, dimensions, scores, scale_min: int, scale_max: int,
                 estimator: str = "mml", quad_points: int = 7,
                 threads: int | None = None) -> ScoreResult:
    """Fit every dimension of long-format ratings (equal-length arrays)."""
    # Labels (integer codes) throughout: selecting and coding strings costs more than the fit
    dim_names, dim_codes = _codes(dimensions)  # first-seen order
    arrays = [_labels(a) for a in (models, items, judges)]
    scores = np.asarray(scores)
    results = {}
    for k, dim in enumerate(dim_names):
        sel = slice(None) if len(dim_names) == 1 else dim_codes == k
        mine = [a[sel] for a in arrays]
        design = build_design(str(dim), *mine, scores[sel], scale_min, scale_max)
        log.info("dimension %s: %d ratings, %s", dim, design.n_total, estimator)
        result = score_design(design, estimator, quad_points, threads)
        constant = constant_judges(mine[2], scores[sel])
        notes = [f"judge {j} gave {s} to all {n} ratings (degenerate): it cannot tell the "
                 "replies apart" for j, (s, n) in constant.items()]
        results[str(dim)] = replace(result, constant_judges=constant,
                                    warnings=result.warnings + notes)
    return ScoreResult(estimator, scale_min, scale_max, results)
