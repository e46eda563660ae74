"""An export's output folder: what it holds and may be replaced, and SIGTERM's clean-up.

    from localpeer.export.outdir import check_out_folder, listed_files, sigterm_unwinds
    check_out_folder(out, run, force=False)   # refuses another run's export without --force
    with sigterm_unwinds():                   # SIGTERM unwinds like Ctrl-C: `finally` runs
        ...
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

from localpeer.errors import InputError


def listed_files(out: Path) -> set[str]:
    """The files the folder's export.json lists (none when there is none, or it is unreadable)."""
    try:
        info = json.loads((out / "export.json").read_text())
        return {Path(f["file"]).name for f in info["files"]}
    except (OSError, ValueError, KeyError, TypeError):
        return set()


def check_out_folder(out: Path, run: Path, force: bool) -> None:
    """Refuse, unless --force, an output folder that holds another run's export (its
    export.json names another run_dir) or GGUF files that no export.json lists."""
    if not out.is_dir():
        return
    try:
        info = json.loads((out / "export.json").read_text())
        other = info.get("sources", {}).get("run_dir")
    except (OSError, ValueError, AttributeError):
        info, other = None, None
    listed = listed_files(out)
    strays = sorted(p.name for p in out.glob("*.gguf") if p.name not in listed)
    problem = None
    if other is not None and Path(other).resolve() != run.resolve():
        problem = f"it holds the export of another run ({other})"
    elif strays:
        problem = f"it holds GGUF files no export.json lists ({', '.join(strays[:3])})"
    if problem and not force:
        raise InputError(f"--out: {problem}; choose another --out, or pass --force to replace "
                         "its exported files", out)
    if problem and force:  # replaced as one unit when the new export is published
        for name_ in strays:
            (out / name_).unlink()


@contextmanager
def sigterm_unwinds():
    """SIGTERM (a job scheduler, `kill`) unwinds like Ctrl-C, so the `finally` that removes the
    work folder runs; outside the main thread nothing changes."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise SystemExit(143)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
