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


def collate(pairs: list[TokenizedPair], pad_id: int) -> dict[str, torch.Tensor]:
    """2B right-padded sequences, chosen first then rejected, with a response-token mask."""
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
    input_ids = batch["input_ids"].to(device)
    logits = model(input_ids=input_ids,
                   attention_mask=batch["attention_mask"].to(device)).logits[:, :-1]
    mask = batch["response_mask"].to(device)[:, 1:]
    seq = (token_logps(logits, input_ids[:, 1:]) * mask).sum(dim=-1)
    half = seq.shape[0] // 2
    return seq[:half], seq[half:]


def response_tokens(batch: dict[str, torch.Tensor]) -> int:
    return int(batch["response_mask"].sum())


def batch_tokens(batch: dict[str, torch.Tensor]) -> int:
    return int(batch["attention_mask"].sum())
