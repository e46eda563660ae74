"""Stratified global batches: every dimension with pairs has pairs in every optimizer step.

Each dimension gets a quota of the global batch proportional to its share of the pairs, at
least one; within a dimension, pairs come from a fresh seeded permutation every pass. The
cursor (permutations and positions) is plain data, saved in checkpoints, so a resumed run
draws exactly the batches the uninterrupted one would have.
"""

from __future__ import annotations

import numpy as np


def quotas(counts: list[int], batch: int) -> list[int]:
    """Pairs per dimension in a global batch of `batch` (largest remainder, at least 1 each).

    Example: counts [100, 50, 50], batch 8 -> [4, 2, 2].
    """
    present = [k for k, c in enumerate(counts) if c > 0]
    if batch < len(present):
        raise ValueError(f"a global batch of {batch} cannot hold one pair of each of "
                         f"{len(present)} dimensions; raise train.batch_size * train.grad_accum")
    out = [0] * len(counts)
    for k in present:
        out[k] = 1
    spare = batch - len(present)
    total = sum(counts[k] for k in present)
    shares = {k: spare * counts[k] / total for k in present}
    for k in present:
        out[k] += int(shares[k])
    left = batch - sum(out)
    for k in sorted(present, key=lambda k: shares[k] - int(shares[k]), reverse=True)[:left]:
        out[k] += 1
    return out


class StratifiedSampler:
    def __init__(self, dim_of_pair: list[int], n_dims: int, batch: int, seed: int):
        self.by_dim = [[i for i, d in enumerate(dim_of_pair) if d == k] for k in range(n_dims)]
        self.quota = quotas([len(p) for p in self.by_dim], batch)
        self.rng = np.random.default_rng(seed)
        self.order = [list(self.rng.permutation(len(p))) for p in self.by_dim]
        self.pos = [0] * n_dims

    def _take(self, k: int) -> int:
        if self.pos[k] >= len(self.order[k]):
            self.order[k] = list(self.rng.permutation(len(self.by_dim[k])))
            self.pos[k] = 0
        idx = self.by_dim[k][self.order[k][self.pos[k]]]
        self.pos[k] += 1
        return idx

    def next_batch(self) -> list[int]:
        """Pair indices of one global batch, interleaved across dimensions."""
        picks = [[self._take(k) for _ in range(q)] for k, q in enumerate(self.quota)]
        out = []
        for r in range(max(self.quota, default=0)):
            out += [p[r] for p in picks if r < len(p)]
        return out

    def state(self) -> dict:
        return {"rng": self.rng.bit_generator.state,
                "order": [[int(x) for x in o] for o in self.order], "pos": list(self.pos)}

    def load_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.order = [list(o) for o in state["order"]]
        self.pos = list(state["pos"])
