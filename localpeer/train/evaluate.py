"""Held-out evaluation per dimension: DPO loss, reward margin and accuracy, selection accuracy.

    from localpeer.train.evaluate import evaluate
"""

from __future__ import annotations

from localpeer.deps import require
from localpeer.train import lagdpo
from localpeer.train.backends import Policy
from localpeer.train.logps import TokenizedPair, collate, sequence_logps

torch = require("torch")


def stratified_subset(pairs: list[TokenizedPair], n_dims: int, limit: int) -> list:
    """At most `limit` pairs, as even across dimensions as the data allows, in file order."""
    by_dim = [[p for p in pairs if p.dim == k] for k in range(n_dims)]
    out, k = [], 0
    while len(out) < min(limit, len(pairs)):
        if by_dim[k % n_dims]:
            out.append(by_dim[k % n_dims].pop(0))
        k += 1
    return out


def evaluate(policy: Policy, pairs: list[TokenizedPair], ref: torch.Tensor, dims, recipe,
             pad_id: int) -> dict:
    """Per dimension on held-out pairs: DPO loss, reward margin, reward accuracy (h > 0), and
    selection accuracy (METHOD.md §4: the golden has the higher length-normalised log-prob),
    which, unlike reward accuracy, is meaningful before training too."""
    out = []
    policy.model.eval()
    with torch.no_grad():
        for start in range(0, len(pairs), recipe.train.batch_size):
            chunk = pairs[start:start + recipe.train.batch_size]
            pc, pr = sequence_logps(policy.model, collate(chunk, pad_id, policy.share_prompt))
            out.append(torch.stack([pc, pr], dim=1).float().cpu())
    policy.model.train()
    return evaluate_logps(pairs, torch.cat(out) if out else torch.zeros(0, 2), ref, dims, recipe)


def adapter_is_identity(model) -> bool:
    """True while every LoRA B matrix is zero (peft's initialisation): the policy then equals
    the reference exactly (the adapter adds x A B = 0), so its held-out log-probs are the
    reference's and the step-0 evaluation needs no forward pass of its own."""
    b = [p for n, p in model.named_parameters() if "lora_B" in n]
    return bool(b) and all(not bool(p.detach().any()) for p in b)


def evaluate_logps(pairs: list[TokenizedPair], policy_logps: torch.Tensor, ref: torch.Tensor,
                   dims, recipe) -> dict:
    """`evaluate` from the (N, 2) policy and reference log-probs of (chosen, rejected)."""
    if not len(pairs):
        return {}
    pc, pr = policy_logps[:, 0], policy_logps[:, 1]
    h = lagdpo.dpo_margins(pc, pr, ref[:, 0].float(), ref[:, 1].float(), recipe.dpo.beta)
    losses = lagdpo.LOSSES[recipe.dpo.loss](h, recipe.dpo.beta)
    dim_all = torch.tensor([p.dim for p in pairs])
    n_c = torch.tensor([len(p.chosen) for p in pairs], dtype=torch.float32)
    n_r = torch.tensor([len(p.rejected) for p in pairs], dtype=torch.float32)
    selected = (pc / n_c > pr / n_r).float()
    stats = lagdpo.pair_stats(losses, h, dim_all, len(dims))
    chosen_right, counts = lagdpo.per_dimension_sums(selected, dim_all, len(dims))
    h_all = h.double()
    margin_sd = [float(h_all[dim_all == k].std()) if int(stats.pairs[k]) > 1 else 0.0
                 for k in range(len(dims))]
    return {d: {"loss": float(stats.loss[k]), "margin": float(stats.margin[k]),
                "margin_sd": margin_sd[k], "accuracy": float(stats.accuracy[k]),
                "selection_accuracy": float(chosen_right[k] / counts[k]),
                "pairs": int(stats.pairs[k]),
                # per pair, in file order: before/after changes get McNemar's paired test
                "selected": [int(x) for x in selected[dim_all == k].tolist()]}
            for k, d in enumerate(dims) if stats.pairs[k] > 0}
