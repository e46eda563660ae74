#!/usr/bin/env bash
# One prepared CUDA check of localpeer, <= 9 minutes on one H100/H200, one summary.
#
#   bash bench/gpu_check.sh                                     # results in $OUT
#   WHEELS=.whl/localpeer-wheels.tar.xz bash bench/gpu_check.sh # offline: bench/wheels.sh's bundle
#   STAGES=throughput,unsloth bash bench/gpu_check.sh           # a rerun of some stages
#
# Stages, in this order, each under `timeout` with its exit status and seconds recorded; none
# stops the ones after it, and the summary is rewritten after every stage:
#   python      a python whose torch sees CUDA: $PYTHON, ./.venv, python3, /opt/torch/.venv
#   venv        $VENV (default /tmp/localpeer-gpu-venv): reused when its torch sees CUDA; else
#               made from that python and linked to its site-packages (.pth), so torch,
#               transformers, peft ... are used as installed there
#   install     $WHEELS: bench/wheels.sh's .tar.xz (or a folder holding it) is unpacked into
#               $WHEELS_DIR (default /tmp/localpeer-wheels) and its site/ put first on
#               PYTHONPATH; a folder with site/ and/or *.whl works too (wheels pip-installed
#               --no-index --no-deps). The project goes on PYTHONPATH after them (no install).
#               Missing needs are fetched by name only when no $WHEELS is given.
#   tests       pytest tests/gpu -m "not slow": nf4 load + train, unsloth/peft log-prob
#               parity, and `localpeer train` on a 1B random Llama: SIGINT, --resume, metrics
#               equal to an uninterrupted run (tests/gpu/test_cli_resume.py)
#   memory      bench/gpu_memory.py: an 8B-shaped nf4 step's peak allocated and reserved GiB
#   throughput  bench/gpu_throughput.py: `localpeer train` steady tokens/s vs its bare step and
#               TRL DPOTrainer (cached and per-batch reference), 1B random Llama
#   unsloth     bench/gpu_unsloth.py: backend=unsloth vs peft, time to the first step, steady
#               tokens/s, break_even_steps (peft's numbers from the throughput stage)
# Stage limits (seconds; env LIMIT_TESTS, LIMIT_MEMORY, LIMIT_THROUGHPUT, LIMIT_UNSLOTH) come
# out of one budget, $BUDGET_S (default 540): each is min(its limit, what is left - 15).
#
# Files in $OUT (8, the most the device tool brings back): summary.txt and summary.json (stages,
# environment, headline numbers with PASS/FAIL against the targets, the stage reports),
# install.log, pytest.log, bench.log (the three benchmarks' output), gpu_memory.json,
# gpu_throughput.json, gpu_unsloth.json. Scratch (models: 8B ~16 GB, 1B ~2.5 GB; run
# folders) goes to $SCRATCH (default ${TMPDIR:-/tmp}/localpeer-gpu-scratch) and is removed at
# the end unless KEEP=1.
#
# On this workplace's lent GPU machine (offline; python3 has CUDA torch, transformers, peft,
# accelerate and pytest): build the bundle here once, `bash bench/wheels.sh` (-> .whl/, ignored
# by git, ~16 MB), then run with the device tool:
#   command: WHEELS=.whl/localpeer-wheels.tar.xz bash bench/gpu_check.sh
#   carry: [".whl"], timeout_s: 600
# bench/README.md ("GPU check") has the wheel list and the targets.
#
# Plumbing check on a machine without a GPU (stages skip or report "no CUDA"; the benchmarks
# run their tiny CPU models): ALLOW_CPU=1 THROUGHPUT_ARGS="--smoke --steps 6 --warmup 2
# --pairs 24" UNSLOTH_ARGS="--smoke --backend-under-test peft --steps 6 --warmup 2 --pairs 24"
# PYTHON=.venv/bin/python bash bench/gpu_check.sh

set -u
set -o pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WHEELS=${WHEELS:-}
if [ -n "$WHEELS" ] && [ -e "$WHEELS" ]; then # relative to where the script was started
  WHEELS=$(cd "$(dirname "$WHEELS")" && pwd)/$(basename "$WHEELS")
