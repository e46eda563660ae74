"""The VRAM estimate's arithmetic, the allocator setting `train` makes, and the CPU-testable
pieces of bench/gpu_memory.py.

    python -m pytest -q tests/test_memory.py
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from localpeer.config import load_card, load_recipe
from localpeer.train import memory
from localpeer.train.memory import (
    ALLOC_CONF,
    ALLOC_CONF_GENERIC,
    ModelShape,
    estimate,
    expandable_segments,
    micro_batch_positions,
    use_expandable_segments,
)

ROOT = Path(__file__).resolve().parents[1]
GIB = 1024**3


def _card_shape(name: str):
    card = load_card(ROOT / "models" / f"{name}.yaml")
    return ModelShape.from_dict(card.architecture), card.lora_targets


def _recipe(name: str, *overrides: str):
    return load_recipe(ROOT / "recipes" / name, list(overrides))


def test_the_8b_shape_on_the_12gb_recipe_term_by_term():
    """Llama-3.1-8B, nf4, r=16 on 7 projections, batch 1, max_length 1,024, checkpointing:

    weights     6.98e9 body x (0.5 + 0.127/8) + 2 x 128256 x 4096 x 2 bytes = 5.310 GiB
    LoRA        41,943,040 params x (4 + 4) bytes = 0.3125 GiB
    optimizer   41,943,040 x 2 bytes (8-bit moments) = 0.078125 GiB
    activations 2,048 positions: 32 layers x 2048 x 4096 x 2 bytes = 0.5 GiB saved, plus half
                of one layer's 2048 x 4096 x (34 + 5 x 32 x 1024 / 4096) bytes = 0.2890625 GiB
    logits      2**25 // 128,256 = 261 positions x 128,256 x 12 bytes = 0.37411 GiB
    allocated   6.86402 GiB; reserved x 1.05 (expandable) = 7.20722; + 0.6 context = 7.80722
    """
    shape, targets = _card_shape("llama-3.1-8b-instruct")
    est = estimate(_recipe("gpu-12gb.yaml"), shape, targets, expandable=True)
    assert est.weights_gb == pytest.approx(5.31022, abs=1e-5)
    assert est.lora_params == 41_943_040
    assert est.lora_gb == pytest.approx(0.3125)
    assert est.optimizer_gb == pytest.approx(0.078125)
    assert est.positions == 2048
    assert est.activations_gb == pytest.approx(0.5 + 0.2890625)
    assert est.logits_gb == pytest.approx(261 * 128256 * 12 / GIB)
    assert est.allocated_gb == pytest.approx(6.86402, abs=1e-5)
    assert est.reserved_gb == pytest.approx(6.86402 * 1.05, abs=1e-5)
    assert est.device_gb == pytest.approx(6.86402 * 1.05 + 0.6, abs=1e-5)
    default = estimate(_recipe("gpu-12gb.yaml"), shape, targets, expandable=False)
    assert default.allocated_gb == est.allocated_gb
    assert default.reserved_gb == pytest.approx(6.86402 * 1.29, abs=1e-5)


def test_the_ratios_are_the_h200_measurement():
    """9.69 GiB allocated; 12.48 reserved (default allocator), 10.15 (expandable segments)."""
    assert memory.RESERVED_PER_ALLOCATED[False] == round(12.48 / 9.69, 2)
    assert memory.RESERVED_PER_ALLOCATED[True] == round(10.15 / 9.69, 2)


def test_8b_at_1024_plus_1024_against_the_8_gib_target():
    """The bench's first setting, worst case 2 x 2,048 positions: activations 32 x 4096 x 4096
    x 2 = 1 GiB + half of 4096 x 4096 x (34 + 80) bytes = 0.890625 GiB; allocated 7.9656 GiB,
    reserved 8.3639 with expandable segments. The packed row the loop builds for a 1,024-token
    prompt is 3,072 positions: activations 0.75 + 0.66797, allocated 7.4929, reserved 7.8676,
    so the estimate expects the bench's target (reserved <= 8.0 GiB) to be met narrowly."""
    shape, targets = _card_shape("llama-3.1-8b-instruct")
    recipe = load_recipe(None, ["model=llama-3.1-8b-instruct", "quantize=nf4",
                                "train.batch_size=1", "train.max_length=2048",
                                "train.max_prompt_length=1024",
                                "train.gradient_checkpointing=true"])
    worst = estimate(recipe, shape, targets, expandable=True)
    assert worst.positions == 4096
    assert worst.activations_gb == pytest.approx(1 + 0.890625)
    assert worst.allocated_gb == pytest.approx(7.9656, abs=1e-4)
    assert worst.reserved_gb == pytest.approx(8.3639, abs=1e-4)
    packed = estimate(recipe, shape, targets, expandable=True, positions=3072)
    assert packed.activations_gb == pytest.approx(0.75 + 0.66796875)
    assert packed.reserved_gb == pytest.approx(7.8676, abs=1e-4)


