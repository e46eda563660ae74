"""DPO training throughput on CUDA: `localpeer train` next to its bare step and TRL's DPOTrainer.

    python bench/gpu_throughput.py --json tp.json --text tp.txt      # ~2-3 min on an H100
    python bench/gpu_throughput.py --runs bare,localpeer --steps 16  # a subset, longer
    python bench/gpu_throughput.py --smoke                           # CPU, tiny model: plumbing

One model, one set of pairs, one global batch, the same lengths for every run, each run in a
process of its own (in this order):

  bare        what one optimizer step of the loop computes and nothing else, in-process:
              `load_policy` (nf4, LoRA), the loop's sampler, seed and micro-batches collated
              and moved to the GPU before the clock starts, then per step `sequence_logps`
              with the adapter on,
              the sigmoid DPO loss, backward, gradient clipping, the optimizer `train` makes
              (paged 8-bit AdamW on CUDA); cached reference log-probs (bench/gpu_memory.py's
              step, on this model). Before that it fills the reference cache the next run reads.
  localpeer   `python -m localpeer train recipe.yaml`, the CLI as a user runs it, with the same
              recipe; its reference log-probs come from that warm cache (train.cache_reference,
              the default), so it computes what the bare step computes. Step times are the
              moments each metrics.jsonl line appears (polled every 10 ms).
  trl-cached  TRL's DPOTrainer (peft LoRA + the same nf4 base, bf16, paged_adamw_8bit,
              `precompute_ref_log_probs=True`: one reference pass before training, timed apart)
  trl-live    the same with TRL's default, a reference forward (adapter off) on every batch
              (both TRL runs in one process, so its imports are paid once; the model is
              loaded afresh for each)

Model: a random Llama-3.2-1B shape (hidden 2048, 16 layers, 32 heads, 8 KV heads, MLP 8192,
vocab 128,256, tied embeddings; 1.24e9 parameters) built on the GPU in bf16 and saved as
safetensors with tests/tiny.py's byte-level tokenizer in --model-dir ($LOCALPEER_LLAMA1B_DIR,
kept and reused when given). LoRA r=16, alpha 32, dropout 0 on q,k,v,o,gate,up,down; beta 0.1;
gradient checkpointing on (as the GPU recipes; --no-gradient-checkpointing for off).

Data: the first records of data/personaknob-starter/train.jsonl that hold --pairs golden >
reject_k pairs (dims A,T,E,C), 2 held-out records. max_length = max_prompt_length = 512 so TRL
(which has no max_prompt_length) and localpeer cut the same tokens; with the byte-level
tokenizer prompts are 233-351 tokens and responses longer than the rest, so every sequence is
exactly 512 tokens and every pair exactly 1,024.

Counting: pairs/s over the timed steps; tokens/s = pairs/s x the subset's mean tokens per pair
(prompt + chosen + prompt + rejected after truncation: what TRL's attention mask counts; exact
when every pair has the same count, which the JSON records). localpeer processes fewer tokens
than that (its packed rows hold a prompt and a shared golden once); `processed_tokens_per_s`
shows those (what its metrics.jsonl reports).

Timing: --steps optimizer steps per run, the first --warmup of them dropped (CUDA warm-up,
allocator growth, first-batch kernels); steady state = the rest, from the end of step warmup to
the end of the last step, every step ending in a GPU synchronisation (the loop's own copy of the
step's statistics, the bare step's loss, a torch.cuda.synchronize in TRL's step callback).

Targets (reported, not asserted): localpeer >= 0.8x the bare step; localpeer >= 1.5x TRL,
against TRL cached (steady state, no reference forward: the same work as localpeer's) and TRL
per batch (its default). Exit status: 0 all runs measured and the targets met, 1 a target
missed, 2 a run failed or there is no CUDA (the JSON says why).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # localpeer, also where it is not installed
TRAIN_DATA = ROOT / "data" / "personaknob-starter" / "train.jsonl"
TEST_DATA = ROOT / "data" / "personaknob-starter" / "test.jsonl"
DIMS = ("A", "T", "E", "C")
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
BETA = 0.1
GIB = 1024**3
# Llama-3.2-1B's shape (meta-llama/Llama-3.2-1B-Instruct config.json)
LLAMA_1B = {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
            "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
            "max_position_embeddings": 131072, "rope_theta": 500000.0, "rms_norm_eps": 1e-5,
            "tie_word_embeddings": True}
# --smoke: a model the CPU trains in milliseconds (vocab = the tiny tokenizer's)
TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 320,
        "max_position_embeddings": 2048, "tie_word_embeddings": False}
RUNS = ("bare", "localpeer", "trl-cached", "trl-live")
TARGET_VS_BARE = 0.8
TARGET_VS_TRL = 1.5
EVAL_RECORDS = 2  # localpeer evaluates before and after training, outside the timed steps


@dataclass(frozen=True)
class Setup:
    """What every run shares; written to setup.json for the child processes."""

    model: str  # the model folder
    work: str  # scratch: data subset, recipes, run folders, runs/.reference-cache
    train: str  # the train subset (jsonl)
    test: str  # the held-out subset (jsonl)
    pairs: int  # pairs in the train subset
    tokens_per_pair: float  # mean prompt+chosen+prompt+rejected tokens after truncation
    tokens_per_pair_exact: bool  # every pair has that count
    batch: int  # pairs per optimizer step, every run
    max_length: int  # prompt + response tokens (and the prompt cap)
    steps: int  # optimizer steps per run
    warmup: int  # steps dropped before the steady state
    lr: float
    rank: int
    alpha: int
    gradient_checkpointing: bool
    micro_batch_tokens: int  # localpeer's train.micro_batch_tokens (0 = off)
    device: str  # cuda, or cpu with --smoke
    shape: dict  # the model's LlamaConfig fields


# --------------------------------------------------------------------------------------------
# shared pieces (also used by bench/gpu_unsloth.py and tests/gpu/test_cli_resume.py)
# --------------------------------------------------------------------------------------------

def build_llama(folder: Path, shape: dict, device: str = "cuda", seed: int = 0) -> Path:
    """A random bf16 Llama of `shape` with tests/tiny.py's tokenizer, saved as safetensors;
    reused when the folder already holds that shape (bench/gpu_memory.py's builder)."""
    sys.path.insert(0, str(ROOT / "bench"))
    import gpu_memory

    folder = Path(folder)
    if not gpu_memory.model_dir_ready(folder, shape):
        gpu_memory.build_model_dir(folder, shape, device=device, seed=seed)
    return folder


def parameter_count(shape: dict) -> int:
    h, i, n = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"]
    kv = h // shape["num_attention_heads"] * shape["num_key_value_heads"]
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * i + 2 * h
    embed = shape["vocab_size"] * h * (1 if shape.get("tie_word_embeddings") else 2)
    return n * per_layer + embed + h


@dataclass
class CliTrace:
    """One `localpeer train` process, as seen from outside."""

    returncode: int | None  # None: killed at the deadline
    seconds: float  # spawn to exit
    step_seen_s: dict[int, float]  # optimizer step -> seconds from spawn to its metrics line
    interrupted_after: int | None  # the step whose line triggered the SIGINT, if one was sent
    log: str  # stdout + stderr


def run_cli(cmd: list[str], cwd: Path, metrics: Path, timeout_s: float,
            env: dict | None = None, log_path: Path | None = None,
            interrupt_after: int | None = None, poll_s: float = 0.01) -> CliTrace:
    """Run `cmd`, timestamp each optimizer-step line of `metrics` as it appears, optionally
    send SIGINT (Ctrl-C) once the line of step `interrupt_after` is there, and kill the process
    at `timeout_s`. A rewritten file (a resumed run truncates it) is read again from the
    start; steps already seen keep their first time."""
    log_path = Path(log_path) if log_path else Path(tempfile.mkstemp(suffix=".log")[1])
    seen: dict[int, float] = {}
    offset, inode, sent, killed = 0, None, None, False
    t0 = time.perf_counter()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            while True:
                done = proc.poll() is not None
                now = time.perf_counter() - t0
                offset, inode = _read_new_lines(metrics, offset, inode, seen, now)
                if interrupt_after is not None and sent is None and interrupt_after in seen:
                    proc.send_signal(signal.SIGINT)
                    sent = interrupt_after
                if done:
                    break
                if now > timeout_s:
                    proc.kill()
                    proc.wait()
                    killed = True
                    break
                time.sleep(poll_s)
        finally:
            if proc.poll() is None:  # interrupted from outside (SIGTERM from `timeout`)
                proc.kill()
                proc.wait()
    seconds = time.perf_counter() - t0
    return CliTrace(None if killed else proc.returncode, seconds, seen, sent,
                    log_path.read_text(errors="replace"))


def _read_new_lines(path: Path, offset: int, inode, seen: dict, now: float):
    try:
        st = path.stat()
    except FileNotFoundError:
        return offset, inode
    if st.st_ino != inode or st.st_size < offset:
        offset, inode = 0, st.st_ino
    with open(path, "rb") as f:
        f.seek(offset)
        chunk = f.read()
    end = chunk.rfind(b"\n") + 1  # only whole lines; the rest is read next time
    for raw in chunk[:end].splitlines():
        line = json.loads(raw)
        if "split" not in line:
            seen.setdefault(int(line["step"]), now)
    return offset + end, inode


def step_lines(metrics: Path) -> list[dict]:
    if not Path(metrics).exists():
        return []
    lines = [json.loads(s) for s in Path(metrics).read_text().splitlines() if s.strip()]
    return [ln for ln in lines if "split" not in ln]


def steady(step_end_s: dict[int, float], warmup: int, batch: int,
           tokens_per_pair: float) -> dict:
    """Steady-state rates from the end times of steps warmup..last (seconds on any clock)."""
    steps = sorted(step_end_s)
    timed = [s for s in steps if s > warmup]
    if warmup not in step_end_s or not timed:
        return {"steps_timed": 0, "error": f"fewer than {warmup + 1} steps finished"}
    seconds = step_end_s[timed[-1]] - step_end_s[warmup]
    gaps = [step_end_s[s] - step_end_s[s - 1] for s in timed if s - 1 in step_end_s]
    pairs_per_s = len(timed) * batch / seconds
    return {"steps_timed": len(timed), "seconds_timed": round(seconds, 3),
            "seconds_per_step": round(seconds / len(timed), 4),
            "seconds_per_step_median": round(statistics.median(gaps), 4) if gaps else None,
            "pairs_per_s": round(pairs_per_s, 3),
            "tokens_per_s": round(pairs_per_s * tokens_per_pair, 1)}


def child_env(extra_path: list[str] = ()) -> dict:
    """The environment of every run: offline, the project importable, and the CUDA allocator
    as `localpeer train` sets it (expandable segments) for all runs alike."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *extra_path]
                                        + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("HF_DATASETS_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("TQDM_DISABLE", "1")
    env.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    env.setdefault("PYTHONUNBUFFERED", "1")
    if "PYTORCH_CUDA_ALLOC_CONF" not in env and "PYTORCH_ALLOC_CONF" not in env:
        env["PYTORCH_CUDA_ALLOC_CONF"] = "expandable_segments:True"
    return env


def recipe_overrides(setup: Setup, out_dir: Path, backend: str = "peft") -> list[str]:
    """The one recipe of every localpeer run (the bare step loads the same)."""
    from localpeer.config import all_keys

    overrides = [
        f"model={setup.model}", f"out_dir={out_dir}", "quantize=nf4", f"backend={backend}",
        "dtype=auto", f"train.steps={setup.steps}", f"train.batch_size={setup.batch}",
        "train.grad_accum=1", f"train.lr={setup.lr}", "train.warmup_steps=0",
        f"train.max_length={setup.max_length}", f"train.max_prompt_length={setup.max_length}",
        f"train.gradient_checkpointing={str(setup.gradient_checkpointing).lower()}",
        "train.eval_every=0", "train.eval_pairs=4", "train.checkpoint_every=0",
        "train.cache_reference=true", "train.optimizer=auto", "train.seed=0",
        f"lora.rank={setup.rank}", f"lora.alpha={setup.alpha}", "lora.dropout=0",
        f"lora.targets={','.join(LORA_TARGETS)}", f"data.train={setup.train}",
        f"data.test={setup.test}", f"data.dims={','.join(DIMS)}", f"dpo.beta={BETA}",
        "dpo.loss=sigmoid"]
    if "train.micro_batch_tokens" in all_keys():
        overrides.append(f"train.micro_batch_tokens={setup.micro_batch_tokens}")
    return overrides


def write_recipe(path: Path, overrides: list[str]) -> Path:
    import yaml

    from localpeer.config import load_recipe, parse_overrides

    load_recipe(None, overrides)  # fails here, with the key, rather than in the child
    path.write_text(yaml.safe_dump(parse_overrides(overrides), sort_keys=False))
    return path


def subset_records(n_pairs: int, dest: Path) -> int:
    """The first records of the starter train set that hold >= n_pairs pairs of DIMS."""
    from localpeer.data.personaknob import read_records, record_pairs

    kept, count = [], 0
    lines = [s for s in TRAIN_DATA.read_text().splitlines() if s.strip()]
    for raw, record in zip(lines, read_records(TRAIN_DATA)):
        if count >= n_pairs:
            break
        kept.append(raw)
        count += sum(p.dim in DIMS for p in record_pairs(record))
    dest.write_text("\n".join(kept) + "\n")
    return count


def pair_token_counts(model: str, train: Path, max_length: int) -> list[int]:
    """prompt+chosen + prompt+rejected tokens of every subset pair, as localpeer cuts them."""
    from transformers import AutoTokenizer

    from localpeer.data.personaknob import read_records, record_pairs
    from localpeer.train.logps import tokenize_pairs

    tok = AutoTokenizer.from_pretrained(model)
    pairs = [p for r in read_records(train) for p in record_pairs(r) if p.dim in DIMS]
    tokenized, _ = tokenize_pairs(tok, pairs, DIMS, max_length, max_length)
    return [2 * len(p.prompt) + len(p.chosen) + len(p.rejected) for p in tokenized]


def prepare(args, log) -> Setup:
    """Model folder, data subset and setup.json in the work folder."""
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    shape = TINY if args.smoke else LLAMA_1B
    model = Path(args.model_dir or work / "model").resolve()
    t0 = time.perf_counter()
    if args.smoke:
        build_llama(model, shape, device="cpu")
    else:  # in a child: the parent never holds a CUDA context while the runs measure
        done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--_build",
                               str(model)], env=child_env(), capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"building the model failed:\n{done.stderr[-3000:]}")
    log(f"model {model} ready in {time.perf_counter() - t0:.1f} s")
    train, test = work / "train.jsonl", work / "test.jsonl"
    pairs = subset_records(args.pairs, train)
    test_lines = [s for s in TEST_DATA.read_text().splitlines() if s.strip()][:EVAL_RECORDS]
    test.write_text("\n".join(test_lines) + "\n")
    counts = pair_token_counts(str(model), train, args.max_length)
    setup = Setup(str(model), str(work), str(train), str(test), pairs,
                  round(sum(counts) / len(counts), 2), min(counts) == max(counts), args.batch,
                  args.max_length, args.steps, args.warmup, args.lr, args.rank, args.alpha,
                  args.gradient_checkpointing, args.micro_batch_tokens,
                  "cpu" if args.smoke else "cuda", shape)
    (work / "setup.json").write_text(json.dumps(dataclasses.asdict(setup), indent=1))
    return setup


def load_setup(path: Path) -> Setup:
    return Setup(**json.loads(Path(path).read_text()))


def cache_snapshot(work: Path) -> dict[str, int]:
    folder = Path(work) / "runs" / ".reference-cache"
    return {p.name: p.stat().st_mtime_ns for p in folder.glob("*")} if folder.exists() else {}


def run_localpeer(setup: Setup, backend: str, timeout_s: float, log) -> dict:
    """`python -m localpeer train` with the shared recipe; rates from its metrics lines."""
    work = Path(setup.work)
    out_dir = work / "runs" / f"localpeer-{backend}"
    shutil.rmtree(out_dir, ignore_errors=True)
    recipe = write_recipe(work / f"recipe-{backend}.yaml",
                          recipe_overrides(setup, out_dir, backend))
    before = cache_snapshot(work)
    log(f"localpeer train, backend {backend} (limit {timeout_s:.0f} s) ...")
    trace = run_cli([sys.executable, "-m", "localpeer", "train", str(recipe)], work,
                    out_dir / "metrics.jsonl", timeout_s, env=child_env(),
                    log_path=work / f"localpeer-{backend}.log")
    lines = step_lines(out_dir / "metrics.jsonl")
    res = {"backend": backend, "returncode": trace.returncode,
           "process_s": round(trace.seconds, 1), "steps_done": len(lines),
           "first_step_s": round(trace.step_seen_s[1], 2) if 1 in trace.step_seen_s else None,
           "step_seen_s": {str(k): round(v, 3) for k, v in sorted(trace.step_seen_s.items())},
           "reference_cache": ("warm: no reference forward in the run"
                               if cache_snapshot(work) == before and before
                               else "computed in the run (the cache was not warm)")}
    res.update(steady(trace.step_seen_s, setup.warmup, setup.batch, setup.tokens_per_pair))
    steady_lines = [ln for ln in lines if ln["step"] > setup.warmup]
    if steady_lines:
        res["processed_tokens_per_s"] = round(statistics.median(
            ln["tokens_per_s"] for ln in steady_lines), 1)
        res["peak_allocated_gib"] = round(lines[-1]["peak_mem_mb"] / 1024, 3)
        if "peak_reserved_mb" in lines[-1]:
            res["peak_reserved_gib"] = round(lines[-1]["peak_reserved_mb"] / 1024, 3)
        res["loss_first"], res["loss_last"] = lines[0]["loss"], lines[-1]["loss"]
    if trace.returncode is None:
        res.update(status="timeout", error=f"killed after {timeout_s:.0f} s "
                                           f"({len(lines)} steps done)")
    elif trace.returncode != 0 or res["steps_timed"] == 0:
        res.update(status="failed", error=_last_line(trace.log)
                   or f"exit {trace.returncode}")
    else:
        res["status"] = "ok"
    if res["status"] != "ok":
        res["log_tail"] = trace.log[-3000:]
    return res


def _last_line(text: str) -> str:
    lines = [s.strip() for s in text.splitlines() if s.strip()]
    return lines[-1][:500] if lines else ""


# --------------------------------------------------------------------------------------------
# child processes
# --------------------------------------------------------------------------------------------

def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def _memory(device: str) -> dict:
    if device != "cuda":
        return {}
    import torch

    return {"peak_allocated_gib": round(torch.cuda.max_memory_allocated() / GIB, 3),
            "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / GIB, 3)}


def child_build(folder: str) -> dict:
    build_llama(Path(folder), LLAMA_1B, device="cuda")
    return {"status": "ok"}


def warm_reference(setup: Setup, policy, data, recipe, pad_id: int) -> dict:
    """Fill runs/.reference-cache (under the work folder, the cwd) with every train and test
    pair's reference log-probs, the files `localpeer train` reads for this recipe; the same
    values are also stored under the unsloth backend's key, so that its run
    (bench/gpu_unsloth.py) times training steps too. Returns what was written."""
    from types import SimpleNamespace

    from localpeer.train.reference import CACHE, cache_key, reference_logps

    t0 = time.perf_counter()
    written = {}
    for split, pairs in (("train", data.train), ("test", data.test)):
        reference_logps(policy, pairs, recipe, pad_id, split)
        src = CACHE / f"{cache_key(policy, pairs, recipe)}.safetensors"
        other = SimpleNamespace(source=policy.source, backend="unsloth")
        dst = CACHE / f"{cache_key(other, pairs, recipe)}.safetensors"
        shutil.copyfile(src, dst)
        written[split] = {"peft": src.name, "unsloth": dst.name}
    _sync(setup.device)
    return {"warm_reference_s": round(time.perf_counter() - t0, 2), "cache_files": written}


def loop_batches(setup: Setup, policy, data, recipe) -> list[list[list[int]]]:
    """The pair indices of every step's micro-batches, as `train` draws and splits them."""
    from localpeer.train import loop
    from localpeer.train.sampler import RecordSampler, StratifiedSampler

    dims = [p.dim for p in data.train]
    if policy.share_prompt:
        sampler = RecordSampler(dims, [p.record_id for p in data.train], len(data.dims),
                                setup.batch, recipe.train.seed)
    else:
        sampler = StratifiedSampler(dims, len(data.dims), setup.batch, recipe.train.seed)
    split = getattr(loop, "micro_batches", None)
    steps = []
    for _ in range(setup.steps):
        batch = sampler.next_batch()
        steps.append(split(data, batch, recipe, policy.share_prompt) if split else [batch])
    return steps


def on_device(batch: dict, device) -> dict:
    """A collated batch with its tensors (also those of the packed layout's segments) on
    `device`; 0-dim ones (counts the code reads with int()) stay on the host, as the loop
    leaves them, so no step waits for the GPU on their account."""
    import torch

    def move(v):
        if torch.is_tensor(v):
            return v.to(device) if v.dim() else v
        return {k: move(x) for k, x in v.items()} if isinstance(v, dict) else v
    return {k: move(v) for k, v in batch.items()}


def child_bare(setup: Setup, warm_only: bool = False) -> dict:
    import torch

    from localpeer.config import load_recipe
    from localpeer.train import lagdpo
    from localpeer.train.backends import load_policy
    from localpeer.train.logps import collate, sequence_logps
    from localpeer.train.loop import load_pairs, make_optimizer
    from localpeer.train.reference import reference_logps

    work = Path(setup.work)
    os.chdir(work)  # the reference cache is runs/.reference-cache, relative
    recipe = load_recipe(None, recipe_overrides(setup, work / "runs" / "bare"))
    t0 = time.perf_counter()
    policy = load_policy(recipe, Path(setup.model))
    _sync(setup.device)
    res = {"load_s": round(time.perf_counter() - t0, 2), "share_prompt": policy.share_prompt}
    tok = policy.tokenizer
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    data = load_pairs(recipe, tok)
    res.update(warm_reference(setup, policy, data, recipe, pad_id))
    if warm_only:
        return res | {"status": "ok"}
    ref = reference_logps(policy, data.train, recipe, pad_id, "train")  # (N, 2), from the cache
    t1 = time.perf_counter()
    steps = []
    for micro in loop_batches(setup, policy, data, recipe):
        steps.append([(collate([data.train[i] for i in ids], pad_id, policy.share_prompt),
                       ref[ids]) for ids in micro])
    res["collate_s_per_step"] = round((time.perf_counter() - t1) / len(steps), 4)
    # on the device before the clock starts: the bare step is the GPU's work alone
    steps = [[(on_device(t, policy.device), r.to(policy.device)) for t, r in s] for s in steps]
    res["micro_batches_per_step"] = round(sum(map(len, steps)) / len(steps), 2)
    res["processed_tokens_per_step"] = round(sum(
        int(t["attention_mask"].sum()) for s in steps for t, _ in s) / len(steps), 1)
    res["padded_tokens_per_step"] = round(sum(
        t["input_ids"].numel() for s in steps for t, _ in s) / len(steps), 1)
    optimizer = make_optimizer(recipe, policy)
    params = [p for p in policy.model.parameters() if p.requires_grad]
    policy.model.train()
    if setup.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    ends, losses = {}, []
    _sync(setup.device)
    start = time.perf_counter()
    for step, micro in enumerate(steps, 1):
        total = 0.0
        for tensors, r in micro:
            pc, pr = sequence_logps(policy.model, tensors)  # (B,) each
            margins = lagdpo.dpo_margins(pc, pr, r[:, 0], r[:, 1], BETA)
            loss = lagdpo.sigmoid_loss(margins, BETA).sum() / setup.batch
            loss.backward()
            total = total + loss.detach()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(total))  # .item() waits for the GPU: the step is over here
        ends[step] = time.perf_counter() - start
    res.update(steady(ends, setup.warmup, setup.batch, setup.tokens_per_pair))
    res["processed_tokens_per_s"] = round(
        res["processed_tokens_per_step"] / res["seconds_per_step"], 1)
    res.update(_memory(setup.device))
    res.update(loss_first=losses[0], loss_last=losses[-1], status="ok")
    return res


