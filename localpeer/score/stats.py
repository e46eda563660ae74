"""Diagnostics computed from fitted estimates: fit mean-squares, separation, bias, comparisons.

Formulas (Wright & Masters, as in the Facets program):
- outfit MS = mean of z^2, z = (x - E) / sqrt(V); infit MS = sum (x - E)^2 / sum V;
- ZSTD by the Wilson-Hilferty cube root: t = (MS^(1/3) - 1) (3 / q) + q / 3, with
  q^2 = sum(C / V^2) / n^2 - 1 / n (outfit) and q^2 = sum(C - V^2) / (sum V)^2 (infit),
  C the fourth central moment of the rating;
- separation G = true SD / RMSE with true variance = observed variance - mean SE^2,
  reliability = true variance / observed variance, strata = (4 G + 1) / 3;
- judge x model bias: one extra logit b for the pair, the other estimates held fixed;
  b > 0 means the judge rated that model higher than its severity and the model's trait predict.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from localpeer.score.design import Design
from localpeer.score.estimates import Estimates
from localpeer.score.rsm import Moments, central_moments, mean_variance, moments


@dataclass(frozen=True)
class FitStats:
    """Per element of one facet: infit/outfit mean-squares and their ZSTD."""

    infit: np.ndarray
    outfit: np.ndarray
    infit_z: np.ndarray
    outfit_z: np.ndarray
    n: np.ndarray


@dataclass(frozen=True)
class Separation:
    separation: float
    reliability: float
    strata: float


@dataclass(frozen=True)
class BiasTerm:
    judge: str
    model: str
    estimate: float  # logits; > 0: the judge favours this model
    se: float
    z: float
    n: int


@dataclass(frozen=True)
class Comparison:
    a: str
    b: str
    diff: float  # theta[a] - theta[b]
    se: float
    z: float


def rating_moments(d: Design, est: Estimates) -> Moments:
    return moments(est.theta[d.m] - est.delta[d.i] - est.rho[d.j], est.tau)


def _wilson_hilferty(ms: np.ndarray, q: np.ndarray) -> np.ndarray:
    q = np.maximum(q, 1e-12)
    return (np.cbrt(ms) - 1.0) * (3.0 / q) + q / 3.0


def fit_statistics(codes: np.ndarray, n_elements: int, x: np.ndarray, mom: Moments,
                   parts: RatingFit | None = None) -> FitStats:
    """Infit and outfit of every element of a facet (codes: the facet's code per rating);
    `parts` (from `rating_fit`) saves recomputing the per-rating terms for every facet."""
    parts = parts or rating_fit(x, mom)
    n = np.bincount(codes, minlength=n_elements).astype(float)
    sum_v = np.bincount(codes, parts.variance, n_elements)
    with np.errstate(divide="ignore", invalid="ignore"):
        outfit = np.bincount(codes, parts.z2, n_elements) / n
        infit = np.bincount(codes, parts.resid2, n_elements) / sum_v
        q_out = np.sqrt(np.maximum(np.bincount(codes, parts.kurt_out, n_elements) / n**2 - 1 / n,
                                   0))
        q_in = np.sqrt(np.maximum(np.bincount(codes, parts.kurt_in, n_elements), 0)) / sum_v
        return FitStats(infit, outfit, _wilson_hilferty(infit, q_in),
                        _wilson_hilferty(outfit, q_out), n.astype(int))


@dataclass(frozen=True)
class RatingFit:
    """Per-rating terms of the fit mean-squares, the same for every facet."""

    resid2: np.ndarray  # (x - E)^2
    variance: np.ndarray  # V, from deviations
    z2: np.ndarray  # (x - E)^2 / V
    kurt_out: np.ndarray  # C / V^2
    kurt_in: np.ndarray  # C - V^2


def rating_fit(x: np.ndarray, mom: Moments) -> RatingFit:
    resid2 = (x - mom.expected) ** 2
    V, C = central_moments(mom.probs, mom.expected)
    with np.errstate(divide="ignore", invalid="ignore"):
        return RatingFit(resid2, V, resid2 / V, C / V**2, C - V**2)


def separation(measures: np.ndarray, ses: np.ndarray) -> Separation:
    """Separation, reliability and strata of a facet's estimates."""
    if measures.size < 2:
        return Separation(0.0, 0.0, 1.0 / 3.0)
    observed_var = float(measures.var(ddof=1))
    error_var = float(np.mean(ses**2))
    true_var = max(observed_var - error_var, 0.0)
    g = float(np.sqrt(true_var / error_var)) if error_var > 0 else float("inf")
    reliability = true_var / observed_var if observed_var > 0 else 0.0
    return Separation(g, reliability, (4.0 * g + 1.0) / 3.0)


def bias_terms(d: Design, est: Estimates, max_iter: int = 50):
    """Judge x model interaction of every rated pair: (terms, notes on extreme pairs)."""
    M, J = len(d.models.kept), len(d.judges.kept)
    if M < 2 or J < 2:
        return [], []
    pair = d.j * M + d.m
    eta = est.theta[d.m] - est.delta[d.i] - est.rho[d.j]
    top = d.n_categories - 1
    n = np.bincount(pair, minlength=M * J)
    n_top = np.bincount(pair, d.x == top, M * J)
    n_bottom = np.bincount(pair, d.x == 0, M * J)
    extreme = (n > 0) & ((n_top == n) | (n_bottom == n))
    b = np.zeros(M * J)
    for _ in range(max_iter):
        expected, variance = mean_variance(eta + b[pair], est.tau)
        info = np.bincount(pair, variance, M * J)
        resid = np.bincount(pair, d.x - expected, M * J)
        step = np.where(n > 0, resid / np.maximum(info, 1e-12), 0.0)
        b = np.where(extreme, 0.0, b + np.clip(step, -1.0, 1.0))
        if np.abs(step[~extreme]).max(initial=0.0) < 1e-8:
            break
    info = np.bincount(pair, mean_variance(eta + b[pair], est.tau)[1], M * J)
    terms, notes = [], []
    for k in np.flatnonzero(n > 0):
        judge, model = d.judges.kept[k // M], d.models.kept[k % M]
        if extreme[k]:
            notes.append(f"bias of judge {judge} on model {model} not estimable: all {n[k]} "
                         "ratings in one extreme category")
            continue
        se = 1.0 / np.sqrt(info[k])
        terms.append(BiasTerm(judge, model, float(b[k]), float(se), float(b[k] / se), int(n[k])))
    return terms, notes


def comparisons(names: tuple[str, ...], theta: np.ndarray, cov: np.ndarray) -> list[Comparison]:
    """Every pair of models, the higher theta first: diff, its SE (with the covariance), z."""
    out = []
    order = np.argsort(-theta, kind="stable")
    for x, a in enumerate(order):
        for b in order[x + 1 :]:
            se = float(np.sqrt(max(cov[a, a] + cov[b, b] - 2 * cov[a, b], 0.0)))
            diff = float(theta[a] - theta[b])
            out.append(Comparison(names[a], names[b], diff, se, diff / se if se > 0 else np.inf))
    return out
