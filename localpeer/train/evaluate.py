"""Held-out evaluation per dimension: DPO loss, reward margin and accuracy, selection accuracy.

    from localpeer.train.evaluate import evaluate
"""

from __future__ import annotations

import torch

from localpeer.train import lagdpo
from localpeer.train.backends import Policy
from localpeer.train.logps import TokenizedPair, collate, sequence_logps


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
    losses, margins, dim_idx, selected = [], [], [], []
    policy.model.eval()
    with torch.no_grad():
        for start in range(0, len(pairs), recipe.train.batch_size):
            chunk = pairs[start:start + recipe.train.batch_size]
            pc, pr = sequence_logps(policy.model, collate(chunk, pad_id, policy.share_prompt))
            r = ref[start:start + len(chunk)].to(pc.device)
            h = lagdpo.dpo_margins(pc, pr, r[:, 0], r[:, 1], recipe.dpo.beta)
            losses.append(lagdpo.LOSSES[recipe.dpo.loss](h, recipe.dpo.beta).cpu())
            margins.append(h.cpu())
            dim_idx.append(torch.tensor([p.dim for p in chunk]))
            n_c = torch.tensor([len(p.chosen) for p in chunk], dtype=torch.float32)
            n_r = torch.tensor([len(p.rejected) for p in chunk], dtype=torch.float32)
            selected.append((pc.cpu() / n_c > pr.cpu() / n_r).float())
    policy.model.train()
    if not losses:
        return {}
    dim_all = torch.cat(dim_idx)
    stats = lagdpo.pair_stats(torch.cat(losses), torch.cat(margins), dim_all, len(dims))
    chosen_right, counts = lagdpo.per_dimension_sums(torch.cat(selected), dim_all, len(dims))
    h_all = torch.cat(margins).double()
    margin_sd = [float(h_all[dim_all == k].std()) if int(stats.pairs[k]) > 1 else 0.0
                 for k in range(len(dims))]
    return {d: {"loss": float(stats.loss[k]), "margin": float(stats.margin[k]),
                "margin_sd": margin_sd[k], "accuracy": float(stats.accuracy[k]),
                "selection_accuracy": float(chosen_right[k] / counts[k]),
                "pairs": int(stats.pairs[k])}
            for k, d in enumerate(dims) if stats.pairs[k] > 0}