def test_micro_batch_positions():
    """2 x max_length per pair; a token budget fills micro-batches, but one pair always fits."""
    t = _recipe("gpu-24gb.yaml").train  # batch 2, max_length 2,048
    assert micro_batch_positions(t) == 2 * 2 * 2048
    budget = load_recipe(ROOT / "recipes" / "gpu-24gb.yaml", ["train.micro_batch_tokens=6000"])
    assert micro_batch_positions(budget.train) == 6000
    small = load_recipe(ROOT / "recipes" / "gpu-24gb.yaml", ["train.micro_batch_tokens=1000"])
    assert micro_batch_positions(small.train) == 2 * 2048


def test_optimizer_choice_sets_its_state_bytes():
    shape, targets = _card_shape("llama-3.2-3b-instruct")
    n = estimate(_recipe("gpu-8gb.yaml"), shape, targets).lora_params
    for choice, per_param in (("auto", 2), ("paged_adamw_8bit", 2), ("adamw_8bit", 2),
                              ("adamw", 8)):
        est = estimate(_recipe("gpu-8gb.yaml", f"train.optimizer={choice}"), shape, targets)
        assert est.optimizer_gb == pytest.approx(n * per_param / GIB)


def test_the_8gb_recipe_fits_the_8b_with_room_for_the_desktop():
    """gpu-8gb trains Llama-3.1-8B: nf4 weights 5.31, LoRA r=8 0.15625, 8-bit moments
    0.0390625, 1,024 positions of activations 0.25 + 1024 x 4096 x (34 + 5 x 32 x 512 / 4096)
    / 2 x 2 bytes = 0.10474, one logits chunk 0.37411: allocated 6.2352, reserved x 1.05 =
    6.5469, with the CUDA context 7.1469 GiB, within 90% of 8 GiB (7.2)."""
    shape, targets = _card_shape("llama-3.1-8b-instruct")
    recipe = _recipe("gpu-8gb.yaml")
    assert recipe.model == "llama-3.1-8b-instruct"
    est = estimate(recipe, shape, targets, expandable=True)
    assert est.lora_params == 20_971_520
    assert est.allocated_gb == pytest.approx(6.2352, abs=1e-4)
    assert est.reserved_gb == pytest.approx(6.5469, abs=1e-4)
    assert est.device_gb == pytest.approx(7.1469, abs=1e-4) and est.device_gb <= 0.9 * 8


def test_logits_chunk_mirrors_logps():
    """memory.py must not import torch, so it mirrors logps' chunk size by name."""
    logps = pytest.importorskip("localpeer.train.logps")
    assert memory.LOGITS_PER_CHUNK == logps.LOGITS_PER_CHUNK
    shape, targets = _card_shape("llama-3.1-8b-instruct")
    est = estimate(_recipe("gpu-12gb.yaml"), shape, targets)
    chunk = logps.chunk_positions(shape.vocab)
    assert est.logits_gb == pytest.approx(chunk * shape.vocab * memory.LOGIT_BYTES / GIB)


@pytest.fixture
def no_alloc_conf(monkeypatch):
    """Neither allocator variable set; whatever the test sets is undone afterwards."""
    for name in (ALLOC_CONF, ALLOC_CONF_GENERIC):
        monkeypatch.setenv(name, "x")  # recorded, so that teardown restores the original
        monkeypatch.delenv(name)


def test_train_sets_expandable_segments_when_unset(no_alloc_conf):
    assert expandable_segments()  # what train will do
    assert not expandable_segments(as_train_sets=False)  # the allocator's default until then
    assert use_expandable_segments() is True
    assert os.environ[ALLOC_CONF] == "expandable_segments:True"
    assert expandable_segments()


