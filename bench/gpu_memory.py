"""Peak VRAM of one QLoRA training step of a Llama-3.1-8B-shaped model, next to the estimate.

    python bench/gpu_memory.py                                    # needs CUDA and ~17 GB of disk
    python bench/gpu_memory.py --settings 1024:1024,128:1024 --json mem.json --text mem.txt
    python bench/gpu_memory.py --model-dir /tmp/llama8b --keep    # reuse the folder next time

The weights are random (memory does not depend on their values): the model is built directly
on the GPU in bf16 from `LlamaConfig(hidden_size=4096, intermediate_size=14336,
num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, vocab_size=128256)`, so
no fp32 copy is ever made (on a GPU with under 18 GiB free it is built on the CPU, still in
bf16), saved as bf16 safetensors (~16 GB) with the small
byte-level BPE tokenizer of tests/tiny.py, and then loaded the way `localpeer train` loads any
folder: `load_policy` with quantize=nf4 (bitsandbytes, double quantization), backend=peft,
dtype=auto (bf16), LoRA r=16 on all seven projections, gradient checkpointing on.

What is measured bypasses the data layer: one preference pair of random token ids (prompt P,
chosen R, rejected R tokens, batch 1) goes through what one step of
`localpeer.train.loop.train` does: collated in the layout the loop uses for this policy (packed:
one row of P + 2R positions, as the peft backend does on a Llama; else two rows of P + R), the
reference log-probs with the adapter off (as the loop's reference pass, before the step),
then, timed for memory, `sequence_logps` with the adapter on, the sigmoid DPO loss, backward,
gradient clipping and the optimizer the loop makes (`make_optimizer`: paged 8-bit AdamW on
CUDA). `--steps` such steps run per setting.

The CUDA caching allocator runs as `localpeer train` runs it: PYTORCH_CUDA_ALLOC_CONF is set to
expandable_segments:True before CUDA starts unless it is already set
(`localpeer.train.memory.use_expandable_segments`); the report records what was in effect.

Numbers are GiB (2**30 bytes), the unit of `localpeer.train.memory` and of `train --dry-run`:
  allocated_peak_gb  torch.cuda.max_memory_allocated over the steps (what metrics.jsonl's
                     peak_mem_mb reports)
  reserved_peak_gb   torch.cuda.max_memory_reserved: the caching allocator's pool, what the
                     card must hold; the target applies to it
  device_peak_gb     reserved_peak_gb + what the device already used before anything was
                     allocated (CUDA context); about what nvidia-smi shows. bitsandbytes'
                     paged optimizer state is CUDA managed memory, outside both counters
  estimate_*_gb      `estimate(recipe, ModelShape.from_config(folder), targets, cuda=True,
                     positions=<this batch's padded positions>)`: allocated, reserved (with the
                     allocator mode in effect) and device; what `train --dry-run` prints for
                     this batch (for the recipe it assumes the worst case, 2 x max_length)
Exit status: 0 measured and within --target-gb, 1 measured and over it, 2 could not measure
(no CUDA, too little disk, or an error: the JSON then says why).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GIB = 1024**3
# Llama-3.1-8B's shape (meta-llama/Llama-3.1-8B-Instruct config.json); rope scaling and the
# context length do not change the memory of a 2,048-token step
LLAMA_31_8B = {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
               "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
               "max_position_embeddings": 131072, "rope_theta": 500000.0,
               "rms_norm_eps": 1e-5, "tie_word_embeddings": False}
# bf16 safetensors of 8.03e9 parameters is 16.06e9 bytes; the margin covers the tokenizer and
# the file system
DISK_NEEDED_GB = 17.0
# issue 11: what the caching allocator reserves for the 1,024 + 1,024 step fits an 8 GB card
TARGET_GB = 8.0
STAMP = ".localpeer-shape.json"


@dataclass(frozen=True)
class Setting:
    prompt_tokens: int
    response_tokens: int

    @property
    def max_length(self) -> int:
        return self.prompt_tokens + self.response_tokens

    @classmethod
    def parse(cls, text: str) -> Setting:
        prompt, _, response = text.partition(":")
        return cls(int(prompt), int(response))


@dataclass
class StepMemory:
    """One setting's measurement next to the estimate for the same batch."""

    prompt_tokens: int
    response_tokens: int
    max_length: int  # train.max_length of the recipe: P + R
    layout: str  # packed (one row: P + 2R) | separate (two rows of P + R)
    positions: int  # padded token positions of the batch
    allocated_peak_gb: float  # torch.cuda.max_memory_allocated over the steps
    reserved_peak_gb: float  # torch.cuda.max_memory_reserved over the steps; the target's
    device_peak_gb: float  # reserved_peak_gb + the device's use before any allocation
    estimate_allocated_gb: float  # `train --dry-run`'s allocated for this batch
    estimate_reserved_gb: float  # ... reserved, for the allocator mode in effect
    estimate_device_gb: float  # ... reserved + CUDA context
    parts: dict  # the estimate's terms (weights_gb, lora_gb, ...)
    seconds_per_step: float
    loss: float  # the last step's loss (finite, or the step is worthless)


