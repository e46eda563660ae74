"""The packed shared-prompt layout gives the log-probs of separate sequences; the record
sampler keeps a record's pairs together and still fills every dimension's quota."""

from collections import Counter

import pytest
import torch
from tiny import make_tiny_model_dir

from localpeer.train.logps import TokenizedPair, collate, sequence_logps
from localpeer.train.sampler import RecordSampler, quotas


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "model")


def record_pairs():
    g = torch.Generator().manual_seed(1)

    def ids(n):
        return torch.randint(3, 300, (n,), generator=g).tolist()
    p1, p2, gold = ids(7), ids(4), ids(5)
    return [TokenizedPair(p1, gold, ids(3), 0, "a"), TokenizedPair(p1, gold, ids(6), 1, "a"),
            TokenizedPair(p2, ids(2), ids(9), 2, "b"), TokenizedPair(p1, ids(4), gold, 3, "c")]


def test_packed_layout_shares_prompt_and_golden():
    batch = collate(record_pairs(), 0, share_prompt=True)
    assert batch["input_ids"].shape[0] == 2  # two distinct prompts
    assert int(batch["n_seq"]) == 6  # 8 responses, the golden counted once
    assert batch["chosen_idx"].tolist() == [0, 0, 3, 5]
    assert batch["rejected_idx"].tolist() == [1, 2, 4, 0]
    # tokens: 7 + 5+3+6+4 and 4 + 2+9, against 2 * (7+7+4+7) + 5+3+5+6+2+9+4+5 separately
    assert int(batch["attention_mask"].sum()) == 25 + 15
    # the first token of every response is predicted from the prompt's last position
    first = batch["tok_src"][torch.cat([torch.tensor([True]),
                                        batch["tok_seq"][1:] != batch["tok_seq"][:-1]])]
    assert first.tolist() == [6, 6, 6, 6, 3, 3]
    # a response never sees another response
    mask = batch["block_mask"][0]
    assert not mask[12:15, 7:12].any() and mask[12:15, :7].all()


@pytest.mark.parametrize("impl", ["segments", "segments+checkpointing", "sdpa", "eager"])
def test_packed_logps_and_gradients_equal_separate_sequences(tiny, impl):
    """segments: the packed rows through segment attention (with gradient checkpointing the
    layout must reach the recomputed forward too); sdpa and eager: the dense 4-D block mask.
    Either way, the numbers of separate sequences."""
    from transformers import AutoModelForCausalLM

    from localpeer.train import segments

    attn = "sdpa" if impl.startswith("segments") else impl
    model = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32,
                                                 attn_implementation=attn)
    if impl.startswith("segments"):
        assert segments.enable(model)
    if impl.endswith("checkpointing"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
    assert segments.enabled(model) == impl.startswith("segments")
    pairs = record_pairs()
    grads, logps = [], []
    for share in (False, True):
        model.zero_grad()
        pc, pr = sequence_logps(model, collate(pairs, 0, share_prompt=share))
        (pc.sum() - 2 * pr.sum()).backward()
        logps.append(torch.cat([pc, pr]).detach())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert torch.allclose(logps[0], logps[1], atol=5e-5, rtol=0)
    assert (grads[0] - grads[1]).abs().max() <= 1e-4 * grads[0].abs().max()
    assert logps[0].abs().min() > 1.0  # real log-probs, not zeros


def test_segment_attention_falls_back_to_sdpa_without_a_layout(tiny):
    """A model switched to segment attention is an sdpa model for every other call
    (generation, plain padded batches)."""
    from transformers import AutoModelForCausalLM

    from localpeer.train import segments

    ids = torch.tensor([[5, 9, 14, 3, 7, 0, 0], [4, 8, 15, 16, 23, 42, 11]])
    mask = (ids != 0).long()
    plain = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32,
                                                 attn_implementation="sdpa")
    switched = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32,
                                                    attn_implementation="sdpa")
    assert segments.enable(switched)
    with torch.no_grad():
        a = plain(input_ids=ids, attention_mask=mask).logits
        b = switched(input_ids=ids, attention_mask=mask).logits
        gen = switched.generate(ids[1:], max_new_tokens=4, do_sample=False)
        ref = plain.generate(ids[1:], max_new_tokens=4, do_sample=False)
    assert torch.equal(a[mask.bool()], b[mask.bool()])
    assert torch.equal(gen, ref)


