"""JML against a deliberately plain implementation of the same likelihood.

The plain version writes the adjacent-category model out term by term, parameterises the
sum-to-zero constraints by dropping the last element, and lets scipy minimise it with
finite-difference gradients. Nothing is shared with localpeer.score except the data.
"""

import numpy as np
import pytest
from finite_diff import hessian
from scipy.optimize import minimize
from scipy.special import logsumexp

from localpeer.score.design import build_design
from localpeer.score.jml import fit_jml
from localpeer.score.simulate import simulate


def unpack(params, M, I, J, K):
    theta = params[:M]
    d = params[M : M + I - 1]
    r = params[M + I - 1 : M + I + J - 2]
    t = params[M + I + J - 2 :]
    return theta, np.append(d, -d.sum()), np.append(r, -r.sum()), np.append(t, -t.sum())


def plain_nll(params, m, i, j, x, M, I, J, K):
    theta, delta, rho, tau = unpack(params, M, I, J, K)
    eta = theta[m] - delta[i] - rho[j]
    # numerator of category k: exp(sum_{h=1..k} (eta - tau_h)); category 0 has exponent 0
    exponents = [np.zeros_like(eta)]
    for k in range(1, K):
        exponents.append(exponents[-1] + eta - tau[k - 1])
    exponents = np.stack(exponents, axis=1)
    return -(exponents[np.arange(x.size), x] - logsumexp(exponents, axis=1)).sum()


@pytest.fixture(scope="module")
def small_fit():
    sim = simulate(n_models=4, n_items=30, n_judges=3, n_categories=4, missing=0.2, seed=11)
    d = build_design("A", sim.models, sim.items, sim.judges, sim.scores, 1, 4)
    M, I, J, K = len(d.models.kept), len(d.items.kept), len(d.judges.kept), d.n_categories
    args = (d.m, d.i, d.j, d.x, M, I, J, K)
    plain = minimize(plain_nll, np.zeros(M + I + J + K - 4), args=args, method="BFGS",
                     jac="3-point", options={"gtol": 1e-9, "maxiter": 5000})
    return d, fit_jml(d), plain, args


def test_jml_matches_plain_minimiser(small_fit):
    d, est, plain, (_, _, _, _, M, I, J, K) = small_fit
    theta, delta, rho, tau = unpack(plain.x, M, I, J, K)
    assert est.converged and est.max_gradient < 1e-6
    assert np.abs(est.theta - theta).max() <= 1e-4
    assert np.abs(est.rho - rho).max() <= 1e-4
    assert np.abs(est.tau - tau).max() <= 1e-4
    assert np.abs(est.delta - delta).max() <= 1e-3
    assert est.loglik == pytest.approx(-plain.fun, abs=1e-6)


def test_jml_standard_errors_match_inverse_of_plain_hessian(small_fit):
    d, est, plain, args = small_fit
    M, I, J, K = args[4:]
    H = hessian(lambda p: plain_nll(p, *args), plain.x, h=1e-4)
    cov_free = np.linalg.inv(H)
    # carry the covariance through the sum-to-zero constraints: full = A free
    n_free = plain.x.size
    A_rows = []
    off = 0
    for size, constrained in ((M, False), (I, True), (J, True), (K - 1, True)):
        free = size - 1 if constrained else size
        block = np.zeros((size, n_free))
        block[:free, off:off + free] = np.eye(free)
        if constrained:
            block[free, off:off + free] = -1.0
        A_rows.append(block)
        off += free
    A = np.vstack(A_rows)
    se = np.sqrt(np.diag(A @ cov_free @ A.T))
    np.testing.assert_allclose(est.theta_se, se[:M], rtol=2e-3)
    np.testing.assert_allclose(est.delta_se, se[M:M + I], rtol=2e-3)
    np.testing.assert_allclose(est.rho_se, se[M + I:M + I + J], rtol=2e-3)
    np.testing.assert_allclose(est.tau_se, se[M + I + J:], rtol=2e-3)
    full_cov = A @ cov_free @ A.T
    np.testing.assert_allclose(est.theta_cov, full_cov[:M, :M], rtol=5e-3, atol=1e-6)