fi
cd "$REPO" || exit 2
OUT=${OUT:-${TMPDIR:-/tmp}/localpeer-gpu-check}
SCRATCH=${SCRATCH:-${TMPDIR:-/tmp}/localpeer-gpu-scratch}
mkdir -p "$OUT" "$SCRATCH"
rm -f "$SCRATCH/stages.tsv" "$SCRATCH/env.txt" "$SCRATCH/gpu_memory.txt"
: >"$OUT/install.log"
: >"$OUT/pytest.log"
: >"$OUT/bench.log"
exec 3>&2 # the caller's stderr, for progress lines while stages write to logs
VENV=${VENV:-/tmp/localpeer-gpu-venv}
WHEELS_DIR=${WHEELS_DIR:-/tmp/localpeer-wheels}
BUDGET_S=${BUDGET_S:-540}
STAGES=${STAGES:-tests,memory,throughput,unsloth}
export ALLOW_CPU=${ALLOW_CPU:-0}
read -r -a THROUGHPUT_EXTRA <<<"${THROUGHPUT_ARGS:-}"
read -r -a UNSLOTH_EXTRA <<<"${UNSLOTH_ARGS:-}"
export LOCALPEER_LLAMA8B_DIR=${LOCALPEER_LLAMA8B_DIR:-$SCRATCH/llama8b}
export LOCALPEER_LLAMA1B_DIR=${LOCALPEER_LLAMA1B_DIR:-$SCRATCH/llama1b}
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PYTHONUNBUFFERED=1
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
START=$(date +%s)
PY=""
NAMES=()
RCS=()
SECS=()

log() {
  local line
  line="[gpu_check $(($(date +%s) - START))s] $*"
  echo "$line" >>"$OUT/install.log"
  echo "$line" >&3
}

remaining() { echo $((BUDGET_S - ($(date +%s) - START))); }

# min(default, what is left of the budget - 15 s); 0 when nothing is left
stage_limit() {
  local left
  left=$(($(remaining) - 15))
  if [ "$left" -le 0 ]; then echo 0; elif [ "$1" -lt "$left" ]; then echo "$1"; else echo "$left"; fi
}

wanted() { [[ ",$STAGES," == *",$1,"* ]]; }

# summary.txt + summary.json: bench/gpu_summary.py, or this plain table if python cannot run it
write_summary() {
  local elapsed=$(($(date +%s) - START))
  if [ -n "$PY" ] && "$PY" bench/gpu_summary.py --out "$OUT" --stages "$SCRATCH/stages.tsv" \
    --env "$SCRATCH/env.txt" --texts "$SCRATCH" --python "$PY" --seconds "$elapsed" \
    --budget "$BUDGET_S" 2>>"$OUT/install.log"; then
    return 0
  fi
  {
    echo "localpeer gpu_check, $(date -u +%Y-%m-%dT%H:%M:%SZ), $elapsed s"
    echo "python: ${PY:-none}"
    cat "$SCRATCH/env.txt" 2>/dev/null
    echo
    printf '%-11s %4s %7s\n' stage rc seconds
    local i
    for i in "${!NAMES[@]}"; do printf '%-11s %4s %7s\n' "${NAMES[$i]}" "${RCS[$i]}" "${SECS[$i]}"; done
  } >"$OUT/summary.txt"
  {
    printf '{"python": "%s", "seconds": %d, "stages": [' "${PY:-}" "$elapsed"
    local i sep=""
    for i in "${!NAMES[@]}"; do
      printf '%s{"stage": "%s", "rc": %s, "seconds": %s}' "$sep" "${NAMES[$i]}" "${RCS[$i]}" "${SECS[$i]}"
      sep=", "
    done
    printf ']}\n'
  } >"$OUT/summary.json"
}

record() { # name rc seconds
  NAMES+=("$1")
  RCS+=("$2")
  SECS+=("$3")
  printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$SCRATCH/stages.tsv"
  log "stage $1: rc=$2 (${3}s)"
  write_summary
}

# run_stage NAME LIMIT_S LOGFILE command...: under `timeout`, output appended to LOGFILE
run_stage() {
  local name=$1 limit t0 rc
  limit=$(stage_limit "$2")
  local logfile=$3
  shift 3
  t0=$(date +%s)
  if [ "$limit" -le 0 ]; then
    echo "== $name: skipped, no time left in BUDGET_S=$BUDGET_S" >>"$logfile"
    record "$name" 124 0
    return 124
  fi
  log "stage $name (limit ${limit}s)"
  echo "== $name (limit ${limit}s): $*" >>"$logfile"
  timeout --kill-after=10 "$limit" "$@" >>"$logfile" 2>&1
  rc=$?
  [ "$rc" -eq 124 ] && echo "== $name: timed out after ${limit}s" >>"$logfile"
  record "$name" "$rc" $(($(date +%s) - t0))
  return "$rc"
}

# a stage that was killed before writing its JSON still leaves one that says so
json_placeholder() { # file stage rc
  [ -s "$1" ] && return 0
  printf '{"error": "%s exited %s without writing results (124: timed out); see bench.log"}\n' \
    "$2" "$3" >"$1"
}

has_cuda_torch() { # with ALLOW_CPU=1 any torch will do
  [ -n "$1" ] && "$1" -c 'import os, sys, torch
sys.exit(0 if torch.cuda.is_available() or os.environ.get("ALLOW_CPU") == "1" else 1)' \
    >/dev/null 2>&1
}

