"""A VRAM estimate for a recipe, from the model's config.json alone (for `train --dry-run`).

Terms (bytes): base weights (nf4: 0.5 per parameter plus double-quantized constants, embeddings
and the LM head kept in 16 bits; otherwise the dtype's size), LoRA weights and gradients in
fp32, AdamW moments (paged 8-bit: 2 bytes per LoRA parameter; else 8), activations of the 2B
sequences (chosen and rejected) at the recipe's length: with gradient checkpointing one hidden
state per layer plus one layer's working set, without it the Korthikanti et al. per-layer
estimate s*b*h*(34 + 5*a*s/h), plus the logits and their gradient (the fp32 log-softmax copy
only for one chunk of positions), plus a fixed CUDA context overhead. It is an estimate;
`bench/gpu_check.sh` measures the real peak next to it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from localpeer.config import Recipe

CUDA_CONTEXT_GB = 0.6
GB = 1024**3


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
    weights_gb: float
    lora_gb: float  # LoRA weights + gradients
    optimizer_gb: float
    activations_gb: float
    logits_gb: float
    overhead_gb: float
    lora_params: int

    @property
    def total_gb(self) -> float:
        return (self.weights_gb + self.lora_gb + self.optimizer_gb + self.activations_gb
                + self.logits_gb + self.overhead_gb)


def estimate(recipe: Recipe, shape: ModelShape, targets: tuple[str, ...],
             cuda: bool = True) -> MemoryEstimate:
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
    paged = recipe.train.optimizer == "paged_adamw_8bit" or (
        recipe.train.optimizer == "auto" and cuda)
    optimizer = lora_params * (2 if paged else 8)
    seqs = 2 * recipe.train.batch_size  # chosen and rejected in one forward
    tokens = seqs * recipe.train.max_length
    h, s, a = shape.hidden, recipe.train.max_length, shape.heads
    if recipe.train.gradient_checkpointing:
        per_layer_saved = tokens * h * dtype_bytes
        working = tokens * h * (34 + 5 * a * s / h) / 2 * dtype_bytes / 2
        activations = shape.layers * per_layer_saved + working
    else:
        activations = shape.layers * tokens * h * (34 + 5 * a * s / h) * dtype_bytes / 2
    # logits and their gradient at the compute dtype; the fp32 log-softmax copy exists for one
    # chunk of positions at a time (logps.token_logps)
    chunk = seqs * min(256, s) * shape.vocab * (4 + 4)
    logits = tokens * shape.vocab * 2 * dtype_bytes + chunk
    return MemoryEstimate(weights / GB, lora / GB, optimizer / GB, activations / GB,
                          logits / GB, CUDA_CONTEXT_GB if cuda else 0.0, lora_params)


def suggestions(recipe: Recipe) -> list[str]:
    out = []
    if recipe.quantize != "nf4":
        out.append("quantize=nf4 (4-bit base weights)")
    if not recipe.train.gradient_checkpointing:
        out.append("train.gradient_checkpointing=true")
    if recipe.train.batch_size > 1:
        out.append(f"train.batch_size={max(recipe.train.batch_size // 2, 1)} with "
                   f"train.grad_accum={recipe.train.grad_accum * 2}")
    if recipe.train.max_length > 512:
        out.append(f"train.max_length={recipe.train.max_length // 2}")
    out.append("a smaller model card (see models/)")
    return out
