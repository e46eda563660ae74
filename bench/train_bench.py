"""DPO training throughput and peak memory: localpeer next to TRL's DPOTrainer, same everything.

    python bench/train_bench.py                                  # 4 runs, ~6 min on 1 core
    python bench/train_bench.py --repeats 3 --trl-fp32-adapter   # what bench/README.md reports
    python bench/train_bench.py --steps 10 --batch-size 2 --json out.json
    python bench/train_bench.py --profile                        # + cProfile of localpeer's train()
    python bench/train_bench.py --bnb-cpu-repack                 # bitsandbytes as shipped

Both tools train the same tiny random Llama (`tests/tiny.py`, `--hidden`, `--layers`; nf4 with
double quantization, compute dtype float32, bitsandbytes' CPU backend) with the same LoRA (rank
16, alpha 32, dropout 0, on q,k,v,o,gate,up,down), the same 353 golden > reject_k pairs of
`data/personaknob-starter/train.jsonl` rendered with the same ChatML template, the same batch
size, sequence length, AdamW, lr, beta = 0.1 and sigmoid loss. Four runs, each in its own fresh
subprocess (so peak RSS is its own) with one BLAS/OpenMP thread:

  localpeer  cached ref      train.cache_reference=true: each train pair's reference log-probs
                             computed the first time the pair is drawn (a no-grad forward over
                             the micro-batch's new pairs, adapter disabled), then cached; disk
                             cache cold, so in a run shorter than an epoch every step pays it,
                             inside the timed loop
  localpeer  ref per batch   train.cache_reference=false: a no-grad reference forward with the
                             adapter disabled on every micro-batch
  TRL        ref per batch   DPOTrainer's default with peft: reference forward per batch,
                             adapter disabled (`use_adapter(model, None)`)
  TRL        cached ref      DPOConfig(precompute_ref_log_probs=True): one pass before training

What is timed: the optimizer steps 2..N (the end of step 1 to the end of step N, from each
tool's own per-step callback: localpeer's `on_step`, a `TrainerCallback.on_step_end` for TRL), so
model load, tokenization and the first step's warm-up are out for both. In the cached modes the
reference pass over all train pairs is ADDED to that time (the loop alone is shown too): for
TRL the wall time of `DPOTrainer._precompute_ref_logps(..., "train")`; localpeer has no such
pass (its lazy reference forwards are inside the loop; step 1's, 4 of 92 pairs, is outside the
timed region, as is step 1 of every run). pairs/s = (N-1) * batch / time. tokens/s =
non-pad tokens of the timed steps' batches (prompt+chosen + prompt+rejected, after truncation,
i.e. the sum of the collated attention mask; a reference forward over the same tokens is not
counted again) / time. Peak RSS = the child's VmHWM from just after the model is loaded
(reset through /proc/self/clear_refs; libraries and weights already resident count) to the end
of step N; "growth" is that peak minus the RSS at the reset.

Instrumentation of localpeer (measurement only; the one change of behaviour, in both tools, is
the bitsandbytes setting below): in the child, the names
`reference_logps` and `collate` in `localpeer.train.loop` are wrapped to time the train-split
reference pass and to count the tokens each step collates.

bitsandbytes on this CPU (AVX512-BF16): by default both tools run with bitsandbytes' CPU weight
repack switched off (`pin_nf4_path`). As shipped, bitsandbytes 0.50 repacks an nf4 layer for a
fused bf16 kernel the first time it runs in eval mode without grad, permanently, and that kernel
has no autograd formula: after localpeer's step-0 eval (or TRL's precompute pass, run while the
model is still in eval mode) every later step is faster but drops the gradient through the
frozen base weights, so the LoRA gradients of all but the top layers are wrong. TRL's default
(reference per batch, model in train mode) never triggers it. `--bnb-cpu-repack` measures the
libraries as shipped; the "nf4 repacked" column counts the layers repacked by the end of step N.

Truncation: TRL 1.16's DPOConfig has no `max_prompt_length` (only `max_length`, cut from the
end, `truncation_mode="keep_start"`; it drops pairs whose prompt alone reaches max_length).
localpeer runs with `train.max_prompt_length = train.max_length`, so both keep the whole prompt
and cut the responses to max_length - prompt: the same tokens (checked: all 353 pairs give
identical token ids and prompt/response splits in both). With the tiny byte-level tokenizer
prompts are 233-351 tokens and responses 485-817, so the default max_length is 512 (256 would
make TRL drop most pairs) and every sequence is exactly max_length long, no padding, in both.

TRL settings chosen to match localpeer (TRL's own defaults in brackets): gradient_checkpointing
False [True], bf16 False [True: CPU autocast], optim adamw_torch [adamw_torch_fused], cosine
schedule, no warm-up, logging/saving/eval off, report_to none, use_cpu. Left as TRL does it:
with a quantized base model TRL casts the LoRA weights to bfloat16 (QLoRA paper recipe), so its
adapter matmuls run in bf16 on the CPU; `--trl-fp32-adapter` adds two rows with them cast back
to float32 after the trainer is built. TRL also computes its per-step metrics (entropy, mean
logits, top-1 accuracy) through its fused LM head; that is part of its cost.

Exit status: 0 unless a localpeer run crashes; a TRL failure is printed, not fatal.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")  # TRL's precompute progress bar
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TRAIN_DATA = REPO / "data" / "personaknob-starter" / "train.jsonl"
TEST_DATA = REPO / "data" / "personaknob-starter" / "test.jsonl"
DIMS = ("A", "T", "E", "C")
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
BETA = 0.1
EVAL_RECORDS = 2  # localpeer evaluates before and after training: keep it negligible
# run name -> (tool, mode); a mode is "cached" (reference log-probs once) or "live" (per batch)
RUNS = {
    "localpeer-cached": ("localpeer", "cached"),
    "localpeer-live": ("localpeer", "live"),
    "trl-live": ("TRL", "live"),
    "trl-cached": ("TRL", "cached"),
    "trl-fp32-live": ("TRL fp32 LoRA", "live"),
    "trl-fp32-cached": ("TRL fp32 LoRA", "cached"),
}
MODE_LABEL = {"cached": "cached ref", "live": "ref per batch"}
TARGET_RATIO = {"cached": 1.5, "live": 1.1}


# --------------------------------------------------------------------------------------------
# child side: one tool, one mode, one process
# --------------------------------------------------------------------------------------------

from peak_memory import peak_mb as _peak_mb  # noqa: E402
from peak_memory import reset_peak as _reset_peak  # noqa: E402
from peak_memory import status_kb as _status_kb  # noqa: E402


class StepClock:
    """End-of-step timestamps and running token counts; the peak is read at the last step."""

    def __init__(self, steps: int):
        self.steps = steps
        self.step_end_s: list[float] = []
        self.tokens_at_end: list[int] = []
        self.tokens = 0  # non-pad tokens collated for training so far
        self.counting = False
        self.peak_mb = None
        self.at_last_step: list = []  # callables run once at the end of step N

    def count(self, attention_mask) -> None:
        if self.counting:
            self.tokens += int(attention_mask.sum())

    def step_done(self) -> None:
        self.step_end_s.append(time.perf_counter())
        self.tokens_at_end.append(self.tokens)
        if len(self.step_end_s) == self.steps:
            self.peak_mb = _peak_mb()
            self.counting = False
            for fn in self.at_last_step:
                fn()

    def result(self, batch: int) -> dict:
        if len(self.step_end_s) < 2:
            raise RuntimeError(f"only {len(self.step_end_s)} steps finished; need --steps >= 2")
        return dict(steps_done=len(self.step_end_s), steps_timed=len(self.step_end_s) - 1,
                    pairs_timed=(len(self.step_end_s) - 1) * batch,
                    loop_s=self.step_end_s[-1] - self.step_end_s[0],
                    tokens_timed=self.tokens_at_end[-1] - self.tokens_at_end[0],
                    step_s=[b - a for a, b in zip(self.step_end_s, self.step_end_s[1:])],
                    peak_mb=self.peak_mb)


def nf4_layers(model) -> list:
    import bitsandbytes as bnb

    return [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]


def pin_nf4_path(model, allow_repack: bool) -> dict:
    """Keep bitsandbytes on its autograd-aware dequantize+matmul path, or leave it as shipped.

    bitsandbytes 0.50, on a CPU with AVX512-BF16, repacks a Linear4bit's weight for its fused
    bf16 kernel the first time the layer runs in eval mode on an input without grad (an eval
    pass, a reference pass under model.eval()). The repack is permanent, and the fused kernel
    (`gemv_4bit`) has no autograd formula: later training steps are faster but no gradient
    flows back through the frozen base weights, so every LoRA layer below the top gets a wrong
    gradient ("an autograd kernel was not registered" warning). Both tools are run with the
    repack off unless --bnb-cpu-repack is given."""
    layers = nf4_layers(model)
    if not allow_repack:
        for m in layers:
            m.support_avx512bf16_for_cpu = False
    return {"layers": len(layers), "repack_allowed": allow_repack}


def count_repacked(model) -> int:
    return sum(bool(getattr(m.weight.quant_state, "packing_format_for_cpu", False))
               for m in nf4_layers(model))


def _pairs():
    from localpeer.data.personaknob import read_records, record_pairs

    return [p for r in read_records(TRAIN_DATA) for p in record_pairs(r) if p.dim in DIMS]


def run_localpeer(args, cached: bool, work: Path, profiler=None) -> dict:
    import torch

    import localpeer.train.loop as loop
    from localpeer.config import load_recipe
    from localpeer.train.backends import load_policy

    recipe = load_recipe(None, [
        f"model={args._model}", f"out_dir={work / 'run'}", "quantize=nf4", "backend=peft",
        "dtype=float32", f"train.steps={args.steps}", f"train.batch_size={args.batch_size}",
        "train.grad_accum=1", f"train.lr={args.lr}", "train.warmup_steps=0",
        f"train.max_length={args.max_length}", f"train.max_prompt_length={args.max_length}",
        "train.eval_every=0", "train.checkpoint_every=0", f"train.cache_reference={cached}",
        "train.optimizer=adamw", "train.seed=0", f"lora.rank={args.rank}",
        f"lora.alpha={args.alpha}", "lora.dropout=0", f"lora.targets={','.join(TARGETS)}",
        f"data.train={TRAIN_DATA}", f"data.test={args._test}", f"data.dims={','.join(DIMS)}",
        f"dpo.beta={BETA}", "dpo.loss=sigmoid",
    ])
    policy = load_policy(recipe, Path(args._model))
    nf4 = pin_nf4_path(policy.model, args.bnb_cpu_repack)
    pad_id = policy.tokenizer.pad_token_id
    tokenized, _ = loop.tokenize_pairs(policy.tokenizer, _pairs(), DIMS, args.max_length,
                                       args.max_length)
    dataset_tokens = sum(2 * len(p.prompt) + len(p.chosen) + len(p.rejected) for p in tokenized)
    clock = StepClock(args.steps)
    clock.at_last_step.append(lambda: nf4.update(repacked=count_repacked(policy.model)))
    ref_s: dict[str, float] = {}
    reference_logps, collate = loop.reference_logps, loop.collate

    def timed_reference(policy, pairs, recipe, pad_id, split):
        t0 = time.perf_counter()
        out = reference_logps(policy, pairs, recipe, pad_id, split)
        ref_s[split] = time.perf_counter() - t0
        return out

    def counting_collate(chunk, pad_id, share_prompt=False):
        # tokens of the pairs (prompt + chosen + prompt + rejected), as TRL's collated mask
        # counts them, whatever the layout: the packed one processes fewer
        tensors = collate(chunk, pad_id, share_prompt)
        clock.count(torch.tensor([2 * len(p.prompt) + len(p.chosen) + len(p.rejected)
                                  for p in chunk]))
        return tensors

    def on_eval(line):
        if line["step"] == 0:  # the loop starts right after the step-0 eval
            clock.counting = True

    loop.reference_logps, loop.collate = timed_reference, counting_collate
    losses = []
    base_mb = (_status_kb("VmRSS") or 0) / 1024
    reset = _reset_peak()
    t0 = time.perf_counter()
    call = profiler.runcall if profiler is not None else (lambda fn, *a, **k: fn(*a, **k))
    summary = call(loop.train, recipe, policy,
                   on_step=lambda m: (clock.step_done(), losses.append(m["loss"])),
                   on_eval=on_eval)
    res = clock.result(args.batch_size)
    res.update(
        ref_s=ref_s.get("train", 0.0) if cached else 0.0, ref_test_s=ref_s.get("test"),
        train_call_s=time.perf_counter() - t0, base_rss_mb=base_mb, peak_is_region=reset,
        pairs=summary["pairs"]["train"], truncated=summary["truncated"]["train"],
        dataset_tokens_per_pair=dataset_tokens / len(tokenized), loss_first=losses[0],
        loss_last=losses[-1], threads=torch.get_num_threads(), pad_id=pad_id,
        adapter_dtype=str(next(p.dtype for p in policy.model.parameters() if p.requires_grad)),
        nf4=nf4,
    )
    return res


def run_trl(args, cached: bool, fp32_adapter: bool, work: Path) -> dict:
    import datasets
    import peft
    import torch
    import transformers
    import trl
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    tok = transformers.AutoTokenizer.from_pretrained(args._model)
    bnb = transformers.BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float32)
    # loaded exactly as localpeer's peft backend loads it; the trainer wraps it with peft
    model = transformers.AutoModelForCausalLM.from_pretrained(
        args._model, dtype=torch.float32, quantization_config=bnb, device_map={"": "cpu"},
        use_safetensors=True)
    model.config.use_cache = False
    nf4 = pin_nf4_path(model, args.bnb_cpu_repack)
    rows = [{"prompt": [{"role": "user", "content": p.prompt}],
             "chosen": [{"role": "assistant", "content": p.chosen}],
             "rejected": [{"role": "assistant", "content": p.rejected}]} for p in _pairs()]
    train_set = datasets.Dataset.from_list(rows)
    config = trl.DPOConfig(
        output_dir=str(work / "trl"), max_steps=args.steps,
        per_device_train_batch_size=args.batch_size, gradient_accumulation_steps=1,
        learning_rate=args.lr, lr_scheduler_type="cosine", warmup_steps=0, weight_decay=0.0,
        max_grad_norm=1.0, optim="adamw_torch", beta=BETA, loss_type=["sigmoid"],
        max_length=args.max_length, truncation_mode="keep_start",
        precompute_ref_log_probs=cached, gradient_checkpointing=False, bf16=False, fp16=False,
        use_cpu=True, report_to="none", logging_strategy="no", save_strategy="no",
        eval_strategy="no", disable_tqdm=True, dataloader_num_workers=0,
        dataloader_pin_memory=False, seed=0, data_seed=0)
    lora = peft.LoraConfig(r=args.rank, lora_alpha=args.alpha, lora_dropout=0.0,
                           task_type="CAUSAL_LM", target_modules=list(TARGETS))
    clock = StepClock(args.steps)
    clock.at_last_step.append(lambda: nf4.update(repacked=count_repacked(model)))
    ref_s: dict[str, float] = {}
    collator = DataCollatorForPreference(pad_token_id=tok.pad_token_id,
                                         max_length=args.max_length,
                                         truncation_mode="keep_start")

    def counting_collator(examples):
        batch = collator(examples)
        clock.count(batch["attention_mask"])
        return batch

    class Clock(transformers.TrainerCallback):
        def on_train_begin(self, *a, **k):
            clock.counting = True

        def on_step_end(self, *a, **k):
            clock.step_done()

    class TimedDPOTrainer(trl.DPOTrainer):
        def _precompute_ref_logps(self, dataset, name, batch_size):
            t0 = time.perf_counter()
            out = super()._precompute_ref_logps(dataset, name, batch_size)
            ref_s[name] = time.perf_counter() - t0
            return out

    base_mb = (_status_kb("VmRSS") or 0) / 1024
    reset = _reset_peak()
    t0 = time.perf_counter()
    trainer = TimedDPOTrainer(model=model, args=config, data_collator=counting_collator,
                              train_dataset=train_set, processing_class=tok, peft_config=lora,
                              callbacks=[Clock()])
    init_s = time.perf_counter() - t0
    trained = [p for p in trainer.model.parameters() if p.requires_grad]
    adapter_dtype = str(trained[0].dtype)
    if fp32_adapter:  # undo TRL's bf16 cast of the LoRA weights (before the optimizer exists)
        for p in trained:
            p.data = p.data.float()
    prepared = trainer.train_dataset
    trunc = args.max_length
    dataset_tokens = sum(min(len(p) + len(c), trunc) + min(len(p) + len(r), trunc)
                         for p, c, r in zip(prepared["prompt_ids"], prepared["chosen_ids"],
                                            prepared["rejected_ids"]))
    out = trainer.train()
    res = clock.result(args.batch_size)
    res.update(
        ref_s=ref_s.get("train", 0.0) if cached else 0.0, init_s=init_s,
        train_call_s=time.perf_counter() - t0, base_rss_mb=base_mb, peak_is_region=reset,
        pairs=len(prepared), dataset_tokens_per_pair=dataset_tokens / len(prepared),
        train_loss=float(out.training_loss), threads=torch.get_num_threads(),
        pad_id=tok.pad_token_id, adapter_dtype_trl=adapter_dtype,
        adapter_dtype=str(trained[0].dtype), ref_model=type(trainer.ref_model).__name__,
        nf4=nf4,
    )
    return res


def child_main(args) -> None:
    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(REPO))
    work = Path.cwd()
    tool, mode = RUNS[args._child]
    cached = mode == "cached"
    if tool == "localpeer":
        res = run_localpeer(args, cached, work)
    else:
        res = run_trl(args, cached, args._child.startswith("trl-fp32"), work)
    res.update(run=args._child)
    Path(args._out).write_text(json.dumps(res))


def profile_main(args) -> None:
    """cProfile of localpeer's train() (both modes), top rows by tottime and by cumtime."""
    import cProfile
    import io
    import pstats

    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(REPO))
    for cached in (True, False):
        work = Path(tempfile.mkdtemp(prefix="profile_", dir=Path.cwd()))
        os.chdir(work)  # a cold reference cache (runs/.reference-cache is relative)
        prof = cProfile.Profile()
        res = run_localpeer(args, cached, work, profiler=prof)
        for key in ("tottime", "cumulative"):
            buf = io.StringIO()
            pstats.Stats(prof, stream=buf).strip_dirs().sort_stats(key).print_stats(
                args.profile_top)
            lines = buf.getvalue().splitlines()
            start = next((k for k, s in enumerate(lines) if s.lstrip().startswith("ncalls")), 0)
            mode = MODE_LABEL["cached" if cached else "live"]
            print(f"\n### cProfile of localpeer train(), {mode}, {args.steps} steps x "
                  f"{args.batch_size} pairs (whole call "
                  f"{res['train_call_s']:.1f} s under the profiler, reference pass "
                  f"{res['ref_s']:.1f} s, steps 2..N {res['loop_s']:.1f} s), top "
                  f"{args.profile_top} by {key}\n")
            print("```")
            print("\n".join(s for s in lines[start:] if s.strip()))
            print("```")
    sys.stdout.flush()


