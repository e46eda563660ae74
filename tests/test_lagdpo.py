"""Lag-DPO loss math with worked values (the arithmetic is in each docstring of lagdpo.py)."""

import math

import pytest
import torch

from localpeer.config import LagrangianConfig
from localpeer.train import lagdpo


def test_margins_and_losses_worked_example():
    pc, pr = torch.tensor([-1.0, -2.0, -3.0]), torch.tensor([-2.0, -2.0, -1.0])
    ref = torch.full((3,), -2.0)
    h = lagdpo.dpo_margins(pc, pr, ref, ref, beta=0.1)
    torch.testing.assert_close(h, torch.tensor([0.1, 0.0, -0.2]))
    torch.testing.assert_close(lagdpo.sigmoid_loss(h, 0.1),
                               torch.tensor([0.64440, 0.69315, 0.79814]), atol=1e-5, rtol=0)
    torch.testing.assert_close(lagdpo.ipo_loss(h, 0.1), torch.tensor([16.0, 25.0, 49.0]))


@pytest.mark.parametrize("form", ["leader", "pairwise"])
def test_lambda_zero_gives_the_mean_of_per_dimension_losses(form):
    """losses [1, 2, 4] on dims [0, 1, 0]: L = [2.5, 2]; with lambda = 0, w = [0.5, 0.5] and
    the step loss is 0.5 * 2.5 + 0.5 * 2 = 2.25, the mean of the per-dimension losses."""
    losses, dims = torch.tensor([1.0, 2.0, 4.0]), torch.tensor([0, 1, 0])
    cfg = LagrangianConfig(form=form)
    w = lagdpo.FORMS[form].weights(lagdpo.DualState.initial(2, form).lambdas, cfg)
    counts = torch.bincount(dims, minlength=2)
    assert float(lagdpo.weighted_loss(losses, dims, counts, w)) == pytest.approx(2.25)


def test_micro_batches_add_up_to_the_step_loss():
    losses, dims = torch.tensor([1.0, 2.0, 4.0, 3.0]), torch.tensor([0, 1, 0, 1])
    w = torch.tensor([0.25, 0.75])
    counts = torch.bincount(dims, minlength=2)
    whole = lagdpo.weighted_loss(losses, dims, counts, w)
    parts = sum(lagdpo.weighted_loss(losses[s], dims[s], counts, w)
                for s in (slice(0, 1), slice(1, 4)))
    # 0.25 * (1 + 4) / 2 + 0.75 * (2 + 3) / 2 = 0.625 + 1.875 = 2.5
    assert float(whole) == pytest.approx(2.5) and float(parts) == pytest.approx(2.5)


@pytest.mark.parametrize("form", ["leader", "pairwise"])
def test_one_dimension_is_plain_dpo(form):
    pc, pr = torch.tensor([-1.0, -3.0, -2.5]), torch.tensor([-2.0, -2.0, -2.0])
    rc, rr = torch.tensor([-1.5, -2.5, -2.0]), torch.tensor([-1.8, -2.2, -2.1])
    h = lagdpo.dpo_margins(pc, pr, rc, rr, 0.1)
    dpo = -torch.nn.functional.logsigmoid(h).mean()
    cfg = LagrangianConfig(form=form)
    state = lagdpo.DualState.initial(1, form)
    w = lagdpo.FORMS[form].weights(state.lambdas, cfg)
    dims = torch.zeros(3, dtype=torch.long)
    lag = lagdpo.weighted_loss(lagdpo.sigmoid_loss(h, 0.1), dims, torch.tensor([3]), w)
    assert float(lag) == pytest.approx(float(dpo))
    for _ in range(5):  # one dimension is always the best: nothing ever binds
        state = lagdpo.FORMS[form].dual_step(state, torch.tensor([0.9]), torch.tensor([True]),
                                             cfg, math.log(2))
    assert float(state.lambdas.sum()) == 0.0


