"""The fast paths of `localpeer score` against the plain computations they replace.

Each fast path (blocked moments, one-pass log-likelihood, coding shortcuts, connectivity among
the models, bitmap duplicate check, shared fit-statistic terms) must give what the plain code
gives, on data that spans several blocks and on the awkward cases.

    python -m pytest tests/test_score_fast.py -q
"""

from __future__ import annotations

import numpy as np
import pytest

from localpeer.formats import Labels
from localpeer.score import design as design_mod
from localpeer.score import rsm
from localpeer.score.columns import _has_duplicates
from localpeer.score.design import _codes, build_design, connected_subsets
from localpeer.score.simulate import simulate
from localpeer.score.stats import fit_statistics, rating_fit


def plain_moments(eta, tau):
    """The textbook (K, N) computation, no blocks."""
    K = tau.size + 1
    logits = np.arange(K)[:, None] * eta[None, :] - rsm.cumulative_tau(tau)[:, None]
    probs = np.exp(logits - logits.max(axis=0))
    probs /= probs.sum(axis=0)
    k = np.arange(K)[:, None]
    expected = (k * probs).sum(axis=0)
    variance = (k**2 * probs).sum(axis=0) - expected**2
    tail = np.array([probs[h:].sum(axis=0) for h in range(1, K)])
    cov = np.array([(k[h:] * probs[h:]).sum(axis=0) for h in range(1, K)]) - expected * tail
    return probs, expected, variance, tail, cov, np.log(probs)


