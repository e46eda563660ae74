"""Tolerant constrained Lagrangian DPO (METHOD.md §2): pure tensor math, no model, no I/O.

For a pair of dimension k with policy and reference sequence log-probs,

    h   = beta * ((pi_c - ref_c) - (pi_r - ref_r))              the DPO margin
    l   = -log sigmoid(h)                                      (sigmoid DPO; IPO optional)
    L_k = mean of l over the pairs of dimension k

localpeer defines the constraint and the primal-dual algorithm (revised 2026-12). With L0 the
loss at zero margin (ln 2 for sigmoid, 1/(4 beta^2) for IPO) and L* = min_j Lhat_j the EMA loss
of the best dimension, held constant (no gradient flows through it):

    minimise (1/K) sum_k L_k   subject to   L_k <= L* + eps * L0   for every k

    primal: the policy minimises sum_k w_k L_k with w_k = 1/K + lambda_k (never below 1/K)
    dual:   lambda_k <- clip(lambda_k + dual_lr * (Lhat_k - L* - eps * L0) / L0, 0, lambda_max)

Lhat is an EMA of the minibatch L_k; a dimension absent from a step keeps its Lhat and lambda.
A lagging dimension is lifted and no dimension is ever down-weighted, so the leader keeps its
own gradient. `form: pairwise` keeps the first version for comparison: lambda[i, j] prices
L_i - L_j <= eps (raw loss units), w_k = 1/K + sum_j lambda[k, j] - sum_j lambda[j, k] clipped
at 0. With dual_lr = 0 either form is multi-objective DPO (the mean of the L_k); with one
dimension it is DPO.

    python -m pytest tests/test_lagdpo.py -q
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from localpeer.config import LagrangianConfig
from localpeer.deps import require

torch = require("torch")
F = require("torch.nn.functional")

__all__ = ["LagrangianConfig", "DualState", "FORMS", "LOSSES", "ZERO_MARGIN_LOSS"]


@dataclass(frozen=True)
class DualState:
    """The duals and the loss EMAs between optimizer steps (checkpointed with the run)."""

    lambdas: torch.Tensor  # leader: (K,) lambda_k; pairwise: (K, K) lambda[i, j], diagonal 0
    loss_ema: torch.Tensor  # (K,) EMA of each dimension's minibatch loss
    seen: torch.Tensor  # (K,) bool: has the EMA been initialised

    @classmethod
    def initial(cls, n_dims: int, form: str = "leader") -> DualState:
        shape = (n_dims,) if form == "leader" else (n_dims, n_dims)
        return cls(torch.zeros(shape), torch.zeros(n_dims), torch.zeros(n_dims, dtype=torch.bool))


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


def sft_loss(policy_chosen_logps: torch.Tensor, chosen_tokens: torch.Tensor) -> torch.Tensor:
    """(B,) the golden's mean token negative log-likelihood: `train.objective: sft`, supervised
    fine-tuning on the goldens, the baseline the paper compares with (no reference, no
    rejects). Example: log-probs [-6, -2] over [3, 4] tokens -> [2.0, 0.5]."""
    return -policy_chosen_logps / chosen_tokens.clamp(min=1).to(policy_chosen_logps.dtype)
# L0, the loss at zero margin (h = 0), which every pair has at the start (policy = reference):
# the unit of the leader form's tolerance, so eps is the same fraction of the starting loss
# whatever the loss. Example: sigmoid ln 2 = 0.6931; IPO at beta = 0.1, 1 / 0.04 = 25.
ZERO_MARGIN_LOSS = {"sigmoid": lambda beta: math.log(2.0),
                    "ipo": lambda beta: 1.0 / (4.0 * beta * beta)}


def per_dimension_sums(values: torch.Tensor, dim_index: torch.Tensor, n_dims: int):
    """(K,) sum of `values` per dimension and (K,) pair counts.

    Example: values [1, 2, 4], dims [0, 1, 0], K = 2 -> sums [5, 2], counts [2, 1].
    """
    sums = torch.zeros(n_dims, dtype=values.dtype, device=values.device)
    sums = sums.index_add(0, dim_index, values)
    counts = torch.bincount(dim_index, minlength=n_dims)
    return sums, counts


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


def track_losses(state: DualState, step_losses: torch.Tensor, present: torch.Tensor,
                 ema: float) -> DualState:
    """The EMAs moved, the duals left where they are (an objective without constraints)."""
    return DualState(state.lambdas, update_ema(state, step_losses.detach(), present, ema),
                     state.seen | present)


def best_loss(loss_ema: torch.Tensor, seen: torch.Tensor) -> float:
    """L* = the smallest EMA loss among the dimensions seen so far (nan before any)."""
    return float(loss_ema[seen].min()) if bool(seen.any()) else float("nan")


# --- the leader form (default) ----------------------------------------------------------------

def leader_weights(lambdas: torch.Tensor) -> torch.Tensor:
    """(K,) w_k = 1/K + lambda_k, the exact gradient weight of L_k in the Lagrangian
    (1/K) sum_k L_k + sum_k lambda_k (L_k - L* - eps L0) with L* a constant.

    Example, K = 4, lambda = [0, 0.2, 0, 1.0] -> w = [0.25, 0.45, 0.25, 1.25].
    """
    return 1.0 / lambdas.shape[0] + lambdas


def leader_value(dim_losses: torch.Tensor, lambdas: torch.Tensor, best: float,
                 tolerance: float, zero_loss: float) -> torch.Tensor:
    """The leader form's Lagrangian, L* (`best`) a constant, for tests."""
    return dim_losses.mean() + (lambdas * (dim_losses - best - tolerance * zero_loss)).sum()