def child_trl(setup: Setup, modes: list[str]) -> dict:
    """TRL's runs, one after the other in this process (its imports are paid once); the
    model is loaded afresh for each, as DPOTrainer wraps it with peft."""
    import gc

    import torch

    from localpeer.data.personaknob import read_records, record_pairs

    os.environ["HF_DATASETS_CACHE"] = str(Path(setup.work) / "trl-datasets")  # before the import
    pairs = [p for r in read_records(setup.train) for p in record_pairs(r) if p.dim in DIMS]
    rows = [{"prompt": [{"role": "user", "content": p.prompt}],
             "chosen": [{"role": "assistant", "content": p.chosen}],
             "rejected": [{"role": "assistant", "content": p.rejected}]} for p in pairs]
    out = {}
    for mode in modes:
        try:
            out[mode] = trl_run(setup, rows, cached=mode == "trl-cached")
        except Exception as err:  # the other mode still runs
            out[mode] = {"status": "failed", "error": f"{type(err).__name__}: {err}",
                         "traceback": traceback.format_exc()[-4000:]}
        gc.collect()
        if setup.device == "cuda":
            torch.cuda.empty_cache()
    return {"status": "ok", "modes": out}


def trl_run(setup: Setup, rows: list[dict], cached: bool) -> dict:
    import datasets
    import peft
    import torch
    import transformers
    import trl

    cuda = setup.device == "cuda"
    work = Path(setup.work) / ("trl-cached" if cached else "trl-live")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    dtype = torch.bfloat16 if cuda else torch.float32
    t0 = time.perf_counter()
    tok = transformers.AutoTokenizer.from_pretrained(setup.model)
    bnb = transformers.BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=dtype)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        setup.model, dtype=dtype, quantization_config=bnb,
        device_map={"": 0 if cuda else "cpu"}, use_safetensors=True)
    model.config.use_cache = False
    load_s = time.perf_counter() - t0
    gc_kwargs = {"use_reentrant": False} if setup.gradient_checkpointing else None
    config = trl.DPOConfig(
        output_dir=str(work / "out"), max_steps=setup.steps,
        per_device_train_batch_size=setup.batch, gradient_accumulation_steps=1,
        learning_rate=setup.lr, lr_scheduler_type="cosine", warmup_steps=0, weight_decay=0.0,
        max_grad_norm=1.0, optim="paged_adamw_8bit" if cuda else "adamw_torch", beta=BETA,
        loss_type=["sigmoid"], max_length=setup.max_length, truncation_mode="keep_start",
        precompute_ref_log_probs=cached, precompute_ref_batch_size=setup.batch,
        gradient_checkpointing=setup.gradient_checkpointing,
        gradient_checkpointing_kwargs=gc_kwargs, bf16=cuda, fp16=False, use_cpu=not cuda,
        report_to="none", logging_strategy="no", save_strategy="no", eval_strategy="no",
        disable_tqdm=True, dataloader_num_workers=0, seed=0, data_seed=0)
    lora = peft.LoraConfig(r=setup.rank, lora_alpha=setup.alpha, lora_dropout=0.0,
                           task_type="CAUSAL_LM", target_modules=list(LORA_TARGETS))
    ends: dict[int, float] = {}
    ref_s: dict[str, float] = {}
    clock = {"start": None}

    class StepClock(transformers.TrainerCallback):
        def on_train_begin(self, *a, **k):
            clock["start"] = time.perf_counter()

        def on_step_end(self, args, state, *a, **k):
            _sync(setup.device)  # TRL does not wait for the GPU at a step's end; we do
            ends[state.global_step] = time.perf_counter() - clock["start"]

    class TimedDPOTrainer(trl.DPOTrainer):
        def _precompute_ref_logps(self, dataset, name, batch_size):
            t = time.perf_counter()
            out = super()._precompute_ref_logps(dataset, name, batch_size)
            ref_s[name] = time.perf_counter() - t
            return out

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t1 = time.perf_counter()
    trainer = TimedDPOTrainer(model=model, args=config,
                              train_dataset=datasets.Dataset.from_list(rows),
                              processing_class=tok, peft_config=lora, callbacks=[StepClock()])
    init_s = time.perf_counter() - t1
    trained = [p for p in trainer.model.parameters() if p.requires_grad]
    trainer.train()
    res = {"load_s": round(load_s, 2), "init_s": round(init_s, 2),
           "ref_pass_s": round(ref_s["train"], 2) if "train" in ref_s else None,
           "pairs_kept": len(trainer.train_dataset), "adapter_dtype": str(trained[0].dtype),
           "trl": trl.__version__}
    res.update(steady(ends, setup.warmup, setup.batch, setup.tokens_per_pair))
    res.update(_memory(setup.device))
    res["status"] = "ok" if res["steps_timed"] else "failed"
    return res


