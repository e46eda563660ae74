"""`just demo`: the whole pipeline on the embedded SmolLM2-135M, on a CPU, in one command.

    python -m localpeer.demo                  # into runs/demo/ (a rerun resumes finished stages)
    python -m localpeer.demo --fresh          # start over
    python -m localpeer.demo --prompts 8 --probe-limit 8     # a quick pass

Stages, each a `localpeer` command with its own progress display: pull; train the CPU recipe;
export (F16, Q8_0 and Q4_1: the base GGUF is Q4_1, so the trained Q4_1 file is compared like
for like); generate replies to the PersonaKnob test prompts with the base and the trained
model; judge them with two judges (each transcript on its record's masked dimensions, with
the record's scenario shown to the judge); calibrate those judges on held-out golden/reject
pairs; score (with the calibration beside every judge); probe (sycophancy, refusal,
selection); report.

The two judges are the same 135M model with the two rubric phrasings, sampling its grade at
temperature 1 from the grammar-constrained distribution. The calibration stage checks them
the way METHOD.md §4 asks: on --calibrate-limit held-out records (drawn across the
dimensions), does the judge grade the golden above reject_k? For a model this small the
answer is expected to be "at chance" on most dimensions, and the demo says so: the
calibration table, the verdicts and the score report's "not interpretable" lines are the
point of the stage, and its θ are a demonstration of the machinery, not a verdict on the
trained model.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from localpeer.formats import atomic_write_text

TEST = Path("data/personaknob-starter/test.jsonl")
RECIPE = Path("recipes/smollm2-135m-cpu.yaml")
# Held-out records for the calibration stage. Measured on 2 cores (llama.cpp, 2 threads):
# one grade of the 135M judge takes about 2.2 s (a ~770-token prompt, a ~60-token answer),
# and 10 records (22 pairs, 88 grades with two rubrics) took 198 s; 16 records (35 pairs,
# 140 grades) would take about 5 minutes.
CALIBRATE_LIMIT = 10


def stage(console, title: str, argv: list[str], done: bool = False) -> float:
    console.rule(f"[bold]{title}")
    if done:
        console.print("[dim]already done (rerun with --fresh to redo)[/]")
        return 0.0
    console.print("[dim]$ localpeer " + " ".join(argv) + "[/]")
    t = time.perf_counter()
    code = subprocess.call([sys.executable, "-m", "localpeer", *argv])
    if code != 0:
        console.print(f"[red]stage failed (exit {code}): {title}[/]")
        raise SystemExit(code)
    dt = time.perf_counter() - t
    console.print(f"[green]✓[/] {title} ({dt:.0f} s)")
    return dt


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console

    from localpeer.deps import embedded_smollm2_gguf

    ap = argparse.ArgumentParser(prog="python -m localpeer.demo", description=__doc__)
    ap.add_argument("--out", type=Path, default=Path("runs/demo"))
    ap.add_argument("--prompts", type=int, default=24, help="test prompts to generate on")
    ap.add_argument("--probe-limit", type=int, default=24, help="items per probe suite (half)")
    ap.add_argument("--select-pairs", type=int, default=40, help="pairs for selection accuracy")
    ap.add_argument("--calibrate-limit", type=int, default=CALIBRATE_LIMIT,
                    help="held-out records to calibrate the judges on (default "
                    f"{CALIBRATE_LIMIT})")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--fresh", action="store_true", help="delete OUT first")
    args = ap.parse_args(argv)
    console = Console()
    out = args.out
    if args.fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    base_gguf = embedded_smollm2_gguf()
    run, export = out / "train", out / "gguf"
    base, trained = "base-smollm2-135m-Q4_1", "peer-smollm2-135m-Q4_1"
    trained_gguf = export / f"{trained}.gguf"
    threads = str(args.threads)
    t0 = time.perf_counter()
    times = {}
    times["pull"] = stage(console, "1/9 pull the embedded default (offline)",
                          ["pull", "smollm2-135m-instruct"])
    times["train"] = stage(console, "2/9 train: LoRA + Lag-DPO, the CPU recipe (fp32 base; "
                           "nf4 on GPUs)",
                           ["train", str(RECIPE), f"out_dir={run}"],
                           done=(run / "summary.json").is_file())
    times["export"] = stage(console, "3/9 export to GGUF with the parity check",
                            ["export", str(run), "--quant", "Q8_0,Q4_1", "--name",
                             "peer-smollm2-135m", "--out", str(export)],
                            done=(export / "export.json").is_file())
    gen = ["--prompts", str(TEST), "--out", str(out / "transcripts"), "--limit",
           str(args.prompts), "--max-tokens", "96", "--threads", threads, "--quiet"]
    times["generate"] = stage(console, "4/9 generate: base and trained on the test prompts",
                              ["generate", str(base_gguf), "--name", base, *gen])
    times["generate"] += stage(console, "4/9 generate (trained)",
                               ["generate", str(trained_gguf), "--name", trained, *gen])
    judge = ["--judge", f"smol={base_gguf}", "--rubric", "standard,contrast", "--temperature",
             "1.0", "--threads", threads]
    times["judge"] = stage(console, "5/9 judge: one 135M model, two rubric phrasings "
                           "(= two judges), grades sampled at T=1, masked dimensions only",
                           ["judge", str(out / "transcripts"), *judge])
    # The same judges, with the same flags, on held-out golden/reject pairs (CALIBRATE_LIMIT).
    calibration = out / "calibration"
    times["calibrate"] = stage(console, "6/9 judge calibrate: do these judges grade the golden "
                               "above the reject? (expect: at chance)",
                               ["judge", "calibrate", *judge, "--data", str(TEST), "--limit",
                                str(args.calibrate_limit), "--out", str(calibration)])
    times["score"] = stage(console, "7/9 score: many-facet Rasch (MML), calibration beside "
                           "each judge",
                           ["score", str(out / "transcripts"), "--json", str(out / "score.json"),
                            "--calibration", str(calibration / "calibration.json")])
    probes = out / "probes"
    common = ["--out", str(probes), "--threads", threads, "--quiet"]
    times["probe"] = 0.0
    for name, gguf in ((base, base_gguf), (trained, trained_gguf)):
        lim = ["--limit", str(args.probe_limit)]
        times["probe"] += stage(console, f"8/9 probe {name}: sycophancy",
                                ["probe", str(gguf), "--suite", "sycophancy", "--name", name,
                                 *lim, *common])
        times["probe"] += stage(console, f"8/9 probe {name}: refusal (judge: the 135M model)",
                                ["probe", str(gguf), "--suite", "refusal", "--name", name,
                                 "--judge", f"smol={base_gguf}", *lim, *common])
        times["probe"] += stage(console, f"8/9 probe {name}: selection accuracy",
                                ["probe", str(gguf), "--suite", "select", "--name", name,
                                 "--limit", str(args.select_pairs), *common])
    # calibration: a separate folder, not transcripts/ (score would read its grades file as
    # transcripts); `localpeer report` reads it through this key.
    manifest = {"base": base, "trained": trained, "score": "score.json", "probes": "probes",
                "run": "train", "export": "gguf",
                "calibration": "calibration/calibration.json"}
    atomic_write_text(out / "report.json", json.dumps(manifest, indent=1) + "\n")
    times["report"] = stage(console, "9/9 report", ["report", str(out), "--html",
                                                    str(out / "report.html")])
    total = time.perf_counter() - t0
    console.rule("[bold]done")
    console.print("  ".join(f"{k} {v:.0f} s" for k, v in times.items()) +
                  f"  | total {total / 60:.1f} min")
    atomic_write_text(out / "timings.json", json.dumps({**times, "total": total}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
