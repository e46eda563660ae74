"""Fit statistics by hand, a planted judge x model bias, and disordered thresholds."""

import numpy as np
import pytest

from localpeer.score.design import build_design
from localpeer.score.jml import fit_jml
from localpeer.score.rsm import moments
from localpeer.score.run import score_arrays
from localpeer.score.simulate import draw_scores, simulate
from localpeer.score.stats import bias_terms, fit_statistics, separation


def test_fit_statistics_worked_example():
    """Three categories, eta = 0, tau = (0, 0): P = 1/3 each, E = 1, V = 2/3, C = E(X-1)^4 = 2/3.

    Ratings x = 0, 2, 2, 1 give squared residuals 1, 1, 1, 0, so
      outfit = mean(r^2 / V) = (3 / (2/3)) / 4 = 1.125,
      infit = sum r^2 / sum V = 3 / (8/3) = 1.125,
      q_out^2 = sum(C / V^2) / n^2 - 1/n = 4 * 1.5 / 16 - 1/4 = 0.125,
      q_in^2 = sum(C - V^2) / (sum V)^2 = 4 * (2/9) / (64/9) = 0.125,
      ZSTD = (1.125^(1/3) - 1) * 3 / q + q / 3 = 0.4576 with q = sqrt(0.125).
    """
    x = np.array([0, 2, 2, 1])
    mom = moments(np.zeros(4), np.zeros(2))
    stats = fit_statistics(np.zeros(4, dtype=int), 1, x, mom)
    q = np.sqrt(0.125)
    zstd = (1.125 ** (1 / 3) - 1) * 3 / q + q / 3
    assert stats.outfit[0] == pytest.approx(1.125)
    assert stats.infit[0] == pytest.approx(1.125)
    assert stats.outfit_z[0] == pytest.approx(zstd) and stats.infit_z[0] == pytest.approx(zstd)
    assert zstd == pytest.approx(0.4576, abs=1e-4)


def test_separation_worked_example():
    """Measures -1, 0, 1 (variance 1) with SE 0.5: true variance 0.75, G = sqrt(3), R = 0.75."""
    s = separation(np.array([-1.0, 0.0, 1.0]), np.full(3, 0.5))
    assert s.separation == pytest.approx(np.sqrt(3))
    assert s.reliability == pytest.approx(0.75)
    assert s.strata == pytest.approx((4 * np.sqrt(3) + 1) / 3)


def test_data_from_the_model_fits():
    sim = simulate(n_models=5, n_items=300, n_judges=4, seed=8)
    r = score_arrays(sim.models, sim.items, sim.judges, np.full(sim.scores.size, "A"),
                     sim.scores, 1, 5, estimator="jml").dimensions["A"]
    outfit = np.array([e.outfit for e in r.items])
    assert 0.9 < outfit.mean() < 1.1
    assert all(0.8 < e.infit < 1.2 for e in r.judges + r.models)


def test_planted_judge_favouritism_is_found():
    sim = simulate(n_models=4, n_items=200, n_judges=3, seed=12)
    t = sim.truth
    m = np.array([int(s.split("-")[1]) for s in sim.models])
    i = np.array([int(s.split("-")[1]) for s in sim.items])
    j = np.array([int(s.split("-")[1]) for s in sim.judges])
    favour = (j == 0) & (m == 2)  # judge-0 adds one logit to model-2: its own family, say
    eta = t.theta[m] - t.delta[i] - t.rho[j] + 1.0 * favour
    scores = draw_scores(eta, t.tau, np.random.default_rng(1)) + 1
    d = build_design("A", sim.models, sim.items, sim.judges, scores, 1, 5)
    terms, notes = bias_terms(d, fit_jml(d))
    assert notes == [] and len(terms) == 12
    by_pair = {(b.judge, b.model): b for b in terms}
    planted = by_pair[("judge-0", "model-2")]
    # the other estimates absorb part of the planted logit, so the estimate is below 1
    assert 0.4 < planted.estimate < 1.2 and planted.z > 4
    others = [b for key, b in by_pair.items() if key != ("judge-0", "model-2")]
    assert max(abs(b.z) for b in others) < planted.z
    # judge-0's other models and model-2's other judges carry the compensation: all negative
    for b in others:
        if b.judge == "judge-0" or b.model == "model-2":
            assert b.estimate < 0


def test_disordered_thresholds_are_warned_about():
    tau = np.array([-1.0, 1.0, 0.5, -0.5])  # steps 3->4 and 4->5 come easier than 2->3
    sim = simulate(n_models=4, n_items=300, n_judges=3, tau=tau, seed=6)
    r = score_arrays(sim.models, sim.items, sim.judges, np.full(sim.scores.size, "A"),
                     sim.scores, 1, 5).dimensions["A"]
    warning = next(w for w in r.warnings if "disordered" in w)
    assert "2->3" in warning and "3->4" in warning and "4->5" in warning
    assert [t.k for t in r.thresholds] == [2, 3, 4, 5]
    np.testing.assert_allclose([t.tau for t in r.thresholds], tau, atol=0.2)
