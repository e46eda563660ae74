"""`localpeer train` on CUDA, end to end: Ctrl-C, checkpoint, `--resume`, the same metrics.

Skipped without CUDA (tests/gpu/conftest.py). On a CUDA machine (~2 min on an H100):

    python -m pytest tests/gpu/test_cli_resume.py -q -rA

A random Llama with Llama-3.2-1B's decoder (hidden 2048, 16 layers, 32 heads, 8 KV heads, MLP
8192; 0.97e9 parameters with tests/tiny.py's 320-token vocabulary, which keeps the LM head out
of the way) is built on the GPU in bf16 and saved as safetensors. The CLI, in subprocesses,
trains it with nf4 + LoRA on the starter data for 6 steps, checkpointing every 2, twice: once
straight through, once sent SIGINT as soon as step 3's metrics line appears and then resumed
with `--resume` from the checkpoint the interrupt wrote. Both runs' metrics must agree.
"""

import json
import math
import shutil
import sys
from pathlib import Path

import pytest
import yaml

torch = pytest.importorskip("torch")  # without torch: skipped at collection, not an error

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
import gpu_throughput  # noqa: E402  (bench/ is not a package)

pytestmark = pytest.mark.gpu
STEPS, CHECKPOINT_EVERY, INTERRUPT_AFTER = 6, 2, 3
DECODER_1B = dict(gpu_throughput.LLAMA_1B, vocab_size=320, tie_word_embeddings=False)
# Tolerances for two runs of the same recipe on CUDA in bf16. Two CUDA runs are not bit-equal:
# flash/efficient attention's backward and index_add (the packed layout's log-prob sums)
# accumulate with atomics in a varying order, and the 8-bit optimizer's block quantization can
# turn a last-bit difference of a moment into a whole quantization step. On the CPU a resumed
# run matches to 1e-6 (tests/test_train.py), which checks that every piece of state is
# restored; here the check is the CUDA path (SIGINT, the nested 8-bit optimizer state through a
# checkpoint, --resume) with bounds an order above that noise: a step's loss (~0.69 at the start;
# a mean of sigmoid losses of beta x sums of ~100 bf16 log-probs) was expected to move ~1e-3
# between runs, so 2e-2 absolute. The failure message shows the gap before the interrupt too
# (the same computation in two processes): that gap is the noise, the later one the resume.
LOSS_TOL = 2e-2
MARGIN_TOL = 5e-2  # margins are beta x log-prob differences, a few tenths by step 6
LAMBDA_TOL = 5e-2  # the duals integrate loss differences: dual_lr (0.5) x a few loss drifts


