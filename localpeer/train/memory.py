"""A VRAM estimate for a recipe, from the model's config.json alone (for `train --dry-run`).

    localpeer train recipes/gpu-8gb.yaml --dry-run

**Allocated** (what `torch.cuda.max_memory_allocated` counts), the sum of five terms in bytes:
base weights (nf4: 0.5 per parameter plus double-quantized constants, embeddings and the LM
head kept in 16 bits; otherwise the dtype's size); LoRA weights and gradients in fp32; AdamW
moments (8-bit, paged or not: 2 bytes per LoRA parameter; plain AdamW: 8); activations of the
largest micro-batch (`micro_batch_positions`: with gradient checkpointing one hidden state per
layer plus one layer's working set, without it the Korthikanti et al. per-layer estimate
s*b*h*(34 + 5*a*s/h)); and the logits of one chunk of positions (`logps` takes log-probs from
the final hidden states through the LM head chunk by chunk, recomputing each chunk in the
backward pass, so full-vocabulary logits never exist for the whole sequence). Not covered: the
models and backends whose logits `logps` takes from the model's own forward (unsloth, soft-capped
or scaled logits, `logps.decoder_and_head` is None), where the full logits of the response
positions exist at once.

**Reserved** (what `torch.cuda.max_memory_reserved` counts: the caching allocator's pool, which
is what the card must hold) is localpeer's definition: allocated x RESERVED_PER_ALLOCATED, a
ratio that depends on whether the allocator runs with expandable segments (`train` turns them
on, `use_expandable_segments`). The ratios come from one measurement, on an H200 (2026-12-04):
the Llama-3.1-8B shape, nf4, LoRA r=16 on the 7 projections, 1,024 prompt + 1,024 response
tokens, batch 1, gradient checkpointing, paged 8-bit AdamW, before chunked logits: 9.69 GiB
allocated, 12.48 GiB reserved with the default allocator (1.29) and 10.15 GiB with
`expandable_segments:True` (1.05); the allocated estimate of the day said 10.04 there. It is
calibrated on that one measurement: the same run at 128 + 1,024 tokens reserved 9.76 of 8.25
GiB allocated (1.18; estimate 8.20), so the default-allocator ratio is high there, and with
less large-tensor churn (chunked logits) fragmentation should shrink. Running
`bench/gpu_memory.py` on more cards and lengths, which prints allocated and reserved next to
this estimate, is what would refine it.

**On the device** the card also holds the CUDA context (CUDA_CONTEXT_GB, outside both
counters): `device_gb` = reserved + context is what `--dry-run` compares with the GPU's memory.
"""

from __future__ import annotations

import json
import os
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path

from localpeer.config import Recipe, TrainConfig

CUDA_CONTEXT_GB = 0.6
GB = 1024**3
ALLOC_CONF = "PYTORCH_CUDA_ALLOC_CONF"
ALLOC_CONF_GENERIC = "PYTORCH_ALLOC_CONF"  # newer torch's device-neutral name for the same
EXPANDABLE = "expandable_segments:True"
# reserved / allocated at the peak, by expandable segments off/on (see the module docstring)
RESERVED_PER_ALLOCATED = {False: 1.29, True: 1.05}
# mirrors logps.LOGITS_PER_CHUNK (tests/test_memory.py checks): logits per chunk of positions
# when log-probs go through the LM head chunk by chunk (261 positions at a 128,256 vocabulary)
LOGITS_PER_CHUNK = 2**25
# bytes per logit of the live chunk at its peak, in the backward pass that recomputes it: the
# fp32 logits the log-softmax saved, its fp32 gradient and the target pick's fp32 gradient
# before autograd adds them (4 + 4 + 4); the 16-bit LM head output and its gradient live
# beside fewer of those
LOGIT_BYTES = 12


def use_expandable_segments(environ: MutableMapping[str, str] = os.environ) -> bool:
    """Turn on the CUDA caching allocator's expandable segments unless the user configured the
    allocator (PYTORCH_CUDA_ALLOC_CONF or PYTORCH_ALLOC_CONF set, to any value). Returns
    whether it set the variable.

    Expandable segments let a block grow in place instead of leaving freed blocks of the wrong
    size behind: on the 8B measurement they cut what the pool reserved from 12.48 to 10.15 GiB.
    The allocator reads the variable once, when CUDA first allocates, so this must run before
    that: `train` calls it first, before anything imports torch."""
    if ALLOC_CONF in environ or ALLOC_CONF_GENERIC in environ:
        return False
    environ[ALLOC_CONF] = EXPANDABLE
    return True