# --------------------------------------------------------------------------------------------
# parent side
# --------------------------------------------------------------------------------------------

def child_cmd(args, extra: list[str]) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--steps", str(args.steps),
            "--batch-size", str(args.batch_size), "--max-length", str(args.max_length),
            "--lr", str(args.lr), "--rank", str(args.rank), "--alpha", str(args.alpha),
            "--profile-top", str(args.profile_top),
            *(["--bnb-cpu-repack"] if args.bnb_cpu_repack else []), *extra]


def child_env(tmp: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["HF_DATASETS_CACHE"] = str(tmp / "hf-datasets")
    return env


def run_child(args, name: str, tmp: Path, model: Path, test: Path, attempt: int) -> dict:
    work = tmp / f"{name}-{attempt}"
    work.mkdir()
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    out = work / "result.json"
    cmd = child_cmd(args, ["--_child", name, "--_model", str(model), "--_test", str(test),
                           "--_out", str(out)])
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout,
                              env=child_env(tmp), cwd=work)
    except subprocess.TimeoutExpired:
        return dict(run=name, status="timeout", error=f"killed after {args.timeout:g} s")
    if proc.returncode != 0 or not out.exists():
        tail = [s for s in (proc.stderr or "").strip().splitlines() if s.strip()]
        return dict(run=name, status="failed", returncode=proc.returncode,
                    error=tail[-1] if tail else f"exit {proc.returncode}, no output",
                    stderr_tail="\n".join(tail[-25:]))
    res = json.loads(out.read_text())
    res.update(status="ok", process_s=time.perf_counter() - t0,
               warnings=_warnings(proc.stderr), load_avg_before=load_before)
    timed_s = res["loop_s"] + res["ref_s"]
    res.update(timed_s=timed_s, pairs_per_s=res["pairs_timed"] / timed_s,
               tokens_per_s=res["tokens_timed"] / timed_s,
               loop_pairs_per_s=res["pairs_timed"] / res["loop_s"])
    return res


