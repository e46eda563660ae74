#!/usr/bin/env bash
# One prepared CUDA check of localpeer: environment, tests/gpu, and an 8B-shaped step's peak VRAM.
#
#   bash bench/gpu_check.sh                  # results under $OUT (default /tmp/localpeer-gpu-check)
#   WHEELS=.whl bash bench/gpu_check.sh      # install what is missing from a wheels folder
#
# Stages, each with its exit status recorded; none stops the script before results are written:
#   python   find a python whose torch sees CUDA: $PYTHON, ./.venv, python3, /opt/torch/.venv
#   venv     $VENV (default /tmp/localpeer-gpu-venv): reused when its torch sees CUDA; else made
#            from the python found above and linked to its site-packages by a .pth file, so that
#            torch, transformers, peft ... are used as they are installed there; when no python
#            has a CUDA torch, a plain venv gets torch from $WHEELS (or from PyPI if reachable)
#   install  every wheel in $WHEELS (--no-index --no-deps), $WHEELS/site on PYTHONPATH (unpacked
#            packages), then `pip install -e '.[train]' --no-deps`; still-missing needs are
#            fetched by name only when no $WHEELS was given (needs a reachable index)
#   fast     python -m pytest tests/gpu -q -m "not slow"   nf4 load + train, unsloth/peft parity
#   memory   python bench/gpu_memory.py                    8B-shaped peak VRAM vs the estimate
#   slow     python -m pytest tests/gpu -q -m slow         the same 8B step, as a test (<= 10 GiB)
# The 8B-shaped bf16 folder (~16 GB) is built once in $LOCALPEER_LLAMA8B_DIR (default
# ${TMPDIR:-/tmp}/localpeer-llama8b) for both 8B stages, and removed at the end unless KEEP_8B=1.
# Stage time limits come out of one budget, $BUDGET_S seconds (default 560).
#
# Files in $OUT (7): summary.txt (environment + stage table), summary.json, install.log,
# pytest.log, gpu_memory.json, gpu_memory.txt, gpu_memory.log. All are printed at the end.
#
# On this workplace's lent GPU machine (no network; its python3 has CUDA torch, transformers,
# peft, accelerate, safetensors, tokenizers and pytest, but not bitsandbytes), carry
# bitsandbytes (0.50.2 ships a CUDA 13.0 library) from the repository root, once:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 -d .whl bitsandbytes==0.50.2
# If the wheel makes the tree exceed the 64 MiB carry limit, carry it unpacked and slimmed:
#   mkdir -p .whl/site && unzip -q .whl/bitsandbytes-*.whl -d .whl/site && rm .whl/*.whl
#   find .whl/site/bitsandbytes -name 'libbitsandbytes_*' ! -name '*cuda130*' ! -name '*cpu*' -delete
# then run  WHEELS=.whl bash bench/gpu_check.sh  with carry [".whl"] and timeout_s 600.
# unsloth (and its own dependencies) can be carried the same way; without it the parity test
# skips.

set -u
set -o pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO" || exit 2
OUT=${OUT:-${TMPDIR:-/tmp}/localpeer-gpu-check}
mkdir -p "$OUT"
ENV_FILE=$(mktemp)
exec 3>&2 # the caller's stderr, for progress lines while stages write to logs
VENV=${VENV:-/tmp/localpeer-gpu-venv}
WHEELS=${WHEELS:-}
[ -n "$WHEELS" ] && WHEELS=$(cd "$WHEELS" 2>/dev/null && pwd || echo "$WHEELS")
BUDGET_S=${BUDGET_S:-560}
export LOCALPEER_LLAMA8B_DIR=${LOCALPEER_LLAMA8B_DIR:-${TMPDIR:-/tmp}/localpeer-llama8b}
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PYTHONUNBUFFERED=1
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
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