def expandable_segments(environ: MutableMapping[str, str] = os.environ,
                        as_train_sets: bool = True) -> bool:
    """Whether the allocator uses expandable segments: what the user's setting says, and when
    neither variable is set, on if `as_train_sets` (a `train` run sets it), else off (the
    allocator's default, for a process that did not set it)."""
    conf = environ.get(ALLOC_CONF_GENERIC, environ.get(ALLOC_CONF))
    if conf is None:
        return as_train_sets
    options = dict(item.partition(":")[::2] for item in conf.replace(" ", "").split(","))
    return options.get("expandable_segments", "").lower() == "true"


@dataclass(frozen=True)
class ModelShape:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    tied: bool

    @classmethod
    def from_config(cls, path: Path) -> ModelShape:
        return cls.from_dict(json.loads((Path(path) / "config.json").read_text()))

    @classmethod
    def from_dict(cls, c: dict) -> ModelShape:
        return cls(c["hidden_size"], c["num_hidden_layers"], c["num_attention_heads"],
                   c.get("num_key_value_heads", c["num_attention_heads"]),
                   c["intermediate_size"], c["vocab_size"], bool(c.get("tie_word_embeddings")))

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each projection of one decoder layer."""
        head = self.hidden // self.heads
        return {"q_proj": (self.hidden, self.hidden),
                "k_proj": (self.hidden, self.kv_heads * head),
                "v_proj": (self.hidden, self.kv_heads * head),
                "o_proj": (self.hidden, self.hidden),
                "gate_proj": (self.hidden, self.intermediate),
                "up_proj": (self.hidden, self.intermediate),
                "down_proj": (self.intermediate, self.hidden)}

    @property
    def layer_params(self) -> int:
        return sum(i * o for i, o in self.linear_shapes().values())

    @property
    def embed_params(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied else 2)


@dataclass(frozen=True)
class MemoryEstimate:
    """GiB. The first five terms sum to `allocated_gb`."""

    weights_gb: float  # base weights on the device
    lora_gb: float  # LoRA weights + gradients, fp32
    optimizer_gb: float  # AdamW moments
    activations_gb: float  # saved activations + one layer's working set
    logits_gb: float  # one chunk of positions through the LM head, forward and backward
    overhead_gb: float  # CUDA context: on the device, outside PyTorch's counters
    lora_params: int
    positions: int  # token positions of the largest micro-batch, padding included
    expandable_segments: bool  # the allocator mode the reserve ratio is for
    reserve_ratio: float  # reserved / allocated (RESERVED_PER_ALLOCATED; 1 off CUDA)

    @property
    def allocated_gb(self) -> float:
        """What torch.cuda.max_memory_allocated would report at the peak."""
        return (self.weights_gb + self.lora_gb + self.optimizer_gb + self.activations_gb
                + self.logits_gb)

    @property
    def reserved_gb(self) -> float:
        """What torch.cuda.max_memory_reserved would report: the allocator's pool."""
        return self.allocated_gb * self.reserve_ratio

    @property
    def device_gb(self) -> float:
        """What the card must hold: the pool plus the CUDA context (about nvidia-smi's use)."""
        return self.reserved_gb + self.overhead_gb

    def parts(self) -> dict[str, float]:
        """Every term and total, GiB rounded to 3 decimals (for JSON reports)."""
        names = ("weights_gb", "lora_gb", "optimizer_gb", "activations_gb", "logits_gb",
                 "overhead_gb", "allocated_gb", "reserved_gb", "device_gb")
        return {n: round(getattr(self, n), 3) for n in names}


