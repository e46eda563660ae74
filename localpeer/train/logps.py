"""Pairs to token ids, and sequence log-probs of chosen and rejected in one forward pass.

The log-probs come from the decoder's last hidden states at the positions that predict a
response token, through the LM head a chunk of positions at a time: the full-vocabulary logits
of a batch (GiBs at a 128k vocabulary) are never materialised.

The prompt is rendered with the model's chat template (generation prompt added); the response
is what the template appends for an assistant turn, end-of-turn token included. An over-long
prompt keeps the template whole and loses the oldest tokens of the user's text (the end of the
message matters most); an over-long response loses its tail (`truncation.py`).

    from localpeer.train.logps import tokenize_pairs, sequence_logps
"""

from __future__ import annotations

from dataclasses import dataclass

from localpeer.data.personaknob import Pair
from localpeer.deps import require
from localpeer.train import segments
from localpeer.train.segments import segment_layout
from localpeer.train.truncation import prompt_ids, response_ids

torch = require("torch")
activation_checkpoint = require("torch.utils.checkpoint")


@dataclass(frozen=True)
class TokenizedPair:
    prompt: list[int]
    chosen: list[int]
    rejected: list[int]
    dim: int  # index into the run's dimensions
    record_id: str


@dataclass
class Truncation:
    """How many prompts and responses were cut to fit (reported, never silent)."""

    prompts: int = 0
    responses: int = 0


def render_turn(tokenizer, prompt: str, response: str) -> tuple[str, str]:
    """(prompt text with generation prompt, response text with its end-of-turn marker)."""
    user = [{"role": "user", "content": prompt}]
    if getattr(tokenizer, "chat_template", None):
        head = tokenizer.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
        full = tokenizer.apply_chat_template(
            user + [{"role": "assistant", "content": response}], tokenize=False)
        if full.startswith(head):
            return head, full[len(head):]
        return head, response + (tokenizer.eos_token or "")
    return f"User: {prompt}\nAssistant: ", response + (tokenizer.eos_token or "")


def tokenize_pairs(tokenizer, pairs: list[Pair], dims: tuple[str, ...], max_length: int,
                   max_prompt_length: int) -> tuple[list[TokenizedPair], Truncation]:
    """Token ids of every pair, cut to the limits; returns the counts of cuts too. Prompts keep
    the chat template whole and lose the oldest tokens of the user's text; responses lose
    their tail (`truncation`)."""
    cut = Truncation()
    out = []
    for p in pairs:
        head, chosen_text = render_turn(tokenizer, p.prompt, p.chosen)
        _, rejected_text = render_turn(tokenizer, p.prompt, p.rejected)
        prompt, prompt_cut = prompt_ids(tokenizer, head, p.prompt, max_prompt_length)
        cut.prompts += prompt_cut
        room = max(max_length - len(prompt), 1)
        responses = []
        for text in (chosen_text, rejected_text):
            ids, response_cut = response_ids(tokenizer, text, room)
            cut.responses += response_cut
            responses.append(ids)
        out.append(TokenizedPair(prompt, responses[0], responses[1], dims.index(p.dim),
                                 p.record_id))
    return out, cut


def collate(pairs: list[TokenizedPair], pad_id: int,
            share_prompt: bool = False) -> dict[str, torch.Tensor]:
    """2B right-padded sequences, chosen first then rejected, with a response-token mask; with
    `share_prompt`, the packed layout of `collate_shared` instead."""
    if share_prompt:
        return collate_shared(pairs, pad_id)
    seqs, masks = [], []
    for side in ("chosen", "rejected"):
        for p in pairs:
            response = getattr(p, side)
            seqs.append(p.prompt + response)
            masks.append([0] * len(p.prompt) + [1] * len(response))
    width = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(seqs), width), dtype=torch.long)
    response_mask = torch.zeros((len(seqs), width), dtype=torch.bool)
    for k, (s, m) in enumerate(zip(seqs, masks)):
        input_ids[k, : len(s)] = torch.tensor(s)
        attention[k, : len(s)] = 1
        response_mask[k, : len(m)] = torch.tensor(m, dtype=torch.bool)
    return {"input_ids": input_ids, "attention_mask": attention, "response_mask": response_mask,
            **response_index(input_ids, response_mask)}