@pytest.fixture(scope="module")
def model_1b(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama1b") / "model"
    gpu_throughput.build_llama(folder, DECODER_1B, device="cuda")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def write_recipe(folder: Path, model: Path) -> Path:
    """The run's recipe: an lr that moves the LoRA weights within 6 steps, duals that move
    (tolerance 0), a checkpoint every 2 steps and the CUDA defaults (paged 8-bit AdamW, the
    lazily cached reference, packed rows)."""
    recipe = {
        "model": str(model), "quantize": "nf4", "backend": "peft", "dtype": "auto",
        "out_dir": str(folder / "run"),
        "data": {"train": str(ROOT / "data/personaknob-starter/train.jsonl"),
                 "test": str(ROOT / "data/personaknob-starter/test.jsonl")},
        "train": {"steps": STEPS, "batch_size": 4, "grad_accum": 1, "lr": 2e-3,
                  "warmup_steps": 0, "max_length": 256, "max_prompt_length": 128,
                  "gradient_checkpointing": True, "eval_every": 0, "eval_pairs": 8,
                  "checkpoint_every": CHECKPOINT_EVERY, "cache_reference": True,
                  "optimizer": "auto", "seed": 0},
        "lora": {"rank": 8, "alpha": 16, "dropout": 0.0},
        "lagrangian": {"dual_lr": 0.5, "tolerance": 0.0},
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def train_cli(folder: Path, name: str, *extra: str, interrupt_after: int | None = None):
    """`python -m localpeer train` in `folder` (its own runs/.reference-cache); output in
    folder/NAME.log."""
    cmd = [sys.executable, "-m", "localpeer", "train", str(folder / "recipe.yaml"), *extra]
    return gpu_throughput.run_cli(cmd, folder, folder / "run" / "metrics.jsonl", timeout_s=600,
                                  env=gpu_throughput.child_env(), log_path=folder / f"{name}.log",
                                  interrupt_after=interrupt_after)


def metrics(folder: Path) -> tuple[list[dict], list[dict]]:
    lines = [json.loads(s) for s in (folder / "run" / "metrics.jsonl").read_text().splitlines()]
    return ([ln for ln in lines if "split" not in ln],
            [ln for ln in lines if ln.get("split") == "eval"])


def assert_same_step(a: dict, b: dict, noise: str) -> None:
    step = a["step"]
    assert a["lr"] == pytest.approx(b["lr"], rel=1e-9), f"step {step}: the scheduler differs"
    assert a["loss"] == pytest.approx(b["loss"], abs=LOSS_TOL), f"step {step}: loss; {noise}"
    assert a["dims"].keys() == b["dims"].keys()
    for d, x in a["dims"].items():
        y = b["dims"][d]
        where = f"step {step} dim {d}; {noise}"
        assert x["pairs"] == y["pairs"], f"step {step} dim {d}: another batch was drawn"
        assert x["loss"] == pytest.approx(y["loss"], abs=LOSS_TOL), where
        assert x["margin"] == pytest.approx(y["margin"], abs=MARGIN_TOL), where
        assert x["weight"] == pytest.approx(y["weight"], abs=LAMBDA_TOL), where
    for k, v in a["lambdas"].items():
        assert v == pytest.approx(b["lambdas"][k], abs=LAMBDA_TOL), f"step {step} lambda {k}"


def adapter_gap(a: Path, b: Path) -> tuple[float, float]:
    """(largest relative Frobenius gap between the two runs' LoRA tensors, smallest norm of
    a LoRA B tensor of run a): printed, for calibrating the tolerances above; B starts at
    zero, so a norm > 0 shows that every adapted layer trained."""
    from safetensors.torch import load_file

    ta = load_file(str(a / "run" / "adapter" / "adapter_model.safetensors"))
    tb = load_file(str(b / "run" / "adapter" / "adapter_model.safetensors"))
    assert ta.keys() == tb.keys()
    gaps = [float((ta[k].float() - tb[k].float()).norm() / ta[k].float().norm().clamp(min=1e-12))
            for k in ta]
    b_norms = [float(ta[k].float().norm()) for k in ta if "lora_B" in k]
    return max(gaps), min(b_norms)


def test_sigint_then_resume_matches_an_uninterrupted_run(model_1b, tmp_path):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    for folder in (whole, cut):
        write_recipe(folder, model_1b)

    straight = train_cli(whole, "train")
    assert straight.returncode == 0, f"uninterrupted run failed:\n{straight.log[-4000:]}"

    stopped = train_cli(cut, "train", interrupt_after=INTERRUPT_AFTER)
    assert stopped.interrupted_after == INTERRUPT_AFTER, (
        f"no SIGINT sent: step {INTERRUPT_AFTER}'s line never appeared\n{stopped.log[-4000:]}")
    assert stopped.returncode == 1, (
        f"Ctrl-C should finish the step, checkpoint and exit 1; got {stopped.returncode} "
        f"(0: the run ended before the signal was seen)\n{stopped.log[-4000:]}")
    assert "interrupted; checkpoint at step" in stopped.log, stopped.log[-4000:]
    assert "continue with --resume" in stopped.log
    at = int(stopped.log.split("interrupted; checkpoint at step", 1)[1].split()[0])
    assert INTERRUPT_AFTER <= at < STEPS, f"checkpoint at step {at}"
    assert (cut / "run" / "checkpoints" / f"step-{at}" / "state.json").exists()
    assert [ln["step"] for ln in metrics(cut)[0]] == list(range(1, at + 1))

    resumed = train_cli(cut, "resume", "--resume")
    assert resumed.returncode == 0, f"--resume failed:\n{resumed.log[-4000:]}"

    a_steps, a_evals = metrics(whole)
    b_steps, b_evals = metrics(cut)
    assert [ln["step"] for ln in a_steps] == [ln["step"] for ln in b_steps] == list(
        range(1, STEPS + 1)), "each step once, in order, after the resume"
    assert [ln["step"] for ln in a_evals] == [ln["step"] for ln in b_evals] == [0, STEPS]
    assert all(math.isfinite(ln["loss"]) for ln in a_steps + b_steps)
    gaps = [abs(x["loss"] - y["loss"]) for x, y in zip(a_steps, b_steps)]
    noise = (f"|loss gap| before the interrupt (run-to-run noise) {max(gaps[:at]):.2e}, "
             f"after the resume {max(gaps[at:]):.2e}")
    adapter, b_norm = adapter_gap(whole, cut)
    print(f"interrupted after step {INTERRUPT_AFTER}, checkpoint at step {at}; {noise}; "
          f"adapter relative gap {adapter:.2e}")
    print("losses uninterrupted", [round(ln["loss"], 4) for ln in a_steps])
    print("losses resumed      ", [round(ln["loss"], 4) for ln in b_steps])
    assert b_norm > 0, "a LoRA B tensor is still zero: that layer never trained"
    assert any(v > 0 for v in a_steps[-1]["lambdas"].values()), "the duals never moved"
    for x, y in zip(a_steps, b_steps):
        assert_same_step(x, y, noise)
    for d, x in a_evals[-1]["dims"].items():
        y = b_evals[-1]["dims"][d]
        assert x["pairs"] == y["pairs"]
        assert x["loss"] == pytest.approx(y["loss"], abs=LOSS_TOL), f"final eval, dim {d}"
        assert x["margin"] == pytest.approx(y["margin"], abs=MARGIN_TOL), f"final eval, dim {d}"
    for folder in (whole, cut):
        assert (folder / "run" / "summary.json").exists()
