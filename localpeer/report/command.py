"""`localpeer report RUN_DIR|DIR [--html FILE]`: base and trained side by side.

    localpeer report runs/demo                       # reads runs/demo/report.json for the parts
    localpeer report runs/demo --html report.html
    localpeer report runs/smollm2-135m-cpu           # a run folder: curves and held-out accuracy

A DIR's report.json names the parts: {"base": NAME, "trained": NAME, "score": FILE,
"probes": DIR, "run": RUN_DIR, "export": EXPORT_DIR, "calibration": FILE}; flags override it.
"""

from __future__ import annotations

import json
from pathlib import Path

from localpeer.errors import InputError


def _manifest(folder: Path) -> dict:
    path = folder / "report.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"not valid JSON ({e.msg})", path, e.lineno) from None
    return data if isinstance(data, dict) else {}


def run_report(args) -> int:
    from rich.console import Console

    from localpeer.formats import atomic_write_text
    from localpeer.report.compare import build, load_inputs
    from localpeer.report.html import render_html
    from localpeer.report.terminal import to_rich

    folder = Path(args.dir)
    if not folder.is_dir():
        raise InputError("no such folder; pass a run folder or a folder with report.json", folder)
    m = _manifest(folder)
    is_run = (folder / "metrics.jsonl").is_file()

    def pick(flag, key, default=None):
        value = flag if flag is not None else m.get(key, default)
        if value is None:
            return None
        path = Path(value)
        return path if path.is_absolute() or path.exists() else folder / path

    base = args.base or m.get("base") or "base"
    trained = args.trained or m.get("trained") or "trained"
    inp = load_inputs(base, trained, pick(args.score, "score", None if is_run else "score.json"),
                      pick(args.probes, "probes", None if is_run else "probes"),
                      folder if is_run else pick(args.run_folder, "run"),
                      pick(args.export, "export"),
                      pick(getattr(args, "calibration", None), "calibration",
                           None if is_run else "calibration.json"))
    if is_run:
        inp.notes = [n for n in inp.notes if not n.startswith("no score JSON (None)")]
    if not (inp.score or inp.probes or inp.metrics or inp.export):
        raise InputError("nothing to report here: no score JSON, probe results, training run "
                         "or export (a folder from `just demo`, a run folder, or report.json "
                         "naming the parts; or pass --score/--probes/--run/--export)", folder)
    report = build(inp)  # built once, drawn twice
    Console(width=args.width).print(to_rich(report))
    if args.html:  # the same Report drawn as a standalone page (tables, inline SVG plots)
        atomic_write_text(Path(args.html), render_html(report))
        Console(stderr=True).print(f"wrote {args.html}")
    return 0