@pytest.mark.parametrize("name, value, expandable", [
    (ALLOC_CONF, "max_split_size_mb:128", False),
    (ALLOC_CONF, "expandable_segments:False", False),
    (ALLOC_CONF, "garbage_collection_threshold:0.6,expandable_segments:True", True),
    (ALLOC_CONF_GENERIC, "expandable_segments:True", True),
    (ALLOC_CONF, "", False)])
def test_a_user_setting_is_left_alone(no_alloc_conf, monkeypatch, name, value, expandable):
    monkeypatch.setenv(name, value)
    assert use_expandable_segments() is False
    assert os.environ[name] == value
    assert (ALLOC_CONF in os.environ) == (name == ALLOC_CONF)
    assert expandable_segments() is expandable


HOOK = """
import json, os, sys
from localpeer.cli import main
from localpeer.train import memory
real = memory.use_expandable_segments
seen = {}
def spy(*args):
    seen["torch_imported_before"] = "torch" in sys.modules
    return real(*args)
memory.use_expandable_segments = spy
status = main(["train", sys.argv[1], "--dry-run"])
print(json.dumps({"status": status, "conf": os.environ.get(memory.ALLOC_CONF), **seen}))
"""


def test_dry_run_sets_the_variable_before_torch_is_imported():
    env = {k: v for k, v in os.environ.items() if k not in (ALLOC_CONF, ALLOC_CONF_GENERIC)}
    done = subprocess.run([sys.executable, "-c", HOOK, str(ROOT / "recipes" / "gpu-8gb.yaml")],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out == {"status": 0, "conf": "expandable_segments:True",
                   "torch_imported_before": False}


def test_dry_run_prints_allocated_reserved_and_the_allocator(capsys, no_alloc_conf):
    from localpeer.cli import main

    assert main(["train", str(ROOT / "recipes" / "gpu-12gb.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "allocated" in out and "reserved (x1.05, expandable segments)" in out
    assert "6.86" in out and "7.21" in out and "7.81" in out


def test_dry_run_with_the_default_allocator_uses_its_ratio(capsys, monkeypatch, no_alloc_conf):
    from localpeer.cli import main

    monkeypatch.setenv(ALLOC_CONF, "max_split_size_mb:512")
    assert main(["train", str(ROOT / "recipes" / "gpu-12gb.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "reserved (x1.29, default allocator)" in out and "8.85" in out  # 6.8640 x 1.29


# bench/gpu_memory.py without CUDA: what can run on a CPU

sys.path.insert(0, str(ROOT / "bench"))
import gpu_memory  # noqa: E402  (bench/ is not a package)


def test_bench_estimate_and_text_line(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(gpu_memory.LLAMA_31_8B))
    setting = gpu_memory.Setting.parse("1024:1024")
    est = gpu_memory.estimate_for(tmp_path, setting, positions=3072, expandable=True)
    assert est.reserved_gb == pytest.approx(7.8676, abs=1e-4)
    r = gpu_memory.StepMemory(1024, 1024, 2048, "packed", 3072, 7.5, 7.8, 8.3,
                              round(est.allocated_gb, 3), round(est.reserved_gb, 3),
                              round(est.device_gb, 3), est.parts(), 1.4, 0.69)
    line = gpu_memory.text_line(r)
    assert "allocated   7.50 GiB (estimate 7.49)" in line
    assert "reserved   7.80 GiB (estimate 7.87)" in line and "3,072 positions" in line
    report = {"target_gb": gpu_memory.TARGET_GB, "settings": [vars(r)], "within_target": True,
              "alloc_conf": "expandable_segments:True", "expandable_segments": True}
    text = gpu_memory.report_text(report)
    assert "target: reserved peak <= 8.0 GiB" in text and "expandable segments on" in text


def test_bench_without_cuda_writes_why(tmp_path, monkeypatch, no_alloc_conf):
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    status = gpu_memory.main(["--json", str(tmp_path / "m.json"),
                              "--text", str(tmp_path / "m.txt")])
    assert status == 2
    report = json.loads((tmp_path / "m.json").read_text())
    assert "no CUDA" in report["error"] and report["expandable_segments"] is True
    assert report["alloc_conf"] == "expandable_segments:True"  # set as train sets it
    assert "NOT MEASURED" in (tmp_path / "m.txt").read_text()
