"""Tolerant constrained Lagrangian DPO (METHOD.md §2): pure tensor math, no model, no I/O.

For a pair of dimension k with policy and reference sequence log-probs,

    h   = beta * ((pi_c - ref_c) - (pi_r - ref_r))              the DPO margin
    l   = -log sigmoid(h)                                      (sigmoid DPO; IPO optional)
    L_k = mean of l over the pairs of dimension k

localpeer defines the primal-dual algorithm: the policy minimises sum_k w_k L_k with the exact
Lagrangian gradient weights

    w_k = 1/K + sum_j lambda[k, j] - sum_j lambda[j, k]        (clipped at 0 by default)

where lambda[i, j] >= 0 prices the constraint L_i - L_j <= tolerance, and after every
optimizer step the duals move on an EMA of the per-dimension losses:

    lambda[i, j] <- clip(lambda[i, j] + dual_lr * (Lhat_i - Lhat_j - tolerance), 0, lambda_max)

With dual_lr = 0 this is multi-objective DPO (the mean of the L_k); with one dimension it is DPO.

    python -m pytest tests/test_lagdpo.py -q
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class LagrangianConfig:
    tolerance: float = 0.5  # epsilon: allowed gap between any two per-dimension losses
    dual_lr: float = 0.05  # eta_lambda: dual ascent step; 0 gives plain multi-objective DPO
    lambda_max: float = 10.0  # upper bound of every lambda (projection)
    ema: float = 0.9  # EMA factor of the per-dimension losses the duals see
    clip_weights: bool = True  # clip each w_k at 0: a leading dimension is held, not reversed


@dataclass(frozen=True)
class DualState:
    """The duals and the loss EMAs between optimizer steps (checkpointed with the run)."""

    lambdas: torch.Tensor  # (K, K) lambda[i, j] for L_i - L_j <= tolerance; diagonal is 0
    loss_ema: torch.Tensor  # (K,) EMA of each dimension's minibatch loss
    seen: torch.Tensor  # (K,) bool: has the EMA been initialised

    @classmethod
    def initial(cls, n_dims: int) -> DualState:
        return cls(torch.zeros(n_dims, n_dims), torch.zeros(n_dims),
                   torch.zeros(n_dims, dtype=torch.bool))


def dpo_margins(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
                beta: float) -> torch.Tensor:
    """(B,) h = beta * ((pi_c - ref_c) - (pi_r - ref_r)); log-probs are (B,) sums over tokens.

    Example: pi_c = [-1, -2, -3], pi_r = [-2, -2, -1], refs all -2, beta = 0.1
    -> h = 0.1 * ([1, 0, -1] - [0, 0, 1]) = [0.1, 0.0, -0.2].
    """
    return beta * ((policy_chosen_logps - ref_chosen_logps)
                   - (policy_rejected_logps - ref_rejected_logps))


def sigmoid_loss(margins: torch.Tensor, beta: float) -> torch.Tensor:
    """(B,) -log sigmoid(h). Example: h = [0.1, 0, -0.2] -> [0.6444, 0.6931, 0.7981]."""
    return -F.logsigmoid(margins)


def ipo_loss(margins: torch.Tensor, beta: float) -> torch.Tensor:
    """(B,) (h / beta - 1 / (2 beta))^2. Example, beta = 0.1: h = [0.1, 0, -0.2] ->
    ([1, 0, -2] - 5)^2 = [16, 25, 49]."""
    return (margins / beta - 1.0 / (2.0 * beta)) ** 2


LOSSES = {"sigmoid": sigmoid_loss, "ipo": ipo_loss}


def per_dimension_sums(values: torch.Tensor, dim_index: torch.Tensor, n_dims: int):
    """(K,) sum of `values` per dimension and (K,) pair counts.

    Example: values [1, 2, 4], dims [0, 1, 0], K = 2 -> sums [5, 2], counts [2, 1].
    """
    sums = torch.zeros(n_dims, dtype=values.dtype, device=values.device)
    sums = sums.index_add(0, dim_index, values)
    counts = torch.bincount(dim_index, minlength=n_dims)
    return sums, counts


def lagrangian_weights(lambdas: torch.Tensor, clip: bool) -> torch.Tensor:
    """(K,) w_k = 1/K + sum_j lambda[k, j] - sum_j lambda[j, k], the exact gradient weight of
    L_k in the Lagrangian; clipped at 0 when `clip`.

    Example, K = 2, lambda[1, 0] = 0.3 (L_1 - L_0 <= eps is active):
    w = [0.5 - 0.3, 0.5 + 0.3] = [0.2, 0.8].
    """
    n = lambdas.shape[0]
    w = 1.0 / n + lambdas.sum(dim=1) - lambdas.sum(dim=0)
    return w.clamp(min=0.0) if clip else w


def lagrangian_value(dim_losses: torch.Tensor, lambdas: torch.Tensor, tolerance: float):
    """The Lagrangian (1/K) sum_k L_k + sum_{i != j} lambda_ij (L_i - L_j - eps), for tests."""
    gaps = dim_losses[:, None] - dim_losses[None, :] - tolerance
    off = ~torch.eye(len(dim_losses), dtype=torch.bool)
    return dim_losses.mean() + (lambdas * gaps)[off].sum()


def weighted_loss(pair_losses: torch.Tensor, dim_index: torch.Tensor, step_counts: torch.Tensor,
                  weights: torch.Tensor) -> torch.Tensor:
    """This micro-batch's share of sum_k w_k L_k: each pair's loss weighted by w_k / N_k, N_k the
    pairs of dimension k in the whole optimizer step, so micro-batch gradients add up exactly.

    Example: losses [1, 2, 4], dims [0, 1, 0], N = [2, 1], w = [0.25, 0.75]
    -> 0.25 * (1 + 4) / 2 + 0.75 * 2 / 1 = 2.125.
    """
    scale = weights / step_counts.clamp(min=1).to(weights.dtype)
    return (pair_losses * scale[dim_index]).sum()


def update_ema(state: DualState, step_losses: torch.Tensor, present: torch.Tensor,
               ema: float) -> torch.Tensor:
    """(K,) new EMA: first sighting takes the value; an absent dimension keeps its EMA."""
    blended = torch.where(state.seen, ema * state.loss_ema + (1 - ema) * step_losses, step_losses)
    return torch.where(present, blended, state.loss_ema)


def dual_step(state: DualState, step_losses: torch.Tensor, present: torch.Tensor,
              cfg: LagrangianConfig) -> DualState:
    """After an optimizer step: update the EMAs, then the projected dual ascent on them.

    Example, K = 2, EMA [1.2, 0.4], tolerance 0.5, dual_lr 0.05: gap L_0 - L_1 - eps = 0.3,
    so lambda[0, 1] += 0.015; lambda[1, 0] would get -0.05 * 1.3 and stays at 0.
    """
    loss_ema = update_ema(state, step_losses.detach(), present, cfg.ema)
    seen = state.seen | present
    gaps = loss_ema[:, None] - loss_ema[None, :] - cfg.tolerance
    both = seen[:, None] & seen[None, :]
    lambdas = state.lambdas + cfg.dual_lr * torch.where(both, gaps, torch.zeros_like(gaps))
    lambdas = lambdas.clamp(0.0, cfg.lambda_max)
    lambdas.fill_diagonal_(0.0)
    return DualState(lambdas, loss_ema, seen)


@dataclass(frozen=True)
class PairStats:
    """Per dimension, over the pairs of one optimizer step (tensors of shape (K,))."""

    loss: torch.Tensor
    margin: torch.Tensor  # mean h
    accuracy: torch.Tensor  # share of pairs with h > 0
    pairs: torch.Tensor


def pair_stats(pair_losses, margins, dim_index, n_dims) -> PairStats:
    loss_sum, counts = per_dimension_sums(pair_losses.detach(), dim_index, n_dims)
    margin_sum, _ = per_dimension_sums(margins.detach(), dim_index, n_dims)
    right, _ = per_dimension_sums((margins.detach() > 0).to(margins.dtype), dim_index, n_dims)
    denom = counts.clamp(min=1).to(loss_sum.dtype)
    return PairStats(loss_sum / denom, margin_sum / denom, right / denom, counts)