def test_segment_layout_indices():
    from localpeer.train.segments import segment_layout

    # row 0: prompt 3, responses of 2 and 1 at 3 and 5; row 1: prompt 2, response 3 at 2
    lay = segment_layout([3, 2], [(0, 3, 2), (0, 5, 1), (1, 2, 3)], width=6)
    assert lay["q_index"].tolist() == [[3, 4, 4], [5, 5, 5], [8, 9, 10]]
    assert lay["k_index"][2].tolist() == [6, 7, 8, 8, 9, 10]
    # segment 2's last query sees its row's 2 prompt tokens and its own 3, not row 1's pos 2
    assert lay["mask"][2, 0, 2].tolist() == [True, True, False, True, True, True]
    # segment 1 (one token) sees the prompt and itself only
    assert lay["mask"][1, 0, 0].tolist() == [True, True, True, True, False, False]
    assert lay["seg_dest"].tolist() == [3, 4, 5, 8, 9, 10]
    assert lay["prompt_dest"].tolist() == [0, 1, 2, 6, 7]


def test_record_sampler_fills_quotas_and_keeps_records_together():
    # 30 records with 1-4 dimensions each, as in PersonaKnob
    dims, records = [], []
    for r in range(30):
        for k in range(4):
            if (r + k) % 5 != 0 and (k < 1 + r % 4):
                dims.append(k)
                records.append(f"r{r}")
    want = quotas([dims.count(k) for k in range(4)], 8)
    sampler = RecordSampler(dims, records, 4, 8, seed=0)
    seen = Counter()
    adjacent = together = 0
    for _ in range(40):
        batch = sampler.next_batch()
        assert [sum(dims[i] == k for i in batch) for k in range(4)] == want
        assert len(set(batch)) == len(batch)
        seen.update(batch)
        adjacent += sum(records[a] == records[b] for a, b in zip(batch, batch[1:]))
        together += sum(len([i for i in batch if records[i] == r]) - 1
                        for r in {records[i] for i in batch})
    assert together > 0 and adjacent >= together * 0.8  # a record's pairs sit side by side
    assert set(seen) == set(range(len(dims)))  # every pair is drawn
    # the state round-trips: a restored sampler draws the same batches
    state = sampler.state()
    again = RecordSampler(dims, records, 4, 8, seed=123)
    again.load_state(state)
    assert [sampler.next_batch() for _ in range(5)] == [again.next_batch() for _ in range(5)]


def test_lazy_reference_equals_the_full_pass_and_computes_only_what_is_used(tiny, tmp_path,
                                                                            monkeypatch):
    from localpeer.config import load_recipe
    from localpeer.train import reference
    from localpeer.train.backends import load_policy

    monkeypatch.setattr(reference, "CACHE", tmp_path / "cache")
    recipe = load_recipe(None, ["model=x", "lora.rank=4"])
    policy = load_policy(recipe, tiny)
    pairs = record_pairs()
    full = reference.compute_reference(policy, pairs, len(pairs), 0)
    lazy = reference.LazyReference(policy, pairs, recipe, 0)
    calls = []
    real = reference.compute_reference
    monkeypatch.setattr(reference, "compute_reference",
                        lambda pol, ps, bs, pad, **kw: calls.append(len(ps))
                        or real(pol, ps, bs, pad, **kw))
    got = lazy.get([0, 2], [pairs[0], pairs[2]])
    assert torch.allclose(got, full[[0, 2]], atol=1e-5) and lazy.known == 2
    lazy.get([2, 3], [pairs[2], pairs[3]])
    assert calls == [2, 1]  # pair 2 came from the cache
    lazy.save()
    again = reference.LazyReference(policy, pairs, recipe, 0)  # a later run: from disk
    assert again.known == 3 and torch.isnan(again.logps[1]).all()
    assert torch.allclose(again.get([3, 0], [pairs[3], pairs[0]]), full[[3, 0]], atol=1e-5)
    assert calls == [2, 1]
