"""QLoRA on CUDA: nf4 loads and trains, unsloth matches peft, an 8B-shaped step reserves <= 8 GiB.

Skipped without CUDA (tests/gpu/conftest.py). On a CUDA machine:

    python -m pytest tests/gpu -q -rA              # all; the 8B test needs ~17 GB of disk
    python -m pytest tests/gpu -q -rA -m "not slow"
    LOCALPEER_LLAMA8B_DIR=/data/llama8b python -m pytest tests/gpu -q -m slow   # reuse a folder

bench/gpu_check.sh runs these on a lent GPU machine; bench/gpu_memory.py is the 8B
measurement as a script (this file imports it).
"""

import gc
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")  # without torch: skipped at collection, not an error

from tiny import CORPUS, make_tokenizer  # noqa: E402

from localpeer.config import load_recipe  # noqa: E402
from localpeer.train.backends import load_policy  # noqa: E402
from localpeer.train.logps import tokenize_pairs  # noqa: E402
from localpeer.train.loop import train  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("logps_worker.py")
sys.path.insert(0, str(ROOT / "bench"))
import gpu_memory  # noqa: E402  (bench/ is not a package)

pytestmark = pytest.mark.gpu
WORDS = " ".join(CORPUS).lower().replace(",", "").replace(".", "").split()
# issue 11: what the caching allocator reserves (the card must hold it) for Llama-3.1-8B, nf4,
# r=16, batch 1, 1,024 prompt + 1,024 response tokens; bench/gpu_memory.py's target too
TARGET_GB = gpu_memory.TARGET_GB
# bf16 keeps 8 bits of mantissa (relative rounding 2**-8 = 0.004); two kernel paths through a
# few bf16 layers differ by a few roundings of logits of size ~1-5, hence per-token log-prob
# differences of order 0.01-0.05 nats
PER_TOKEN_MAX_DIFF = 0.15
PER_TOKEN_MEAN_DIFF = 0.03