@pytest.mark.parametrize("n_categories", [2, 5, 11])
def test_blocked_moments_equal_plain_ones_across_blocks(n_categories):
    rng = np.random.default_rng(n_categories)
    n = 2 * rsm.CHUNK + 123  # three blocks, the last one short
    eta = rng.normal(0, 2.5, n)
    eta[:3] = [-40.0, 0.0, 40.0]  # far tails: the shift keeps exp() finite
    tau = np.sort(rng.normal(0, 1.5, n_categories - 1))
    x = rng.integers(0, n_categories, n)
    probs, expected, variance, tail, cov, logp = plain_moments(eta, tau)

    mom = rsm.moments(eta, tau)
    np.testing.assert_allclose(mom.probs, probs, rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(mom.expected, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(mom.variance, np.maximum(variance, 1e-300), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(mom.tail, tail, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(mom.cov_x_tail, cov, rtol=1e-9, atol=1e-12)

    loglik, fused = rsm.loglik_and_moments(eta, tau, x)
    assert fused.probs is None  # the derivatives do not need them
    per_rating = logp[x, np.arange(n)]
    assert loglik == pytest.approx(per_rating.sum(), rel=1e-12)
    assert loglik == pytest.approx(rsm.logprob_of(eta, tau, x).sum(), rel=1e-12)
    np.testing.assert_allclose(rsm.logprob_of(eta, tau, x), per_rating, rtol=1e-12, atol=1e-12)
    for name in ("expected", "variance", "tail", "cov_x_tail"):
        np.testing.assert_array_equal(getattr(fused, name), getattr(mom, name))

    mean, var = rsm.mean_variance(eta, tau)
    np.testing.assert_allclose(mean, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(var, np.maximum(variance, 1e-300), rtol=1e-9, atol=1e-12)


def reference_codes(values):
    """First-seen order the slow way: a dict."""
    index = {}
    codes = [index.setdefault(v, len(index)) for v in values.tolist()]
    return tuple(str(k) for k in index), np.array(codes, np.int64)


@pytest.mark.parametrize("values", [
    np.array(["b", "a", "b", "c", "a"]),
    np.array(["prompt-10", "prompt-9", "prompt-10", "x" * 40, ""]),
    np.array(["ü", "é", "ü"]),
    np.array([7, 3, 7, 1]),
])
def test_codes_keep_first_seen_order(values):
    names, codes = _codes(values)
    ref_names, ref_codes = reference_codes(values)
    assert names == ref_names
    np.testing.assert_array_equal(codes, ref_codes)


def test_text_codes_fall_back_when_hashes_collide(monkeypatch):
    values = np.array(["ab", "cb", "ab", "zb"])  # same last letter
    monkeypatch.setattr(design_mod, "_HASH_MULTIPLIER", np.uint64(0))  # hash = last letter
    assert design_mod._hashed_unique(values) == (None, None)
    names, codes = _codes(values)
    assert names == ("ab", "cb", "zb")
    np.testing.assert_array_equal(codes, [0, 1, 0, 2])


@pytest.mark.parametrize("codes, names, shortcut", [
    ([0, 0, 1, 0, 2, 1], ("a", "b", "c"), True),  # dense, first-seen: used as is
    ([1, 0, 1], ("a", "b"), False),  # "b" seen first
    ([0, 2, 0], ("a", "b", "c"), False),  # "b" never used (a dimension's subset)
    ([0, 0], ("a", "b"), False),
])
def test_labels_are_recoded_unless_already_first_seen_and_dense(codes, names, shortcut):
    labels = Labels(names, np.array(codes, np.int64))
    got_names, got_codes = _codes(labels)
    ref_names, ref_codes = reference_codes(np.array([names[c] for c in codes]))
    assert got_names == ref_names
    np.testing.assert_array_equal(got_codes, ref_codes)
    assert (got_codes is labels.codes) == shortcut


def reference_components(m, i, j, n_models, n_items, n_judges):
    """Plain union-find over every rating's three nodes."""
    parent = list(range(n_models + n_items + n_judges))

    def find(a):
        while parent[a] != a:
            a = parent[a]
        return a

    for a, b, c in zip(m.tolist(), i.tolist(), j.tolist()):
        for other in (n_models + b, n_models + n_items + c):
            ra, rb = find(a), find(other)
            if ra != rb:
                parent[rb] = ra
    roots = [find(k) for k in range(len(parent))]
    groups = {}
    for node, root in enumerate(roots):
        groups.setdefault(root, []).append(node)
    return sorted(groups.values())


@pytest.mark.parametrize("seed", range(6))
def test_connectivity_among_models_matches_plain_union_find(seed):
    rng = np.random.default_rng(seed)
    n_models, n_items, n_judges = 8, 40, 4
    # blocks of models that share no prompt and no judge, sometimes bridged by one rating
    block = rng.integers(1, 4)
    m = rng.integers(0, n_models, 300)
    i = (m % block) + block * rng.integers(0, n_items // block, 300)
    j = (m % block) % n_judges
    if seed % 2:
        m, i, j = np.r_[m, 0], np.r_[i, 1 if block > 1 else 0], np.r_[j, 0]
    used_i = np.unique(i)
    used_j = np.unique(j)
    i = np.searchsorted(used_i, i)
    j = np.searchsorted(used_j, j)
    m_used = np.unique(m)
    m = np.searchsorted(m_used, m)
    sizes = (m_used.size, used_i.size, used_j.size)
    got = [part.tolist() for part in connected_subsets(m, i, j, *sizes)]
    assert got == reference_components(m, i, j, *sizes)


def test_connectivity_without_the_bitmap():
    """Many models, prompts rated once: the distinct pairs come from np.unique, not a bitmap."""
    n_models = 20
    m = np.arange(100) % n_models
    i = np.arange(100)
    j = m.copy()  # a judge per model: no links but the bridges below
    m, i, j = np.r_[m, 0, 1], np.r_[i, 1, 2], np.r_[j, 1, 2]  # models 0, 1, 2 linked
    assert n_models * 100 > 8 * m.size
    got = [part.tolist() for part in connected_subsets(m, i, j, n_models, 100, n_models)]
    assert got == reference_components(m, i, j, n_models, 100, n_models)
    assert len(got) == n_models - 2


@pytest.mark.parametrize("keys, sizes, duplicate", [
    ([[0, 1, 2], [0, 0, 0]], [3, 1], False),
    ([[0, 1, 0], [1, 0, 1]], [2, 2], True),
    ([[0, 1, 0], [1, 0, 0]], [2, 2], False),
    ([[5, 999_999_999, 5], [0, 1, 0]], [1_000_000_000, 2], True),  # sorted, not counted
    ([[5, 999_999_999, 6], [0, 1, 0]], [1_000_000_000, 2], False),
])
def test_duplicate_check_by_count_and_by_sort(keys, sizes, duplicate):
    assert _has_duplicates([np.array(k, np.int64) for k in keys], sizes) is duplicate


def test_shared_fit_terms_give_the_same_statistics():
    sim = simulate(4, 60, 3, seed=3)
    d = build_design("A", sim.models, sim.items, sim.judges, sim.scores, sim.scale_min,
                     sim.scale_max)
    rng = np.random.default_rng(0)
    mom = rsm.moments(rng.normal(0, 1, d.x.size), np.array([-1.0, -0.2, 0.3, 0.9]))
    parts = rating_fit(d.x, mom)
    for codes, n in ((d.m, len(d.models.kept)), (d.i, len(d.items.kept))):
        shared = fit_statistics(codes, n, d.x, mom, parts)
        alone = fit_statistics(codes, n, d.x, mom)
        for name in ("infit", "outfit", "infit_z", "outfit_z", "n"):
            np.testing.assert_array_equal(getattr(shared, name), getattr(alone, name))


def test_grouping_keys_and_tail_counts():
    sim = simulate(3, 20, 2, seed=1)
    d = build_design("A", sim.models, sim.items, sim.judges, sim.scores, sim.scale_min,
                     sim.scale_max)
    M, J = len(d.models.kept), len(d.judges.kept)
    np.testing.assert_array_equal(d.model_judge, d.m * J + d.j)
    np.testing.assert_array_equal(d.item_model, d.i * M + d.m)
    np.testing.assert_array_equal(d.item_judge, d.i * J + d.j)
    expected = [(d.x >= h).sum() for h in range(1, d.n_categories)]
    np.testing.assert_array_equal(d.at_least, expected)


def test_mml_gives_the_same_numbers_on_any_number_of_threads():
    from localpeer.score.mml import fit_mml

    sim = simulate(5, 80, 3, seed=11)
    d = build_design("A", sim.models, sim.items, sim.judges, sim.scores, sim.scale_min,
                     sim.scale_max)
    serial, threaded = fit_mml(d, threads=1), fit_mml(d, threads=3)
    for name in ("theta", "theta_cov", "delta", "delta_se", "rho", "rho_se", "tau", "tau_se"):
        np.testing.assert_array_equal(getattr(serial, name), getattr(threaded, name))
    assert (serial.loglik, serial.item_sd, serial.iterations) == (
        threaded.loglik, threaded.item_sd, threaded.iterations)


@pytest.mark.parametrize("omp, quad_points, expected", [("1", 7, 1), ("3", 7, 3), ("8", 2, 2)])
def test_default_threads_follow_omp_num_threads_and_the_nodes(monkeypatch, omp, quad_points,
                                                              expected):
    from localpeer.score import mml

    monkeypatch.setenv("OMP_NUM_THREADS", omp)
    monkeypatch.setattr(mml.os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert mml.default_threads(quad_points) == expected