def child_main(args) -> int:
    if args._build:
        result = child_build(args._build)
        print(json.dumps(result))
        return 0
    setup = load_setup(args._setup)
    try:
        if args._child == "bare":
            res = child_bare(setup, warm_only=args._warm_only)
        else:
            res = child_trl(setup, args._modes.split(","))
    except Exception as err:  # the parent reports it next to the other runs
        res = {"status": "failed", "error": f"{type(err).__name__}: {err}",
               "traceback": traceback.format_exc()[-4000:]}
    Path(args._out).write_text(json.dumps(res))
    return 0 if res.get("status") == "ok" else 1


# --------------------------------------------------------------------------------------------
# parent side
# --------------------------------------------------------------------------------------------

def run_child(setup: Setup, name: str, timeout_s: float, log, warm_only: bool = False,
              modes: list[str] = ()) -> dict:
    work = Path(setup.work)
    out = work / f"{name}.result.json"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_child", name, "--_setup",
           str(work / "setup.json"), "--_out", str(out)]
    cmd += (["--_warm-only"] if warm_only else []) + (["--_modes", ",".join(modes)] if modes
                                                       else [])
    what = " (reference cache only)" if warm_only else f" ({', '.join(modes)})" if modes else ""
    log(f"{name}{what} (limit {timeout_s:.0f} s) ...")
    t0 = time.perf_counter()
    try:
        done = subprocess.run(cmd, cwd=work, env=child_env(), capture_output=True, text=True,
                              timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "error": f"killed after {timeout_s:.0f} s"}
    (work / f"{name}.log").write_text(done.stdout + done.stderr)
    if not out.exists():
        return {"status": "failed", "error": _last_line(done.stderr) or f"exit {done.returncode}",
                "log_tail": done.stderr[-3000:]}
    res = json.loads(out.read_text())
    res["process_s"] = round(time.perf_counter() - t0, 1)
    return res


