"""Designs that break naive scorers: extremes, disconnection, a random judge, heavy missingness,
an unused category."""

import numpy as np
import pytest

from localpeer.errors import InputError
from localpeer.score.design import build_design
from localpeer.score.run import score_arrays
from localpeer.score.simulate import simulate


def dims(n):
    return np.full(n, "A")


@pytest.mark.parametrize("estimator", ["mml", "jml"])
def test_model_with_every_score_at_max_is_extreme_and_others_unaffected(estimator):
    sim = simulate(n_models=4, n_items=80, n_judges=3, seed=3)
    scores = sim.scores.copy()
    scores[sim.models == "model-3"] = 5
    result = score_arrays(sim.models, sim.items, sim.judges, dims(scores.size), scores, 1, 5,
                          estimator=estimator).dimensions["A"]
    extreme = next(e for e in result.models if e.name == "model-3")
    assert extreme.status == "extreme_max"
    assert extreme.measure is None and extreme.se is None and extreme.fair_average is None
    assert any("model-3 (extreme_max)" in w for w in result.warnings)
    keep = sim.models != "model-3"
    alone = score_arrays(sim.models[keep], sim.items[keep], sim.judges[keep],
                         dims(keep.sum()), scores[keep], 1, 5,
                         estimator=estimator).dimensions["A"]
    ours = {e.name: e.measure for e in result.models if e.estimated}
    theirs = {e.name: e.measure for e in alone.models}
    assert ours.keys() == theirs.keys() == {"model-0", "model-1", "model-2"}
    for name in ours:
        assert ours[name] == pytest.approx(theirs[name], abs=1e-8)


def test_extremes_are_dropped_until_none_is_left():
    # prompt p0 is all 5s; once it goes, model m2 (rated 5 elsewhere only) is extreme too
    models = ["m0", "m1", "m2", "m0", "m1", "m2", "m0", "m1", "m0", "m1"]
    items = ["p0", "p0", "p0", "p1", "p1", "p1", "p2", "p2", "p3", "p3"]
    scores = [5, 5, 5, 2, 4, 5, 3, 1, 4, 2]
    d = build_design("A", np.array(models), np.array(items), np.array(["j"] * 10),
                     np.array(scores), 1, 5)
    assert d.items.status == {"p0": "extreme_max"}
    assert d.models.status == {"m2": "extreme_max"}
    assert set(d.models.kept) == {"m0", "m1"} and d.x.size == 6


def test_disconnected_design_is_refused_with_subsets_named():
    a = simulate(n_models=2, n_items=20, n_judges=1, seed=1)
    b = simulate(n_models=2, n_items=20, n_judges=1, seed=2)
    models = np.concatenate([a.models, np.char.add(b.models, "-other")])
    items = np.concatenate([a.items, np.char.add(b.items, "-other")])
    judges = np.concatenate([a.judges, np.char.add(b.judges, "-other")])
    scores = np.concatenate([a.scores, b.scores])
    with pytest.raises(InputError) as err:
        build_design("E", models, items, judges, scores, 1, 5)
    message = str(err.value)
    assert "not connected" in message and "2 subsets" in message
    assert "subset 1: models (2): model-0, model-1" in message
    assert "subset 2: models (2): model-0-other, model-1-other" in message
    assert "judge-0-other" in message


def test_random_judge_is_flagged_as_misfitting():
    sim = simulate(n_models=4, n_items=150, n_judges=4, seed=7)
    scores = sim.scores.copy()
    noisy = sim.judges == "judge-3"
    scores[noisy] = np.random.default_rng(0).integers(1, 6, noisy.sum())
    r = score_arrays(sim.models, sim.items, sim.judges, dims(scores.size), scores, 1, 5)
    judges = {e.name: e for e in r.dimensions["A"].judges}
    assert judges["judge-3"].infit > 1.5
    assert all(judges[f"judge-{k}"].infit < 1.3 for k in range(3))
    assert any("judge judge-3 misfits" in w for w in r.dimensions["A"].warnings)


@pytest.mark.parametrize("estimator", ["mml", "jml"])
def test_sixty_percent_missing_fits(estimator):
    sim = simulate(n_models=5, n_items=300, n_judges=4, missing=0.6, seed=9)
    assert 0.35 < sim.scores.size / (5 * 300 * 4) < 0.45
    r = score_arrays(sim.models, sim.items, sim.judges, dims(sim.scores.size), sim.scores, 1, 5,
                     estimator=estimator).dimensions["A"]
    assert r.converged and r.max_gradient < 1e-6
    theta = np.array([e.measure for e in r.models])
    se = np.array([e.se for e in r.models])
    truth = sim.truth.theta[[int(e.name.split("-")[1]) for e in r.models]]
    assert np.all(np.abs(theta - truth) < 4 * se)


def test_unused_category_is_collapsed_with_a_clear_message():
    sim = simulate(n_models=4, n_items=100, n_judges=3, n_categories=4, seed=4)
    # codes 1..4 onto the scale 1-5 with 3 never used
    scores = np.array([1, 2, 4, 5])[sim.scores - 1]
    r = score_arrays(sim.models, sim.items, sim.judges, dims(scores.size), scores, 1, 5)
    dim = r.dimensions["A"]
    assert dim.converged
    assert dim.category_counts[3] == 0
    assert [t.k for t in dim.thresholds] == [2, 4, 5]
    assert any("categories [3] were never used" in w for w in dim.warnings)
    # fair averages are on the original scale values, so they can exceed the collapsed codes
    fair = [e.fair_average for e in dim.models]
    assert min(fair) > 1 and max(fair) < 5


def test_unused_top_of_scale_narrows_to_the_categories_in_use():
    sim = simulate(n_models=3, n_items=60, n_judges=2, n_categories=5, seed=2)
    r = score_arrays(sim.models, sim.items, sim.judges, dims(sim.scores.size), sim.scores, 1, 7)
    dim = r.dimensions["A"]
    assert [t.k for t in dim.thresholds] == [2, 3, 4, 5]
    assert any("categories [6, 7] were never used" in w for w in dim.warnings)
