"""Every shipped recipe loads, resolves a shipped model card, and fits its GPU class."""

from pathlib import Path

import pytest
import yaml

from localpeer.cli import main
from localpeer.config import all_keys, load_card, load_recipe
from localpeer.train.memory import ModelShape, estimate

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))
GPU_CLASS_GB = {"gpu-8gb.yaml": 8, "gpu-12gb.yaml": 12, "gpu-24gb.yaml": 24}


def _flat(tree, prefix=""):
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from _flat(v, f"{prefix}{k}.")
        else:
            yield prefix + k


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_loads_with_every_key_commented(path):
    recipe = load_recipe(path)
    card = load_card(ROOT / "models" / f"{recipe.model}.yaml")
    assert card.name == recipe.model and card.architecture
    text = path.read_text()
    assert set(_flat(yaml.safe_load(text))) <= set(all_keys())
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#") and not line.rstrip().endswith(":"):
            assert "#" in line, f"{path.name}: key without a comment: {line!r}"


def test_required_recipes_exist():
    names = {p.name for p in RECIPES}
    assert {"smollm2-135m-cpu.yaml", "gpu-8gb.yaml", "gpu-12gb.yaml", "gpu-24gb.yaml"} <= names


@pytest.mark.parametrize("name, gb", GPU_CLASS_GB.items())
def test_gpu_recipes_fit_their_class_by_the_estimate(name, gb):
    """What the card must hold (the allocator's reserved pool, expandable segments as `train`
    sets them, plus the CUDA context) leaves 10% of the class for the desktop and driver."""
    recipe = load_recipe(ROOT / "recipes" / name)
    card = load_card(ROOT / "models" / f"{recipe.model}.yaml")
    est = estimate(recipe, ModelShape.from_dict(card.architecture), card.lora_targets,
                   expandable=True)
    assert est.device_gb <= 0.9 * gb, est


def test_estimate_arithmetic_for_the_8b_shape():
    """nf4 body: 6.98e9 weights x (0.5 + 0.127/8) bytes = 3.60e9 bytes; embeddings and LM head
    (2 x 128256 x 4096 x 2 bytes) = 2.10e9 bytes: 5.70e9 bytes = 5.31 GiB."""
    card = load_card(ROOT / "models" / "llama-3.1-8b-instruct.yaml")
    est = estimate(load_recipe(ROOT / "recipes" / "gpu-12gb.yaml"),
                   ModelShape.from_dict(card.architecture), card.lora_targets)
    assert est.weights_gb == pytest.approx(5.31, abs=0.01)
    # LoRA r=16 on the 7 projections of 32 layers: 16 x (in + out) summed = 41,943,040
    assert est.lora_params == 41_943_040


def test_dry_run_prints_the_estimate_without_a_pulled_model(capsys, monkeypatch):
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    assert main(["train", str(ROOT / "recipes" / "gpu-12gb.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "VRAM estimate" in out and "llama-3.1-8b-instruct" in out
    assert "allocated" in out and "reserved" in out and "on the GPU" in out


def test_dry_run_refuses_a_gpu_that_is_too_small(monkeypatch, capsys):
    import torch

    class Props:
        total_memory = 6 * 1024**3

    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: Props())
    assert main(["train", str(ROOT / "recipes" / "gpu-12gb.yaml"), "--dry-run"]) == 2
    err = capsys.readouterr().err
    # 6.86 allocated x 1.05 = 7.21 reserved, + 0.6 CUDA context = 7.81 on the card
    assert ("needs about 7.8 GiB (7.2 reserved by PyTorch's allocator for 6.9 allocated, "
            "plus the CUDA context) but the GPU has 6.0 GiB") in err
    assert "train.batch_size" not in err or "grad_accum" in err
    assert "a smaller model card" in err
