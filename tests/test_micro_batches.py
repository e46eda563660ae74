"""Micro-batches filled by a token budget (train.micro_batch_tokens): the padded count equals
what collate builds, a record's pairs stay together, and the budget holds."""

import random

import pytest

from localpeer.train.logps import TokenizedPair, collate
from localpeer.train.sampler import padded_tokens, token_micro_batches


def random_pairs(seed=0, records=12):
    rng = random.Random(seed)

    def ids(n):
        return [rng.randrange(3, 300) for _ in range(n)]
    out = []
    for r in range(records):
        prompt, golden = ids(rng.randrange(3, 40)), ids(rng.randrange(1, 30))
        for k in range(rng.randrange(1, 5)):
            out.append(TokenizedPair(prompt, golden, ids(rng.randrange(1, 30)), k, f"r{r}"))
    return out


@pytest.mark.parametrize("share", [True, False])
def test_padded_tokens_is_what_collate_builds(share):
    pairs = random_pairs()
    for start in range(0, len(pairs), 5):
        chunk = pairs[start:start + 5]
        assert padded_tokens(chunk, share) == collate(chunk, 0, share)["input_ids"].numel()


def test_docstring_example():
    def record(name, n):  # one pair whose packed row is n tokens: prompt n-2, responses 1 + 1
        return TokenizedPair([1] * (n - 2), [2], [3], 0, name)
    pairs = [record("a", 300), record("b", 300), record("c", 500)]
    assert token_micro_batches([10, 11, 12], pairs, 700, True) == [[10, 11], [12]]


@pytest.mark.parametrize("share", [True, False])
@pytest.mark.parametrize("budget", [64, 200, 800, 100_000])
def test_budget_and_records_hold(share, budget):
    pairs = random_pairs(seed=budget)
    ids = list(range(100, 100 + len(pairs)))
    batches = token_micro_batches(ids, pairs, budget, share)
    assert [i for b in batches for i in b] == ids  # every pair once, in order
    by_id = dict(zip(ids, pairs))
    for b in batches:
        chunk = [by_id[i] for i in b]
        if len(b) > 1:  # one pair may exceed the budget on its own; several never do
            assert padded_tokens(chunk, share) <= budget
    # a record is split only when it alone exceeds the budget
    for r in {p.record_id for p in pairs}:
        holding = {k for k, b in enumerate(batches) for i in b if by_id[i].record_id == r}
        whole = [p for p in pairs if p.record_id == r]
        if padded_tokens(whole, share) <= budget:
            assert len(holding) == 1, r
    if budget == 100_000:
        assert len(batches) == 1
