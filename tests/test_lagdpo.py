"""Lag-DPO loss math with worked values (the arithmetic is in each docstring of lagdpo.py)."""

import pytest
import torch

from localpeer.train import lagdpo


def test_margins_and_losses_worked_example():
    pc, pr = torch.tensor([-1.0, -2.0, -3.0]), torch.tensor([-2.0, -2.0, -1.0])
    ref = torch.full((3,), -2.0)
    h = lagdpo.dpo_margins(pc, pr, ref, ref, beta=0.1)
    torch.testing.assert_close(h, torch.tensor([0.1, 0.0, -0.2]))
    torch.testing.assert_close(lagdpo.sigmoid_loss(h, 0.1),
                               torch.tensor([0.64440, 0.69315, 0.79814]), atol=1e-5, rtol=0)
    torch.testing.assert_close(lagdpo.ipo_loss(h, 0.1), torch.tensor([16.0, 25.0, 49.0]))


def test_lambda_zero_gives_the_mean_of_per_dimension_losses():
    """losses [1, 2, 4] on dims [0, 1, 0]: L = [2.5, 2]; with lambda = 0, w = [0.5, 0.5] and
    the step loss is 0.5 * 2.5 + 0.5 * 2 = 2.25, the mean of the per-dimension losses."""
    losses, dims = torch.tensor([1.0, 2.0, 4.0]), torch.tensor([0, 1, 0])
    w = lagdpo.lagrangian_weights(torch.zeros(2, 2), clip=True)
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


def test_one_dimension_is_plain_dpo():
    pc, pr = torch.tensor([-1.0, -3.0, -2.5]), torch.tensor([-2.0, -2.0, -2.0])
    rc, rr = torch.tensor([-1.5, -2.5, -2.0]), torch.tensor([-1.8, -2.2, -2.1])
    h = lagdpo.dpo_margins(pc, pr, rc, rr, 0.1)
    dpo = -torch.nn.functional.logsigmoid(h).mean()
    w = lagdpo.lagrangian_weights(torch.zeros(1, 1), clip=True)
    dims = torch.zeros(3, dtype=torch.long)
    lag = lagdpo.weighted_loss(lagdpo.sigmoid_loss(h, 0.1), dims, torch.tensor([3]), w)
    assert float(lag) == pytest.approx(float(dpo))
    state = lagdpo.dual_step(lagdpo.DualState.initial(1), torch.tensor([0.9]),
                             torch.tensor([True]), lagdpo.LagrangianConfig())
    assert float(state.lambdas.sum()) == 0.0


def test_weights_equal_the_gradient_of_the_lagrangian():
    lambdas = torch.tensor([[0.0, 0.3, 0.0], [0.1, 0.0, 0.2], [0.0, 0.5, 0.0]])
    dim_losses = torch.tensor([0.7, 0.2, 0.9], requires_grad=True)
    lagdpo.lagrangian_value(dim_losses, lambdas, tolerance=0.5).backward()
    w = lagdpo.lagrangian_weights(lambdas, clip=False)
    torch.testing.assert_close(w, dim_losses.grad)
    # by hand: w_0 = 1/3 + 0.3 - 0.1, w_1 = 1/3 + 0.3 - 0.8, w_2 = 1/3 + 0.5 - 0.2
    torch.testing.assert_close(w, torch.tensor([1 / 3 + 0.2, 1 / 3 - 0.5, 1 / 3 + 0.3]))
    assert float(lagdpo.lagrangian_weights(lambdas, clip=True)[1]) == 0.0


def test_dual_step_worked_example_and_projection():
    """EMA [1.2, 0.4], eps 0.5, eta 0.05: lambda[0,1] += 0.05 * 0.3 = 0.015; lambda[1,0] stays 0."""
    cfg = lagdpo.LagrangianConfig(tolerance=0.5, dual_lr=0.05, lambda_max=10.0, ema=0.9)
    state = lagdpo.DualState(torch.zeros(2, 2), torch.tensor([1.2, 0.4]),
                             torch.tensor([True, True]))
    new = lagdpo.dual_step(state, torch.tensor([1.2, 0.4]), torch.tensor([True, True]), cfg)
    torch.testing.assert_close(new.lambdas, torch.tensor([[0.0, 0.015], [0.0, 0.0]]))
    capped = lagdpo.dual_step(
        lagdpo.DualState(torch.tensor([[0.0, 9.99], [0.0, 0.0]]), torch.tensor([5.0, 0.0]),
                         torch.tensor([True, True])),
        torch.tensor([5.0, 0.0]), torch.tensor([True, True]), cfg)
    assert float(capped.lambdas[0, 1]) == 10.0 and float(capped.lambdas.min()) >= 0.0


def test_ema_first_value_and_absent_dimension_keeps_its_ema():
    cfg = lagdpo.LagrangianConfig(ema=0.9)
    s = lagdpo.dual_step(lagdpo.DualState.initial(2), torch.tensor([0.8, 0.0]),
                         torch.tensor([True, False]), cfg)
    torch.testing.assert_close(s.loss_ema, torch.tensor([0.8, 0.0]))
    assert s.seen.tolist() == [True, False] and float(s.lambdas.abs().sum()) == 0.0
    s = lagdpo.dual_step(s, torch.tensor([0.6, 0.4]), torch.tensor([True, True]), cfg)
    # 0.9 * 0.8 + 0.1 * 0.6 = 0.78; dimension 1 first seen: 0.4
    torch.testing.assert_close(s.loss_ema, torch.tensor([0.78, 0.4]))
