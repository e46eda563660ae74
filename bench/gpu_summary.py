"""The one summary of bench/gpu_check.sh: every stage's exit status and seconds, and the headline
numbers with pass/fail against the targets. Rewritten after every stage, so a run cut short
still leaves it.

    python bench/gpu_summary.py --out OUT --stages stages.tsv [--env env.txt] [--texts DIR]

Reads what the stages left in OUT (pytest.log, gpu_memory.json, gpu_throughput.json,
gpu_unsloth.json; a stage that wrote nothing is "not measured") and writes OUT/summary.txt and
OUT/summary.json. stages.tsv: one "name<TAB>rc<TAB>seconds" line per finished stage. --texts:
a folder whose gpu_memory.txt is appended to summary.txt. Imports no torch: milliseconds.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_throughput  # noqa: E402  (bench/ is not a package; stdlib-only at import)
import gpu_unsloth  # noqa: E402

RESERVED_TARGET_GIB = 8.0  # issue 11: the 8B step's allocator pool fits an 8 GB card
COUNTS = re.compile(r"\b(\d+) (passed|failed|skipped|errors?|xfailed|xpassed|deselected)\b")


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def read_stages(path: Path) -> list[dict]:
    rows = []
    if Path(path).exists():
        for line in Path(path).read_text().splitlines():
            parts = line.split("\t")
            if len(parts) == 3:
                rows.append({"stage": parts[0], "rc": int(parts[1]), "seconds": int(parts[2])})
    return rows


def pytest_outcome(log: Path) -> dict:
    """Counts of pytest's last summary line and its -rA per-test lines."""
    if not Path(log).exists():
        return {}
    text = Path(log).read_text(errors="replace").splitlines()
    starts = [k for k, s in enumerate(text) if s.startswith("== tests")]
    text = text[starts[-1]:] if starts else text  # the last run only
    counts_line = next((s for s in reversed(text) if COUNTS.search(s) and " in " in s), "")
    tests = [s.strip() for s in text
             if re.match(r"^(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b", s.strip())]
    counts = {kind.rstrip("s") if kind.startswith("error") else kind: int(n)
              for n, kind in COUNTS.findall(counts_line)}
    return {"counts": counts, "line": counts_line.strip("= ").strip(), "tests": tests}


def headline(out: Path, stages: dict[str, dict]) -> tuple[list[dict], dict]:
    """Rows of (stage, what, value, target, pass) and the parsed results."""
    rows: list[dict] = []
    results: dict = {}

    def row(stage, what, value, target="", ok=None):
        rows.append({"stage": stage, "what": what, "value": value, "target": target,
                     "pass": ok})

    if "tests" in stages:
        res = pytest_outcome(out / "pytest.log")
        results["tests"] = res
        counts = res.get("counts", {})
        row("tests", "pytest tests/gpu -m 'not slow'", res.get("line") or "no summary line",
            "no failures", stages["tests"]["rc"] == 0 and not counts.get("failed")
            and not counts.get("error"))
        for t in res.get("tests", []):
            if "test_cli_resume" in t:
                verdict = t.split()[0]
                row("tests", "CLI SIGINT + --resume matches an uninterrupted run", verdict,
                    "PASSED", None if verdict == "SKIPPED" else verdict == "PASSED")

    if "memory" in stages:
        mem = read_json(out / "gpu_memory.json") or {}
        results["memory"] = mem
        reserved = mem.get("reserved_peak_gb")
        allocated = mem.get("allocated_peak_gb", mem.get("measured_peak_gb"))
        where = (f" ({mem.get('prompt_tokens')} + {mem.get('response_tokens')} tokens)"
                 if mem.get("prompt_tokens") else "")
        if reserved is None:
            row("memory", "8B shape, nf4 r16: peak reserved", "not measured: "
                + str(mem.get("error", "no gpu_memory.json"))[:200],
                f"<= {RESERVED_TARGET_GIB} GiB", None)
        else:
            row("memory", f"8B shape, nf4 r16{where}: peak reserved", f"{reserved:.2f} GiB",
                f"<= {RESERVED_TARGET_GIB} GiB", reserved <= RESERVED_TARGET_GIB)
            row("memory", f"8B shape, nf4 r16{where}: peak allocated",
                "-" if allocated is None else f"{allocated:.2f} GiB")

    if "throughput" in stages:
        tp = read_json(out / "gpu_throughput.json") or {}
        results["throughput"] = tp
        runs = tp.get("runs", {})
        for name in gpu_throughput.RUNS:
            r = runs.get(name)
            if r is None:
                continue
            value = (f"{r['tokens_per_s']:,.0f} tokens/s ({r['pairs_per_s']:.2f} pairs/s)"
                     if r.get("status") == "ok"
                     else f"{r.get('status')}: {str(r.get('error', ''))[:150]}")
            row("throughput", f"{name} steady state", value)
        for t in tp.get("targets", []):
            row("throughput", t["target"], "n/a" if t["ratio"] is None else f"{t['ratio']:.2f}x",
                f">= {t['need']}x", t["pass"])
        if not runs:
            row("throughput", "runs", "not measured: " + str(tp.get("error", "no JSON"))[:200])

    if "unsloth" in stages:
        un = read_json(out / "gpu_unsloth.json") or {}
        results["unsloth"] = un
        for name in ("peft", "unsloth"):
            r = un.get(name) or {}
            if r.get("status") == "ok":
                value = (f"first step {r['first_step_s']:.1f} s, {r['tokens_per_s']:,.0f} "
                         "tokens/s")
            else:
                first = r.get("first_step_s")
                value = (f"{r.get('status', 'not run')}: {str(r.get('error', ''))[:150]}"
                         + ("" if first is None else f" (first step {first:.1f} s)"))
            row("unsloth", f"localpeer train backend={name}", value)
        be = un.get("break_even_steps")
        note = un.get("break_even_note") or un.get("error") or ""
        row("unsloth", "break_even_steps (the run length from which unsloth is faster in all)",
            ("null" if be is None else str(be)) + (f" ({note})" if note else ""))
    return rows, results


