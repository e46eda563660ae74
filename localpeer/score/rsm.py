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


def category_logprobs(eta: np.ndarray, tau: np.ndarray) -> np.ndarray:
    """(..., K) log P(X=k | eta) for every category, computed stably."""
    cum = cumulative_tau(tau)
    k = np.arange(cum.size, dtype=float)
    logits = eta[..., None] * k - cum
    logits -= logits.max(axis=-1, keepdims=True)
    return logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))


@dataclass(frozen=True)
class Moments:
    """What the likelihood, its derivatives and the fit statistics need, per rating (rows)."""

    logprobs: np.ndarray  # (N, K) log P(X=k)
    probs: np.ndarray  # (N, K) P(X=k)
    expected: np.ndarray  # (N,) E[X]
    variance: np.ndarray  # (N,) Var[X], the information about eta
    kurt: np.ndarray  # (N,) E[(X - E X)^4], for the ZSTD of the fit mean-squares
    tail: np.ndarray  # (N, K-1) P(X >= h) for h = 1..K-1
    cov_x_tail: np.ndarray  # (N, K-1) Cov(X, 1[X >= h])


def moments(eta: np.ndarray, tau: np.ndarray) -> Moments:
    """Category probabilities and moments at eta (N,) for thresholds tau (K-1,)."""
    logprobs = category_logprobs(eta, tau)
    probs = np.exp(logprobs)
    k = np.arange(probs.shape[-1], dtype=float)
    expected = probs @ k
    dev = k - expected[..., None]
    variance = np.einsum("...k,...k->...", probs, dev**2)
    kurt = np.einsum("...k,...k->...", probs, dev**4)
    # reverse cumulative sums give P(X >= h) and E[X 1[X >= h]] in one pass each
    tail = np.flip(np.cumsum(np.flip(probs[..., 1:], -1), -1), -1)
    k_tail = np.flip(np.cumsum(np.flip(probs[..., 1:] * k[1:], -1), -1), -1)
    cov_x_tail = k_tail - expected[..., None] * tail
    return Moments(logprobs, probs, expected, np.maximum(variance, 1e-300), kurt, tail, cov_x_tail)


def expected_score(eta: np.ndarray, tau: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Expected rating on the original scale (category k scores values[k])."""
    return np.exp(category_logprobs(np.asarray(eta, float), tau)) @ np.asarray(values, float)


def tau_information(tail: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """(K-1, K-1) sum over ratings of Cov(1[X>=h], 1[X>=h']), the information about tau.

    P(X >= max(h, h')) is the tail at the larger index, so the sum is built from column sums.
    """
    w = np.ones(tail.shape[0]) if weights is None else weights
    tail_sum = w @ tail
    n = tail_sum.size
    idx = np.maximum.outer(np.arange(n), np.arange(n))
    return tail_sum[idx] - (tail * w[:, None]).T @ tail