def response_index(input_ids: torch.Tensor, response_mask: torch.Tensor) -> dict:
    """Per response token of `collate`'s 2B rows (on the CPU, so nothing waits on the GPU):
    tok_row, tok_src (the previous position, whose logits predict it), tok_target, tok_seq
    (= its row); n_seq = 2B; chosen_idx, rejected_idx (B,): rows 0..B-1 and B..2B-1."""
    rows, src = response_mask[:, 1:].nonzero(as_tuple=True)
    half = input_ids.shape[0] // 2
    return {"tok_row": rows, "tok_src": src, "tok_target": input_ids[rows, src + 1],
            "tok_seq": rows, "n_seq": torch.tensor(input_ids.shape[0]),
            "chosen_idx": torch.arange(half), "rejected_idx": torch.arange(half, 2 * half)}


def collate_shared(pairs: list[TokenizedPair], pad_id: int) -> dict[str, torch.Tensor]:
    """One row per distinct prompt: the prompt once, then each distinct response of that prompt
    (a golden shared by several pairs of one record appears once), with a block attention mask:
    every response sees the prompt and its own earlier tokens, never another response, and its
    positions continue from the end of the prompt as if it stood alone. The log-probs equal
    those of `collate`'s separate sequences; the prompt is computed once, not twice per pair.

    Keys: input_ids, position_ids, attention_mask (G, T) real tokens; block_mask (G, T, T) bool
    (the pattern as a dense mask, for eager attention); segments: the same pattern as index
    tensors for `segments.segment_attention` (what a model switched by `segments.enable` uses);
    per response token: tok_row, tok_src (the position whose logits predict it: the previous
    token, or the prompt's last token for a response's first), tok_target, tok_seq; and
    chosen_idx / rejected_idx (B,) into the distinct sequences. For the full-logits path:
    logits_keep, the positions some response token is predicted from, and tok_kept, each
    token's index into them."""
    rows: dict[tuple, list] = {}  # prompt -> [prompt ids, {response: seq index}]
    seq_of: list[tuple[int, int]] = []
    n_seq = 0
    for p in pairs:
        entry = rows.setdefault(tuple(p.prompt), [p.prompt, {}])
        pair_seqs = []
        for response in (p.chosen, p.rejected):
            key = tuple(response)
            if key not in entry[1]:
                entry[1][key] = n_seq
                n_seq += 1
            pair_seqs.append(entry[1][key])
        seq_of.append(tuple(pair_seqs))
    width = max(len(prompt) + sum(len(r) for r in resp) for prompt, resp in rows.values())
    G = len(rows)
    input_ids = torch.full((G, width), pad_id, dtype=torch.long)
    position_ids = torch.zeros((G, width), dtype=torch.long)
    attention = torch.zeros((G, width), dtype=torch.long)
    block = torch.zeros((G, width, width), dtype=torch.bool)
    tok_row, tok_src, tok_target, tok_seq = [], [], [], []
    prompt_lens, segments = [], []
    for g, (prompt, responses) in enumerate(rows.values()):
        lp = len(prompt)
        prompt_lens.append(lp)
        input_ids[g, :lp] = torch.tensor(prompt)
        position_ids[g, :lp] = torch.arange(lp)
        block[g, :lp, :lp] = torch.ones(lp, lp, dtype=torch.bool).tril()
        start = lp
        for response, seq in responses.items():
            n = len(response)
            end = start + n
            input_ids[g, start:end] = torch.tensor(response)
            position_ids[g, start:end] = torch.arange(lp, lp + n)
            block[g, start:end, :lp] = True
            block[g, start:end, start:end] = torch.ones(n, n, dtype=torch.bool).tril()
            tok_row += [g] * n
            tok_src += [lp - 1] + list(range(start, end - 1))
            tok_target += list(response)
            tok_seq += [seq] * n
            segments.append((g, start, n))
            start = end
        attention[g, :start] = 1
        block[g, start:, :].zero_()
        idx = torch.arange(start, width)
        block[g, idx, idx] = True  # padding attends to itself: no fully masked row
    as_long = {"dtype": torch.long}
    src = torch.tensor(tok_src, **as_long)
    keep = torch.unique(src)  # sorted; on the CPU here, where it does not sync with the GPU
    return {"input_ids": input_ids, "position_ids": position_ids, "attention_mask": attention,
            "block_mask": block, "tok_row": torch.tensor(tok_row, **as_long), "tok_src": src,
            "logits_keep": keep, "tok_kept": torch.searchsorted(keep, src),
            "tok_target": torch.tensor(tok_target, **as_long),
            "tok_seq": torch.tensor(tok_seq, **as_long),
            "n_seq": torch.tensor(n_seq),
            "chosen_idx": torch.tensor([c for c, _ in seq_of], **as_long),
            "rejected_idx": torch.tensor([r for _, r in seq_of], **as_long),
            "segments": segment_layout(prompt_lens, segments, width)}


