"""llama.cpp's own converter, taken from the pinned llama-cpp-python sdist and kept in a cache.

`just setup` (or `just converter`) fetches it once; export is offline after that:

    python -m localpeer.export.converter --fetch      # ~80 s the first time, then instant
    python -m localpeer.export.converter --where      # print the cache folder

Only convert_hf_to_gguf.py, convert_lora_to_gguf.py, conversion/, gguf-py/ and LICENSE are
extracted (never copied into this repository). The extracted folder is the offline copy: pip
download needs the index every time, so the sdist itself is not kept.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from localpeer.deps import require
from localpeer.errors import InputError, WorkFailed

log = logging.getLogger(__name__)

LLAMA_CPP_PYTHON_VERSION = "0.3.36"  # must equal the installed llama_cpp.__version__
KEEP_FILES = ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py", "LICENSE")
KEEP_DIRS = ("conversion/", "gguf-py/")
MARKER = ".complete.json"
FETCH_HINT = "run `just converter` (or python -m localpeer.export.converter --fetch) once online"


def cache_root() -> Path:
    """$LOCALPEER_CACHE, else ~/.cache/localpeer."""
    env = os.environ.get("LOCALPEER_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "localpeer"


def converter_dir(cache: Path | None = None, version: str = LLAMA_CPP_PYTHON_VERSION) -> Path:
    return (cache or cache_root()) / f"llama.cpp-{version}"


def pip_download(version: str, dest: Path) -> Path:
    """The llama-cpp-python sdist of `version` into `dest` (needs the package index)."""
    cmd = [sys.executable, "-m", "pip", "download", f"llama-cpp-python=={version}",
           "--no-binary", ":all:", "--no-deps", "-d", str(dest)]
    rc = subprocess.run(cmd).returncode
    found = sorted(dest.glob(f"llama_cpp_python-{version}.tar.gz"))
    if rc != 0 or not found:
        raise WorkFailed(f"pip download of the llama-cpp-python {version} sdist failed "
                         f"(exit {rc}); check the network or the pip index settings")
    return found[0]


def _converter_members(tf: tarfile.TarFile, version: str) -> list[tarfile.TarInfo]:
    prefix = f"llama_cpp_python-{version}/vendor/llama.cpp/"
    members = []
    for m in tf.getmembers():
        if not m.name.startswith(prefix) or not (m.isfile() or m.isdir()):
            continue
        rel = m.name[len(prefix):]
        if rel in KEEP_FILES or any(rel.startswith(d) for d in KEEP_DIRS):
            m.name = rel
            members.append(m)
    return members


def fetch_converter(cache: Path | None = None, version: str = LLAMA_CPP_PYTHON_VERSION,
                    download: Callable[[str, Path], Path] = pip_download,
                    force: bool = False) -> Path:
    """The cached converter folder; fetched and extracted first if its marker is missing."""
    dest = converter_dir(cache, version)
    if (dest / MARKER).is_file() and not force:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        sdist = download(version, Path(tmp))
        sha = hashlib.sha256(sdist.read_bytes()).hexdigest()
        # staging in the cache folder itself: the final rename stays on one file system
        staging = Path(tempfile.mkdtemp(dir=dest.parent, prefix=".staging-"))
        try:
            with tarfile.open(sdist, "r:gz") as tf:
                members = _converter_members(tf, version)
                missing = [f for f in KEEP_FILES if f not in {m.name for m in members}]
                if missing:
                    raise WorkFailed(f"{sdist.name} lacks vendor/llama.cpp/{missing[0]}; is "
                                     f"{version} a llama-cpp-python release?")
                tf.extractall(staging, members=members, filter="data")
            (staging / MARKER).write_text(json.dumps(
                {"llama_cpp_python": version, "sdist_sha256": sha, "files": len(members)},
                indent=1))
            if dest.exists():
                shutil.rmtree(dest)
            staging.rename(dest)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    log.info("converter for llama-cpp-python %s in %s", version, dest)
    return dest


def check_llama_cpp_version() -> str:
    """The installed llama-cpp-python version; it must match the pinned converter."""
    llama_cpp = require("llama_cpp", why="export converts to GGUF")

    if llama_cpp.__version__ != LLAMA_CPP_PYTHON_VERSION:
        raise InputError(f"llama-cpp-python {llama_cpp.__version__} is installed but localpeer "
                         f"pins {LLAMA_CPP_PYTHON_VERSION} (its converter must match the "
                         f"runtime); pip install llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}")
    return llama_cpp.__version__


def find_converter(cache: Path | None = None) -> Path:
    """The fetched converter folder, or an InputError that says how to fetch it."""
    dest = converter_dir(cache)
    if not (dest / MARKER).is_file():
        raise InputError(f"llama.cpp's converter is not in {dest}; {FETCH_HINT}")
    return dest


def converter_info(folder: Path) -> dict:
    return json.loads((folder / MARKER).read_text())


def _env(folder: Path) -> dict:
    env = dict(os.environ)
    env.pop("NO_LOCAL_GGUF", None)  # the converter then imports its own gguf-py, not PyPI's
    env["PYTHONPATH"] = str(folder / "gguf-py")
    env["HF_HUB_OFFLINE"] = "1"
    env["TRANSFORMERS_OFFLINE"] = "1"
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


# Converter processes die with the export: the child asks Linux for SIGKILL when its parent
# dies (PR_SET_PDEATHSIG) and then runs the script, so a killed export leaves no converter
# writing into its work folder. Done in the child's own interpreter, not in a preexec_fn (which
# runs between fork and exec, unsafe while the export's hashing thread is alive, and refused on
# Windows); elsewhere than Linux the script simply runs.
_BOOTSTRAP = """\
import ctypes, os, runpy, sys
parent, script = int(sys.argv[1]), sys.argv[2]
try:
    ctypes.CDLL(None).prctl(ctypes.c_int(1), ctypes.c_ulong(9))  # PR_SET_PDEATHSIG, SIGKILL