def ratio(a: dict | None, b: dict | None) -> float | None:
    if not (a and b and a.get("status") == "ok" and b.get("status") == "ok"):
        return None
    return round(a["pairs_per_s"] / b["pairs_per_s"], 3)


def targets(runs: dict) -> list[dict]:
    lp = runs.get("localpeer")
    rows = [("localpeer train >= 0.8x the bare step", "bare", TARGET_VS_BARE),
            ("localpeer train >= 1.5x TRL cached (steady state, no reference forward)",
             "trl-cached", TARGET_VS_TRL),
            ("localpeer train >= 1.5x TRL per batch (TRL's default)", "trl-live",
             TARGET_VS_TRL)]
    out = []
    for what, other, need in rows:
        r = ratio(lp, runs.get(other))
        out.append({"target": what, "against": other, "need": need, "ratio": r,
                    "pass": None if r is None else r >= need})
    return out


def report_text(report: dict) -> str:
    s = report.get("setup") or {}
    lines = [f"localpeer train vs bare step vs TRL DPOTrainer, {report.get('gpu', '?')}"]
    if report.get("error"):
        lines.append(f"NOT MEASURED: {report['error']}")
    if s:
        lines.append(
            f"model: random Llama, {report.get('params_b', '?')}e9 parameters "
            f"(hidden {s['shape']['hidden_size']}, {s['shape']['num_hidden_layers']} layers, "
            f"vocab {s['shape']['vocab_size']}), nf4 + LoRA r={s['rank']}; {s['batch']} "
            f"pairs/step, max_length {s['max_length']}, {s['tokens_per_pair']:.0f} tokens/pair"
            f"{'' if s['tokens_per_pair_exact'] else ' (mean)'}; {s['steps']} steps, first "
            f"{s['warmup']} dropped; gradient checkpointing "
            f"{'on' if s['gradient_checkpointing'] else 'off'}; micro_batch_tokens "
            f"{s['micro_batch_tokens']}")
    header = (f"{'run':<11} {'status':<8} {'timed':>5} {'s/step':>7} {'pairs/s':>8} "
              f"{'tokens/s':>9} {'processed/s':>11} {'alloc GiB':>9} {'resv GiB':>8} "
              f"{'ref pass s':>10}")
    lines += ["", header]
    for name in RUNS:
        r = report.get("runs", {}).get(name)
        if r is None:
            continue
        if r.get("status") != "ok":
            lines.append(f"{name:<11} {r.get('status', '?'):<8} {r.get('error', '')[:150]}")
            continue
        lines.append(
            f"{name:<11} {'ok':<8} {r['steps_timed']:>5} {r['seconds_per_step']:>7.3f} "
            f"{r['pairs_per_s']:>8.2f} {r['tokens_per_s']:>9,.0f} "
            f"{_fmt(r.get('processed_tokens_per_s'), ',.0f'):>11} "
            f"{_fmt(r.get('peak_allocated_gib'), '.2f'):>9} "
            f"{_fmt(r.get('peak_reserved_gib'), '.2f'):>8} "
            f"{_fmt(r.get('ref_pass_s'), '.1f'):>10}")
    lines.append("")
    for t in report.get("targets", []):
        verdict = {True: "PASS", False: "FAIL", None: "not measured"}[t["pass"]]
        got = "n/a" if t["ratio"] is None else f"{t['ratio']:.2f}x"
        lines.append(f"target {t['target']}: {got}: {verdict}")
    lp = report.get("runs", {}).get("localpeer", {})
    if lp.get("reference_cache"):
        lines.append(f"localpeer reference log-probs: {lp['reference_cache']}; first step "
                     f"{lp.get('first_step_s')} s after spawn")
    return "\n".join(lines) + "\n"


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def gpu_name(smoke: bool) -> str:
    if smoke:
        return "CPU (--smoke: plumbing only, not a measurement)"
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return done.stdout.strip().splitlines()[0] if done.returncode == 0 and done.stdout else "?"


