"""What a run writes besides its weights: the metrics.jsonl lines and summary.json.

One line per optimizer step (ARCHITECTURE.md's contract) and the held-out eval lines; on
resume the file is read back (the step-0 eval, the lines up to the checkpoint), and at the end
the summary, with the constraint record that says whether Lag-DPO's tolerance ever bound.

    from localpeer.train.records import step_lines, constraint_record
"""

from __future__ import annotations

import json
from pathlib import Path

from localpeer.config import Recipe
from localpeer.deps import require
from localpeer.formats import atomic_write_text, jsonl_records
from localpeer.train import lagdpo

torch = require("torch")


def metrics_lines(path: Path) -> list[dict]:
    """Every line of a metrics.jsonl (none when it does not exist)."""
    if not Path(path).exists():
        return []
    return [obj for _, obj in jsonl_records(Path(path), appended=True)]  # torn tail skipped


def step_lines(path: Path) -> list[dict]:
    """The optimizer-step lines (not the held-out eval lines)."""
    return [ln for ln in metrics_lines(path) if ln.get("split") != "eval"]


def first_eval(path: Path) -> dict | None:
    """The step-0 held-out eval of this run (for a resumed summary)."""
    return next((ln["dims"] for ln in metrics_lines(path)
                 if ln.get("split") == "eval" and ln["step"] == 0), None)


def truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop metric lines past the checkpoint so the file reads as one clean run."""
    if Path(path).exists():
        keep = [ln for ln in metrics_lines(path) if ln["step"] <= step]
        atomic_write_text(path, "".join(json.dumps(ln) + "\n" for ln in keep))


def metrics_line(step, loss, lr, tokens_per_s, dims, stats, state, weights, form) -> dict:
    cuda = torch.cuda.is_available()
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else rss_mb()
    reserved = {"peak_reserved_mb": round(torch.cuda.max_memory_reserved() / 2**20, 1)} \
        if cuda else {}  # what the card must hold: the caching allocator's pool
    return {
        "step": step, "loss": float(loss), "lr": lr, "tokens_per_s": tokens_per_s,
        "peak_mem_mb": round(peak, 1), **reserved,
        "dims": {d: {"loss": float(stats.loss[k]), "loss_ema": float(state.loss_ema[k]),
                     "margin": float(stats.margin[k]), "accuracy": float(stats.accuracy[k]),
                     "weight": float(weights[k]), "pairs": int(stats.pairs[k])}
                 for k, d in enumerate(dims)},
        "lambdas": lagdpo.FORMS[form].named(state.lambdas, dims),
        "best_loss": lagdpo.best_loss(state.loss_ema, state.seen),
    }


def rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _mean(ev: dict, key: str) -> float | None:
    values = [v[key] for v in ev.values()]
    return sum(values) / len(values) if values else None


def constraint_record(steps: list[dict], recipe: Recipe, zero_loss: float) -> dict:
    """Did the tolerance bind in this run? The largest spread of the EMA losses any step
    reached (max_k Lhat_k - min_k Lhat_k), the bound it is held to (leader: eps * L0; pairwise:
    eps), whether the duals could move at all (objective dpo with dual_lr > 0), the steps with
    some lambda > 0 and the largest lambda. A run in which nothing bound was plain
    multi-objective DPO, and its summary and report say so."""
    lag = recipe.lagrangian
    spreads = [max(d["loss_ema"] for d in ln["dims"].values())
               - min(d["loss_ema"] for d in ln["dims"].values()) for ln in steps if ln["dims"]]
    bound = lag.tolerance * zero_loss if lag.form == "leader" else lag.tolerance
    active = [ln["step"] for ln in steps if any(v > 0 for v in ln["lambdas"].values())]
    return {"form": lag.form, "objective": recipe.train.objective,
            "duals": recipe.train.objective == "dpo" and lag.dual_lr > 0, "bound": bound,
            "max_spread": max(spreads, default=0.0), "steps_with_lambda": len(active),
            "first_step_with_lambda": min(active, default=None),
            "max_lambda": max((v for ln in steps for v in ln["lambdas"].values()), default=0.0),
            "engaged": bool(active)}


def run_summary(recipe: Recipe, data, before: dict, after: dict, duals: lagdpo.DualState,
                steps: list[dict], zero_loss: float) -> dict:
    """summary.json: the held-out evals before and after, the cut counts, the final duals and
    the constraint record. `data` is the run's RunData (dims, train and test pairs)."""
    form, dims = recipe.lagrangian.form, data.dims
    return {
        "steps": recipe.train.steps, "dims": list(dims),
        "pairs": {"train": len(data.train), "test": len(data.test)},
        "truncated": data.truncated,
        "eval_before": before, "eval_after": after,
        # selection accuracy: golden preferred by length-normalised log-prob (METHOD.md §4)
        "mean_accuracy_before": _mean(before, "selection_accuracy"),
        "mean_accuracy_after": _mean(after, "selection_accuracy"),
        "mean_reward_accuracy_after": _mean(after, "accuracy"),
        "lambdas": lagdpo.FORMS[form].named(duals.lambdas, dims),
        "loss_ema": {d: float(duals.loss_ema[k]) for k, d in enumerate(dims)},
        "best_loss": lagdpo.best_loss(duals.loss_ema, duals.seen),
        "constraint": constraint_record(steps, recipe, zero_loss),
    }
