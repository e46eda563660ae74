"""The Lag-DPO ablation on the embedded model (issue 12, METHOD.md §2 and §4): does the
leader form make SmolLM2-135M better on A, T, E and C together than the alternatives?

    python bench/method_bench.py                          # 4 arms x 3 seeds, the CPU recipe
    python bench/method_bench.py --steps 40 --jobs 2 --json method.json --markdown method.md
    python bench/method_bench.py --arms leader,dpo --seeds 0,1   # a subset

Arms (each `localpeer train recipes/smollm2-135m-cpu.yaml` with overrides, in its own process):
  sft       train.objective=sft: the goldens' token NLL (the paper's comparison point)
  dpo       lagrangian.dual_lr=0: plain multi-objective DPO (the mean of the L_k)
  pairwise  lagrangian.form=pairwise: the first version (pairwise constraints, eps raw)
  leader    the default: L_k <= L* + eps*L0, w_k = 1/K + lambda_k

Every run evaluates on all held-out pairs (train.eval_pairs=0) before and after training.
Reported per arm and dimension: held-out selection accuracy (the golden has the higher
length-normalised log-prob) with a 95% interval across items and seeds (binomial item
variance plus the seeds' variance), reward accuracy (h > 0) with a Wilson interval over the
items (the mean over seeds as the rate of n items: seeds share the items, so n is not
multiplied by them), the reward margin with a 95% interval (item and seed variance), the
"longer response wins" baseline of the same pairs, the seeds' spread, the lambda trajectory,
and the largest spread of the EMA losses each arm reached against its bound. Each arm is
compared with plain DPO on selection accuracy by Fisher's exact test on the pooled counts
(unpaired, so conservative for these paired items). Runs are resumable: a run whose
summary.json exists is read, not rerun. Exit 0 unless a run fails.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from localpeer.data.personaknob import read_records  # noqa: E402
from localpeer.data.stats import data_stats  # noqa: E402
from localpeer.rates import Rate  # noqa: E402

RECIPE = ROOT / "recipes" / "smollm2-135m-cpu.yaml"
ARMS = {"sft": ["train.objective=sft"], "dpo": ["lagrangian.dual_lr=0"],
        "pairwise": ["lagrangian.form=pairwise"], "leader": ["lagrangian.form=leader"]}
DIMS = ("A", "T", "E", "C")
SPARK = "▁▂▃▄▅▆▇█"


def run_one(out: Path, arm: str, seed: int, steps: int, extra: list[str]) -> dict:
    folder = out / f"{arm}-seed{seed}"
    summary = folder / "summary.json"
    if not summary.exists():
        cmd = [sys.executable, "-m", "localpeer", "train", str(RECIPE), f"out_dir={folder}",
               f"train.seed={seed}", f"train.steps={steps}", "train.eval_pairs=0",
               "train.checkpoint_every=0", *ARMS[arm], *extra]
        env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", COLUMNS="100")
        t0 = time.time()
        resume = ["--resume"] if (folder / "checkpoints").exists() else []
        done = subprocess.run(cmd + resume, cwd=ROOT, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{arm} seed {seed} failed:\n{done.stderr[-3000:]}")
        (folder / "wall_s.txt").write_text(f"{time.time() - t0:.1f}\n")
    lines = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()
             if x.strip()]
    return {"arm": arm, "seed": seed, "summary": json.loads(summary.read_text()),
            "steps": [ln for ln in lines if ln.get("split") != "eval"],
            "wall_s": float((folder / "wall_s.txt").read_text())
            if (folder / "wall_s.txt").exists() else None}


def sparkline(values: list[float]) -> str:
    if not values or max(values) == min(values):
        return "▁" * min(len(values), 16)
    lo, hi = min(values), max(values)
    step = max(len(values) // 16, 1)
    return "".join(SPARK[min(int((v - lo) / (hi - lo) * 7), 7)] for v in values[::step])


def fisher_p(k1: float, n1: int, k2: float, n2: int) -> float:
    from scipy.stats import fisher_exact

    a, b = round(k1), round(k2)
    return float(fisher_exact([[a, n1 - a], [b, n2 - b]])[1])


def items_and_seeds(rates: list[float], n: int) -> dict:
    """Mean of per-seed rates on the same n items with a 95% interval that counts both the
    items (binomial, p(1-p)/n) and the seeds (their variance / S), by the normal
    approximation, widened to at least the Wilson interval over the items (which stays
    honest at rates near 0 or 1, where the normal one collapses)."""
    S = len(rates)
    p = sum(rates) / S
    seeds = sum((r - p) ** 2 for r in rates) / max(S - 1, 1) / S
    half = 1.96 * math.sqrt(p * (1 - p) / n + seeds)
    wilson = Rate.of(p * n, n)
    return {"value": p, "low": max(min(p - half, wilson.low), 0.0),
            "high": min(max(p + half, wilson.high), 1.0)}


def aggregate(runs: list[dict], arm: str) -> dict:
    mine = [r for r in runs if r["arm"] == arm]
    out = {"seeds": len(mine), "dims": {}}
    for d in DIMS:
        after = [r["summary"]["eval_after"][d] for r in mine]
        before = [r["summary"]["eval_before"][d] for r in mine]
        n = after[0]["pairs"]
        sel = [a["selection_accuracy"] for a in after]
        acc = [a["accuracy"] for a in after]
        margins = [a["margin"] for a in after]
        within = sum(a.get("margin_sd", 0.0) ** 2 for a in after) / len(after) / n
        between = (sum((m - sum(margins) / len(margins)) ** 2 for m in margins)
                   / max(len(margins) - 1, 1) / len(margins))
        mean_margin = sum(margins) / len(margins)
        half = 1.96 * math.sqrt(within + between)
        lam = [[ln["lambdas"].get(d, sum(v for k, v in ln["lambdas"].items()
                                         if k.startswith(f"{d}>"))) for ln in r["steps"]]
               for r in mine]
        lam_mean = [sum(x) / len(x) for x in zip(*lam)]
        out["dims"][d] = {
            "n_items": n,
            "selection": Rate.of(sum(sel) / len(sel) * n, n).__dict__,
            "selection_items_seeds": items_and_seeds(sel, n),
            "selection_before": sum(b["selection_accuracy"] for b in before) / len(before),
            "selection_seeds": sel,
            "reward_accuracy": Rate.of(sum(acc) / len(acc) * n, n).__dict__,
            "margin": {"mean": mean_margin, "low": mean_margin - half,
                       "high": mean_margin + half},
            "lambda_curve": sparkline(lam_mean), "lambda_max": max(lam_mean, default=0.0),
        }
    cons = [r["summary"]["constraint"] for r in mine]
    out["max_spread"] = max(c["max_spread"] for c in cons)
    out["bound"] = cons[0]["bound"]
    out["engaged_seeds"] = sum(c["engaged"] for c in cons)
    out["wall_s"] = [r["wall_s"] for r in mine]
    return out


def baseline() -> dict:
    stats = data_stats(read_records(ROOT / "data" / "personaknob-starter" / "test.jsonl"))
    return {d: stats.dims[d].longer_wins.__dict__ for d in DIMS}


def markdown(result: dict) -> str:
    arms, base = result["arms"], result["longer_wins"]
    rows = ["| arm | dim | selection acc. (95% CI) | before | per seed | reward acc. | margin "
            "(95% CI) | longer wins | vs dpo (Fisher p) | λ (mean over seeds) |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for arm, agg in arms.items():
        for d in DIMS:
            x = agg["dims"][d]
            s, r, m = x["selection_items_seeds"], x["reward_accuracy"], x["margin"]
            p = result["tests"].get(arm, {}).get(d)
            rows.append(
                f"| {arm} | {d} | {s['value']:.3f} [{s['low']:.3f}, {s['high']:.3f}] "
                f"(n {x['n_items']}) | {x['selection_before']:.3f} | "
                + " ".join(f"{v:.2f}" for v in x["selection_seeds"])
                + f" | {r['value']:.3f} [{r['low']:.3f}, {r['high']:.3f}] | {m['mean']:+.3f} "
                f"[{m['low']:+.3f}, {m['high']:+.3f}] | {base[d]['value']:.3f} | "
                + ("—" if p is None else f"{p:.2f}")
                + f" | {x['lambda_curve']} max {x['lambda_max']:.3f} |")
    rows.append("")
    for arm, agg in arms.items():
        rows.append(f"- {arm}: largest spread of the EMA losses {agg['max_spread']:.3f} against "
                    f"the bound {agg['bound']:.3f}; a constraint bound in "
                    f"{agg['engaged_seeds']} of {agg['seeds']} seeds; wall "
                    + ", ".join(f"{w:.0f} s" for w in agg["wall_s"] if w))
    return "\n".join(rows) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", type=int, default=40, help="optimizer steps a run (4 pairs each)")
    ap.add_argument("--jobs", type=int, default=2, help="runs at once (one thread each)")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "method-bench")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--markdown", type=Path)
    ap.add_argument("extra", nargs="*", help="key=value overrides for every run")
    args = ap.parse_args(argv)
    arms = [a for a in args.arms.split(",") if a]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    args.out.mkdir(parents=True, exist_ok=True)
    jobs = [(a, s) for s in seeds for a in arms]
    t0 = time.time()
    with ThreadPoolExecutor(args.jobs) as pool:
        runs = list(pool.map(lambda job: run_one(args.out, job[0], job[1], args.steps,
                                                 args.extra), jobs))
    result = {"steps": args.steps, "seeds": seeds, "pairs_per_step": 4,
              "wall_s": time.time() - t0, "longer_wins": baseline(),
              "arms": {a: aggregate(runs, a) for a in arms}, "tests": {}}
    if "dpo" in arms:
        ref = result["arms"]["dpo"]["dims"]
        for a in arms:
            if a == "dpo":
                continue
            result["tests"][a] = {d: fisher_p(x["selection"]["successes"], x["n_items"],
                                              ref[d]["selection"]["successes"], ref[d]["n_items"])
                                  for d, x in result["arms"][a]["dims"].items()}
    text = markdown(result)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if args.markdown:
        args.markdown.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