# stage python: a python whose torch already sees CUDA
find_base_python() {
  local cand
  for cand in "${PYTHON:-}" "$REPO/.venv/bin/python" python3 /opt/torch/.venv/bin/python3 python; do
    [ -z "$cand" ] && continue
    command -v "$cand" >/dev/null 2>&1 || [ -x "$cand" ] || continue
    if has_cuda_torch "$cand"; then
      command -v "$cand" 2>/dev/null || echo "$cand"
      return 0
    fi
  done
  return 1
}

# stage venv
make_venv() {
  local base=$1 site
  if [ -x "$VENV/bin/python" ] && has_cuda_torch "$VENV/bin/python"; then
    log "reusing $VENV"
    PY=$VENV/bin/python
    return 0
  fi
  if [ -n "$base" ]; then
    log "creating $VENV from $base, linked to its site-packages"
    "$base" -m venv "$VENV" >>"$OUT/install.log" 2>&1 || return 1
    site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') || return 1
    "$base" -c 'import site, sysconfig
paths = site.getsitepackages() + [sysconfig.get_paths()[k] for k in ("purelib", "platlib")]
print("\n".join(dict.fromkeys(paths)))' >"$site/_localpeer_base_site.pth" || return 1
    PY=$VENV/bin/python
    has_cuda_torch "$PY"
    return
  fi
  log "no python with a CUDA torch: a plain venv, torch from ${WHEELS:-PyPI}"
  python3 -m venv "$VENV" >>"$OUT/install.log" 2>&1 || return 1
  PY=$VENV/bin/python
  if [ -n "$WHEELS" ] && [ -d "$WHEELS" ]; then
    "$PY" -m pip install --no-index --find-links "$WHEELS" torch >>"$OUT/install.log" 2>&1
  else
    "$PY" -m pip install --timeout 20 --retries 1 torch >>"$OUT/install.log" 2>&1
  fi
  has_cuda_torch "$PY"
}

# WHEELS as an archive (or a folder holding bench/wheels.sh's archive): unpack it once
unpack_wheels() {
  local archive=""
  [ -z "$WHEELS" ] && return 0
  if [ -f "$WHEELS" ]; then
    archive=$WHEELS
  elif [ -d "$WHEELS" ] && [ ! -d "$WHEELS/site" ] && [ -f "$WHEELS/localpeer-wheels.tar.xz" ]; then
    archive=$WHEELS/localpeer-wheels.tar.xz
  fi
  [ -z "$archive" ] && return 0
  log "unpacking $archive into $WHEELS_DIR"
  rm -rf "$WHEELS_DIR"
  mkdir -p "$WHEELS_DIR"
  tar -xJf "$archive" -C "$WHEELS_DIR" || return 1
  WHEELS=$WHEELS_DIR
}

