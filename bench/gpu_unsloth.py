"""unsloth against peft in `localpeer train`: time to the first step, steady tokens/s, break-even.

    python bench/gpu_unsloth.py --json unsloth.json --text unsloth.txt         # both backends
    python bench/gpu_unsloth.py --peft-from tp.json --json unsloth.json        # peft from
                                                                               # gpu_throughput.py
    python bench/gpu_unsloth.py --smoke --backend-under-test peft              # CPU plumbing

The same recipe, model (the random Llama-3.2-1B shape of bench/gpu_throughput.py), data subset,
global batch and lengths, once with `backend=peft` and once with `backend=unsloth`, each as
`python -m localpeer train` in its own process. With --peft-from, the peft side is the
`localpeer` run of a gpu_throughput.py JSON (same work folder, so the same model and data) and
only unsloth runs here. Both runs find every reference log-prob in the cache (gpu_throughput's
bare child writes it under both backends' keys), so both time training steps only; the JSON
says whether that held ("reference_cache"). localpeer gives unsloth plain batches (chosen and
rejected as separate rows) and peft its packed rows; pairs/s and tokens/s (pairs x the
subset's tokens per pair) compare them.

  first_step_s      spawn of the process to the moment step 1's metrics line appears: imports
                    (unsloth patches transformers and peft when imported), model load, unsloth's
                    compilation, the step-0 eval, step 1
  tokens_per_s      steady state, the steps after the first --warmup (as gpu_throughput.py)
  break_even_steps  the run length, in optimizer steps, from which on unsloth's total time is
                    lower than peft's: measured step end times up to the last step seen,
                    extended at each side's steady rate beyond; null when unsloth's steady
                    step is not faster (it never catches up) or was not measured

Exit status: 0 both measured, 2 a run failed (not installed, no step before --timeout, a crash:
the JSON says which).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_throughput as tp  # noqa: E402  (bench/ is not a package)


def total_seconds(step_end_s: dict[int, float], n: int, seconds_per_step: float) -> float:
    """Time from spawn to the end of step n: measured, or extended at the steady rate."""
    last = max(step_end_s)
    if n <= last:
        return step_end_s[n]
    return step_end_s[last] + (n - last) * seconds_per_step


def break_even_steps(peft: dict[int, float], fast: dict[int, float], peft_step_s: float,
                     fast_step_s: float) -> int | None:
    """Smallest n such that for every run length m >= n the fast backend's total time to the
    end of step m is below peft's; None if the fast backend's steady step is not faster.

    Example: peft's steps end at 10, 11, 12 s (1 s/step), unsloth's at 100, 100.5, 101 s
    (0.5 s/step). At n >= 3 steps peft takes 12 + (n - 3) s, unsloth 101 + 0.5 (n - 3) s:
    equal at n = 181, unsloth lower from n = 182 on, the answer.
    """
    if not (peft and fast) or fast_step_s >= peft_step_s:
        return None
    horizon = max(max(peft), max(fast))
    gap = total_seconds(fast, horizon, fast_step_s) - total_seconds(peft, horizon, peft_step_s)
    # beyond the horizon the gap shrinks by (peft_step_s - fast_step_s) per step
    n = horizon + max(0, math.floor(gap / (peft_step_s - fast_step_s)) + 1)
    while n > 1 and (total_seconds(fast, n - 1, fast_step_s)
                     < total_seconds(peft, n - 1, peft_step_s)):
        n -= 1
    return n


def side(res: dict) -> dict:
    """The fields the `backend: auto` rule reads, plus what explains them."""
    keys = ("status", "error", "first_step_s", "tokens_per_s", "pairs_per_s", "seconds_per_step",
            "steps_done", "steps_timed", "process_s", "peak_allocated_gib",
            "peak_reserved_gib", "processed_tokens_per_s", "reference_cache", "step_seen_s",
            "log_tail")
    return {k: res[k] for k in keys if k in res}


def compare(peft: dict, fast: dict) -> dict:
    out = {"break_even_steps": None}
    if peft.get("status") != "ok" or fast.get("status") != "ok":
        out["break_even_note"] = "not measured: a run did not reach a steady state"
        return out
    p = {int(k): v for k, v in peft["step_seen_s"].items()}
    f = {int(k): v for k, v in fast["step_seen_s"].items()}
    n = break_even_steps(p, f, peft["seconds_per_step"], fast["seconds_per_step"])
    out["break_even_steps"] = n
    out["speedup_steady"] = round(peft["seconds_per_step"] / fast["seconds_per_step"], 3)
    out["extra_start_s"] = round(fast["first_step_s"] - peft["first_step_s"], 2)
    out["break_even_note"] = (
        "unsloth's steady step is not faster than peft's: it never catches up" if n is None
        else f"unsloth's total time is lower for runs of {n} optimizer steps or more")
    return out


def report_text(report: dict) -> str:
    fast_name = report.get("backend_under_test", "unsloth")
    lines = [f"localpeer train, peft vs {fast_name}, {report.get('gpu', '?')}"]
    if fast_name != "unsloth":
        lines.append(f"(the 'unsloth' side ran backend={fast_name}: a plumbing check)")
    if report.get("error"):
        lines.append(f"NOT MEASURED: {report['error']}")
    s = report.get("setup")
    if s:
        lines.append(f"model {s['model']}; {s['batch']} pairs/step, max_length "
                     f"{s['max_length']}, {s['steps']} steps, first {s['warmup']} dropped")
    lines.append(f"{'backend':<9} {'status':<8} {'first step s':>12} {'s/step':>7} "
                 f"{'pairs/s':>8} {'tokens/s':>9} {'resv GiB':>8}")
    for name in ("peft", "unsloth"):
        r = report.get(name) or {}
        if r.get("status") != "ok":
            first = r.get("first_step_s")
            lines.append(f"{name:<9} {r.get('status', 'not run'):<8} "
                         f"{tp._fmt(first, '.1f'):>12} {r.get('error', '')[:150]}")
            continue
        lines.append(f"{name:<9} {'ok':<8} {r['first_step_s']:>12.1f} "
                     f"{r['seconds_per_step']:>7.3f} {r['pairs_per_s']:>8.2f} "
                     f"{r['tokens_per_s']:>9,.0f} {tp._fmt(r.get('peak_reserved_gib'), '.2f'):>8}")
    lines.append(f"break_even_steps: {report.get('break_even_steps')} "
                 f"({report.get('break_even_note', '')})")
    return "\n".join(lines) + "\n"


def peft_from(path: Path) -> tuple[tp.Setup, dict] | None:
    """The setup and the `localpeer` (peft) run of a gpu_throughput.py JSON, if usable."""
    try:
        data = json.loads(Path(path).read_text())
        setup = tp.Setup(**data["setup"])
        run = data["runs"]["localpeer"]
    except (OSError, KeyError, TypeError, ValueError):
        return None
    if run.get("status") != "ok" or not Path(setup.model).is_dir():
        return None
    return setup, run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peft-from", help="a gpu_throughput.py --json file: reuse its setup and "
                                        "its localpeer (peft) run; else peft runs here")
    ap.add_argument("--backend-under-test", default="unsloth", choices=("unsloth", "peft"),
                    help="peft only to check this script's plumbing (--smoke)")
    ap.add_argument("--timeout", type=float, default=300.0,
                    help="seconds for the whole unsloth run (killed after; the JSON says so)")
    ap.add_argument("--json", help="write the JSON here")
    ap.add_argument("--text", help="write the text table here")
    for name, default in (("--steps", 12), ("--warmup", 3), ("--batch", 8), ("--pairs", 96),
                          ("--max-length", 512), ("--micro-batch-tokens", 16384),
                          ("--rank", 16), ("--alpha", 32)):
        ap.add_argument(name, type=int, default=default, help="as gpu_throughput.py")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--no-gradient-checkpointing", dest="gradient_checkpointing",
                    action="store_false")
    ap.add_argument("--model-dir", default=os.environ.get("LOCALPEER_LLAMA1B_DIR"))
    ap.add_argument("--work", help="scratch folder (default: a temporary one)")
    ap.add_argument("--smoke", action="store_true", help="tiny model on the CPU")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(124))  # `timeout`: finally blocks run
    t_start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[gpu_unsloth {time.perf_counter() - t_start:5.0f}s] {msg}", file=sys.stderr,
              flush=True)

    # the side under test is "unsloth" in the JSON even when --backend-under-test peft checks
    # the plumbing
    fast_name = args.backend_under_test
    report: dict = {"gpu": tp.gpu_name(args.smoke), "backend_under_test": fast_name,
                    "peft": None, "unsloth": None, "break_even_steps": None}

    def write() -> None:
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
        if args.text:
            Path(args.text).write_text(report_text(report))

    status = 2
    try:
        reused = peft_from(Path(args.peft_from)) if args.peft_from else None
        if reused:
            setup, peft_run = reused
            report["peft_source"] = f"the localpeer run of {args.peft_from}"
            log(f"peft: from {args.peft_from}")
        else:
            if not args.smoke and not tp.cuda_available():
                report["error"] = "no CUDA device (torch.cuda.is_available() is False)"
                return 2
            if not args.work:
                args.work = tempfile.mkdtemp(prefix="localpeer-unsloth-")
            setup = tp.prepare(args, log)
            tp.run_child(setup, "bare", args.timeout, log, warm_only=True)
            peft_run = tp.run_localpeer(setup, "peft", args.timeout, log)
            report["peft_source"] = "run here"
        report["setup"] = dataclasses.asdict(setup)
        report["peft"] = side(peft_run)
        write()
        fast_run = tp.run_localpeer(setup, fast_name, args.timeout, log)
        report["unsloth"] = side(fast_run)
        log(f"{fast_name}: {fast_run['status']}, first step "
            f"{fast_run.get('first_step_s')} s, {fast_run.get('tokens_per_s')} tokens/s")
        report.update(compare(peft_run, fast_run))
        status = 0 if peft_run["status"] == fast_run["status"] == "ok" else 2
    except Exception as err:  # the JSON must still say what happened
        report["error"] = f"{type(err).__name__}: {err}"
        report["traceback"] = traceback.format_exc()[-4000:]
    finally:
        report["seconds"] = round(time.perf_counter() - t_start, 1)
        write()
        print(report_text(report), file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
