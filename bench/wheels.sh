#!/usr/bin/env bash
# The slim wheel bundle that bench/gpu_check.sh needs on an offline GPU machine (~16 MB).
#
#   bash bench/wheels.sh                 # -> .whl/localpeer-wheels.tar.xz (needs PyPI)
#   bash bench/wheels.sh OUT_DIR         # -> OUT_DIR/localpeer-wheels.tar.xz
#   KEEP_BUILD=1 bash bench/wheels.sh    # keep the downloaded wheels and the unpacked folder
#
# The target machine (bench/README.md, "GPU check") has python 3.12 with torch 2.11 cu130,
# transformers 5.17, peft 0.21, accelerate, pytest, numpy, pandas, pyarrow, fsspec, xxhash,
# typer, click, einops, triton ... but not the packages below. They are downloaded as wheels
# for cp312 manylinux x86_64 (--no-deps: every need is named here), unzipped into one folder
# (a wheel is a zip; pip is not needed on the target), slimmed, and archived with xz:
#
#   bitsandbytes  only libbitsandbytes_cuda130.so (torch cu130) and the cpu library are kept
#                 (16 libraries, 124 MB -> 2)
#   unsloth       its top-level studio/ folder (a web UI, 82 MB) is deleted; xformers is
#                 not brought (unsloth runs without it)
#   torchao       its top-level test/ folder is deleted
#   everywhere    __pycache__ folders are deleted; *.dist-info is kept (transformers,
#                 unsloth and trl read package versions from it)
#
# The archive unpacks to site/; on the target: tar -xJf localpeer-wheels.tar.xz -C /tmp/w and
# PYTHONPATH=/tmp/w/site:$REPO (bench/gpu_check.sh does this when WHEELS points at it).
# Nothing here is committed: .whl/ is in .gitignore.

set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEST=${1:-$REPO/.whl}
ARCHIVE=localpeer-wheels.tar.xz
PYTHON=${PYTHON:-python3}
# pins: unsloth 2026.10.9 and unsloth_zoo require trl <= 1.15.0, datasets < 5 and
# transformers <= 5.17.0 (the target's); the rest are the newest that fit those pins
# (importlib_metadata 10 would also need lazy-importer; 9.1.0 does not)
PINS=(
  bitsandbytes==0.50.2
  unsloth==2026.10.9
  unsloth_zoo==2026.10.9
  trl==1.15.0
  datasets==4.8.5
  tyro==1.0.17
  docstring-parser==0.18.0
  typeguard==4.6.1
  shtab==1.13.0
  dill==0.4.1
  multiprocess==0.70.19
  hf_transfer==0.1.9
  diffusers==0.42.1
  json5==0.17.3
  nest-asyncio==1.6.0
  structlog==26.1.0
  pydantic==2.14.4
  pydantic-core==2.50.5
  annotated-types==0.8.0
  typing-inspection==0.4.5
  typing_extensions==4.16.0
  torchao==0.18.0
  cut_cross_entropy==25.1.1
  msgspec==0.23.0
  importlib_metadata==9.1.0
  certifi==2026.10.19.post1
)
PLATFORM=(--python-version 3.12 --implementation cp
  --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)

BUILD=$(mktemp -d "${TMPDIR:-/tmp}/localpeer-wheels.XXXXXX")
cleanup() {
  if [ "${KEEP_BUILD:-0}" = 1 ]; then echo "kept $BUILD" >&2; else rm -rf "$BUILD"; fi
}
trap cleanup EXIT

echo "downloading ${#PINS[@]} wheels into $BUILD/download" >&2
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: "${PLATFORM[@]}" \
  -d "$BUILD/download" "${PINS[@]}"
count=$(find "$BUILD/download" -name '*.whl' | wc -l)
if [ "$count" -ne "${#PINS[@]}" ]; then
  echo "expected ${#PINS[@]} wheels, got $count" >&2
  exit 1
fi

SITE=$BUILD/site
mkdir -p "$SITE"
for whl in "$BUILD"/download/*.whl; do
  unzip -q -o "$whl" -d "$SITE"
done
before=$(du -sm --apparent-size "$SITE" | cut -f1)

find "$SITE/bitsandbytes" -maxdepth 1 -name 'libbitsandbytes_*' \
  ! -name 'libbitsandbytes_cuda130.*' ! -name 'libbitsandbytes_cpu.*' -delete
rm -rf "$SITE/studio" "$SITE/test"
find "$SITE" -name __pycache__ -type d -prune -exec rm -rf {} +
for need in bitsandbytes/libbitsandbytes_cuda130.so bitsandbytes/libbitsandbytes_cpu.so \
  unsloth/__init__.py unsloth_zoo/__init__.py unsloth_zoo_downloads trl/__init__.py \
  datasets/__init__.py tyro/__init__.py; do
  [ -e "$SITE/$need" ] || { echo "slimmed folder lacks $need" >&2; exit 1; }
done
[ -e "$SITE/xformers" ] && { echo "xformers must not be in the bundle" >&2; exit 1; }
after=$(du -sm --apparent-size "$SITE" | cut -f1)

mkdir -p "$DEST"
tar -cJf "$DEST/$ARCHIVE.partial" -C "$BUILD" site
mv "$DEST/$ARCHIVE.partial" "$DEST/$ARCHIVE"
ls "$BUILD/download" >"$DEST/localpeer-wheels.txt"
bytes=$(stat -c %s "$DEST/$ARCHIVE")
echo "unpacked ${before} MB -> slimmed ${after} MB -> $DEST/$ARCHIVE: $bytes bytes" \
  "($((bytes / 1048576)) MiB); wheel list in $DEST/localpeer-wheels.txt"
if [ "$bytes" -gt $((48 * 1048576)) ]; then
  echo "warning: over 48 MiB; the device tool carries at most 64 MiB with the tree" >&2
fi
