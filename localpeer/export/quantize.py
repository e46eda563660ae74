"""Quantize a GGUF in-process with llama-cpp-python's binding of llama_model_quantize.

    from localpeer.export.quantize import parse_quants, quantize
    quantize(Path("m-F32.gguf"), Path("m-Q8_0.gguf"), "Q8_0")
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import re
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path

from localpeer.deps import require
from localpeer.errors import InputError, WorkFailed

PREFIX = "LLAMA_FTYPE_MOSTLY_"
DEFAULT_QUANTS = ("F16", "Q8_0", "Q4_K_M")
KQUANT_ROW = 256  # K-quant super-block width; narrower rows fall back to legacy types


def valid_quants() -> list[str]:
    llama_cpp = require("llama_cpp", why="export quantizes with llama.cpp")

    # F32 is llama.cpp's LLAMA_FTYPE_ALL_F32 (no MOSTLY_): the converter's twin, kept as is
    mostly = [n[len(PREFIX):] for n in dir(llama_cpp) if n.startswith(PREFIX)]
    return sorted(mostly + (["F32"] if hasattr(llama_cpp, "LLAMA_FTYPE_ALL_F32") else []))


def parse_quants(text: str) -> tuple[str, ...]:
    """'q4_k_m,Q8_0' -> ('Q4_K_M', 'Q8_0'); F16 is always written (the conversion's output),
    F32 keeps the parity twin."""
    names = [t.strip().upper() for t in text.split(",") if t.strip()]
    if not names:
        raise InputError("--quant is empty; e.g. --quant Q4_K_M,Q8_0")
    valid = valid_quants()
    for n in names:
        if n not in valid:
            raise InputError(f"--quant: unknown type {n!r}; valid: {', '.join(valid)}")
    return tuple(dict.fromkeys(names))


def fallback_note(name: str, quant_log: str) -> str | None:
    """Why a K-quant file is bigger than its name says, from llama.cpp's quantize log (e.g.
    SmolLM2's 576-wide rows are not a multiple of the 256-wide K-quant block)."""
    fallback = re.search(r"(\d+) of (\d+) tensor\(s\) required fallback", quant_log)
    if not fallback:
        return None
    bpw = re.search(r"quant size\s*=\s*[\d.]+ MiB \(([\d.]+) BPW\)", quant_log)
    why = (f"because their rows are not a multiple of {KQUANT_ROW}" if "_K" in name else
           "(llama.cpp's quantize log names them)")
    return (f"{name}: {fallback[1]} of {fallback[2]} tensors used a fallback type {why}"
            + (f"; effective {bpw[1]} bits per weight" if bpw else ""))


@contextmanager
def _capture_llama_log(path: Path):
    """Collect llama.cpp's per-tensor quantize log in `path` instead of the terminal: its log
    callback prints to sys.stderr (and only at the level of the "llama-cpp-python" logger,
    which a Llama(verbose=False) raises to ERROR); anything printed by C goes to fd 1/2."""
    libc = ctypes.CDLL(None)
    logger = logging.getLogger("llama-cpp-python")
    old_level, old_stderr = logger.level, sys.stderr
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with path.open("w", encoding="utf-8", errors="replace") as fh:
        fh.flush()
        os.dup2(fh.fileno(), 1)
        os.dup2(fh.fileno(), 2)
        logger.setLevel(logging.DEBUG)
        sys.stderr = fh
        try:
            yield
        finally:  # the terminal first: a flush into a full disk raises, and must not keep it
            sys.stderr = old_stderr
            logger.setLevel(old_level)
            libc.fflush(None)
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def quantize(src: Path, dst: Path, name: str, nthread: int = 1) -> tuple[Path, str | None]:
    """src GGUF (F32 or F16) -> dst of type `name`, via dst.partial renamed on success;
    returns (dst, a note when llama.cpp fell back to other types)."""
    llama_cpp = require("llama_cpp", why="export quantizes with llama.cpp")

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, PREFIX + name)
    params.nthread = nthread  # 0 would mean every core
    tmp = dst.with_name(dst.name + ".partial")
    log_path = dst.with_name(dst.name + ".log")
    try:
        try:
            with _capture_llama_log(log_path):
                rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(),
                                                    ctypes.byref(params))
            quant_log = log_path.read_text(errors="replace")
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise _disk_full(dst, name) from None
            raise
        if rc != 0:
            if "iostream" in quant_log or shutil.disk_usage(dst.parent).free < 64 * 2**20:
                raise _disk_full(dst, name)  # llama.cpp's "iostream error" when a write fails
            raise WorkFailed(f"llama_model_quantize to {name} returned {rc} for {src}:\n"
                             + quant_log[-2000:])
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
        log_path.unlink(missing_ok=True)
    return dst, fallback_note(name, quant_log)


def _disk_full(dst: Path, name: str) -> OSError:
    return OSError(errno.ENOSPC, f"No space left on device while quantizing to {name} "
                   f"({shutil.disk_usage(dst.parent).free / 2**20:.0f} MiB free)", str(dst.parent))