def test_leader_weights_equal_the_gradient_of_the_lagrangian_with_best_detached():
    """w_k = 1/K + lambda_k is d(Lagrangian)/dL_k when L* is a constant: taking L* as
    min(L).detach() inside the autograd graph gives exactly these weights."""
    lambdas = torch.tensor([0.0, 0.3, 0.0, 1.2])
    dim_losses = torch.tensor([0.1, 0.7, 0.4, 0.9], requires_grad=True)
    best = float(dim_losses.detach().min())
    lagdpo.leader_value(dim_losses, lambdas, best, 0.5, math.log(2)).backward()
    w = lagdpo.leader_weights(lambdas)
    torch.testing.assert_close(w, dim_losses.grad)
    torch.testing.assert_close(w, torch.tensor([0.25, 0.55, 0.25, 1.45]))  # by hand
    assert float(w.min()) >= 0.25  # never below 1/K: no dimension is pushed backwards
    # had L* kept its gradient, the leader's weight would drop by sum(lambda): the first
    # version's failure (the leader regressed); detaching is what keeps it at 1/K
    again = dim_losses.detach().clone().requires_grad_(True)
    live = again.mean() + (lambdas * (again - again.min() - 0.5 * math.log(2))).sum()
    live.backward()
    assert float(again.grad[0]) == pytest.approx(0.25 - 1.5)


def test_pairwise_weights_equal_the_gradient_of_the_lagrangian():
    lambdas = torch.tensor([[0.0, 0.3, 0.0], [0.1, 0.0, 0.2], [0.0, 0.5, 0.0]])
    dim_losses = torch.tensor([0.7, 0.2, 0.9], requires_grad=True)
    lagdpo.pairwise_value(dim_losses, lambdas, tolerance=0.5).backward()
    w = lagdpo.pairwise_weights(lambdas, clip=False)
    torch.testing.assert_close(w, dim_losses.grad)
    # by hand: w_0 = 1/3 + 0.3 - 0.1, w_1 = 1/3 + 0.3 - 0.8, w_2 = 1/3 + 0.5 - 0.2
    torch.testing.assert_close(w, torch.tensor([1 / 3 + 0.2, 1 / 3 - 0.5, 1 / 3 + 0.3]))
    assert float(lagdpo.pairwise_weights(lambdas, clip=True)[1]) == 0.0


def test_leader_dual_step_worked_example_and_projection():
    """sigmoid, EMA [0.05, 0.60, 0.30], eps 0.5, eta 0.05: L* = 0.05, bound 0.05 + 0.3466;
    lambda_1 += 0.05 * (0.60 - 0.3966) / 0.6931 = 0.014674; the others stay 0."""
    cfg = LagrangianConfig(tolerance=0.5, dual_lr=0.05, lambda_max=10.0, ema=0.9)
    ema = torch.tensor([0.05, 0.60, 0.30])
    state = lagdpo.DualState(torch.zeros(3), ema, torch.ones(3, dtype=torch.bool))
    new = lagdpo.leader_dual_step(state, ema, torch.ones(3, dtype=torch.bool), cfg, math.log(2))
    torch.testing.assert_close(new.lambdas, torch.tensor([0.0, 0.014674, 0.0]), atol=1e-6,
                               rtol=0)
    assert lagdpo.best_loss(new.loss_ema, new.seen) == pytest.approx(0.05)
    # projection: a large violation stops at lambda_max, a negative one at 0
    state = lagdpo.DualState(torch.tensor([9.99, 0.5, 0.0]), torch.tensor([0.0, 0.0, 9.0]),
                             torch.ones(3, dtype=torch.bool))
    new = lagdpo.leader_dual_step(state, state.loss_ema, torch.ones(3, dtype=torch.bool),
                                  LagrangianConfig(dual_lr=100.0), math.log(2))
    assert new.lambdas.tolist() == [0.0, 0.0, 10.0]
    # an absent dimension keeps its lambda and its EMA
    new = lagdpo.leader_dual_step(state, torch.tensor([0.0, 0.0, 0.0]),
                                  torch.tensor([True, True, False]),
                                  LagrangianConfig(dual_lr=100.0), math.log(2))
    assert float(new.lambdas[2]) == 0.0 and float(new.loss_ema[2]) == 9.0


