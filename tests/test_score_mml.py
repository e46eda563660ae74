"""MML against a plain marginal likelihood: a fine fixed grid over each prompt's difficulty.

The plain version integrates delta ~ N(0, sigma^2) with the trapezoid rule on 301 points and
knows nothing of adaptive quadrature, Louis' identity or the Newton solver.
"""

import numpy as np
import pytest
from finite_diff import hessian
from scipy.optimize import minimize
from scipy.sparse import csr_matrix
from scipy.special import logsumexp

from localpeer.score.design import build_design
from localpeer.score.mml import fit_mml
from localpeer.score.simulate import simulate

GRID = np.linspace(-7.0, 7.0, 301)


def plain_marginal_nll(params, d, M, I, J, K):
    theta = params[:M]
    r = params[M:M + J - 1]
    t = params[M + J - 1:M + J + K - 3]
    sigma = np.exp(params[-1])
    rho, tau = np.append(r, -r.sum()), np.append(t, -t.sum())
    delta = sigma * GRID  # (G,)
    eta = (theta[d.m] - rho[d.j])[:, None] - delta[None, :]  # (N, G)
    exps = [np.zeros_like(eta)]
    for k in range(1, K):
        exps.append(exps[-1] + eta - tau[k - 1])
    exps = np.stack(exps, axis=-1)  # (N, G, K)
    logp = np.take_along_axis(exps, d.x[:, None, None], axis=-1)[..., 0] - logsumexp(exps, -1)
    per_item = csr_matrix((np.ones(d.i.size), (d.i, np.arange(d.i.size))), (I, d.i.size)) @ logp
    log_prior = -0.5 * GRID**2 - 0.5 * np.log(2 * np.pi)
    log_w = np.log(np.gradient(GRID))  # trapezoid-like weights on the standard-normal scale
    return -logsumexp(per_item + log_prior + log_w, axis=1).sum()


@pytest.fixture(scope="module")
def fitted():
    sim = simulate(n_models=4, n_items=40, n_judges=3, n_categories=4, missing=0.3, seed=5)
    d = build_design("A", sim.models, sim.items, sim.judges, sim.scores, 1, 4)
    return d, fit_mml(d)


def test_mml_loglik_matches_plain_integral(fitted):
    d, est = fitted
    M, I, J, K = len(d.models.kept), len(d.items.kept), len(d.judges.kept), d.n_categories
    assert est.converged and est.max_gradient < 1e-6
    plain = minimize(plain_marginal_nll,
                     np.concatenate([np.zeros(M + J - 1), np.linspace(-1, 1, K - 2), [0.0]]),
                     args=(d, M, I, J, K), method="BFGS", jac="3-point",
                     options={"gtol": 1e-8, "maxiter": 2000})
    assert -plain.fun == pytest.approx(est.loglik, abs=1e-5)
    theta_plain = plain.x[:M]
    # same model, same data: theta agrees up to the reported centring, which is one constant
    shift = np.mean(est.theta - theta_plain)
    np.testing.assert_allclose(est.theta - shift, theta_plain, atol=1e-4)
    r = plain.x[M:M + J - 1]
    np.testing.assert_allclose(est.rho, np.append(r, -r.sum()), atol=1e-4)
    t = plain.x[M + J - 1:M + J + K - 3]
    np.testing.assert_allclose(est.tau, np.append(t, -t.sum()), atol=1e-4)
    assert est.item_sd == pytest.approx(np.exp(plain.x[-1]), abs=1e-4)
    # the centring is the mean posterior difficulty, so it is small next to the prompt SD
    assert abs(shift) < 0.5 * est.item_sd


def test_mml_standard_errors_match_numerical_hessian(fitted):
    d, est = fitted
    M, I, J, K = len(d.models.kept), len(d.items.kept), len(d.judges.kept), d.n_categories
    p0 = np.concatenate([est.theta, est.rho[:-1], est.tau[:-1], [np.log(est.item_sd)]])
    f = lambda p: plain_marginal_nll(p, d, M, I, J, K)  # noqa: E731
    n = p0.size
    H = hessian(f, p0, h=1e-3)
    cov = np.linalg.inv(H)
    # theta differences do not depend on the centring: compare the SE of theta[0] - theta[-1]
    c = np.zeros(n)
    c[0], c[M - 1] = 1.0, -1.0
    se_plain = np.sqrt(c @ cov @ c)
    se_ours = np.sqrt(est.theta_cov[0, 0] + est.theta_cov[-1, -1] - 2 * est.theta_cov[0, -1])
    assert se_ours == pytest.approx(se_plain, rel=5e-3)
    se_sigma_plain = est.item_sd * np.sqrt(cov[-1, -1])
    assert est.item_sd_se == pytest.approx(se_sigma_plain, rel=5e-3)
    # judges: full SEs through the sum-to-zero map
    A = np.vstack([np.eye(J - 1), -np.ones((1, J - 1))])
    rho_cov = A @ cov[M:M + J - 1, M:M + J - 1] @ A.T
    np.testing.assert_allclose(est.rho_se, np.sqrt(np.diag(rho_cov)), rtol=5e-3)
