"""Joint maximum likelihood for the many-facet rating-scale model (what the Facets program does).

Every parameter is fixed: theta (models), delta (prompts), rho (judges), tau (thresholds).
Newton's method with the exact (= expected, the model is an exponential family) information.
The prompt block of the information is diagonal (a rating involves one prompt), so a Newton
step is a Schur complement over the few model, judge and threshold parameters: fitting a
million ratings over ten thousand prompts costs a handful of passes over the data.

    from localpeer.score.jml import fit_jml
    est = fit_jml(design)            # tol: max |gradient| of the log-likelihood

Gauge: the likelihood is unchanged by (theta + c, delta + c), (theta + c, rho + c) and
(theta + c, tau + c). Newton steps are taken with theta[0], rho[0] and tau[0] held (which keeps
the prompt block diagonal); after every step the estimates are moved to the reported gauge,
sum(delta) = sum(rho) = sum(tau) = 0, and the covariance is carried there by the same linear map.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from localpeer.score.design import Design
from localpeer.score.estimates import Estimates
from localpeer.score.rsm import Moments, loglik_and_moments, tau_information

log = logging.getLogger(__name__)

MAX_STEP = 3.0  # logits; a first Newton step from zero can overshoot on sparse designs


@dataclass
class _Params:
    theta: np.ndarray
    delta: np.ndarray
    rho: np.ndarray
    tau: np.ndarray

    def eta(self, d: Design) -> np.ndarray:
        return self.theta[d.m] - self.delta[d.i] - self.rho[d.j]

    def moved(self, step_small: np.ndarray, step_delta: np.ndarray, t: float) -> _Params:
        M, J = self.theta.size, self.rho.size
        return _Params(
            self.theta + t * step_small[:M],
            self.delta + t * step_delta,
            self.rho + t * step_small[M : M + J],
            self.tau + t * step_small[M + J :],
        ).centred()

    def centred(self) -> _Params:
        """Move to sum(delta) = sum(rho) = sum(tau) = 0 without changing the likelihood."""
        c_delta, c_rho, c_tau = self.delta.mean(), self.rho.mean(), self.tau.mean()
        return _Params(
            self.theta - c_delta - c_rho - c_tau,
            self.delta - c_delta,
            self.rho - c_rho,
            self.tau - c_tau,
        )


def initial_tau(x: np.ndarray, n_categories: int) -> np.ndarray:
    """Thresholds from the adjacent-category log ratios of the raw counts, centred."""
    counts = np.bincount(x, minlength=n_categories) + 0.5
    tau = np.log(counts[:-1] / counts[1:])
    return tau - tau.mean()


def gradient(d: Design, mom: Moments, M: int, I: int, J: int) -> tuple[np.ndarray, np.ndarray]:
    """d loglik / d params: ([theta, rho, tau] (S,), delta (I,))."""
    resid = d.x - mom.expected
    # by (model, judge) cell, then summed: a model's ratings are contiguous in most files,
    # and bincount into one bin after another is latency-bound (3x slower than these cells)
    cells = np.bincount(d.model_judge, resid, M * J).reshape(M, J)
    g_small = np.concatenate([cells.sum(axis=1), -cells.sum(axis=0),
                              mom.tail.sum(axis=1) - d.at_least])
    return g_small, -np.bincount(d.i, resid, I)


def small_information(d: Design, mom: Moments, M: int, J: int, w: np.ndarray | None = None):
    """(S, S) -Hessian over [theta (M), rho (J), tau (K-1)], ratings weighted by w (N,)."""
    V, cx = mom.variance, mom.cov_x_tail
    if w is not None:
        V, cx = V * w, cx * w
    K1 = cx.shape[0]
    S = M + J + K1
    B = np.zeros((S, S))
    th, rh, ta = slice(0, M), slice(M, M + J), slice(M + J, S)
    cells = np.bincount(d.model_judge, V, M * J).reshape(M, J)
    B[th, th] = np.diag(cells.sum(axis=1))
    B[rh, rh] = np.diag(cells.sum(axis=0))
    B[th, rh] = -cells
    B[ta, ta] = tau_information(mom.tail, w)
    cx_cells = [np.bincount(d.model_judge, cx[h], M * J).reshape(M, J) for h in range(K1)]
    B[th, ta] = -np.stack([c.sum(axis=1) for c in cx_cells], axis=1)
    B[rh, ta] = np.stack([c.sum(axis=0) for c in cx_cells], axis=1)
    B[rh, th] = B[th, rh].T
    B[ta, th] = B[th, ta].T
    B[ta, rh] = B[rh, ta].T
    return B


def information(d: Design, mom: Moments, M: int, I: int, J: int):
    """Blocks of -Hessian: D (I,) prompt diagonal, C (I, S) prompt x small, B (S, S) small.

    The small parameters are ordered [theta (M), rho (J), tau (K-1)].
    """
    V, cx = mom.variance, mom.cov_x_tail
    K1 = cx.shape[0]
    C = np.zeros((I, M + J + K1))
    C[:, :M] = -np.bincount(d.item_model, V, I * M).reshape(I, M)
    C[:, M : M + J] = np.bincount(d.item_judge, V, I * J).reshape(I, J)
    C[:, M + J :] = np.stack([np.bincount(d.i, cx[h], I) for h in range(K1)], axis=1)
    return -C[:, :M].sum(axis=1), C, small_information(d, mom, M, J)


def _free_small(M: int, J: int, K1: int) -> np.ndarray:
    """Small-block parameters that move in a Newton step (theta[0], rho[0], tau[0] are held)."""
    free = np.ones(M + J + K1, bool)
    free[[0, M, M + J]] = False
    return np.flatnonzero(free)


def newton_step(D, C, B, g_small, g_delta, free):
    """Solve the Newton system by the Schur complement over the small parameters."""
    Dinv = 1.0 / D
    Cf, Bf = C[:, free], B[np.ix_(free, free)]
    schur = Bf - Cf.T @ (Dinv[:, None] * Cf)
    step_free = np.linalg.solve(schur, g_small[free] - Cf.T @ (Dinv * g_delta))
    step_small = np.zeros(B.shape[0])
    step_small[free] = step_free
    return step_small, Dinv * (g_delta - Cf @ step_free)


def covariance(D, C, B, free, M, J, K1):
    """Covariance of the estimates in the sum-to-zero gauge.

    In the held gauge the inverse information is Diag + V S^-1 V^T (Schur complement S).
    The reported estimates are q = T p with T = I - R W^T (three centring moves), so
    Cov(q) = T Diag T^T + (T V) S^-1 (T V)^T; only its diagonal and theta block are formed.
    Returns theta_cov (M, M), and the SEs of rho (J,), tau (K1,) and delta (I,).
    """
    I, S = D.size, B.shape[0]
    Dinv = 1.0 / D
    Cf = C[:, free]
    schur = B[np.ix_(free, free)] - Cf.T @ (Dinv[:, None] * Cf)
    schur_inv = np.linalg.inv(schur)
    n = S + I
    diag_vec = np.concatenate([np.zeros(S), Dinv])
    V = np.zeros((n, free.size))
    V[free, np.arange(free.size)] = 1.0
    V[S:] = -Dinv[:, None] * Cf
    R, W = np.zeros((n, 3)), np.zeros((n, 3))
    for c, (sl, size) in enumerate(((slice(S, n), I), (slice(M, M + J), J), (slice(M + J, S), K1))):
        W[sl, c] = 1.0 / size
        R[sl, c] = 1.0
        R[:M, c] = 1.0
    TV = V - R @ (W.T @ V)
    WD = W * diag_vec[:, None]
    mid = W.T @ WD
    diag_tdt = diag_vec - 2.0 * (R * WD).sum(1) + np.einsum("pc,cd,pd->p", R, mid, R)
    var = diag_tdt + ((TV @ schur_inv) * TV).sum(1)
    theta_cov = R[:M] @ mid @ R[:M].T + TV[:M] @ schur_inv @ TV[:M].T
    se = np.sqrt(np.maximum(var, 0.0))
    return theta_cov, se[M : M + J], se[M + J : S], se[S:]


def fit_jml(d: Design, tol: float = 1e-6, max_iter: int = 100) -> Estimates:
    """Joint ML estimates of one dimension, Newton to max |gradient| < tol."""
    M, I, J, K1 = len(d.models.kept), len(d.items.kept), len(d.judges.kept), d.n_categories - 1
    p = _Params(np.zeros(M), np.zeros(I), np.zeros(J), initial_tau(d.x, K1 + 1))
    free = _free_small(M, J, K1)
    ll, mom = loglik_and_moments(p.eta(d), p.tau, d.x)
    converged, it, max_grad = False, 0, np.inf
    for it in range(1, max_iter + 1):
        g_small, g_delta = gradient(d, mom, M, I, J)
        max_grad = float(max(np.abs(g_small).max(), np.abs(g_delta).max()))
        if max_grad < tol:
            converged = True
            break
        D, C, B = information(d, mom, M, I, J)
        step_small, step_delta = newton_step(D, C, B, g_small, g_delta, free)
        t = min(1.0, MAX_STEP / max(np.abs(step_small).max(), np.abs(step_delta).max()))
        while True:
            trial = p.moved(step_small, step_delta, t)
            # the moments at the trial point come with its log-likelihood, for the next step
            ll_trial, mom_trial = loglik_and_moments(trial.eta(d), trial.tau, d.x)
            # the log-likelihood is concave: Newton with halving never needs more than a few
            if ll_trial >= ll - 1e-10 * abs(ll) or t < 1e-6:
                break
            t /= 2
        p, ll, mom = trial, ll_trial, mom_trial
        log.debug("jml iter %d loglik %.6f max|grad| %.2e step %.3g", it, ll, max_grad, t)
    D, C, B = information(d, mom, M, I, J)
    theta_cov, rho_se, tau_se, delta_se = covariance(D, C, B, free, M, J, K1)
    warnings = [] if converged else [
        f"JML did not converge in {max_iter} iterations (max |gradient| {max_grad:.2e}); "
        "an element may be nearly extreme"
    ]
    return Estimates(
        "jml", p.theta, theta_cov, p.delta, delta_se, p.rho, rho_se, p.tau, tau_se,
        float(p.delta.std(ddof=1)) if I > 1 else 0.0, None, ll, it, max_grad, converged, warnings,
    )