except (OSError, AttributeError):
    pass
if os.getppid() != parent:  # the parent died before prctl took effect
    sys.exit(1)
sys.argv = sys.argv[2:]
runpy.run_path(script, run_name="__main__")
"""


class Job:
    """A converter script running in the background, writing `outfile` through a temporary
    name: `wait()` renames it on success or raises WorkFailed with the script's log;
    `kill()` (also what an exception or Ctrl-C inside `wait()` does) stops it and removes the
    partial file. The log goes to a file beside the output (a pipe nobody reads would stall
    the converter once it fills). `seconds` is the script's run time, start to exit."""

    def __init__(self, folder: Path, script: str, args: list[str], outfile: Path):
        self.script, self.outfile = script, Path(outfile).resolve()
        self.tmp = self.outfile.with_name(self.outfile.name + ".partial")
        self.log_path = self.outfile.with_name(self.outfile.name + ".convert.log")
        cmd = [sys.executable, "-c", _BOOTSTRAP, str(os.getpid()), str(folder / script),
               *args, "--outfile", str(self.tmp)]
        log.debug("running %s", cmd[3:])
        self.started = time.perf_counter()
        self.seconds: float | None = None
        with self.log_path.open("w") as fh:
            self.proc = subprocess.Popen(cmd, env=_env(folder), cwd=str(folder),
                                         stdout=fh, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        self._reaper = threading.Thread(target=self._reap, daemon=True)
        self._reaper.start()

    def _reap(self) -> None:
        self.proc.wait()
        self.seconds = time.perf_counter() - self.started

    def wait(self) -> Path:
        try:
            while self._reaper.is_alive():
                self._reaper.join(0.2)  # a timed join: Ctrl-C gets through
            rc = self.proc.returncode
            if rc != 0:
                tail = self.log_path.read_text(errors="replace")[-3000:]
                raise WorkFailed(f"{self.script} failed (exit {rc}) writing "
                                 f"{self.outfile.name}:\n{tail}")
            os.replace(self.tmp, self.outfile)
            return self.outfile
        except BaseException:
            self.kill()
            raise
        finally:
            self.tmp.unlink(missing_ok=True)
            self.log_path.unlink(missing_ok=True)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self._reaper.join()
        self.tmp.unlink(missing_ok=True)
        self.log_path.unlink(missing_ok=True)


def start_model(model_dir: Path, outfile: Path, outtype: str, folder: Path) -> Job:
    """Start converting an HF folder to one GGUF of `outtype` (f32, f16, bf16, q8_0)."""
    return Job(folder, "convert_hf_to_gguf.py",
               [str(Path(model_dir).resolve()), "--outtype", outtype], outfile)


def convert_model(model_dir: Path, outfile: Path, outtype: str, folder: Path) -> Path:
    """An HF folder -> one GGUF of `outtype`, waiting for it."""
    return start_model(model_dir, outfile, outtype, folder).wait()


def convert_lora(adapter_dir: Path, base_dir: Path, outfile: Path, outtype: str,
                 folder: Path) -> Path:
    """A PEFT adapter folder -> a LoRA GGUF for llama.cpp (applied on top of the base GGUF)."""
    return Job(folder, "convert_lora_to_gguf.py",
               [str(Path(adapter_dir).resolve()), "--base", str(Path(base_dir).resolve()),
                "--outtype", outtype], outfile).wait()


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m localpeer.export.converter",
                                description="fetch llama.cpp's converter into the cache")
    p.add_argument("--fetch", action="store_true", help="fetch it unless already cached")
    p.add_argument("--force", action="store_true", help="fetch again")
    p.add_argument("--where", action="store_true", help="print the cache folder")
    args = p.parse_args(argv)
    if args.fetch or args.force:
        print(fetch_converter(force=args.force))
    elif args.where:
        print(converter_dir())
    else:
        p.print_help()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