def test_tolerance_is_the_same_fraction_of_the_starting_loss_for_sigmoid_and_ipo():
    """Every pair starts at h = 0, where the loss is L0 (sigmoid ln 2; IPO 1/(4 beta^2)). The
    leader bound eps * L0 and the dual step's division by L0 make the duals depend only on the
    losses as fractions of L0: the same fractions give the same lambdas for both losses."""
    beta = 0.1
    for name, fn in lagdpo.LOSSES.items():
        l0 = lagdpo.ZERO_MARGIN_LOSS[name](beta)
        assert float(fn(torch.zeros(1), beta)) == pytest.approx(l0)
    assert lagdpo.ZERO_MARGIN_LOSS["ipo"](beta) == pytest.approx(25.0)
    fractions = torch.tensor([0.1, 0.9, 0.5])  # of L0
    cfg = LagrangianConfig(tolerance=0.5, dual_lr=0.05)
    got = {}
    for name in ("sigmoid", "ipo"):
        l0 = lagdpo.ZERO_MARGIN_LOSS[name](beta)
        state = lagdpo.DualState.initial(3)
        for _ in range(3):
            state = lagdpo.leader_dual_step(state, fractions * l0,
                                            torch.ones(3, dtype=torch.bool), cfg, l0)
        got[name] = state.lambdas
    torch.testing.assert_close(got["sigmoid"], got["ipo"])
    # 0.9 - 0.1 - 0.5 = 0.3 of L0 over the bound, three steps: 3 * 0.05 * 0.3 = 0.045
    assert float(got["ipo"][1]) == pytest.approx(0.045) and float(got["ipo"][2]) == 0.0


def test_pairwise_dual_step_worked_example_and_projection():
    """EMA [1.2, 0.4], eps 0.5, eta 0.05: lambda[0,1] += 0.05 * 0.3 = 0.015; lambda[1,0] stays 0."""
    cfg = LagrangianConfig(form="pairwise", tolerance=0.5, dual_lr=0.05, lambda_max=10.0,
                           ema=0.9)
    state = lagdpo.DualState(torch.zeros(2, 2), torch.tensor([1.2, 0.4]),
                             torch.tensor([True, True]))
    new = lagdpo.pairwise_dual_step(state, torch.tensor([1.2, 0.4]), torch.tensor([True, True]),
                                    cfg, math.log(2))
    torch.testing.assert_close(new.lambdas, torch.tensor([[0.0, 0.015], [0.0, 0.0]]))
    capped = lagdpo.pairwise_dual_step(
        lagdpo.DualState(torch.tensor([[0.0, 9.99], [0.0, 0.0]]), torch.tensor([5.0, 0.0]),
                         torch.tensor([True, True])),
        torch.tensor([5.0, 0.0]), torch.tensor([True, True]), cfg, math.log(2))
    assert float(capped.lambdas[0, 1]) == 10.0 and float(capped.lambdas.min()) >= 0.0


def test_ema_first_value_and_absent_dimension_keeps_its_ema():
    cfg = LagrangianConfig(ema=0.9)
    s = lagdpo.leader_dual_step(lagdpo.DualState.initial(2), torch.tensor([0.8, 0.0]),
                                torch.tensor([True, False]), cfg, math.log(2))
    torch.testing.assert_close(s.loss_ema, torch.tensor([0.8, 0.0]))
    assert s.seen.tolist() == [True, False] and float(s.lambdas.abs().sum()) == 0.0
    s = lagdpo.leader_dual_step(s, torch.tensor([0.6, 0.4]), torch.tensor([True, True]), cfg,
                                math.log(2))
    # 0.9 * 0.8 + 0.1 * 0.6 = 0.78; dimension 1 first seen: 0.4
    torch.testing.assert_close(s.loss_ema, torch.tensor([0.78, 0.4]))


def test_metrics_names_of_the_duals():
    dims = ("A", "T")
    assert lagdpo.FORMS["leader"].named(torch.tensor([0.0, 0.5]), dims) == {"A": 0.0, "T": 0.5}
    assert lagdpo.FORMS["pairwise"].named(torch.tensor([[0.0, 0.2], [0.0, 0.0]]), dims) == {
        "A>T": pytest.approx(0.2), "T>A": 0.0}