def free_disk_gb(folder: Path) -> float:
    folder = Path(folder)
    while not folder.exists():
        folder = folder.parent
    return shutil.disk_usage(folder).free / 1e9


def make_tokenizer():
    """The byte-level BPE with a ChatML template that the CPU tests use (tests/tiny.py)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny import make_tokenizer as tiny_tokenizer

    return tiny_tokenizer()


def build_device(needed_gb: float = 18.0) -> str:
    """Where to create the bf16 weights: the GPU when they fit there, else the CPU (still bf16:
    16 GB of RAM, never an fp32 copy)."""
    import torch

    if torch.cuda.is_available() and torch.cuda.mem_get_info()[0] / GIB >= needed_gb:
        return "cuda"
    return "cpu"


def _stamp(shape: dict) -> str:
    return json.dumps({"shape": shape, "dtype": "bfloat16"}, sort_keys=True)


def model_dir_ready(folder: Path, shape: dict = LLAMA_31_8B) -> bool:
    stamp = Path(folder) / STAMP
    return stamp.is_file() and stamp.read_text() == _stamp(shape)


def build_model_dir(folder: Path, shape: dict = LLAMA_31_8B, device: str = "cuda",
                    seed: int = 0) -> Path:
    """A random bf16 Llama of `shape` plus tokenizer, saved as safetensors in `folder`.

    The model is created under `torch.device(device)` in bf16, so its weights exist only
    there; `save_pretrained` copies one tensor at a time to the CPU to write it. The folder
    appears complete or not at all (built beside it, then renamed)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    folder = Path(folder)
    tokenizer = make_tokenizer()
    config = LlamaConfig(**shape, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    if config.vocab_size < len(tokenizer):
        raise ValueError(f"vocab_size {config.vocab_size} < the tokenizer's {len(tokenizer)}")
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(partial, max_shard_size="4GB")
    tokenizer.save_pretrained(partial)
    (partial / STAMP).write_text(_stamp(shape))
    del model
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(partial, folder)
    return folder


def recipe_for(model_dir: Path, setting: Setting, rank: int = 16):
    from localpeer.config import load_recipe

    return load_recipe(None, [
        f"model={model_dir}", "quantize=nf4", "backend=peft", "dtype=auto",
        "train.batch_size=1", "train.grad_accum=1", f"train.max_length={setting.max_length}",
        f"train.max_prompt_length={setting.prompt_tokens}",
        "train.gradient_checkpointing=true", f"lora.rank={rank}", "lora.dropout=0.0"])


def estimate_for(model_dir: Path, setting: Setting, rank: int = 16,
                 positions: int | None = None, expandable: bool | None = None):
    """`train --dry-run`'s estimate for this setting's recipe; `positions`: the batch's padded
    positions (default: the recipe's worst case, 2 x max_length)."""
    from localpeer.train.backends import COMMON_TARGETS
    from localpeer.train.memory import ModelShape, estimate

    recipe = recipe_for(model_dir, setting, rank)
    return estimate(recipe, ModelShape.from_config(model_dir), COMMON_TARGETS, cuda=True,
                    expandable=expandable, positions=positions)


def random_pair(setting: Setting, vocab: int, seed: int):
    import torch

    from localpeer.train.logps import TokenizedPair

    gen = torch.Generator().manual_seed(seed)

    def ids(n: int) -> list[int]:
        return torch.randint(0, vocab, (n,), generator=gen).tolist()

    return TokenizedPair(ids(setting.prompt_tokens), ids(setting.response_tokens),
                         ids(setting.response_tokens), 0, f"random-{seed}")


def training_step(policy, optimizer, batch, ref, beta: float = 0.1,
                  max_grad_norm: float = 1.0) -> float:
    """What one optimizer step of the loop does with one micro-batch; returns the loss."""
    import torch

    from localpeer.train import lagdpo
    from localpeer.train.logps import sequence_logps

    policy_chosen_logps, policy_rejected_logps = sequence_logps(policy.model, batch)  # (B,)
    ref = ref.to(policy_chosen_logps.device)
    margins = lagdpo.dpo_margins(policy_chosen_logps, policy_rejected_logps, ref[:, 0],
                                 ref[:, 1], beta)
    loss = lagdpo.sigmoid_loss(margins, beta).mean()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(
        [p for p in policy.model.parameters() if p.requires_grad], max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())  # .item() syncs with the GPU: the step is finished here


def measure(model_dir: Path, settings: list[Setting], rank: int = 16, steps: int = 2,
            seed: int = 0, log=print) -> tuple[list[StepMemory], dict]:
    """Load the folder once through localpeer's nf4 path, then measure each setting. The
    allocator's mode is whatever PYTORCH_CUDA_ALLOC_CONF said when CUDA started (`main` sets
    it as `train` does, before that)."""
    import torch

    from localpeer.train.backends import load_policy
    from localpeer.train.logps import collate
    from localpeer.train.loop import make_optimizer
    from localpeer.train.memory import expandable_segments
    from localpeer.train.reference import compute_reference

    torch.cuda.init()
    free, total = torch.cuda.mem_get_info()
    context_gb = (total - free) / GIB  # the CUDA context (and anything else on the device)
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    recipe = recipe_for(model_dir, settings[0], rank)
    policy = load_policy(recipe, model_dir)
    torch.cuda.synchronize()
    expandable = expandable_segments(as_train_sets=False)  # what this process runs with
    loading = {"load_seconds": round(time.perf_counter() - t0, 1),
               "load_peak_gb": round(torch.cuda.max_memory_allocated() / GIB, 3),
               "weights_resident_gb": round(torch.cuda.memory_allocated() / GIB, 3),
               "cuda_context_gb": round(context_gb, 3),
               "gpu": torch.cuda.get_device_name(0),
               "gpu_total_gb": round(total / GIB, 1),
               "expandable_segments": expandable,
               "alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF")}
    log(f"loaded in {loading['load_seconds']} s: {loading['weights_resident_gb']} GiB "
        f"resident, load peak {loading['load_peak_gb']} GiB")
    optimizer = make_optimizer(recipe, policy)
    tok = policy.tokenizer
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    vocab = policy.model.get_input_embeddings().weight.shape[0]
    layout = "packed" if policy.share_prompt else "separate"
    results = []
    for k, setting in enumerate(settings):
        pair = random_pair(setting, vocab, seed + k)
        batch = collate([pair], pad_id, policy.share_prompt)  # as the loop collates
        positions = int(batch["input_ids"].numel())
        ref = compute_reference(policy, [pair], 1, pad_id)  # (1, 2), before the step, as cached
        policy.model.train()
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        t1 = time.perf_counter()
        losses = [training_step(policy, optimizer, batch, ref) for _ in range(steps)]
        torch.cuda.synchronize()
        seconds = (time.perf_counter() - t1) / steps
        est = estimate_for(model_dir, setting, rank, positions, expandable)
        reserved = torch.cuda.max_memory_reserved() / GIB
        results.append(StepMemory(
            setting.prompt_tokens, setting.response_tokens, setting.max_length, layout,
            positions, round(torch.cuda.max_memory_allocated() / GIB, 3), round(reserved, 3),
            round(reserved + context_gb, 3), round(est.allocated_gb, 3),
            round(est.reserved_gb, 3), round(est.device_gb, 3), est.parts(),
            round(seconds, 3), losses[-1]))
        log(text_line(results[-1]))
    return results, loading