write_summary() {
  {
    echo "localpeer gpu_check, $(date -u +%Y-%m-%dT%H:%M:%SZ), $(($(date +%s) - START)) s"
    echo "python: ${PY:-none}"
    cat "$ENV_FILE"
    echo
    printf '%-8s %4s %6s\n' stage rc seconds
    local i
    for i in "${!NAMES[@]}"; do printf '%-8s %4s %6s\n' "${NAMES[$i]}" "${RCS[$i]}" "${SECS[$i]}"; done
  } >"$OUT/summary.txt"
  {
    printf '{"python": "%s", "seconds": %d, "stages": [' "${PY:-}" $(($(date +%s) - START))
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
  log "stage $1: rc=$2 (${3}s)"
  write_summary
}

# run_stage NAME DEFAULT_LIMIT_S LOGFILE command...: under `timeout`, output appended to LOGFILE
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
  echo "== $name (limit ${limit}s): $*" >>"$logfile"
  timeout --kill-after=10 "$limit" "$@" >>"$logfile" 2>&1
  rc=$?
  [ "$rc" -eq 124 ] && echo "== $name: timed out after ${limit}s" >>"$logfile"
  record "$name" "$rc" $(($(date +%s) - t0))
  return "$rc"
}

has_cuda_torch() {
  [ -n "$1" ] && "$1" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' \
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
  if [ -n "$WHEELS" ]; then
    "$PY" -m pip install --no-index --find-links "$WHEELS" torch >>"$OUT/install.log" 2>&1
  else
    "$PY" -m pip install --timeout 20 --retries 1 torch >>"$OUT/install.log" 2>&1
  fi
  has_cuda_torch "$PY"
}

# stage install
install_deps() {
  local rc=0 missing
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
  # --no-build-isolation: building in isolation would fetch setuptools from an index
  "$PY" -m pip install --no-index --no-deps --no-build-isolation -e "$REPO[train]" || {
    log "editable install failed; localpeer is imported from $REPO through PYTHONPATH"
    export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
    rc=1
  }
  missing=$("$PY" -c 'import importlib.util as u
need = {"torch": "torch", "transformers": "transformers", "peft": "peft",
        "accelerate": "accelerate", "bitsandbytes": "bitsandbytes", "safetensors": "safetensors",
        "tokenizers": "tokenizers", "yaml": "pyyaml", "numpy": "numpy", "scipy": "scipy",
        "rich": "rich", "pytest": "pytest"}
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

describe_env() {
  {
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 |
      sed 's/^/gpu: /'
    df -h "${LOCALPEER_LLAMA8B_DIR%/*}" "$REPO" 2>&1 | sed 's/^/disk: /'
    [ -n "$PY" ] && "$PY" -c 'import importlib, importlib.util, sys, torch
print("python", sys.version.split()[0], "| torch", torch.__version__, "cuda", torch.version.cuda,
      "| device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
for name in ("transformers", "peft", "accelerate", "bitsandbytes", "safetensors", "unsloth"):
    if importlib.util.find_spec(name) is None:
        print(name, "not installed")
        continue
    try:
        print(name, getattr(importlib.import_module(name), "__version__", "?"))
    except Exception as err:
        print(name, "import failed:", type(err).__name__, str(err)[:200])' 2>&1
  } >"$ENV_FILE"
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

run_stage fast 240 "$OUT/pytest.log" "$PY" -m pytest tests/gpu -q -rA -p no:cacheprovider -m "not slow"
run_stage memory 300 "$OUT/gpu_memory.log" "$PY" bench/gpu_memory.py \
  --json "$OUT/gpu_memory.json" --text "$OUT/gpu_memory.txt"
rc_memory=${RCS[${#RCS[@]}-1]}
if [ ! -s "$OUT/gpu_memory.json" ]; then
  printf '{"error": "bench/gpu_memory.py exited %s without writing results (124: timed out); see gpu_memory.log"}\n' \
    "$rc_memory" >"$OUT/gpu_memory.json"
  cp "$OUT/gpu_memory.json" "$OUT/gpu_memory.txt"
fi
run_stage slow 300 "$OUT/pytest.log" "$PY" -m pytest tests/gpu -q -rA -p no:cacheprovider -m slow

if [ "${KEEP_8B:-0}" != 1 ]; then
  rm -rf "$LOCALPEER_LLAMA8B_DIR" "$LOCALPEER_LLAMA8B_DIR.partial"
fi
write_summary
rm -f "$ENV_FILE"

echo "===== summary.txt"
cat "$OUT/summary.txt"
echo "===== gpu_memory.txt"
cat "$OUT/gpu_memory.txt" 2>/dev/null
echo "===== gpu_memory.json"
cat "$OUT/gpu_memory.json"
echo "===== pytest.log (last 80 lines)"
tail -n 80 "$OUT/pytest.log" 2>/dev/null
status=0
for rc in "${RCS[@]}"; do [ "$rc" -ne 0 ] && status=1; done
exit "$status"
