"""Log-probs from hidden states through the LM head in chunks equal the full-logits ones.

The reference is worked by hand from the model's own forward: full logits, log-softmax, the
target's entry, summed over response tokens. Against it: the plain and packed layouts (dense
block mask and segment attention), gradients of LoRA weights with and without gradient
checkpointing, the adapter switched off, the full-logits fallback for soft-capped logits, and
the LM head never seeing more rows than one chunk.

    pytest -q tests/test_logps_chunked.py
"""

import pytest
import torch
from test_packed import record_pairs
from tiny import make_tiny_model_dir

from localpeer.train import logps, segments
from localpeer.train.logps import collate, sequence_logps

CHUNK = 5  # positions per chunk in these tests: every batch spans several chunks
LAYOUTS = ["plain", "packed-eager", "packed-segments"]
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture
def small_chunks(monkeypatch):
    """LOGITS_PER_CHUNK set so that the tiny vocabulary gives CHUNK positions per chunk."""
    monkeypatch.setattr(logps, "LOGITS_PER_CHUNK", CHUNK * 320)
    assert logps.chunk_positions(320) == CHUNK


def pairs():
    return record_pairs()  # two prompts, a golden shared within a record (tests/test_packed.py)


def load(tiny, layout="plain", lora=False, checkpointing=False, dtype=torch.float32):
    """The tiny Llama as `backends._load_peft` sets it up: eager for the dense block mask, sdpa
    switched to segment attention for the segments; LoRA with random (non-zero) B."""
    import peft
    from transformers import AutoModelForCausalLM

    attn = "eager" if layout == "packed-eager" else "sdpa"
    model = AutoModelForCausalLM.from_pretrained(tiny, dtype=dtype, attn_implementation=attn)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    if lora:
        torch.manual_seed(0)
        model = peft.get_peft_model(model, peft.LoraConfig(
            r=4, lora_alpha=8, target_modules=LORA_TARGETS, init_lora_weights=False))
        model.to(dtype)
    if layout == "packed-segments":
        assert segments.enable(model.get_base_model() if lora else model)
    model.train(checkpointing)
    return model


def reference_logps(model, batch):
    """(chosen, rejected) by hand from the full logits of the model's own forward."""
    if "block_mask" not in batch:
        ids = batch["input_ids"]
        logits = model(input_ids=ids, attention_mask=batch["attention_mask"]).logits[:, :-1]
        token = torch.log_softmax(logits.double(), -1).gather(-1, ids[:, 1:, None])[..., 0]
        seq = (token * batch["response_mask"][:, 1:]).sum(-1)
        half = seq.shape[0] // 2
        return seq[:half], seq[half:]
    logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                   **logps._pattern(model, batch, torch.device("cpu"))).logits
    token = torch.log_softmax(logits.double(), -1)[batch["tok_row"], batch["tok_src"],
                                                    batch["tok_target"]]
    seq = torch.zeros(int(batch["n_seq"]), dtype=token.dtype).index_add(0, batch["tok_seq"],
                                                                         token)
    return seq[batch["chosen_idx"]], seq[batch["rejected_idx"]]


def both(fn, model, batch):
    chosen, rejected = fn(model, batch)
    return torch.cat([chosen, rejected])


def lora_grads(model) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for n, p in model.named_parameters() if "lora_" in n])


def test_chunk_positions_keep_one_chunk_of_fp32_logits_at_128_mib():
    assert logps.chunk_positions(128_256) == 261  # Llama 3: 261 * 128,256 * 4 B = 128 MiB
    assert logps.chunk_positions(32_768) == 1024
    assert logps.chunk_positions(2**30) == 1


# eager attention takes its softmax in fp32 even for a float64 model: packed and separate
# sequences then agree to fp32 rounding only
@pytest.mark.parametrize("dtype,tol,tol_separate", [(torch.float32, 1e-5, 5e-5),
                                                    (torch.float64, 1e-10, 1e-6)])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_chunked_logps_equal_full_logits(tiny, small_chunks, layout, dtype, tol, tol_separate):
    model = load(tiny, layout, dtype=dtype)
    assert logps.decoder_and_head(model) is not None  # the hidden-state path
    batch = collate(pairs(), 0, share_prompt=layout != "plain")
    with torch.no_grad():
        got = both(sequence_logps, model, batch)
        want = both(reference_logps, model, batch)
        separate = both(reference_logps, model, collate(pairs(), 0))
    assert got.dtype == dtype
    assert (got.double() - want).abs().max() <= tol
    assert (got.double() - separate).abs().max() <= tol_separate  # packed = separate
    assert got.abs().min() > 1.0  # real log-probs, not zeros