def make_gpu_model_dir(folder: Path, hidden: int = 256, layers: int = 2,
                       init_std: float = 0.1, seed: int = 0) -> Path:
    """A random Llama with GPU-friendly shapes (head_dim 64) and tests/tiny.py's tokenizer.

    init_std is 5x Llama's default so that log-probs vary from token to token by more than a
    nat: with near-uniform logits every backend would agree whatever it computed."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = make_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden,
                         intermediate_size=2 * hidden, num_hidden_layers=layers,
                         num_attention_heads=hidden // 64,
                         num_key_value_heads=max(hidden // 128, 1),
                         max_position_embeddings=1024, tie_word_embeddings=False,
                         initializer_range=init_std, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def gpu_model(tmp_path_factory):
    return make_gpu_model_dir(tmp_path_factory.mktemp("gpu-llama") / "model")


@pytest.fixture(autouse=True)
def free_cuda():
    yield
    gc.collect()
    torch.cuda.empty_cache()


def write_records(path: Path, per_dim: int, seed: int) -> Path:
    """PersonaKnob records: one rejected response per record, in each of the four dimensions."""
    import random

    rng = random.Random(seed)
    with open(path, "w") as f:
        for k, d in enumerate(d for d in "ATEC" for _ in range(per_dim)):
            words = [rng.choice(WORDS) for _ in range(12)]
            rec = {"id": f"g{k}", "mask": [d], "seed_scene": "s", "context": "c", "trigger": "t",
                   "prompt": " ".join(rng.choice(WORDS) for _ in range(8)),
                   "golden": " ".join(words + ["honey"])}
            rec.update({f"reject_{x}": " ".join(words + ["babies"]) if x == d else None
                        for x in "ATEC"})
            f.write(json.dumps(rec) + "\n")
    return path


def _lora_and_base(model):
    lora = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    base = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}
    return lora, base


def test_nf4_loads_on_cuda_and_trains_lora_only(gpu_model, tmp_path, monkeypatch):
    """quantize=nf4 on CUDA: bitsandbytes Linear4bit (nf4, double quantization) on the GPU,
    bf16 compute, and three steps of the real loop (paged 8-bit AdamW, gradient checkpointing,
    cached reference) move the LoRA weights and nothing else."""
    import bitsandbytes as bnb

    monkeypatch.chdir(tmp_path)  # the reference cache (runs/.reference-cache) lands here
    recipe = load_recipe(None, [
        f"model={gpu_model}", f"out_dir={tmp_path / 'run'}", "quantize=nf4", "backend=peft",
        "dtype=auto", "train.steps=3", "train.batch_size=4", "train.lr=1e-3",
        "train.warmup_steps=0", "train.eval_every=0", "train.checkpoint_every=0",
        "train.max_length=64", "train.gradient_checkpointing=true", "lora.rank=4",
        f"data.train={write_records(tmp_path / 'train.jsonl', 8, 0)}",
        f"data.test={write_records(tmp_path / 'test.jsonl', 2, 1)}"])
    policy = load_policy(recipe, gpu_model)
    assert policy.device.type == "cuda" and policy.quantized and policy.backend == "peft"
    linear4bit = [m for m in policy.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert linear4bit, "quantize=nf4 left no bitsandbytes Linear4bit in the model"
    for m in linear4bit:
        assert m.weight.device.type == "cuda"
        assert m.weight.quant_state.quant_type == "nf4"
        assert m.weight.quant_state.nested  # double quantization
    assert policy.model.get_input_embeddings().weight.dtype == torch.bfloat16
    lora0, base0 = _lora_and_base(policy.model)
    assert lora0 and all(t.device.type == "cuda" for t in lora0.values())
    torch.cuda.reset_peak_memory_stats()
    lines = []
    train(recipe, policy, on_step=lines.append)
    assert [ln["step"] for ln in lines] == [1, 2, 3]
    assert all(math.isfinite(ln["loss"]) for ln in lines)
    # on CUDA peak_mem_mb is torch.cuda.max_memory_allocated, not the process's RSS
    assert 0 < lines[-1]["peak_mem_mb"] <= torch.cuda.max_memory_allocated() / 2**20 + 1
    lora1, base1 = _lora_and_base(policy.model)
    assert any(not torch.equal(lora0[n], lora1[n]) for n in lora0)
    assert all(torch.equal(base0[n], base1[n]) for n in base0)
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").exists()


@pytest.fixture(scope="module")
def batch_file(gpu_model, tmp_path_factory):
    """Two pairs tokenized with the folder's own tokenizer and chat template; every backend
    gets these ids, so tokenizer differences cannot pass for log-prob differences."""
    from transformers import AutoTokenizer

    from localpeer.data.personaknob import Pair

    tokenizer = AutoTokenizer.from_pretrained(str(gpu_model))
    pairs = [Pair("r0", prompt=CORPUS[0], chosen=CORPUS[1], rejected=CORPUS[3], dim="A"),
             Pair("r1", prompt=CORPUS[4], chosen=CORPUS[5] + " " + CORPUS[2],
                  rejected=CORPUS[4], dim="A")]
    tokenized, _ = tokenize_pairs(tokenizer, pairs, ("A",), 256, 128)
    path = tmp_path_factory.mktemp("batch") / "batch.json"
    path.write_text(json.dumps({"pairs": [[p.prompt, p.chosen, p.rejected] for p in tokenized],
                                "pad_id": tokenizer.pad_token_id}))
    return path


def run_worker(backend: str, model: Path, batch: Path, out: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
    done = subprocess.run([sys.executable, str(WORKER), "--backend", backend, "--model",
                           str(model), "--batch", str(batch), "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{backend} worker failed:\n{done.stderr[-4000:]}"
    return json.loads(out.read_text())


def _diffs(a: dict, b: dict) -> tuple[float, float, int]:
    """(max, mean) |a - b| over all response tokens of the batch, and the token count."""
    flat = [abs(x - y) for ra, rb in zip(a["tokens"], b["tokens"]) for x, y in zip(ra, rb)]
    assert [len(r) for r in a["tokens"]] == [len(r) for r in b["tokens"]]
    return max(flat), sum(flat) / len(flat), len(flat)


def test_peft_logps_worker_is_self_consistent(gpu_model, batch_file, tmp_path):
    """The parity test's reference side, which runs with or without unsloth: LoRA B starts at
    zero so the adapter changes nothing, and `sequence_logps` (gather - logsumexp) equals the
    sum of log_softmax over the response tokens."""
    peft_out = run_worker("peft", gpu_model, batch_file, tmp_path / "peft.json")
    for quantize in ("nf4", "none"):
        res = peft_out[quantize]
        assert res["lora_modules"] > 0 and res["lora_b_max"] == 0.0
        on, off = res["on"], res["off"]
        for t_on, t_off in zip(on["tokens"], off["tokens"]):  # base + exact zeros
            assert t_on == pytest.approx(t_off, abs=1e-5)
        sums = [sum(t) for t in on["tokens"]]
        seq = on["chosen"] + on["rejected"]
        assert seq == pytest.approx(sums, rel=1e-4, abs=1e-3)
        spread = torch.tensor([x for t in on["tokens"] for x in t]).std().item()
        assert spread > 0.5, f"log-probs barely vary ({spread:.3f}): parity would be vacuous"


def test_unsloth_matches_peft_logps_on_one_batch(gpu_model, batch_file, tmp_path):
    """Same base folder, same batch, LoRA B = 0 in both: unsloth's fast path must give the
    peft backend's log-probs within bf16 tolerance, with nf4 and without quantization."""
    import importlib.util

    if importlib.util.find_spec("unsloth") is None:
        pytest.skip("unsloth is not installed (pip install 'localpeer[gpu]')")
    fast = run_worker("unsloth", gpu_model, batch_file, tmp_path / "unsloth.json")
    if "skip" in fast:
        pytest.skip(fast["skip"])
    ref = run_worker("peft", gpu_model, batch_file, tmp_path / "peft.json")
    for quantize in ("nf4", "none"):
        assert fast[quantize]["backend"] == "unsloth" and ref[quantize]["backend"] == "peft"
        assert fast[quantize]["lora_b_max"] == 0.0
        for side in ("on", "off"):
            got, want = fast[quantize][side], ref[quantize][side]
            worst, mean, n = _diffs(got, want)
            print(f"{quantize} adapter {side}: {n} tokens, max |dlogp| {worst:.4f}, "
                  f"mean {mean:.4f}; sums unsloth {got['chosen'] + got['rejected']} "
                  f"peft {want['chosen'] + want['rejected']}")
            assert worst <= PER_TOKEN_MAX_DIFF and mean <= PER_TOKEN_MEAN_DIFF
            sums_tol = [PER_TOKEN_MEAN_DIFF * len(t) + 0.05 for t in want["tokens"]]
            for g, w, tol in zip(got["chosen"] + got["rejected"],
                                 want["chosen"] + want["rejected"], sums_tol):
                assert abs(g - w) <= tol


