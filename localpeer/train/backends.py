"""Load the policy: the base model (optionally 4-bit) with a LoRA adapter on top.

Backends: `peft` (transformers + peft; bitsandbytes nf4 with double quantization when
`quantize: nf4`, which also runs on CPU), `unsloth` (CUDA only; imported first, before
transformers, because it patches it), `auto` (unsloth on CUDA when installed, else peft).
The reference model is the same module with the adapter disabled.

    from localpeer.train.backends import load_policy
    policy = load_policy(recipe, Path("models/hf/smollm2-135m-instruct"))
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from localpeer.config import Recipe
from localpeer.deps import available, require
from localpeer.errors import InputError
from localpeer.train import segments

torch = require("torch")

log = logging.getLogger(__name__)

COMMON_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class Policy:
    model: torch.nn.Module  # a peft model: LoRA on, or off inside `reference()`
    tokenizer: object
    backend: str  # peft | unsloth
    device: torch.device
    quantized: bool
    source: Path | None = None  # the base model folder (keys the reference cache)
    share_prompt: bool = False  # batches in the packed shared-prompt layout (logps.collate)


# `backend: auto` picks unsloth only where it wins over the run's length. unsloth compiles
# every decoder block before its first step (on an H200, a 1.0 B Llama had finished no step
# after 100 s, against seconds for peft), so it pays off only once its per-step saving has
# repaid that start-up: the break-even, in optimizer steps, that bench/gpu_unsloth.py
# measures (`break_even_steps`: compile time / (peft s per step - unsloth s per step), on the
# same model and batch). Until a measurement is recorded here, auto keeps peft everywhere.
UNSLOTH_BREAK_EVEN_STEPS: int | None = None


def resolve_backend(recipe: Recipe) -> str:
    """`peft` or `unsloth`. auto: unsloth when CUDA is there, unsloth is installed and the
    run has at least UNSLOTH_BREAK_EVEN_STEPS steps (never while that is unmeasured)."""
    cuda = torch.cuda.is_available()
    if recipe.backend == "unsloth" and not cuda:
        raise InputError("backend=unsloth needs a CUDA GPU; set backend: peft (or auto)")
    if recipe.backend == "auto":
        pays_off = (UNSLOTH_BREAK_EVEN_STEPS is not None
                    and recipe.train.steps >= UNSLOTH_BREAK_EVEN_STEPS)
        return "unsloth" if cuda and pays_off and available("unsloth") else "peft"
    return recipe.backend


def resolve_dtype(recipe: Recipe, device: torch.device) -> torch.dtype:
    if recipe.dtype != "auto":
        return getattr(torch, recipe.dtype)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def lora_targets(recipe: Recipe, model: torch.nn.Module, card_targets: tuple[str, ...]) -> list:
    """The recipe's targets, else the model card's, else the usual projections present."""
    wanted = recipe.lora.targets or card_targets or COMMON_TARGETS
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    found = [t for t in wanted if t in names]
    if not found:
        raise InputError(f"none of the LoRA targets {list(wanted)} is a module of this model; "
                         "set lora.targets to module names it has")
    return found


def keep_4bit_differentiable(model: torch.nn.Module) -> int:
    """Stop bitsandbytes' CPU backend from repacking nf4 weights for its fused bf16 kernel.

    On CPUs with AVX512-BF16, bitsandbytes repacks a 4-bit layer the first time it runs in
    eval mode without gradients (our held-out eval, the reference pass). The repack is
    permanent and the fused kernel has no autograd rule, so afterwards no gradient flows back
    through the frozen base layers and every LoRA layer below the top trains on a wrong
    gradient (measured: 99% off at layer 0). Returns the number of 4-bit layers set.
    """
    n = 0
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
            n += 1
    return n


def _check_model_dir(path: Path) -> None:
    if not (path / "config.json").is_file():
        raise InputError("not a model folder (no config.json); run `localpeer pull CARD` or "
                         "point `model` at a Hugging Face folder", path)
    if not any(path.glob("*.safetensors")):
        raise InputError("no *.safetensors weights here; localpeer loads safetensors only "
                         "(never pickle): convert the checkpoint first", path)


def _load_peft(recipe: Recipe, path: Path, device: torch.device, card_targets) -> Policy:
    transformers = require("transformers")
    peft = require("peft")
    dtype = resolve_dtype(recipe, device)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(path))
    kwargs = {"dtype": dtype, "use_safetensors": True}
    quantized = recipe.quantize == "nf4"
    if quantized:
        require("bitsandbytes", why="quantize: nf4 (or set quantize: none)")
        kwargs["quantization_config"] = transformers.BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype)
        kwargs["device_map"] = {"": str(device)}
    model = transformers.AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    if not quantized:
        model.to(device)
    elif device.type == "cpu":
        keep_4bit_differentiable(model)
    if recipe.train.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model.config.use_cache = False
    torch.manual_seed(recipe.train.seed)  # LoRA A init
    layers = None
    if recipe.lora.last_layers:
        total = model.config.num_hidden_layers
        layers = list(range(max(total - recipe.lora.last_layers, 0), total))
    config = peft.LoraConfig(r=recipe.lora.rank, lora_alpha=recipe.lora.alpha,
                             lora_dropout=recipe.lora.dropout, task_type="CAUSAL_LM",
                             target_modules=lora_targets(recipe, model, card_targets),
                             layers_to_transform=layers)
    model = peft.get_peft_model(model, config)
    # the packed layout: segment attention on an sdpa model (index tensors, see
    # train/segments.py), a dense 4-D mask on an eager one; other kernels, and models whose
    # attention is not plain causal (sliding windows ...), get plain batches
    packed = recipe.train.share_prompt and segments.plain_attention(model.config) and (
        segments.enable(model.get_base_model())
        or getattr(model.config, "_attn_implementation", "sdpa") == "eager")
    if recipe.train.share_prompt and not packed:
        log.info("train.share_prompt: this model's attention (%s) cannot take packed rows; "
                 "plain batches", getattr(model.config, "_attn_implementation", "?"))
    return Policy(model, tokenizer, "peft", device, quantized,
                  share_prompt=packed)


def _load_unsloth(recipe: Recipe, path: Path, card_targets) -> Policy:
    unsloth = require("unsloth", why="backend: unsloth (or set backend: peft)")
    model, tokenizer = unsloth.FastLanguageModel.from_pretrained(
        model_name=str(path), max_seq_length=recipe.train.max_length,
        load_in_4bit=recipe.quantize == "nf4", dtype=None)
    model = unsloth.FastLanguageModel.get_peft_model(
        model, r=recipe.lora.rank, lora_alpha=recipe.lora.alpha,
        lora_dropout=recipe.lora.dropout,
        target_modules=list(recipe.lora.targets or card_targets or COMMON_TARGETS),
        use_gradient_checkpointing="unsloth" if recipe.train.gradient_checkpointing else False,
        random_state=recipe.train.seed)
    return Policy(model, tokenizer, "unsloth", torch.device("cuda"), recipe.quantize == "nf4")


def load_policy(recipe: Recipe, path: Path, card_targets: tuple[str, ...] = (),
                device: torch.device | None = None) -> Policy:
    path = Path(path)
    _check_model_dir(path)
    backend = resolve_backend(recipe)
    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    log.info("loading %s with %s (%s, quantize=%s)", path, backend, device, recipe.quantize)
    if backend == "unsloth":
        policy = _load_unsloth(recipe, path, card_targets)
    else:
        policy = _load_peft(recipe, path, device, card_targets)
    policy.source = path
    return policy


def adapter_state(model) -> dict[str, torch.Tensor]:
    """The trainable (LoRA) weights, detached copies on the CPU."""
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_adapter_state(model, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    missing = [n for n in state if n not in params]
    if missing:
        raise InputError(f"checkpoint does not match the model: {missing[:3]} ...")
    with torch.no_grad():
        for n, t in state.items():
            params[n].copy_(t.to(params[n].device, params[n].dtype))
