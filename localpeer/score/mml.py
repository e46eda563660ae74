"""Marginal maximum likelihood with prompts as a random effect, the default estimator.

Prompt difficulties are integrated out, delta[i] ~ N(0, sigma^2); theta, rho, tau and sigma are
fixed parameters (METHOD.md §3). JML over-spreads theta when each prompt has few ratings
(the incidental-parameter problem); integrating the prompts removes that bias.

The integral over each prompt uses adaptive Gauss-Hermite quadrature (localpeer's choice of
rule): nodes are placed around each prompt's posterior mode and scaled by its posterior SD,
so a handful of nodes is accurate whether a prompt has 5 ratings or 500. Newton's method on the
marginal log-likelihood uses the exact observed information (Louis' identity) at the current
nodes; nodes are re-placed at every iterate.

    from localpeer.score.mml import fit_mml
    est = fit_mml(design, quad_points=7)

Reported gauge: judges and thresholds sum to zero by parameterisation; prompts are reported by
their posterior means, centred to sum to zero, and theta is moved by the same amount, so that
theta - delta keeps its meaning and JML and MML estimates are on the same footing. The SE of
theta includes the uncertainty of that centre (delta method plus the posterior variance of the
mean prompt). Prompt SEs are posterior SDs.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from scipy.special import logsumexp, softmax

from localpeer.score.design import Design
from localpeer.score.estimates import Estimates
from localpeer.score.jml import fit_jml, small_information
from localpeer.score.rsm import logprob_of, mean_variance, moments

log = logging.getLogger(__name__)


@dataclass
class _Params:
    theta: np.ndarray  # (M,)
    rho: np.ndarray  # (J,) sums to zero
    tau: np.ndarray  # (K-1,) sums to zero
    log_sigma: float

    @property
    def sigma(self) -> float:
        return float(np.exp(self.log_sigma))


@dataclass(frozen=True)
class _Nodes:
    mode: np.ndarray  # (I,) posterior mode of each prompt's difficulty
    scale: np.ndarray  # (I,) posterior SD at the mode (Laplace)

    def delta(self, z: np.ndarray) -> np.ndarray:
        """(I, Q) quadrature abscissae in logits."""
        return self.mode[:, None] + self.scale[:, None] * z[None, :]


def sum_zero_basis(n: int) -> np.ndarray:
    """(n, n-1) map from n-1 free values to n values summing to zero (last = -sum)."""
    return np.vstack([np.eye(n - 1), -np.ones((1, n - 1))]) if n > 1 else np.zeros((1, 0))


def free_map(M: int, J: int, K1: int) -> np.ndarray:
    """(M+J+K1+1, s) full coordinates [theta, rho, tau, log sigma] from free ones."""
    blocks = [np.eye(M), sum_zero_basis(J), sum_zero_basis(K1), np.eye(1)]
    rows, cols = sum(b.shape[0] for b in blocks), sum(b.shape[1] for b in blocks)
    A = np.zeros((rows, cols))
    r = c = 0
    for b in blocks:
        A[r : r + b.shape[0], c : c + b.shape[1]] = b
        r, c = r + b.shape[0], c + b.shape[1]
    return A


def place_nodes(d: Design, p: _Params, start: np.ndarray, I: int) -> _Nodes:
    """Posterior mode and Laplace SD of every prompt's difficulty (vectorised 1-D Newton)."""
    base = p.theta[d.m] - p.rho[d.j]
    prec = 1.0 / p.sigma**2
    mode = start.copy()
    for _ in range(50):
        expected, variance = mean_variance(base - mode[d.i], p.tau)
        grad = -np.bincount(d.i, d.x - expected, I) - mode * prec
        info = np.bincount(d.i, variance, I) + prec
        step = np.clip(grad / info, -2.0, 2.0)
        mode = mode + step
        if np.abs(step).max() < 1e-9:
            break
    info = np.bincount(d.i, mean_variance(base - mode[d.i], p.tau)[1], I) + prec
    return _Nodes(mode, 1.0 / np.sqrt(info))


