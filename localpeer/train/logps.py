"""Pairs to token ids, and sequence log-probs of chosen and rejected in one forward pass.

The prompt is rendered with the model's chat template (generation prompt added); the response
is what the template appends for an assistant turn, end-of-turn token included. Prompts are
cut from the left (the end of the user's message matters most), responses from the right.

    from localpeer.train.logps import tokenize_pairs, sequence_logps
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.utils.checkpoint

from localpeer.data.personaknob import Pair
from localpeer.train import segments
from localpeer.train.segments import segment_layout


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


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def tokenize_pairs(tokenizer, pairs: list[Pair], dims: tuple[str, ...], max_length: int,
                   max_prompt_length: int) -> tuple[list[TokenizedPair], Truncation]:
    """Token ids of every pair, cut to the limits; returns the counts of cuts too."""
    cut = Truncation()
    out = []
    for p in pairs:
        head, chosen_text = render_turn(tokenizer, p.prompt, p.chosen)
        _, rejected_text = render_turn(tokenizer, p.prompt, p.rejected)
        prompt = _ids(tokenizer, head)
        if len(prompt) > max_prompt_length:
            prompt = prompt[-max_prompt_length:]
            cut.prompts += 1
        room = max(max_length - len(prompt), 1)
        responses = []
        for text in (chosen_text, rejected_text):
            ids = _ids(tokenizer, text)
            if len(ids) > room:
                ids = ids[:room]
                cut.responses += 1
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
    return {"input_ids": input_ids, "attention_mask": attention, "response_mask": response_mask}


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
    chosen_idx / rejected_idx (B,) into the distinct sequences."""
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
    return {"input_ids": input_ids, "position_ids": position_ids, "attention_mask": attention,
            "block_mask": block, "tok_row": torch.tensor(tok_row, **as_long),
            "tok_src": torch.tensor(tok_src, **as_long),
            "tok_target": torch.tensor(tok_target, **as_long),
            "tok_seq": torch.tensor(tok_seq, **as_long),
            "n_seq": torch.tensor(n_seq),
            "chosen_idx": torch.tensor([c for c, _ in seq_of], **as_long),
            "rejected_idx": torch.tensor([r for _, r in seq_of], **as_long),
            "segments": segment_layout(prompt_lens, segments, width)}


LOGP_CHUNK = 256  # positions per chunk of the log-softmax


def _chunk_logps(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = logits.float()
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, -1)


def token_logps(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(N, T) log p(target) from (N, T, V) logits, in position chunks. Each chunk is
    recomputed in the backward pass (activation checkpointing), so the fp32 copy of the
    logits that log-softmax needs exists for one chunk at a time, not for the whole batch:
    at a 128k vocabulary that copy is the largest tensor of a training step."""
    out = []
    for start in range(0, logits.shape[1], LOGP_CHUNK):
        args = (logits[:, start:start + LOGP_CHUNK], targets[:, start:start + LOGP_CHUNK])
        if logits.requires_grad:
            out.append(torch.utils.checkpoint.checkpoint(_chunk_logps, *args,
                                                         use_reentrant=False))
        else:
            out.append(_chunk_logps(*args))
    return torch.cat(out, dim=1)


def sequence_logps(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen (B,), rejected (B,)) log-probs summed over response tokens, one forward pass."""
    device = next(model.parameters()).device
    if "block_mask" in batch:
        return _shared_sequence_logps(model, batch, device)
    input_ids = batch["input_ids"].to(device)
    logits = model(input_ids=input_ids,
                   attention_mask=batch["attention_mask"].to(device)).logits[:, :-1]
    mask = batch["response_mask"].to(device)[:, 1:]
    seq = (token_logps(logits, input_ids[:, 1:]) * mask).sum(dim=-1)
    half = seq.shape[0] // 2
    return seq[:half], seq[half:]


def _pattern(model, batch, device) -> dict:
    """The packed attention pattern in the form the model takes: index tensors for a model
    switched to segment attention, else a dense additive (G, 1, T, T) mask."""
    if segments.enabled(model):
        layout = {k: v.to(device) if torch.is_tensor(v) else v
                  for k, v in batch["segments"].items()}
        return {segments.LAYOUT_KEY: layout, "attention_mask": None}
    dtype = model.get_input_embeddings().weight.dtype
    if not dtype.is_floating_point:
        dtype = torch.float32
    allowed = batch["block_mask"].to(device).unsqueeze(1)  # (G, 1, T, T), heads broadcast
    additive = torch.zeros(allowed.shape, dtype=dtype, device=device)
    additive.masked_fill_(~allowed, torch.finfo(dtype).min)
    return {"attention_mask": additive}


def _shared_sequence_logps(model, batch, device) -> tuple[torch.Tensor, torch.Tensor]:
    src = batch["tok_src"].to(device)
    keep = torch.unique(src)  # sorted: logits only where some response token is predicted
    logits = model(input_ids=batch["input_ids"].to(device),
                   position_ids=batch["position_ids"].to(device), logits_to_keep=keep,
                   **_pattern(model, batch, device)).logits
    picked = logits[batch["tok_row"].to(device), torch.searchsorted(keep, src)]  # (N, V)
    lp = token_logps(picked.unsqueeze(0), batch["tok_target"].to(device).unsqueeze(0))[0]
    seq = torch.zeros(int(batch["n_seq"]), dtype=lp.dtype, device=device)
    seq = seq.index_add(0, batch["tok_seq"].to(device), lp)
    return seq[batch["chosen_idx"].to(device)], seq[batch["rejected_idx"].to(device)]


def response_tokens(batch: dict[str, torch.Tensor]) -> int:
    if "tok_seq" in batch:
        return len(batch["tok_seq"])
    return int(batch["response_mask"].sum())


def batch_tokens(batch: dict[str, torch.Tensor]) -> int:
    return int(batch["attention_mask"].sum())
