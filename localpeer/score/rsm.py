"""The Andrich rating-scale model for one rating: category probabilities and their moments.

Categories are coded 0..K-1. With eta = theta - delta - rho and thresholds tau[1..K-1]
(stored as `tau`, shape (K-1,), tau[h-1] is the threshold between categories h-1 and h):

    log P(X=k) = k*eta - sum_{h<=k} tau_h - log Z(eta)

so log P(k)/P(k-1) = eta - tau_k, which is METHOD.md §3 with 0-based categories.
Every estimator (JML, MML) and every fit statistic is built on `Moments`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def cumulative_tau(tau: np.ndarray) -> np.ndarray:
    """(K,) the sum of thresholds up to each category; entry 0 is 0."""
    return np.concatenate([[0.0], np.cumsum(tau)])


def _logits(eta: np.ndarray, tau: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(K, N) category logits shifted by their column maximum, and that maximum (N,).

    Category-major layout: every reduction runs over K rows of length N, which numpy
    vectorises across ratings; an (N, K) layout reduces K = 5 numbers at a time, 3x slower.
    """
    cum = cumulative_tau(tau)
    logits = np.arange(cum.size, dtype=float)[:, None] * eta[None, :] - cum[:, None]
    top = logits.max(axis=0)
    logits -= top
    return logits, top


def logprob_of(eta: np.ndarray, tau: np.ndarray, x: np.ndarray) -> np.ndarray:
    """(N,) log P(X = x | eta): the log-likelihood of each rating, without the other moments."""
    logits, top = _logits(eta, tau)
    cum = cumulative_tau(tau)
    return eta * x - cum[x] - top - np.log(np.exp(logits, out=logits).sum(axis=0))


def _probs_kn(eta: np.ndarray, tau: np.ndarray) -> np.ndarray:
    probs, _ = _logits(eta, tau)
    np.exp(probs, out=probs)
    probs /= probs.sum(axis=0)
    return probs


def category_probs(eta: np.ndarray, tau: np.ndarray) -> np.ndarray:
    """(N, K) P(X = k | eta)."""
    return _probs_kn(np.atleast_1d(np.asarray(eta, float)), tau).T


@dataclass(frozen=True)
class Moments:
    """What the likelihood derivatives need, per rating. Arrays are category-major (K, N):
    this is the inner loop of every estimator."""

    probs: np.ndarray  # (K, N) P(X=k)
    expected: np.ndarray  # (N,) E[X]
    variance: np.ndarray  # (N,) Var[X], the information about eta
    tail: np.ndarray  # (K-1, N) P(X >= h) for h = 1..K-1
    cov_x_tail: np.ndarray  # (K-1, N) Cov(X, 1[X >= h])


def moments(eta: np.ndarray, tau: np.ndarray) -> Moments:
    """Category probabilities and moments at eta (N,) for thresholds tau (K-1,)."""
    probs = _probs_kn(eta, tau)
    K = probs.shape[0]
    # reverse cumulative sums give P(X >= h) and E[X 1[X >= h]], h = K-1 down to 1
    tail = np.empty((K - 1, eta.size))
    k_tail = np.empty((K - 1, eta.size))
    tail[K - 2] = probs[K - 1]
    k_tail[K - 2] = (K - 1) * probs[K - 1]
    for h in range(K - 3, -1, -1):
        np.add(tail[h + 1], probs[h + 1], out=tail[h])
        k_tail[h] = k_tail[h + 1] + (h + 1) * probs[h + 1]
    expected = tail.sum(axis=0)  # E[X] = sum_h P(X >= h)
    second = k_tail.sum(axis=0)  # E[X^2] = sum_h E[X 1[X >= h]], each k counted k times
    variance = np.maximum(second - expected**2, 1e-300)
    cov_x_tail = k_tail - expected * tail
    return Moments(probs, expected, variance, tail, cov_x_tail)


def central_moments(probs: np.ndarray, expected: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(variance, fourth central moment) from deviations, precise for the fit statistics."""
    dev = np.arange(probs.shape[0], dtype=float)[:, None] - expected
    dev2 = dev * dev
    return (np.maximum((probs * dev2).sum(axis=0), 1e-300),
            (probs * dev2 * dev2).sum(axis=0))


def expected_score(eta: np.ndarray, tau: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Expected rating on the original scale (category k scores values[k])."""
    return np.asarray(values, float) @ _probs_kn(np.atleast_1d(np.asarray(eta, float)), tau)


def tau_information(tail: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """(K-1, K-1) sum over ratings of Cov(1[X>=h], 1[X>=h']), the information about tau.

    P(X >= max(h, h')) is the tail at the larger index, so the sum is built from row sums.
    tail is (K-1, N).
    """
    weighted = tail if weights is None else tail * weights
    tail_sum = weighted.sum(axis=1)
    n = tail_sum.size
    idx = np.maximum.outer(np.arange(n), np.arange(n))
    return tail_sum[idx] - weighted @ tail.T
