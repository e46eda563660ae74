"""A newcomer's first hour (issue 15): the embedded default trains with no pull step."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_train_the_embedded_default_in_a_fresh_checkout_without_pull(tmp_path, gguf):
    """A fresh clone has models/*.yaml, recipes/ and data/ but no models/hf/: `localpeer
    train recipes/smollm2-135m-cpu.yaml` converts the embedded GGUF on first use, says so in
    one line, and trains (one step here)."""
    (tmp_path / "models").mkdir()
    for card in (ROOT / "models").glob("*.yaml"):
        shutil.copy(card, tmp_path / "models" / card.name)
    shutil.copytree(ROOT / "recipes", tmp_path / "recipes")
    starter = Path("data") / "personaknob-starter"
    shutil.copytree(ROOT / starter, tmp_path / starter)
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "localpeer", "train",
                        "recipes/smollm2-135m-cpu.yaml", "train.steps=1", "train.eval_pairs=4",
                        "train.checkpoint_every=0"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-2000:]
    notices = [ln for ln in r.stderr.splitlines() if "converting the embedded" in ln]
    assert len(notices) == 1 and "smollm2-135m-instruct" in notices[0]
    assert (tmp_path / "models" / "hf" / "smollm2-135m-instruct" / "config.json").is_file()
    assert (tmp_path / "runs" / "smollm2-135m-cpu" / "summary.json").is_file()
    # a card that needs the hub still says how to pull it
    r = subprocess.run([sys.executable, "-m", "localpeer", "train", "recipes/gpu-12gb.yaml",
                        "out_dir=runs/x"], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 2 and "localpeer pull" in r.stderr