def render(summary: dict, texts: Path | None) -> str:
    lines = [f"localpeer gpu_check, {summary['seconds']} s in all (budget "
             f"{summary.get('budget_s', '?')} s)", f"python: {summary.get('python') or 'none'}"]
    lines += summary.get("env", [])
    lines += ["", f"{'stage':<11} {'rc':>4} {'seconds':>7}"]
    for s in summary["stages"]:
        note = " (timed out)" if s["rc"] == 124 else ""
        lines.append(f"{s['stage']:<11} {s['rc']:>4} {s['seconds']:>7}{note}")
    lines += ["", "headline"]
    for r in summary["headline"]:
        verdict = {True: "PASS", False: "FAIL", None: ""}[r["pass"]]
        target = f" [target {r['target']}]" if r["target"] else ""
        lines.append(f"  {verdict:<4} {r['stage']:<10} {r['what']}: {r['value']}{target}")
    results = summary.get("_results", {})
    if results.get("throughput"):
        lines += ["", gpu_throughput.report_text(results["throughput"]).rstrip()]
    if results.get("unsloth"):
        lines += ["", gpu_unsloth.report_text(results["unsloth"]).rstrip()]
    if texts and (texts / "gpu_memory.txt").exists():
        lines += ["", (texts / "gpu_memory.txt").read_text().rstrip()]
    failed = [t for t in results.get("tests", {}).get("tests", []) if not
              t.startswith(("PASSED", "SKIPPED"))]
    skipped = [t for t in results.get("tests", {}).get("tests", []) if t.startswith("SKIPPED")]
    if failed or skipped:
        lines += ["", "tests not passed:"] + [f"  {t[:300]}" for t in failed + skipped]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--stages", required=True, type=Path)
    ap.add_argument("--env", type=Path)
    ap.add_argument("--texts", type=Path)
    ap.add_argument("--python", default="")
    ap.add_argument("--seconds", type=int, default=0)
    ap.add_argument("--budget", type=int)
    args = ap.parse_args(argv)
    stages = read_stages(args.stages)
    rows, results = headline(args.out, {s["stage"]: s for s in stages})
    env = args.env.read_text().splitlines() if args.env and args.env.exists() else []
    summary = {"seconds": args.seconds, "budget_s": args.budget, "python": args.python,
               "env": env, "stages": stages, "headline": rows,
               "targets_passed": sum(r["pass"] is True for r in rows),
               "targets_failed": sum(r["pass"] is False for r in rows),
               "stages_failed": [s["stage"] for s in stages if s["rc"] != 0]}
    text = render({**summary, "_results": results}, args.texts)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (args.out / "summary.txt").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
