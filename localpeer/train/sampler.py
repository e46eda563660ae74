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


class RecordSampler:
    """Stratified global batches that keep the pairs of one record together.

    The per-dimension quotas are those of `StratifiedSampler`, so every dimension with pairs is
    in every step. Records come from a seeded permutation, renewed each pass; a record's pairs
    fill the quotas of their dimensions, and pairs whose dimension is already full wait (in
    order) at the front of the next batch. Kept together, the pairs of one record share one
    prompt and one golden in the packed layout (`logps.collate_shared`): a record with m pairs
    costs one prompt and m + 1 responses instead of m prompts and 2m responses.
    """

    MAX_WAITING = 4  # global batches' worth of waiting pairs; older ones wait for the next pass

    def __init__(self, dim_of_pair: list[int], record_of_pair: list[str], n_dims: int,
                 batch: int, seed: int):
        groups: dict[str, list[int]] = {}
        for i, r in enumerate(record_of_pair):
            groups.setdefault(r, []).append(i)
        self.groups = list(groups.values())
        self.record = list(record_of_pair)
        self.dim = list(dim_of_pair)
        self.quota = quotas([self.dim.count(k) for k in range(n_dims)], batch)
        self.batch = batch
        self.rng = np.random.default_rng(seed)
        self.order = list(self.rng.permutation(len(self.groups)))
        self.pos = 0
        self.waiting: list[int] = []

    def _next_group(self) -> list[int]:
        if self.pos >= len(self.order):
            self.order = list(self.rng.permutation(len(self.groups)))
            self.pos = 0
        g = self.groups[self.order[self.pos]]
        self.pos += 1
        return g

    def next_batch(self) -> list[int]:
        """Pair indices of one global batch; pairs of a record are adjacent."""
        need = list(self.quota)
        out, still = [], []
        for i in self.waiting:
            if need[self.dim[i]] > 0:
                out.append(i)
                need[self.dim[i]] -= 1
            else:
                still.append(i)
        queued = set(out) | set(still)  # a record drawn again in a new pass: no pair twice
        for _ in range(2 * len(self.groups) + 1):
            if not any(need):
                break
            for i in self._next_group():
                if i in queued:
                    continue
                queued.add(i)
                if need[self.dim[i]] > 0:
                    out.append(i)
                    need[self.dim[i]] -= 1
                else:
                    still.append(i)
        if any(need):
            raise ValueError(f"a global batch of {self.batch} pairs needs more pairs of some "
                             "dimension than the data has; lower train.batch_size")
        self.waiting = still[-self.MAX_WAITING * self.batch:]
        first = {}
        for i in out:
            first.setdefault(self.record[i], len(first))
        return sorted(out, key=lambda i: first[self.record[i]])  # stable: a record's pairs adjacent

    def state(self) -> dict:
        return {"rng": self.rng.bit_generator.state, "order": [int(x) for x in self.order],
                "pos": self.pos, "waiting": [int(i) for i in self.waiting]}

    def load_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.order = list(state["order"])
        self.pos = state["pos"]
        self.waiting = list(state["waiting"])


def padded_tokens(pairs: list, share_prompt: bool) -> int:
    """Tokens the forward pass computes for these pairs, padding included: what
    `logps.collate` builds. Packed (`share_prompt`): one row per distinct prompt holding the
    prompt once and each distinct response once, rows padded to the longest. Plain: chosen and
    rejected as separate rows, padded to the longest prompt + response."""
    if share_prompt:
        rows: dict[tuple, dict[tuple, int]] = {}
        for p in pairs:
            responses = rows.setdefault(tuple(p.prompt), {})
            responses[tuple(p.chosen)] = len(p.chosen)
            responses[tuple(p.rejected)] = len(p.rejected)
        width = max(len(prompt) + sum(r.values()) for prompt, r in rows.items())
        return len(rows) * width
    width = max(len(p.prompt) + max(len(p.chosen), len(p.rejected)) for p in pairs)
    return 2 * len(pairs) * width


def token_micro_batches(ids: list[int], pairs: list, budget: int,
                        share_prompt: bool) -> list[list[int]]:
    """Split one step's pair indices (`pairs[i]` is pair `ids[i]`'s TokenizedPair, a record's
    pairs adjacent) into micro-batches of at most `budget` padded tokens, in order.

    A record's pairs stay in one micro-batch (they share a prompt and a golden in the packed
    layout); a record too big for the budget is split pair by pair, and a pair bigger than the
    budget runs alone. Example: records of 300, 300 and 500 tokens with a budget of 700 give
    [[r1, r2], [r3]]. The loss of a step does not depend on the split: each pair is weighted
    by the whole step's per-dimension counts (`lagdpo.weighted_loss`).
    """
    units: list[list[int]] = []  # positions into ids, one list per record
    for k, p in enumerate(pairs):
        if units and pairs[units[-1][0]].record_id == p.record_id:
            units[-1].append(k)
        else:
            units.append([k])
    out: list[list[int]] = []
    current: list[int] = []

    def cost(positions: list[int]) -> int:
        return padded_tokens([pairs[k] for k in positions], share_prompt)

    for unit in units:
        pieces = [unit] if cost(unit) <= budget else [[k] for k in unit]
        for piece in pieces:
            if current and cost(current + piece) > budget:
                out.append(current)
                current = []
            current = current + piece
    if current:
        out.append(current)
    return [[ids[k] for k in batch] for batch in out]
