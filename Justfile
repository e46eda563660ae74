# localpeer tasks. `just --list` shows them; README.md explains each.

python := if path_exists(".venv/bin/python") == "true" { ".venv/bin/python" } else { "python3" }

# list the recipes
default:
    @just --list

# create .venv and install localpeer with the dev tools (torch first: the CPU build, not CUDA); dev.py does the work
setup:
    python3 dev.py setup

# llama.cpp's converter from the pinned llama-cpp-python sdist, into ~/.cache/localpeer (once, online)
converter *args="--fetch":
    {{python}} -m localpeer.export.converter {{args}}

# the whole test suite (what CI runs)
test *args:
    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 {{python}} -m pytest -q {{args}}

# the suite without the slow end-to-end and replication tests
test-fast *args:
    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 {{python}} -m pytest -q -m "not slow" {{args}}

# only where CUDA exists
test-gpu *args:
    {{python}} -m pytest -q tests/gpu {{args}}

# ruff lint
lint:
    {{python}} -m ruff check localpeer tests bench

# fetch a base model into models/hf/ (the embedded default needs no network)
pull card="smollm2-135m-instruct":
    {{python}} -m localpeer pull {{card}}

# QLoRA + Lag-DPO; the 12 GB GPU recipe by default: just train recipe=recipes/smollm2-135m-cpu.yaml
train recipe="recipes/gpu-12gb.yaml" *overrides:
    {{python}} -m localpeer train {{recipe}} {{overrides}}

# the whole pipeline on the embedded SmolLM2-135M (CPU, about 22 minutes on 2 cores): train, export, generate, judge, score, probe, report
demo *args:
    python3 dev.py demo {{args}}

# chat with a GGUF in the terminal: just chat models/gguf/peer-smollm2-135m/peer-smollm2-135m-Q8_0.gguf
chat model *args:
    {{python}} -m localpeer chat {{model}} {{args}}

# grade rated transcripts: just score transcripts/ --json scores.json
score *args:
    {{python}} -m localpeer score {{args}}

# simulate, fit and show parameter recovery
selftest *args:
    {{python}} -m localpeer score --selftest {{args}}

# benchmarks against peers in the same run (numbers go in README.md)
bench *args:
    {{python}} bench/score_bench.py {{args}}