@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_lora_gradients_equal_full_logits(tiny, small_chunks, layout, checkpointing):
    """Against the full logits of a model without checkpointing (the same seeded LoRA). With
    gradient checkpointing the decoder, called directly, still recomputes its layers in the
    backward pass (the attention of layer 0 runs twice)."""
    batch = collate(pairs(), 0, share_prompt=layout != "plain")
    grads = []
    for fn, ckpt in ((reference_logps, False), (sequence_logps, checkpointing)):
        model = load(tiny, layout, lora=True, checkpointing=ckpt)
        attn_calls = []
        attn = model.get_base_model().model.layers[0].self_attn
        attn.register_forward_hook(lambda *_, calls=attn_calls: calls.append(1))
        chosen, rejected = fn(model, batch)
        (chosen.sum() - 2 * rejected.sum()).backward()
        grads.append(lora_grads(model))
    assert len(attn_calls) == (2 if checkpointing else 1)
    assert grads[0].abs().max() > 1.0
    assert (grads[1] - grads[0]).abs().max() <= 1e-4 * grads[0].abs().max()


@pytest.mark.parametrize("layout", ["plain", "packed-segments"])
def test_adapter_disabled_gives_the_base_model(tiny, small_chunks, layout):
    policy = load(tiny, layout, lora=True)
    base = load(tiny, layout)
    batch = collate(pairs(), 0, share_prompt=layout != "plain")
    with torch.no_grad():
        on = both(sequence_logps, policy, batch)
        with policy.disable_adapter():
            off = both(sequence_logps, policy, batch)
        want = both(reference_logps, base, batch)
    assert (off.double() - want).abs().max() <= 1e-5
    assert (on - off).abs().max() > 1e-2  # the adapter does change the log-probs


def tiny_gemma2(softcap: float):
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    config = Gemma2Config(vocab_size=320, hidden_size=64, intermediate_size=128,
                          num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                          head_dim=16, final_logit_softcapping=softcap, pad_token_id=0,
                          attn_implementation="eager")
    model = Gemma2ForCausalLM(config).float()
    with torch.no_grad():
        model.lm_head.weight.mul_(30)  # logits of a few units, where the cap bends them
    return model


def test_logit_transforms_and_unknown_models_take_the_full_logits_path(tiny):
    from transformers import LlamaForCausalLM

    model = load(tiny)
    assert logps.decoder_and_head(model) is not None
    for key in logps.LOGIT_TRANSFORMS:
        setattr(model.config, key, 30.0)
        assert logps.decoder_and_head(model) is None, key
        setattr(model.config, key, None)
    assert logps.decoder_and_head(tiny_gemma2(30.0)) is None  # not a listed architecture
    # a forward replaced by another library (as unsloth does), under the same class name
    patched = type("LlamaForCausalLM", (LlamaForCausalLM,),
                   {"forward": lambda self, **kw: LlamaForCausalLM.forward(self, **kw)})
    model.__class__ = patched
    assert logps.decoder_and_head(model) is None


def test_soft_capped_logits_are_right_through_the_fallback(small_chunks):
    """Gemma 2 caps its logits after the LM head: the fallback's numbers and gradients are
    those of the full logits, and the cap matters (the LM head alone is far off)."""
    model = tiny_gemma2(softcap=0.5)
    batch = collate(pairs(), 0)
    grads, values = [], []
    for fn in (reference_logps, sequence_logps):
        model.zero_grad()
        out = both(fn, model, batch)
        (out[:4].sum() - 2 * out[4:].sum()).backward()
        values.append(out.detach().double())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert (values[1] - values[0]).abs().max() <= 1e-5
    assert (grads[1] - grads[0]).abs().max() <= 1e-4 * grads[0].abs().max()
    model.config.final_logit_softcapping = None  # the same weights, uncapped
    with torch.no_grad():
        assert (both(reference_logps, model, batch).double() - values[0]).abs().max() > 1.0


@pytest.mark.parametrize("layout", ["plain", "packed-eager"])
def test_lm_head_sees_one_chunk_of_response_positions_at_a_time(tiny, small_chunks, layout):
    """Forward and the backward's recompute: every LM head call gets at most CHUNK rows of
    hidden states (never a (rows, T, H) batch), and the forward's calls cover exactly the
    response tokens."""
    model = load(tiny, layout, lora=True)
    seen = []
    head = model.get_base_model().lm_head
    head.register_forward_hook(lambda mod, args, out: seen.append(tuple(args[0].shape)))
    batch = collate(pairs(), 0, share_prompt=layout != "plain")
    chosen, rejected = sequence_logps(model, batch)
    forward = list(seen)
    (chosen.sum() + rejected.sum()).backward()
    n_tokens = len(batch["tok_target"])
    assert all(len(shape) == 2 and shape[0] <= CHUNK for shape in seen)
    assert sum(shape[0] for shape in forward) == n_tokens and len(forward) >= 3
    assert len(seen) == 2 * len(forward)  # each chunk recomputed once in the backward