def _warnings(stderr: str) -> list[str]:
    """Distinct warning lines a child printed (TRL and transformers explain their choices)."""
    out = []
    for s in (stderr or "").splitlines():
        s = " ".join(s.split())
        s = s.split("site-packages/", 1)[-1]
        if "Warning:" in s and s not in out:
            out.append(s if len(s) <= 300 else s[:297] + "...")
    return out[:12]


def _ok(res: dict | None) -> bool:
    return bool(res) and res.get("status") == "ok"


def median_run(attempts: list[dict]) -> dict:
    """The attempt with the median pairs/s (the lower middle one for an even count), with
    every attempt's pairs/s attached; the first failure if none succeeded."""
    good = sorted((a for a in attempts if _ok(a)), key=lambda a: a["pairs_per_s"])
    if not good:
        return attempts[0]
    chosen = dict(good[(len(good) - 1) // 2])
    chosen["attempts_pairs_per_s"] = [a["pairs_per_s"] if _ok(a) else None for a in attempts]
    chosen["attempts_loop_pairs_per_s"] = [a.get("loop_pairs_per_s") for a in attempts]
    chosen["attempts_peak_mb"] = [a.get("peak_mb") for a in attempts]
    return chosen


def ratio(res: dict, ref: dict | None) -> str:
    if not (_ok(res) and _ok(ref)):
        return "n/a"
    return f"{res['pairs_per_s'] / ref['pairs_per_s']:.2f}x"


HEADER = ["tool", "mode", "nf4 repacked", "steps timed", "ref pass s", "loop s", "pairs/s",
          "pairs/s loop only", "tokens/s", "peak RSS MB", "growth MB", "vs TRL same mode",
          "vs TRL default"]


def table_rows(results: dict, names: list[str]) -> list[list[str]]:
    rows = []
    for name in names:
        res = results[name]
        tool, mode = RUNS[name]
        same = results.get("trl-cached" if mode == "cached" else "trl-live")
        if not _ok(res):
            rows.append([tool, MODE_LABEL[mode], "", f"{res['status']}: {res.get('error', '')}"]
                        + [""] * (len(HEADER) - 4))
            continue
        is_trl = name.startswith("trl")
        peak = res["peak_mb"]
        rows.append([
            tool, MODE_LABEL[mode], f"{res['nf4'].get('repacked', '?')}/{res['nf4']['layers']}",
            str(res["steps_timed"]),
            f"{res['ref_s']:.1f}" if mode == "cached" else "-",
            f"{res['loop_s']:.1f}", f"{res['pairs_per_s']:.3f}", f"{res['loop_pairs_per_s']:.3f}",
            f"{res['tokens_per_s']:,.0f}",
            f"{peak:.0f}" + ("" if res.get("peak_is_region") else "*"),
            f"{peak - res['base_rss_mb']:.0f}",
            "(ref)" if name in ("trl-cached", "trl-live") else ratio(res, same),
            "(ref)" if name == "trl-live" else ("" if is_trl and name != "trl-cached"
                                                 else ratio(res, results.get("trl-live"))),
        ])
    return rows


def markdown_table(rows: list[list[str]]) -> str:
    widths = [max(len(r[c]) for r in [HEADER] + rows) for c in range(len(HEADER))]
    right = set(range(3, len(HEADER)))
    line = lambda r: "| " + " | ".join(  # noqa: E731
        (s.rjust(w) if c in right else s.ljust(w)) for c, (s, w) in enumerate(zip(r, widths))
    ) + " |"
    sep = "|" + "|".join(("-" * (w + 1) + ":") if c in right else ("-" * (w + 2))
                         for c, w in enumerate(widths)) + "|"
    return "\n".join([line(HEADER), sep] + [line(r) for r in rows])


def target_lines(results: dict) -> list[str]:
    out = []
    for mode in ("cached", "live"):
        ours = results.get(f"localpeer-{mode}")
        for ref_name, what in ((f"trl-{mode}", "TRL same mode"), ("trl-live", "TRL default")):
            if mode == "live" and ref_name == "trl-live" and what == "TRL default":
                continue  # the same comparison as "same mode"
            ref = results.get(ref_name)
            if not (_ok(ours) and _ok(ref)):
                why = "a run failed" if ours and ref else "not run"
                out.append(f"target localpeer {MODE_LABEL[mode]} >= {TARGET_RATIO[mode]}x "
                           f"{what}: not checked ({why})")
                continue
            r = ours["pairs_per_s"] / ref["pairs_per_s"]
            mem_ok = ours["peak_mb"] <= ref["peak_mb"]
            verdict = "PASS" if r >= TARGET_RATIO[mode] and mem_ok else "MISS"
            out.append(
                f"target localpeer {MODE_LABEL[mode]} >= {TARGET_RATIO[mode]}x {what} "
                f"({RUNS[ref_name][0]} {MODE_LABEL[RUNS[ref_name][1]]}) at no more peak RSS: "
                f"{r:.2f}x pairs/s, peak {ours['peak_mb']:.0f} vs {ref['peak_mb']:.0f} MB: "
                f"{verdict}")
    return out


def machine_line() -> str:
    from importlib import metadata

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(s.split(":", 1)[1].strip() for s in fh if s.startswith("model name"))
    except (OSError, StopIteration):
        pass
    versions = [f"python {platform.python_version()}"]
    for mod in ("torch", "transformers", "peft", "trl", "bitsandbytes", "datasets"):
        try:
            versions.append(f"{mod} {metadata.version(mod)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{mod} missing")
    return f"{cpu}, {os.cpu_count()} cores, 1 thread per run; " + ", ".join(versions)


def make_inputs(tmp: Path, hidden: int, layers: int) -> tuple[Path, Path]:
    sys.path.insert(0, str(REPO / "tests"))
    import torch
    from tiny import make_tiny_model_dir

    torch.set_num_threads(1)
    model = make_tiny_model_dir(tmp / "model", hidden=hidden, layers=layers, seed=0)
    test = tmp / "test.jsonl"
    lines = [s for s in TEST_DATA.read_text().splitlines() if s.strip()][:EVAL_RECORDS]
    test.write_text("\n".join(lines) + "\n")
    return model, test


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=24, help="optimizer steps per run (>= 2)")
    ap.add_argument("--batch-size", type=int, default=4, help="pairs per step")
    ap.add_argument("--max-length", type=int, default=512, help="prompt + response tokens")
    ap.add_argument("--hidden", type=int, default=256, help="model width (a multiple of 64)")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--rank", type=int, default=16, help="LoRA rank")
    ap.add_argument("--alpha", type=int, default=32, help="LoRA alpha")
    ap.add_argument("--runs", default="localpeer-cached,localpeer-live,trl-live,trl-cached",
                    help="subset of " + ",".join(RUNS))
    ap.add_argument("--trl-fp32-adapter", action="store_true",
                    help="also run TRL with its LoRA weights cast back to float32")
    ap.add_argument("--bnb-cpu-repack", action="store_true",
                    help="leave bitsandbytes' CPU repack on (as shipped; wrong LoRA gradients "
                         "after the first eval-mode pass on AVX512-BF16 CPUs, see pin_nf4_path)")
    ap.add_argument("--repeats", type=int, default=1,
                    help="run every configuration this many times, round robin; report medians")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per run")
    ap.add_argument("--json", metavar="FILE", help="also write every number to FILE")
    ap.add_argument("--profile", action="store_true",
                    help="afterwards, cProfile localpeer's train() in both modes")
    ap.add_argument("--profile-steps", type=int, default=6)
    ap.add_argument("--profile-top", type=int, default=15)
    for hidden in ("--_child", "--_model", "--_test", "--_out"):
        ap.add_argument(hidden, help=argparse.SUPPRESS)
    ap.add_argument("--_profile", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args._child:
        child_main(args)
        return 0
    if args._profile:
        profile_main(args)
        return 0
    if args.steps < 2:
        ap.error("--steps must be >= 2 (step 1 is warm-up and not timed)")
    if args.hidden % 64:
        ap.error("--hidden must be a multiple of 64 (bitsandbytes nf4 blocks)")
    names = [s.strip() for s in args.runs.split(",") if s.strip()]
    if args.trl_fp32_adapter:
        names += [n for n in ("trl-fp32-live", "trl-fp32-cached") if n not in names]
    if any(n not in RUNS for n in names):
        ap.error(f"--runs must be a subset of {','.join(RUNS)}")

    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    meta = dict(machine=machine_line(), steps=args.steps, batch_size=args.batch_size,
                max_length=args.max_length, hidden=args.hidden, layers=args.layers, lr=args.lr,
                lora_rank=args.rank, lora_alpha=args.alpha, beta=BETA, data=str(TRAIN_DATA),
                bnb_cpu_repack=args.bnb_cpu_repack)
    attempts: dict[str, list[dict]] = {name: [] for name in names}
    localpeer_crashed = False
    with tempfile.TemporaryDirectory(prefix="train_bench_") as tmp:
        tmp = Path(tmp)
        model, test = make_inputs(tmp, args.hidden, args.layers)
        # round robin, so a burst of load from other work on the machine hits every run alike
        for attempt in range(args.repeats):
            for name in names:
                log(f"[{attempt + 1}/{args.repeats}] {name} ...")
                res = run_child(args, name, tmp, model, test, attempt)
                attempts[name].append(res)
                if _ok(res):
                    log(f"  {res['pairs_per_s']:.3f} pairs/s ({res['loop_pairs_per_s']:.3f} loop "
                        f"only), {res['tokens_per_s']:,.0f} tokens/s, peak "
                        f"{res['peak_mb']:.0f} MB ({res['process_s']:.0f} s in all)")
                else:
                    log(f"  {res['status']}: {res.get('error', '')}")
                    localpeer_crashed |= name.startswith("localpeer")
        results = {name: median_run(attempts[name]) for name in names}

        print("## localpeer vs TRL DPOTrainer, QLoRA DPO on CPU\n")
        print(f"machine: {meta['machine']}\n")
        print(f"model: tiny random Llama, hidden {args.hidden}, {args.layers} layers, nf4 (double "
              f"quant, fp32 compute); LoRA r={args.rank} alpha={args.alpha} on "
              f"{','.join(TARGETS)}; {args.steps} steps x {args.batch_size} pairs, max_length "
              f"{args.max_length}, beta {BETA}, sigmoid loss, lr {args.lr:g}; bitsandbytes CPU "
              f"repack {'ON (as shipped)' if args.bnb_cpu_repack else 'off in both tools'}; "
              f"each run {args.repeats}x round robin, the median by pairs/s is shown\n")
        print(markdown_table(table_rows(results, names)))
        print()
        print("timed: steps 2..N (end of step 1 to end of step N); cached modes add the one "
              "reference pass over all train pairs (`ref pass s`). pairs/s and tokens/s use "
              "that total; `pairs/s loop only` leaves the reference pass out. tokens = non-pad "
              "prompt+chosen+prompt+rejected tokens of the timed batches. Peak RSS = VmHWM from "
              "after model load to the end of step N; growth = peak minus RSS at that point"
              + ("; * = whole process (peak reset not allowed)" if any(
                  _ok(r) and not r.get("peak_is_region") for r in results.values()) else "")
              + ". nf4 repacked = Linear4bit layers bitsandbytes had repacked for its fused CPU "
              "kernel by the end of step N (>0: gradients through those base weights were lost).")
        print()
        for line in target_lines(results):
            print(line)
        print("\nper run:")
        for name in names:
            res = results[name]
            if not _ok(res):
                print(f"- {name}: {res['status']}: {res.get('error', '')}")
                for s in res.get("stderr_tail", "").splitlines():
                    print(f"    {s}")
                continue
            steps = sorted(res["step_s"])
            extra = (f"loss {res['loss_first']:.4f} -> {res['loss_last']:.4f}"
                     if "loss_first" in res else f"mean train loss {res['train_loss']:.4f}")
            print(f"- {name}: {res['pairs']} pairs, {res['dataset_tokens_per_pair']:.1f} "
                  f"tokens/pair over the data set; step s median {steps[len(steps) // 2]:.2f} "
                  f"(min {steps[0]:.2f}, max {steps[-1]:.2f}); RSS at reset "
                  f"{res['base_rss_mb']:.0f} MB; LoRA dtype {res['adapter_dtype']}; {extra}; "
                  f"{res['process_s']:.0f} s whole process")
            if args.repeats > 1:
                print("    every attempt: pairs/s " + ", ".join(
                    "failed" if v is None else f"{v:.3f}" for v in res["attempts_pairs_per_s"])
                    + "; loop only " + ", ".join(
                        "-" if v is None else f"{v:.3f}" for v in res["attempts_loop_pairs_per_s"])
                    + "; peak MB " + ", ".join(
                        "-" if v is None else f"{v:.0f}" for v in res["attempts_peak_mb"]))
            for w in res.get("warnings", [])[:6]:
                print(f"    stderr: {w}")
        sys.stdout.flush()

        if args.profile:
            log("profiling localpeer train() ...")
            prof_args = argparse.Namespace(**{**vars(args), "steps": args.profile_steps})
            cmd = child_cmd(prof_args, ["--_profile", "--_model", str(model),
                                        "--_test", str(test)])
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, env=child_env(tmp),
                                      cwd=tmp, timeout=2 * args.timeout)
                print(proc.stdout, end="")
                if proc.returncode != 0:
                    print(f"profile failed: {proc.stderr.strip().splitlines()[-1:]}")
            except subprocess.TimeoutExpired:
                print("profile: timeout")

    if args.json:
        Path(args.json).write_text(json.dumps(dict(meta=meta, results=results, attempts=attempts,
                                                   targets=target_lines(results)), indent=1))
        log(f"wrote {args.json}")
    return 1 if localpeer_crashed else 0


if __name__ == "__main__":
    sys.exit(main())