# fp32 logits per chunk of positions: 2**25 floats are 128 MiB, so 261 positions at Llama 3's
# 128,256 tokens (Qwen2.5's 151,936: 220; Mistral's 32,768: 1,024). A chunk's transient cost is
# about three times that (the head's output, its fp32 copy, the log-softmax or gradient), 0.37
# GiB at Llama 3's vocabulary, where the full logits of a 2,048-token batch are several GiB; a
# chunk of 261 x 4,096 x 128,256 is still a large matrix product, so smaller chunks cost little
# speed. (2**26 would put the 8B step at 1,024 + 1,024 tokens over 8 GiB reserved.)
LOGITS_PER_CHUNK = 2**25

# causal LMs whose forward is `lm_head(decoder(...).last_hidden_state)` with nothing in between
# (read in transformers 5.x); any other model, or one patched by another library, takes the
# full-logits path
PLAIN_HEAD = frozenset({"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM",
                        "Qwen3ForCausalLM", "Phi3ForCausalLM", "GemmaForCausalLM",
                        "Olmo2ForCausalLM", "SmolLM3ForCausalLM"})
LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def chunk_positions(vocab_size: int) -> int:
    """Positions per chunk of the LM head and log-softmax (see LOGITS_PER_CHUNK)."""
    return max(LOGITS_PER_CHUNK // vocab_size, 1)


def decoder_and_head(model) -> tuple[torch.nn.Module, torch.nn.Module] | None:
    """(decoder, lm_head) of a (peft-wrapped) causal LM whose logits are exactly
    lm_head(decoder output); None when they are not, or not known to be: soft-capped or scaled
    logits, an unlisted architecture, a forward replaced by another library (unsloth)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    kind = type(base)
    if kind.__name__ not in PLAIN_HEAD or not kind.forward.__module__.startswith("transformers."):
        return None
    if any(getattr(base.config, k, None) is not None for k in LOGIT_TRANSFORMS):
        return None
    return base.get_decoder(), base.get_output_embeddings()


def _chunk_logps(head: torch.nn.Module, inputs: torch.Tensor,
                 targets: torch.Tensor) -> torch.Tensor:
    logits = head(inputs)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # 16-bit: fp32
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, -1)


def token_logps(head: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                vocab_size: int) -> torch.Tensor:
    """(N,) log p(target) from (N, D) inputs of `head`: hidden states and the lm_head, or
    logits and an identity. The logits exist for one chunk of positions at a time: with
    gradients, each chunk runs under activation checkpointing, so the backward recomputes its
    logits instead of keeping them."""
    grad = torch.is_grad_enabled() and (
        inputs.requires_grad or any(p.requires_grad for p in head.parameters()))
    step = chunk_positions(vocab_size)
    out = []
    for start in range(0, inputs.shape[0], step):
        args = (head, inputs[start:start + step], targets[start:start + step])
        if grad:
            out.append(activation_checkpoint.checkpoint(_chunk_logps, *args,
                                                        use_reentrant=False))
        else:
            out.append(_chunk_logps(*args))
    return torch.cat(out) if out else inputs.new_zeros(0, dtype=torch.float32)


def sequence_logps(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen (B,), rejected (B,)) log-probs summed over response tokens, one forward pass.

    The decoder runs once; the LM head runs only on the hidden states that predict a response
    token, a chunk of positions at a time (`token_logps`), so the full-vocabulary logits never
    exist for the whole batch. Models whose logits are more than lm_head(hidden)
    (`decoder_and_head` is None) get the full logits from their own forward."""
    device = next(model.parameters()).device
    if "tok_row" not in batch:  # a plain batch built without `collate`
        batch = {**batch, **response_index(batch["input_ids"], batch["response_mask"])}
    index = {k: to_device(batch[k], device)
             for k in ("tok_row", "tok_src", "tok_target", "tok_seq", "chosen_idx",
                       "rejected_idx")}
    inputs = {"input_ids": to_device(batch["input_ids"], device)}
    if "block_mask" in batch:
        inputs["position_ids"] = to_device(batch["position_ids"], device)
        inputs.update(_pattern(model, batch, device))
    else:
        inputs["attention_mask"] = to_device(batch["attention_mask"], device)
    split = decoder_and_head(model)
    if split is None:
        head, rows = torch.nn.Identity(), _full_logits_rows(model, inputs, batch, index, device)
        vocab_size = rows.shape[-1]
    else:
        decoder, head = split
        hidden = decoder(**inputs, use_cache=False).last_hidden_state  # (G, T, H)
        rows = _pick(hidden, index["tok_row"], index["tok_src"])  # (N, H)
        vocab_size = model.config.vocab_size
    lp = token_logps(head, rows, index["tok_target"], vocab_size)  # (N,)
    seq = torch.zeros(int(batch["n_seq"]), dtype=lp.dtype, device=device)
    seq = seq.index_add(0, index["tok_seq"], lp)
    return seq[index["chosen_idx"]], seq[index["rejected_idx"]]


def _full_logits_rows(model, inputs, batch, index, device) -> torch.Tensor:
    """(N, V) logits from the model's own forward at the positions that predict a response
    token; a packed batch asks for the logits of those positions only (`logits_keep`)."""
    if "logits_keep" not in batch:
        return _pick(model(**inputs).logits, index["tok_row"], index["tok_src"])
    logits = model(**inputs, logits_to_keep=to_device(batch["logits_keep"], device)).logits
    return _pick(logits, index["tok_row"], to_device(batch["tok_kept"], device))


def _pick(x: torch.Tensor, row: torch.Tensor, col: torch.Tensor) -> torch.Tensor:
    """x[row, col] for (G, T, D) x: (N, D). As index_select on the flattened rows, whose
    backward is an index_add (no sort, no wait for the GPU)."""
    return x.flatten(0, 1).index_select(0, row * x.shape[1] + col)


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on `device` without waiting for the GPU: a copy from pageable memory
    waits for every queued kernel, a non-blocking one from pinned memory is queued behind
    them."""
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device, non_blocking=True)


def _pattern(model, batch, device) -> dict:
    """The packed attention pattern in the form the model takes: index tensors for a model
    switched to segment attention, else a dense additive (G, 1, T, T) mask."""
    if segments.enabled(model):
        layout = {k: to_device(v, device) if torch.is_tensor(v) else v
                  for k, v in batch["segments"].items()}
        return {segments.LAYOUT_KEY: layout, "attention_mask": None}
    dtype = model.get_input_embeddings().weight.dtype
    if not dtype.is_floating_point:
        dtype = torch.float32
    allowed = to_device(batch["block_mask"], device).unsqueeze(1)  # (G, 1, T, T)
    additive = torch.zeros(allowed.shape, dtype=dtype, device=device)
    additive.masked_fill_(~allowed, torch.finfo(dtype).min)
    return {"attention_mask": additive}


def response_tokens(batch: dict[str, torch.Tensor]) -> int:
    if "tok_seq" in batch:
        return len(batch["tok_seq"])
    return int(batch["response_mask"].sum())


def batch_tokens(batch: dict[str, torch.Tensor]) -> int:
    return int(batch["attention_mask"].sum())