def text_line(r: StepMemory) -> str:
    return (f"prompt {r.prompt_tokens:>5} + response {r.response_tokens:>5} tokens "
            f"({r.layout}, {r.positions:,} positions, batch 1): allocated "
            f"{r.allocated_peak_gb:6.2f} GiB (estimate {r.estimate_allocated_gb:.2f}), reserved "
            f"{r.reserved_peak_gb:6.2f} GiB (estimate {r.estimate_reserved_gb:.2f}), device "
            f"~{r.device_peak_gb:.2f} (estimate {r.estimate_device_gb:.2f}), "
            f"{r.seconds_per_step:.2f} s/step")


def report_text(report: dict) -> str:
    lines = [f"localpeer QLoRA step memory, {report.get('model', '')}",
             f"gpu: {report.get('gpu', '?')}; target: reserved peak <= "
             f"{report['target_gb']} GiB (first setting)",
             f"allocator: PYTORCH_CUDA_ALLOC_CONF={report.get('alloc_conf')} "
             f"(expandable segments {'on' if report.get('expandable_segments') else 'off'})"]
    if report.get("error"):
        lines.append(f"NOT MEASURED: {report['error']}")
    for key in ("load_seconds", "load_peak_gb", "weights_resident_gb", "cuda_context_gb",
                "build_seconds"):
        if key in report:
            lines.append(f"{key}: {report[key]}")
    for r in report.get("settings", []):
        lines.append(text_line(StepMemory(**r)))
        lines.append("  estimate parts: " + ", ".join(f"{k} {v}" for k, v in r["parts"].items()))
    if "within_target" in report:
        lines.append(f"within target (first setting): {report['within_target']}")
    return "\n".join(lines) + "\n"


