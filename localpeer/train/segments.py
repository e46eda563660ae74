"""Attention for the packed shared-prompt layout, computed segment by segment.

A packed row (`logps.collate_shared`) is a prompt followed by several responses; each response
sees the prompt and its own earlier tokens, never another response. Handing sdpa that pattern
as a dense (T, T) mask makes it score every query against every key of the row: with a 300-token
prompt and three 200-token responses, 900² scores where 300²/2 + 3 · 200 · (300 + 200) are
needed, and the dense-mask kernel cannot skip the causal half. This attention instead runs

- the prompts: one causal sdpa call over the first P positions of every row (P = the longest
  prompt; a shorter prompt's row continues with response tokens there, whose outputs are
  replaced below, and causality keeps them out of the prompt's outputs);
- the responses: one sdpa call over S segments, each a (R, P + R) block: its queries against
  its row's prompt keys and its own keys (R = the longest response), masked for padding and
  causality inside the segment;

then scatters both outputs back to the packed positions. Queries, keys and values are gathered
with index tensors built once per batch (`segment_layout`), so every layer only gathers, calls
sdpa twice and scatters. Gradients flow through the gathers like through any indexing.

The model is switched once, at load (`enable`), to the attention name registered here; it
falls back to transformers' sdpa for any call without a layout (generation, plain batches), so
the model behaves as an sdpa model everywhere else. The layout travels as a keyword argument of
the model call, which transformers hands to every attention call (and keeps for the recompute
under gradient checkpointing).

    layout = segment_layout([7, 4], [(0, 7, 5), (0, 12, 3), (1, 4, 2)], width=15)
    model(input_ids=..., position_ids=..., **{LAYOUT_KEY: layout})
"""

from __future__ import annotations

from localpeer.deps import require

torch = require("torch")
F = require("torch.nn.functional")

NAME = "localpeer_segments"
LAYOUT_KEY = "localpeer_segments"


def segment_layout(prompt_lens: list[int], segments: list[tuple[int, int, int]],
                   width: int) -> dict:
    """Index tensors for `segment_attention`. prompt_lens: per row; segments: (row, start, n)
    for every response; width: the packed row length T. Flat indices are row * T + position."""
    P, R = max(prompt_lens), max(n for _, _, n in segments)
    rows = torch.tensor([g for g, _, _ in segments])
    starts = torch.tensor([a for _, a, _ in segments])
    lens = torch.tensor([n for _, _, n in segments])
    j = torch.arange(R)
    q_index = rows[:, None] * width + starts[:, None] + torch.minimum(j[None], lens[:, None] - 1)
    k_index = torch.cat([rows[:, None] * width + torch.arange(P)[None], q_index], 1)
    prompt_ok = torch.arange(P)[None] < torch.tensor(prompt_lens)[rows][:, None]  # (S, P)
    own_ok = (j[None, :, None] >= j[None, None, :]) & (j[None, None, :] < lens[:, None, None])
    mask = torch.cat([prompt_ok[:, None, :].expand(-1, R, -1), own_ok], 2).unsqueeze(1)
    seg_src = (j[None] < lens[:, None]).flatten().nonzero().squeeze(1)
    prompt_src = torch.cat([g * P + torch.arange(n) for g, n in enumerate(prompt_lens)])
    prompt_dest = torch.cat([g * width + torch.arange(n) for g, n in enumerate(prompt_lens)])
    return {"q_index": q_index, "k_index": k_index, "mask": mask, "seg_src": seg_src,
            "seg_dest": q_index.flatten()[seg_src], "prompt_src": prompt_src,
            "prompt_dest": prompt_dest, "prompt_width": P}  # an int: no device sync per layer


def _expand_heads(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(B, H_kv, L, d) -> (B, H_kv * groups, L, d), query head h on key head h // groups."""
    if groups == 1:
        return x
    b, h, n, d = x.shape
    return x[:, :, None].expand(b, h, groups, n, d).reshape(b, h * groups, n, d)


def segment_attention(module, query, key, value, attention_mask, dropout: float = 0.0,
                      scaling: float | None = None, **kwargs):
    """transformers attention interface: query (G, Hq, T, d), key/value (G, Hkv, T, d) ->
    (G, T, Hq, d). Without a layout in kwargs this is transformers' sdpa attention."""
    layout = kwargs.get(LAYOUT_KEY)
    if layout is None:
        sdpa = require("transformers.integrations.sdpa_attention")
        return sdpa.sdpa_attention_forward(module, query, key, value, attention_mask,
                                           dropout=dropout, scaling=scaling, **kwargs)
    G, Hq, T, d = query.shape
    groups = Hq // key.shape[1]
    P = layout["prompt_width"]
    # the prompts: causal over the first P positions of every row
    prompt = F.scaled_dot_product_attention(
        query[:, :, :P], _expand_heads(key[:, :, :P], groups),
        _expand_heads(value[:, :, :P], groups), dropout_p=dropout, is_causal=True, scale=scaling)
    # the responses: each against its prompt and itself
    flat = [x.transpose(1, 2).reshape(G * T, x.shape[1], d) for x in (query, key, value)]
    q, k, v = (flat[0][layout["q_index"]], flat[1][layout["k_index"]],
               flat[2][layout["k_index"]])  # (S, R or P + R, heads, d)
    seg = F.scaled_dot_product_attention(
        q.transpose(1, 2), _expand_heads(k.transpose(1, 2), groups),
        _expand_heads(v.transpose(1, 2), groups), attn_mask=layout["mask"], dropout_p=dropout,
        scale=scaling)
    out = query.new_zeros(G * T, Hq, d)
    out = out.index_copy(0, layout["prompt_dest"],
                         prompt.transpose(1, 2).reshape(G * P, Hq, d)[layout["prompt_src"]])
    out = out.index_copy(0, layout["seg_dest"],
                         seg.transpose(1, 2).reshape(-1, Hq, d)[layout["seg_src"]])
    return out.view(G, T, Hq, d), None


def register() -> None:
    """Make NAME a transformers attention implementation (masks built as for sdpa)."""
    transformers = require("transformers")
    masking = require("transformers.masking_utils")
    transformers.AttentionInterface.register(NAME, segment_attention)
    masking.ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, masking.sdpa_mask)


def plain_attention(config) -> bool:
    """True when every layer is plain causal attention over the whole sequence: what the
    packed layout (segments or the dense block mask) reproduces exactly. Sliding windows,
    per-layer attention types, logit soft-capping and attention sinks are not modelled."""
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    if getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", True):
        return False
    if any(t != "full_attention" for t in (getattr(cfg, "layer_types", None) or [])):
        return False
    return not any(getattr(cfg, k, None) for k in ("attn_logit_softcapping",
                                                   "final_logit_softcapping", "sinks"))


def enable(model) -> bool:
    """Switch an sdpa model with plain attention to the segment attention; False (unchanged)
    for any other."""
    if getattr(model.config, "_attn_implementation", None) != "sdpa":
        return getattr(model.config, "_attn_implementation", None) == NAME
    if not plain_attention(model.config):
        return False
    register()
    model.set_attn_implementation(NAME)
    return model.config._attn_implementation == NAME


def enabled(model) -> bool:
    model = getattr(model, "module", model)  # DDP
    return getattr(getattr(model, "config", None), "_attn_implementation", None) == NAME