def leader_dual_step(state: DualState, step_losses: torch.Tensor, present: torch.Tensor,
                     cfg: LagrangianConfig, zero_loss: float) -> DualState:
    """After an optimizer step: update the EMAs, then lambda_k moves by dual_lr times the
    normalised violation (Lhat_k - L* - eps L0) / L0, projected to [0, lambda_max]; only the
    dimensions present in the step move.

    Example, sigmoid (L0 = 0.6931), EMA [0.05, 0.60, 0.30], eps 0.5, dual_lr 0.05: L* = 0.05 and
    the bound is 0.05 + 0.3466 = 0.3966; lambda_1 += 0.05 * (0.60 - 0.3966) / 0.6931 = 0.01467;
    lambda_0 and lambda_2 (below the bound) stay at 0.
    """
    loss_ema = update_ema(state, step_losses.detach(), present, cfg.ema)
    seen = state.seen | present
    best = best_loss(loss_ema, seen)
    violation = (loss_ema - best - cfg.tolerance * zero_loss) / zero_loss
    moved = (state.lambdas + cfg.dual_lr * violation).clamp(0.0, cfg.lambda_max)
    return DualState(torch.where(present & seen, moved, state.lambdas), loss_ema, seen)


# --- the pairwise form (the first version, for comparison) ------------------------------------

def pairwise_weights(lambdas: torch.Tensor, clip: bool) -> torch.Tensor:
    """(K,) w_k = 1/K + sum_j lambda[k, j] - sum_j lambda[j, k], the exact gradient weight of
    L_k in the pairwise Lagrangian; clipped at 0 when `clip`.

    Example, K = 2, lambda[1, 0] = 0.3 (L_1 - L_0 <= eps is active):
    w = [0.5 - 0.3, 0.5 + 0.3] = [0.2, 0.8].
    """
    n = lambdas.shape[0]
    w = 1.0 / n + lambdas.sum(dim=1) - lambdas.sum(dim=0)
    return w.clamp(min=0.0) if clip else w


def pairwise_value(dim_losses: torch.Tensor, lambdas: torch.Tensor, tolerance: float):
    """The Lagrangian (1/K) sum_k L_k + sum_{i != j} lambda_ij (L_i - L_j - eps), for tests."""
    gaps = dim_losses[:, None] - dim_losses[None, :] - tolerance
    off = ~torch.eye(len(dim_losses), dtype=torch.bool)
    return dim_losses.mean() + (lambdas * gaps)[off].sum()


def pairwise_dual_step(state: DualState, step_losses: torch.Tensor, present: torch.Tensor,
                       cfg: LagrangianConfig, zero_loss: float) -> DualState:
    """After an optimizer step: update the EMAs, then the projected dual ascent on them, with
    eps in raw loss units (`zero_loss` is unused: the first version had no normalisation).

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


def leader_lambdas(lambdas: torch.Tensor, dims) -> dict[str, float]:
    """metrics.jsonl's "lambdas" for the leader form: {"A": 0.0, "T": 0.03, ...}."""
    return {d: float(lambdas[k]) for k, d in enumerate(dims)}


def pairwise_lambdas(lambdas: torch.Tensor, dims) -> dict[str, float]:
    """metrics.jsonl's "lambdas" for the pairwise form: {"A>T": 0.0, ...}, i != j."""
    return {f"{a}>{b}": float(lambdas[i, j]) for i, a in enumerate(dims)
            for j, b in enumerate(dims) if i != j}


@dataclass(frozen=True)
class Form:
    """One constraint form: primal weights from the duals, the dual step, the duals by name."""

    weights: Callable[[torch.Tensor, LagrangianConfig], torch.Tensor]
    dual_step: Callable[..., DualState]
    named: Callable[[torch.Tensor, tuple], dict[str, float]]


FORMS = {
    "leader": Form(lambda lam, cfg: leader_weights(lam), leader_dual_step, leader_lambdas),
    "pairwise": Form(lambda lam, cfg: pairwise_weights(lam, cfg.clip_weights),
                     pairwise_dual_step, pairwise_lambdas),
}


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
