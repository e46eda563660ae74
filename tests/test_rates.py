"""Rates and paired tests against hand computations and scipy."""

import math

import pytest
from scipy import stats

from localpeer.rates import Paired, Rate, fisher_p, mcnemar_p, z_p


def test_wilson_interval_equals_the_formula_by_hand():
    # 6 of 10: p = .6, z = 1.96: centre (.6 + .19208) / 1.38415 = .57225,
    # half 1.96 sqrt(.024 + .0096040) / 1.38415 = .25955 -> [.3127, .8318]
    r = Rate.of(6, 10)
    assert (round(r.low, 4), round(r.high, 4)) == (0.3127, 0.8318)
    assert Rate.of(0, 4).low == 0.0 and Rate.of(4, 4).high == 1.0
    assert math.isnan(Rate.of(0, 0).value)


def test_mcnemar_exact_equals_hand_counts_and_scipy():
    assert mcnemar_p(1, 6) == pytest.approx(2 * (1 + 7) / 2**7)  # 0.125
    assert mcnemar_p(0, 8) == pytest.approx(2 / 2**8)
    assert mcnemar_p(0, 0) == 1.0 and mcnemar_p(3, 3) == 1.0
    for b in range(0, 12):
        for c in range(0, 12):
            if b + c:
                assert mcnemar_p(b, c) == pytest.approx(stats.binomtest(c, b + c).pvalue)
    test = Paired.of([(True, False)] + [(False, True)] * 6 + [(True, True)] * 3)
    assert (test.n, test.b, test.c) == (10, 1, 6) and test.p == pytest.approx(0.125)


def test_fisher_and_z_p():
    # the example: sycophancy 8/9 vs 6/9 flips
    assert fisher_p(8, 9, 6, 9) == pytest.approx(0.5765, abs=1e-4)
    assert z_p(1.959964) == pytest.approx(0.05, abs=1e-6) and z_p(0.0) == 1.0
