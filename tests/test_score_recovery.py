"""Simulate, fit, compare: 40 seeded replications of 5 models x 200 prompts x 3 judges.

Five categories. MML must recover theta without spread (slope 1 +- 0.05) with honest 95%
CIs (coverage 0.90-0.98). JML, the Facets estimator, over-spreads theta when each prompt has
few ratings (15 here); the test measures and states that over-spread rather than hiding it.
"""

import numpy as np
import pytest

from localpeer.score.design import build_design
from localpeer.score.jml import fit_jml
from localpeer.score.mml import fit_mml
from localpeer.score.simulate import simulate

REPLICATIONS = 40


@pytest.fixture(scope="module")
def replications():
    rows = {"truth": [], "mml": [], "mml_se": [], "jml": [], "jml_se": []}
    for seed in range(REPLICATIONS):
        sim = simulate(n_models=5, n_items=200, n_judges=3, n_categories=5, seed=seed)
        d = build_design("A", sim.models, sim.items, sim.judges, sim.scores, 1, 5)
        assert d.models.kept == tuple(f"model-{k}" for k in range(5))
        mml, jml = fit_mml(d), fit_jml(d)
        assert mml.converged and jml.converged
        rows["truth"].append(sim.truth.theta)
        rows["mml"].append(mml.theta)
        rows["mml_se"].append(mml.theta_se)
        rows["jml"].append(jml.theta)
        rows["jml_se"].append(jml.theta_se)
    return {k: np.concatenate(v) for k, v in rows.items()}


def slope(truth, estimate):
    return float(np.polyfit(truth, estimate, 1)[0])


def coverage(truth, estimate, se):
    return float(np.mean(np.abs(estimate - truth) <= 1.959964 * se))


@pytest.mark.slow
def test_mml_recovers_theta_with_honest_intervals(replications):
    r = replications
    mml_slope = slope(r["truth"], r["mml"])
    mml_coverage = coverage(r["truth"], r["mml"], r["mml_se"])
    print(f"MML slope {mml_slope:.4f}, 95% CI coverage {mml_coverage:.3f} "
          f"over {r['truth'].size} estimates")
    assert abs(mml_slope - 1.0) <= 0.05
    assert 0.90 <= mml_coverage <= 0.98


@pytest.mark.slow
def test_jml_overspread_is_measured(replications):
    r = replications
    jml_slope = slope(r["truth"], r["jml"])
    spread = jml_slope - 1.0
    print(f"JML slope {jml_slope:.4f}: theta over-spread by {100 * spread:.1f}% at 15 ratings "
          f"per prompt (METHOD.md expects about 7%); coverage "
          f"{coverage(r['truth'], r['jml'], r['jml_se']):.3f}")
    # observed here: about +7%, the incidental-parameter bias METHOD.md describes
    assert 0.03 <= spread <= 0.12
    assert slope(r["truth"], r["mml"]) < jml_slope