# stage install
install_deps() {
  local rc=0 missing
  unpack_wheels || rc=1
  if [ -n "$WHEELS" ]; then
    if compgen -G "$WHEELS/*.whl" >/dev/null; then
      log "installing the wheels in $WHEELS"
      "$PY" -m pip install --no-index --no-deps --no-compile "$WHEELS"/*.whl || rc=1
    fi
    if [ -d "$WHEELS/site" ]; then
      export PYTHONPATH="$WHEELS/site${PYTHONPATH:+:$PYTHONPATH}"
      log "PYTHONPATH gets $WHEELS/site"
    fi
  fi
  # the project by PYTHONPATH, not installed: subprocesses (the CLI runs, the test workers)
  # find it too, and nothing is built
  export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$REPO"
  missing=$("$PY" -c 'import importlib.util as u
need = {"torch": "torch", "transformers": "transformers", "peft": "peft",
        "accelerate": "accelerate", "bitsandbytes": "bitsandbytes", "safetensors": "safetensors",
        "tokenizers": "tokenizers", "yaml": "pyyaml", "numpy": "numpy", "scipy": "scipy",
        "rich": "rich", "pytest": "pytest", "trl": "trl", "datasets": "datasets"}
print(" ".join(pip for mod, pip in need.items() if u.find_spec(mod) is None))')
  if [ -n "$missing" ]; then
    if [ -z "$WHEELS" ]; then
      log "missing: $missing; trying the package index"
      # shellcheck disable=SC2086
      "$PY" -m pip install --timeout 20 --retries 1 $missing || rc=1
    else
      log "missing and not among the wheels in $WHEELS: $missing"
      rc=1
    fi
  fi
  "$PY" -c 'import localpeer, torch; print("localpeer", localpeer.__file__)' || rc=1
  return "$rc"
}

# versions from package metadata: importing unsloth here would cost ~20 s of the budget
describe_env() {
  {
    if command -v nvidia-smi >/dev/null; then
      nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 |
        sed 's/^/gpu: /'
    else
      echo "gpu: no nvidia-smi"
    fi
    df -h "$SCRATCH" 2>&1 | tail -n 1 | sed 's/^/disk (scratch): /'
    [ -n "$PY" ] && "$PY" -c 'import sys, torch
from importlib import metadata
print("python", sys.version.split()[0], "| torch", torch.__version__, "cuda", torch.version.cuda,
      "| device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
names = ("transformers", "peft", "accelerate", "bitsandbytes", "safetensors", "trl", "datasets",
         "unsloth", "unsloth_zoo", "tyro", "pydantic", "certifi")
found = []
for name in names:
    try:
        found.append(f"{name} {metadata.version(name)}")
    except metadata.PackageNotFoundError:
        found.append(f"{name} missing")
print("packages: " + ", ".join(found))' 2>&1
    echo "PYTHONPATH=${PYTHONPATH:-}"
  } >"$SCRATCH/env.txt"
}

t0=$(date +%s)
BASE=$(find_base_python)
record python $? $(($(date +%s) - t0))
log "python with a CUDA torch: ${BASE:-none}"

t0=$(date +%s)
make_venv "$BASE" >>"$OUT/install.log" 2>&1
rc=$?
if [ "$rc" -ne 0 ] && [ -n "$BASE" ]; then
  log "the venv does not work (rc=$rc); installing into $BASE itself"
  PY=$BASE
fi
[ -z "$PY" ] && PY=$(command -v python3)
record venv "$rc" $(($(date +%s) - t0))

t0=$(date +%s)
install_deps >>"$OUT/install.log" 2>&1
record install $? $(($(date +%s) - t0))
describe_env
write_summary

if wanted tests; then
  run_stage tests "${LIMIT_TESTS:-170}" "$OUT/pytest.log" \
    "$PY" -m pytest tests/gpu -q -rA -p no:cacheprovider -m "not slow"
fi

if wanted memory; then
  rm -f "$OUT/gpu_memory.json"
  run_stage memory "${LIMIT_MEMORY:-160}" "$OUT/bench.log" "$PY" bench/gpu_memory.py \
    --json "$OUT/gpu_memory.json" --text "$SCRATCH/gpu_memory.txt"
  json_placeholder "$OUT/gpu_memory.json" bench/gpu_memory.py "${RCS[${#RCS[@]}-1]}"
  write_summary
fi

if wanted throughput; then
  rm -f "$OUT/gpu_throughput.json"
  limit=$(stage_limit "${LIMIT_THROUGHPUT:-130}")
  run_stage throughput "$limit" "$OUT/bench.log" "$PY" bench/gpu_throughput.py \
    --work "$SCRATCH/throughput" --model-dir "$LOCALPEER_LLAMA1B_DIR" \
    --timeout $((limit > 60 ? limit / 2 : 30)) --json "$OUT/gpu_throughput.json" \
    ${THROUGHPUT_EXTRA[@]+"${THROUGHPUT_EXTRA[@]}"}
  json_placeholder "$OUT/gpu_throughput.json" bench/gpu_throughput.py "${RCS[${#RCS[@]}-1]}"
  write_summary
fi

if wanted unsloth; then
  rm -f "$OUT/gpu_unsloth.json"
  limit=$(stage_limit "${LIMIT_UNSLOTH:-240}")
  run_stage unsloth "$limit" "$OUT/bench.log" "$PY" bench/gpu_unsloth.py \
    --peft-from "$OUT/gpu_throughput.json" --work "$SCRATCH/throughput" \
    --model-dir "$LOCALPEER_LLAMA1B_DIR" --timeout $((limit > 40 ? limit - 20 : 20)) \
    --json "$OUT/gpu_unsloth.json" ${UNSLOTH_EXTRA[@]+"${UNSLOTH_EXTRA[@]}"}
  json_placeholder "$OUT/gpu_unsloth.json" bench/gpu_unsloth.py "${RCS[${#RCS[@]}-1]}"
  write_summary
fi

if [ "${KEEP:-0}" != 1 ]; then
  rm -rf "$LOCALPEER_LLAMA8B_DIR" "$LOCALPEER_LLAMA8B_DIR.partial" "$LOCALPEER_LLAMA1B_DIR" \
    "$LOCALPEER_LLAMA1B_DIR.partial" "$SCRATCH/throughput"
fi
write_summary

echo "===== summary.txt"
cat "$OUT/summary.txt"
echo "===== pytest.log (last 60 lines)"
tail -n 60 "$OUT/pytest.log" 2>/dev/null
echo "===== bench.log (last 40 lines)"
tail -n 40 "$OUT/bench.log" 2>/dev/null
status=0
for rc in "${RCS[@]}"; do [ "$rc" -ne 0 ] && status=1; done
exit "$status"