@pytest.fixture(scope="module")
def eight_b(tmp_path_factory):
    """The 8B-shaped measurement, once for the module: bench/gpu_memory.py in its own process,
    because the caching allocator reads PYTORCH_CUDA_ALLOC_CONF once, when CUDA starts (in this
    process, earlier tests may have started it); the script sets it first, as `train` does.
    The folder is $LOCALPEER_LLAMA8B_DIR when set (built there if incomplete, then kept), else
    a temporary one removed afterwards."""
    given = os.environ.get("LOCALPEER_LLAMA8B_DIR")
    folder = Path(given) if given else tmp_path_factory.mktemp("llama8b") / "model"
    report_path = tmp_path_factory.mktemp("llama8b-report") / "gpu_memory.json"
    try:
        if not gpu_memory.model_dir_ready(folder):
            free = gpu_memory.free_disk_gb(folder.parent)
            if free < gpu_memory.DISK_NEEDED_GB:
                pytest.skip(f"{free:.1f} GB free under {folder.parent}; the 8B-shaped bf16 "
                            f"safetensors need {gpu_memory.DISK_NEEDED_GB} GB (set "
                            "LOCALPEER_LLAMA8B_DIR to a folder on a larger disk)")
        done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_memory.py"),
                               "--model-dir", str(folder), "--settings", "1024:1024,128:1024",
                               "--json", str(report_path)],
                              capture_output=True, text=True, cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(
                                  filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))})
        print(done.stderr)
        if not report_path.is_file():
            pytest.fail(f"bench/gpu_memory.py exited {done.returncode} without a report:\n"
                        f"{done.stderr[-4000:]}")
        report = json.loads(report_path.read_text())
        assert "settings" in report, report.get("traceback") or report.get("error") or done
        results = [gpu_memory.StepMemory(**r) for r in report["settings"]]
        yield results, {k: v for k, v in report.items() if k not in ("settings", "parts")}
    finally:
        if not given:
            shutil.rmtree(folder, ignore_errors=True)
        gc.collect()
        torch.cuda.empty_cache()


@pytest.mark.slow
def test_reserved_vram_of_an_8b_shaped_step_is_within_target(eight_b):
    """Llama-3.1-8B shape, nf4 + LoRA r=16 on all projections, gradient checkpointing, one
    pair (batch 1) with a 1,024-token prompt and 1,024-token responses (train.max_length
    2048), in the layout the loop uses, the allocator as `train` sets it: one training step's
    torch.cuda.max_memory_reserved <= 8.0 GiB. Printed next to `train --dry-run`'s estimate
    (allocated and reserved) for the same batch, and a 128-token prompt beside it."""
    from localpeer.train.memory import expandable_segments

    results, loading = eight_b
    print(json.dumps(loading))
    # what the script ran with: expandable segments unless this environment configured the
    # allocator otherwise
    assert loading["expandable_segments"] == expandable_segments()
    for r in results:
        print(gpu_memory.text_line(r))
        print("  estimate parts:", r.parts)
        assert math.isfinite(r.loss)
    first = results[0]
    assert first.reserved_peak_gb <= TARGET_GB, (
        f"reserved {first.reserved_peak_gb:.2f} GiB > {TARGET_GB} GiB (allocated "
        f"{first.allocated_peak_gb:.2f}) at {first.prompt_tokens}+{first.response_tokens} "
        f"tokens, {first.layout}; estimate reserved {first.estimate_reserved_gb:.2f}, "
        f"allocated {first.estimate_allocated_gb:.2f} GiB: {first.parts}")