def run(args) -> tuple[dict, int]:
    import torch

    from localpeer.train.memory import expandable_segments

    report: dict = {"model": "random Llama-3.1-8B shape, bf16 safetensors -> nf4 + LoRA r="
                             f"{args.rank}, gradient checkpointing, batch 1",
                    "shape": LLAMA_31_8B, "target_gb": args.target_gb,
                    "target": "reserved_peak_gb of the first setting", "unit": "GiB (2**30)",
                    "alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF"),
                    "expandable_segments": expandable_segments(as_train_sets=False)}
    if not torch.cuda.is_available():
        report["error"] = "no CUDA device (torch.cuda.is_available() is False)"
        return report, 2
    settings = [Setting.parse(s) for s in args.settings.split(",") if s.strip()]
    model_dir = Path(args.model_dir) if args.model_dir else None
    scratch = None
    if model_dir is None:
        scratch = Path(tempfile.mkdtemp(prefix="localpeer-llama8b-", dir=args.tmp))
        model_dir = scratch / "model"
    try:
        if not model_dir_ready(model_dir):
            free = free_disk_gb(model_dir.parent)
            if free < DISK_NEEDED_GB:
                report["error"] = (f"{free:.1f} GB free under {model_dir.parent}, "
                                   f"{DISK_NEEDED_GB} GB needed for the bf16 safetensors; "
                                   "pass --model-dir or --tmp on a larger disk")
                return report, 2
            t0 = time.perf_counter()
            print(f"building the 8B-shaped model in {model_dir} ...", file=sys.stderr)
            build_model_dir(model_dir, device=build_device())
            report["build_seconds"] = round(time.perf_counter() - t0, 1)
        results, loading = measure(model_dir, settings, args.rank, args.steps, args.seed,
                                   log=lambda s: print(s, file=sys.stderr))
    except Exception as err:  # the JSON must still say what happened
        report["error"] = f"{type(err).__name__}: {err}"
        report["traceback"] = traceback.format_exc()
        return report, 2
    finally:
        if scratch is not None and not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    first = results[0]
    report.update(loading)
    report.update({"allocated_peak_gb": first.allocated_peak_gb,
                   "reserved_peak_gb": first.reserved_peak_gb,
                   "device_peak_gb": first.device_peak_gb,
                   "estimate_allocated_gb": first.estimate_allocated_gb,
                   "estimate_reserved_gb": first.estimate_reserved_gb,
                   "parts": first.parts, "layout": first.layout,
                   "prompt_tokens": first.prompt_tokens,
                   "response_tokens": first.response_tokens,
                   "within_target": first.reserved_peak_gb <= args.target_gb,
                   "settings": [dataclasses.asdict(r) for r in results],
                   "torch": torch.__version__})
    return report, 0 if report["within_target"] else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", default="1024:1024,128:1024",
                        help="PROMPT:RESPONSE token counts, comma-separated; the first is the "
                             "one the target applies to (default 1024:1024,128:1024)")
    parser.add_argument("--model-dir", default=os.environ.get("LOCALPEER_LLAMA8B_DIR"),
                        help="where the 8B-shaped folder is (reused when complete) or built; "
                             "default $LOCALPEER_LLAMA8B_DIR, else a temporary folder")
    parser.add_argument("--tmp", default=os.environ.get("LOCALPEER_GPU_TMP"),
                        help="parent of the temporary folder (default $LOCALPEER_GPU_TMP or "
                             "the system's)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank (default 16)")
    parser.add_argument("--steps", type=int, default=2, help="steps per setting (default 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--target-gb", type=float, default=TARGET_GB,
                        help=f"pass when the first setting's reserved peak is at most this "
                             f"(GiB, default {TARGET_GB})")
    parser.add_argument("--json", help="also write the JSON here")
    parser.add_argument("--text", help="also write the text table here")
    args = parser.parse_args(argv)
    # as `localpeer train` does, before anything starts CUDA: the allocator reads it once
    from localpeer.train.memory import use_expandable_segments

    use_expandable_segments()
    report, status = run(args)
    text = json.dumps(report, indent=2) + "\n"
    if args.json:
        Path(args.json).write_text(text)
    if args.text:
        Path(args.text).write_text(report_text(report))
    print(report_text(report), file=sys.stderr)
    print(text, end="")
    return status


if __name__ == "__main__":
    sys.exit(main())
