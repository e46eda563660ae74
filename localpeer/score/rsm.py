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


CHUNK = 1 << 15  # ratings per block: the (K, block) temporaries stay in cache, 1.4x at 1M


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


def _blocks(n: int):
    for lo in range(0, n, CHUNK):
        yield slice(lo, min(lo + CHUNK, n))


def logprob_of(eta: np.ndarray, tau: np.ndarray, x: np.ndarray) -> np.ndarray:
    """(N,) log P(X = x | eta): the log-likelihood of each rating, without the other moments."""
    cum = cumulative_tau(tau)
    out = np.empty(eta.size)
    for b in _blocks(eta.size):
        logits, top = _logits(eta[b], tau)
        out[b] = eta[b] * x[b] - cum[x[b]] - top - np.log(np.exp(logits, out=logits).sum(axis=0))
    return out


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

    probs: np.ndarray | None  # (K, N) P(X=k); None from loglik_and_moments
    expected: np.ndarray  # (N,) E[X]
    variance: np.ndarray  # (N,) Var[X], the information about eta
    tail: np.ndarray  # (K-1, N) P(X >= h) for h = 1..K-1
    cov_x_tail: np.ndarray  # (K-1, N) Cov(X, 1[X >= h])


def moments(eta: np.ndarray, tau: np.ndarray, keep_probs: bool = True) -> Moments:
    """Category probabilities and moments at eta (N,) for thresholds tau (K-1,); derivatives
    need no probabilities (keep_probs=False saves writing K x N numbers)."""
    return _moments(eta, tau, None, keep_probs)[1]


def loglik_and_moments(eta: np.ndarray, tau: np.ndarray, x: np.ndarray) -> tuple[float, Moments]:
    """The log-likelihood of ratings x (N,) and the moments at eta, from one pass.

    log P(x) = x eta - cum[x] - (shift + log Z): the last term is summed block by block, so a
    Newton iterate costs one pass over the ratings instead of two. The derivatives do not need
    the category probabilities, so they are not kept (`probs` is None): 40 MB a pass at 1M."""
    log_norm, mom = _moments(eta, tau, x, keep_probs=False)
    cum = cumulative_tau(tau)
    counts = np.bincount(x, minlength=cum.size)
    return float(x @ eta - counts @ cum - log_norm), mom


def _moments(eta, tau, x, keep_probs) -> tuple[float, Moments]:
    """Moments block by block into full-size arrays; with x, also sum(shift + log Z)."""
    K, N = tau.size + 1, eta.size
    probs = np.empty((K, N)) if keep_probs else None
    expected, variance = np.empty(N), np.empty(N)
    tail, cov_x_tail = np.empty((K - 1, N)), np.empty((K - 1, N))
    log_norm = 0.0
    for b in _blocks(N):
        logits, top = _logits(eta[b], tau)
        p = logits if probs is None else probs[:, b]
        np.exp(logits, out=p)
        norm = p.sum(axis=0)
        p /= norm
        if x is not None:
            log_norm += float(top.sum() + np.log(norm).sum())
        _tail_moments(p, tail[:, b], cov_x_tail[:, b], expected[b], variance[b])
    return log_norm, Moments(probs, expected, variance, tail, cov_x_tail)


def _tail_moments(probs, tail, cov_x_tail, expected, variance) -> None:
    """Fill P(X >= h), E[X], Var[X] and Cov(X, 1[X >= h]) of one block, in place."""
    K = probs.shape[0]
    k_tail = cov_x_tail  # E[X 1[X >= h]] first, made a covariance at the end
    # reverse cumulative sums give P(X >= h) and E[X 1[X >= h]], h = K-1 down to 1
    tail[K - 2] = probs[K - 1]
    np.multiply(probs[K - 1], K - 1, out=k_tail[K - 2])
    scratch = np.empty_like(expected)
    for h in range(K - 3, -1, -1):
        np.add(tail[h + 1], probs[h + 1], out=tail[h])
        np.multiply(probs[h + 1], h + 1, out=scratch)
        np.add(k_tail[h + 1], scratch, out=k_tail[h])
    tail.sum(axis=0, out=expected)  # E[X] = sum_h P(X >= h)
    second = k_tail.sum(axis=0)  # E[X^2] = sum_h E[X 1[X >= h]], each k counted k times
    np.maximum(second - expected**2, 1e-300, out=variance)
    k_tail -= expected * tail


def mean_variance(eta: np.ndarray, tau: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(E[X], Var[X]), each (N,), without the tail moments (the bias terms need only these)."""
    expected, variance = np.empty(eta.size), np.empty(eta.size)
    for b in _blocks(eta.size):
        probs = _probs_kn(eta[b], tau)
        k = np.arange(probs.shape[0], dtype=float)
        np.dot(k, probs, out=expected[b])
        np.maximum(np.dot(k * k, probs) - expected[b] ** 2, 1e-300, out=variance[b])
    return expected, variance


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