def versions() -> dict:
    from importlib import metadata

    out = {"python": sys.version.split()[0]}
    for name in ("torch", "transformers", "peft", "bitsandbytes", "trl", "datasets",
                 "accelerate"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def cuda_available() -> bool:
    done = subprocess.run([sys.executable, "-c", "import torch, sys; "
                           "sys.exit(0 if torch.cuda.is_available() else 1)"], env=child_env())
    return done.returncode == 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default=",".join(RUNS), help="subset of " + ",".join(RUNS))
    ap.add_argument("--steps", type=int, default=12, help="optimizer steps per run")
    ap.add_argument("--warmup", type=int, default=3, help="first steps left out of the rates")
    ap.add_argument("--batch", type=int, default=8, help="pairs per optimizer step")
    ap.add_argument("--pairs", type=int, default=96, help="train pairs in the data subset")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--micro-batch-tokens", type=int, default=16384,
                    help="localpeer's train.micro_batch_tokens (8 packed pairs are ~4-6k)")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--alpha", type=int, default=32)
    ap.add_argument("--no-gradient-checkpointing", dest="gradient_checkpointing",
                    action="store_false")
    ap.add_argument("--model-dir", default=os.environ.get("LOCALPEER_LLAMA1B_DIR"),
                    help="the 1B folder, built there unless complete (default: in --work)")
    ap.add_argument("--work", help="scratch folder (default: a temporary one, removed)")
    ap.add_argument("--timeout", type=float, default=240.0, help="seconds per run")
    ap.add_argument("--json", help="write the JSON here (also after each run)")
    ap.add_argument("--text", help="write the text table here")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny model on the CPU: checks the plumbing, measures nothing")
    for hidden in ("--_child", "--_setup", "--_out", "--_build", "--_modes"):
        ap.add_argument(hidden, help=argparse.SUPPRESS)
    ap.add_argument("--_warm-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._child or args._build:
        return child_main(args)
    names = [n.strip() for n in args.runs.split(",") if n.strip()]
    if any(n not in RUNS for n in names):
        ap.error(f"--runs must be a subset of {','.join(RUNS)}")
    if not 0 < args.warmup < args.steps - 1:
        ap.error("need 0 < --warmup < --steps - 1 (at least two timed steps)")
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(124))  # `timeout`: finally blocks run

    def log(msg: str) -> None:
        print(f"[gpu_throughput {time.perf_counter() - t_start:5.0f}s] {msg}", file=sys.stderr,
              flush=True)

    t_start = time.perf_counter()
    report: dict = {"gpu": gpu_name(args.smoke), "versions": versions(), "runs": {}}
    scratch = None
    if not args.work:
        scratch = Path(tempfile.mkdtemp(prefix="localpeer-throughput-"))
        args.work = str(scratch)

    def write() -> None:
        report["targets"] = targets(report["runs"])
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
        if args.text:
            Path(args.text).write_text(report_text(report))

    status = 2
    try:
        if not args.smoke and not cuda_available():
            report["error"] = "no CUDA device (torch.cuda.is_available() is False)"
            return 2
        setup = prepare(args, log)
        report["setup"] = dataclasses.asdict(setup)
        report["params_b"] = round(parameter_count(setup.shape) / 1e9, 3)
        write()
        trl_modes = [n for n in names if n.startswith("trl-")]
        for name in [n for n in names if not n.startswith("trl-")] + trl_modes[:1]:
            if name == "localpeer":
                if "bare" not in names:  # the warm reference cache comes from the bare child
                    run_child(setup, "bare", args.timeout, log, warm_only=True)
                results = {name: run_localpeer(setup, "peft", args.timeout, log)}
            elif name == "bare":
                results = {name: run_child(setup, name, args.timeout, log)}
            else:  # both TRL modes in one process
                res = run_child(setup, "trl", args.timeout * len(trl_modes), log,
                                modes=trl_modes)
                results = res.get("modes") or {m: res for m in trl_modes}
            for key, res in results.items():
                report["runs"][key] = res
                log(f"{key}: {res.get('status')} " + (
                    f"{res['pairs_per_s']} pairs/s, {res['tokens_per_s']} tokens/s"
                    if res.get("status") == "ok" else str(res.get("error", ""))))
            write()
        failed = any(r.get("status") != "ok" for r in report["runs"].values())
        missed = any(t["pass"] is False for t in targets(report["runs"]))
        status = 2 if failed else 1 if missed else 0
    except Exception as err:  # the JSON must still say what happened
        report["error"] = f"{type(err).__name__}: {err}"
        report["traceback"] = traceback.format_exc()[-4000:]
    finally:
        report["seconds"] = round(time.perf_counter() - t_start, 1)
        write()
        print(report_text(report), file=sys.stderr)
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