def micro_batch_positions(train: TrainConfig) -> int:
    """Token positions of the largest micro-batch the forward pass sees, padding included.

    One pair is at most 2 x max_length positions in either layout: two rows of prompt +
    response, or one packed row of the prompt once and both responses (P + 2(L - P) <= 2L).
    With train.micro_batch_tokens > 0 micro-batches are filled up to that many padded
    positions, but a pair bigger than that still runs alone; else batch_size pairs."""
    pair = 2 * train.max_length
    budget = train.micro_batch_tokens
    if budget > 0:
        return max(budget, pair)
    return train.batch_size * pair


def _optimizer_bytes(choice: str, cuda: bool) -> int:
    """Bytes of AdamW state per trainable parameter: two 8-bit moments or two fp32 ones."""
    if choice == "auto":
        choice = "paged_adamw_8bit" if cuda else "adamw"
    return 2 if choice in ("adamw_8bit", "paged_adamw_8bit") else 8


def estimate(recipe: Recipe, shape: ModelShape, targets: tuple[str, ...], cuda: bool = True,
             expandable: bool | None = None, positions: int | None = None) -> MemoryEstimate:
    """The estimate for `recipe` on `shape`. `expandable`: the allocator mode; None reads it
    from the environment the way `train` will set it (`expandable_segments`). `positions`: the
    micro-batch's padded token positions; None is the recipe's largest
    (`micro_batch_positions`); bench/gpu_memory.py passes the batch it measured."""
    if expandable is None:
        expandable = expandable_segments()
    dtype_bytes = 4 if recipe.dtype == "float32" or (recipe.dtype == "auto" and not cuda) else 2
    body = shape.layers * shape.layer_params
    if recipe.quantize == "nf4":
        # 4 bits a weight; double quantization leaves ~0.127 bits of constants per weight
        weights = body * (0.5 + 0.127 / 8) + shape.embed_params * 2
    else:
        weights = (body + shape.embed_params) * dtype_bytes
    linears = shape.linear_shapes()
    lora_layers = min(recipe.lora.last_layers or shape.layers, shape.layers)
    lora_params = lora_layers * sum(recipe.lora.rank * (linears[t][0] + linears[t][1])
                                     for t in targets if t in linears)
    lora = lora_params * (4 + 4)  # fp32 weights and gradients
    optimizer = lora_params * _optimizer_bytes(recipe.train.optimizer, cuda)
    tokens = positions or micro_batch_positions(recipe.train)
    # attention scores are per sequence: a prompt + response is at most max_length long
    h, s, a = shape.hidden, recipe.train.max_length, shape.heads
    per_layer = tokens * h * (34 + 5 * a * s / h) * dtype_bytes / 2
    if recipe.train.gradient_checkpointing:
        activations = shape.layers * tokens * h * dtype_bytes + per_layer / 2
    else:
        activations = shape.layers * per_layer
    chunk = max(LOGITS_PER_CHUNK // shape.vocab, 1)  # logps.chunk_positions
    logits = min(chunk, tokens) * shape.vocab * LOGIT_BYTES
    ratio = RESERVED_PER_ALLOCATED[expandable] if cuda else 1.0
    return MemoryEstimate(weights / GB, lora / GB, optimizer / GB, activations / GB,
                          logits / GB, CUDA_CONTEXT_GB if cuda else 0.0, lora_params,
                          tokens, expandable, ratio)


def suggestions(recipe: Recipe, expandable: bool = True) -> list[str]:
    """What to change, most effective first, when a recipe does not fit."""
    t = recipe.train
    out = []
    if recipe.quantize != "nf4":
        out.append("quantize=nf4 (4-bit base weights)")
    if not t.gradient_checkpointing:
        out.append("train.gradient_checkpointing=true")
    if not expandable:
        out.append(f"{ALLOC_CONF}=expandable_segments:True (or leave it unset: train sets it)")
    if _optimizer_bytes(t.optimizer, True) > 2:
        out.append("train.optimizer=paged_adamw_8bit")
    if t.micro_batch_tokens > 2 * t.max_length:
        out.append(f"train.micro_batch_tokens={2 * t.max_length}")
    elif t.batch_size > 1 and not t.micro_batch_tokens:
        out.append(f"train.batch_size={max(t.batch_size // 2, 1)} with "
                   f"train.grad_accum={t.grad_accum * 2}")
    if t.max_length > 512:
        out.append(f"train.max_length={t.max_length // 2}")
    out.append("a smaller model card (see models/)")
    return out