def default_threads(n_nodes: int) -> int:
    """The CPUs this process may use (OMP_NUM_THREADS when set, as for numpy's BLAS), at most
    one per quadrature node."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    omp = os.environ.get("OMP_NUM_THREADS", "")
    if omp.isdigit() and int(omp) > 0:
        cpus = min(cpus or 1, int(omp))
    return max(1, min(cpus or 1, n_nodes))


def _node_map(node, n_nodes: int, threads: int) -> list:
    """node(q) for every quadrature node, in node order, on up to `threads` threads: numpy
    releases the GIL inside its array loops, so the nodes' passes over the ratings overlap.
    The caller sums the results in node order, so any thread count gives the same numbers."""
    if threads <= 1 or n_nodes <= 1:
        return [node(q) for q in range(n_nodes)]
    with ThreadPoolExecutor(min(threads, n_nodes)) as pool:
        return list(pool.map(node, range(n_nodes)))


def node_logliks(d: Design, p: _Params, nodes: _Nodes, z, log_w, I: int, threads: int = 1):
    """(I, Q) log of the quadrature terms, and the marginal log-likelihood of each prompt."""
    base = p.theta[d.m] - p.rho[d.j]
    deltas = nodes.delta(z)

    def node(q):
        logp = logprob_of(base - np.ascontiguousarray(deltas[:, q])[d.i], p.tau, d.x)
        return np.bincount(d.i, logp, I)

    terms = np.stack(_node_map(node, z.size, threads), axis=1)
    # prior N(0, sigma^2) over the standard-normal weights the rule integrates against
    terms += log_w[None, :] - 0.5 * deltas**2 / p.sigma**2
    item_ll = logsumexp(terms, axis=1) + np.log(nodes.scale) - p.log_sigma
    return terms, item_ll


def node_scores(d: Design, p: _Params, nodes: _Nodes, z, post, M, J, K1, I, threads: int = 1):
    """Per prompt and node, the score of the log integrand (I, Q, S) in full coordinates,
    and the posterior-weighted -Hessian of the integrand summed over prompts (S, S)."""
    S = M + J + K1 + 1
    base = p.theta[d.m] - p.rho[d.j]
    deltas = nodes.delta(z)
    keys = d.item_model, d.item_judge, d.item_at_least, d.model_judge  # made before any thread

    def node(q):
        mom = moments(base - np.ascontiguousarray(deltas[:, q])[d.i], p.tau, keep_probs=False)
        resid = d.x - mom.expected
        block = np.empty((I, S - 1))
        block[:, :M] = np.bincount(keys[0], resid, I * M).reshape(I, M)
        block[:, M : M + J] = -np.bincount(keys[1], resid, I * J).reshape(I, J)
        for h in range(K1):
            block[:, M + J + h] = np.bincount(d.i, mom.tail[h], I) - keys[2][:, h]
        w = np.ascontiguousarray(post[:, q])[d.i]
        return block, small_information(d, mom, M, J, w)

    scores = np.zeros((I, z.size, S))
    info = np.zeros((S, S))
    for q, (block, info_q) in enumerate(_node_map(node, z.size, threads)):
        scores[:, q, : S - 1] = block
        info[: S - 1, : S - 1] += info_q
    ratio = deltas**2 / p.sigma**2
    scores[:, :, S - 1] = ratio - 1.0  # d/d(log sigma) of the prior term at a fixed node
    info[S - 1, S - 1] = float((post * 2.0 * ratio).sum())
    return scores, info


def _evaluate(d, p, nodes, z, log_w, dims, threads):
    M, J, K1, I = dims
    terms, item_ll = node_logliks(d, p, nodes, z, log_w, I, threads)
    return float(item_ll.sum()), softmax(terms, axis=1)


def _grad_hess(d, p, nodes, z, post, dims, A, threads):
    """Gradient and -Hessian of the marginal log-likelihood in free coordinates."""
    M, J, K1, I = dims
    scores, info_within = node_scores(d, p, nodes, z, post, M, J, K1, I, threads)
    mean_score = np.einsum("iq,iqs->is", post, scores)  # (I, S)
    weighted = scores * np.sqrt(post)[:, :, None]
    # Louis: -H = E_post[-d2 log f] - (E_post[s s^T] - E_post[s] E_post[s]^T), summed over prompts
    info_full = info_within - (
        np.einsum("iqa,iqb->ab", weighted, weighted) - mean_score.T @ mean_score
    )
    grad_full = mean_score.sum(axis=0)
    return A.T @ grad_full, A.T @ info_full @ A, scores, mean_score


def _start(d: Design, M, J, K1, I) -> _Params:
    """JML estimates are a good start; sigma starts at their SD shrunk by their mean SE."""
    est = fit_jml(d, tol=1e-3, max_iter=25)
    var = max(est.delta.var() - np.mean(est.delta_se**2), 0.05)
    return _Params(est.theta.copy(), est.rho.copy(), est.tau.copy(), 0.5 * np.log(var))


def _step(p: _Params, A: np.ndarray, step_free: np.ndarray, t: float, M, J) -> _Params:
    full = A @ step_free
    return _Params(
        p.theta + t * full[:M],
        p.rho + t * full[M : M + J],
        p.tau + t * full[M + J : -1],
        p.log_sigma + t * full[-1],
    )


def _solve(info: np.ndarray, grad: np.ndarray) -> np.ndarray:
    """Newton step, damped (Levenberg) while the information is not positive definite."""
    ridge = 0.0
    for _ in range(30):
        try:
            chol = np.linalg.cholesky(info + ridge * np.eye(grad.size))
            return np.linalg.solve(chol.T, np.linalg.solve(chol, grad))
        except np.linalg.LinAlgError:
            ridge = max(2 * ridge, 1e-6 * np.abs(np.diag(info)).max())
    return grad / np.abs(np.diag(info)).max()


def fit_mml(d: Design, quad_points: int = 7, tol: float = 1e-6, max_iter: int = 100,
            threads: int | None = None) -> Estimates:
    """Marginal ML estimates of one dimension (prompts random), Newton to max |gradient| < tol;
    the quadrature nodes run on `threads` threads (default: one per CPU, at most one a node),
    with the same result for any count."""
    threads = default_threads(quad_points) if threads is None else threads
    M, I, J, K1 = len(d.models.kept), len(d.items.kept), len(d.judges.kept), d.n_categories - 1
    dims = (M, J, K1, I)
    z, w = np.polynomial.hermite_e.hermegauss(quad_points)
    log_w = np.log(w / w.sum()) + 0.5 * z**2  # divide out the standard normal density
    A = free_map(M, J, K1)
    p = _start(d, M, J, K1, I)
    nodes = place_nodes(d, p, np.zeros(I), I)
    ll, post = _evaluate(d, p, nodes, z, log_w, dims, threads)
    converged, it, max_grad, at_p = False, 0, np.inf, None
    for it in range(1, max_iter + 1):
        at_p = _grad_hess(d, p, nodes, z, post, dims, A, threads)
        grad, info = at_p[:2]
        max_grad = float(np.abs(grad).max())
        if max_grad < tol:
            converged = True
            break
        step = _solve(info, grad)
        t = min(1.0, 2.0 / max(np.abs(step).max(), 1e-12))
        while True:
            trial = _step(p, A, step, t, M, J)
            trial_nodes = place_nodes(d, trial, nodes.mode, I)
            ll_trial, post_trial = _evaluate(d, trial, trial_nodes, z, log_w, dims, threads)
            if ll_trial >= ll - 1e-10 * abs(ll) or t < 1e-6:
                break
            t /= 2
        p, nodes, ll, post = trial, trial_nodes, ll_trial, post_trial
        log.debug("mml iter %d loglik %.6f max|grad| %.2e sigma %.4f", it, ll, max_grad, p.sigma)
    # converged: the last gradient and information were taken at the returned point
    at_p = at_p if converged else _grad_hess(d, p, nodes, z, post, dims, A, threads)
    return _finish(d, p, nodes, z, post, dims, A, at_p, ll, it, max_grad, converged, max_iter)


def _finish(d, p, nodes, z, post, dims, A, at_p, ll, it, max_grad, converged,
            max_iter) -> Estimates:
    M, J, K1, I = dims
    grad, info, scores, mean_score = at_p
    cov_free = np.linalg.pinv(info)
    cov_full = A @ cov_free @ A.T
    deltas = nodes.delta(z)
    eap = (post * deltas).sum(axis=1)
    post_var = np.maximum((post * deltas**2).sum(axis=1) - eap**2, 0.0)
    centre = eap.mean()
    # d centre / d params: d EAP_i = sum_q delta_iq post_iq (s_iq - mean s_i), nodes held
    grad_eap = np.einsum("iq,iqs->is", post * deltas, scores) - eap[:, None] * mean_score
    grad_centre = A.T @ grad_eap.mean(axis=0)
    a_theta = np.hstack([np.eye(M), np.zeros((M, A.shape[1] - M))]) - grad_centre[None, :]
    theta_cov = a_theta @ cov_free @ a_theta.T + post_var.sum() / I**2
    warnings = []
    if not converged:
        warnings.append(f"MML did not converge in {max_iter} iterations "
                        f"(max |gradient| {max_grad:.2e})")
    return Estimates(
        "mml",
        p.theta - centre,
        theta_cov,
        eap - centre,
        np.sqrt(post_var),
        p.rho.copy(),
        np.sqrt(np.maximum(np.diag(cov_full)[M : M + J], 0.0)),
        p.tau.copy(),
        np.sqrt(np.maximum(np.diag(cov_full)[M + J : M + J + K1], 0.0)),
        p.sigma,
        p.sigma * float(np.sqrt(max(cov_full[-1, -1], 0.0))),
        ll,
        it,
        max_grad,
        converged,
        warnings,
    )
