"""Rich renderables for `localpeer train`: the live view, the dry-run estimate, the summary."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from localpeer.formats import jsonl_records

SPARK = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float]) -> str:
    if not values:
        return ""
    lo, hi = min(values), max(values)
    span = hi - lo or 1.0
    return "".join(SPARK[min(int((v - lo) / span * (len(SPARK) - 1)), len(SPARK) - 1)]
                   for v in values)


def _dims_table(line: dict, last_eval: dict | None) -> Table:
    table = Table("dim", "loss", "EMA", "acc", "weight", "margin", "held-out sel. acc",
                  box=box.SIMPLE_HEAD, title=f"step {line['step']}  loss {line['loss']:.4f}  "
                  f"lr {line['lr']:.2e}  {line['tokens_per_s']:.0f} tok/s")
    for d, s in line["dims"].items():
        held = (last_eval or {}).get(d, {}).get("selection_accuracy")
        table.add_row(d, f"{s['loss']:.4f}", f"{s['loss_ema']:.4f}", f"{s['accuracy']:.2f}",
                      f"{s['weight']:.3f}", f"{s['margin']:+.3f}",
                      "—" if held is None else f"{held:.2f}")
    active = {k: v for k, v in line["lambdas"].items() if v > 0}
    best = line.get("best_loss")
    table.caption = ("λ: " + ", ".join(f"{k} {v:.3f}" for k, v in active.items())
                     if active else "λ: all 0 (no constraint active)") + (
        f"   L* (best EMA loss) {best:.4f}" if best is not None else "")
    return table


def dim_lambda(line: dict, d: str) -> float:
    """λ of dimension d in a metrics line: its own (leader form) or, pairwise, the sum of the
    λ of the constraints it leads (L_d - L_j <= ε)."""
    lambdas = line["lambdas"]
    if d in lambdas:
        return lambdas[d]
    return sum(v for k, v in lambdas.items() if k.startswith(f"{d}>"))


@contextmanager
def train_live(console: Console, steps: int) -> Iterator[tuple]:
    """Yields (on_step, on_eval) callbacks that keep a live progress bar and table."""
    progress = Progress(TextColumn("training"), BarColumn(), MofNCompleteColumn(),
                        TimeRemainingColumn(), console=console)
    task = progress.add_task("steps", total=steps)
    state: dict = {"eval": None, "line": None}

    def view():
        parts = [progress]
        if state["line"]:
            parts.append(_dims_table(state["line"], state["eval"]))
        return Group(*parts)

    with Live(view(), console=console, refresh_per_second=4, transient=False) as live:
        def on_step(line: dict) -> None:
            state["line"] = line
            progress.update(task, completed=line["step"])
            live.update(view())

        def on_eval(line: dict) -> None:
            state["eval"] = line["dims"]
            live.update(view())

        yield on_step, on_eval


def render_memory_estimate(recipe_yaml: str, est, total_gb: float | None,
                           console: Console) -> None:
    """The resolved recipe, then the estimate's terms, allocated, reserved and the device total
    (`localpeer.train.memory.MemoryEstimate`, GiB)."""
    console.print(Text("resolved recipe", style="bold"))
    console.print(Text(recipe_yaml))
    table = Table("part", "GiB", box=box.SIMPLE_HEAD, title="VRAM estimate")
    for name, value in (("base weights", est.weights_gb),
                        (f"LoRA weights + grads ({est.lora_params:,} params)", est.lora_gb),
                        ("optimizer", est.optimizer_gb),
                        (f"activations ({est.positions:,} positions)", est.activations_gb),
                        ("logits (one chunk)", est.logits_gb)):
        table.add_row(name, f"{value:.2f}")
    allocator = ("expandable segments" if est.expandable_segments else "default allocator")
    table.add_row(Text("allocated", style="bold"), Text(f"{est.allocated_gb:.2f}", style="bold"))
    table.add_row(Text(f"reserved (x{est.reserve_ratio:.2f}, {allocator})", style="bold"),
                  Text(f"{est.reserved_gb:.2f}", style="bold"))
    table.add_row("CUDA context", f"{est.overhead_gb:.2f}")
    table.add_row(Text("on the GPU (reserved + context)", style="bold"),
                  Text(f"{est.device_gb:.2f}", style="bold"))
    table.caption = ("reserved is what PyTorch's caching allocator holds: the allocated peak "
                     "times a ratio measured once (H200, 8B shape); an estimate")
    console.print(table)
    console.print("detected GPU: " + (f"{total_gb:.1f} GiB" if total_gb else
                                      "none (this is the estimate for a CUDA run)"))


def render_train_summary(run: Path, summary: dict, console: Console) -> None:
    lines = [obj for _, obj in jsonl_records(run / "metrics.jsonl", appended=True)]
    steps = [ln for ln in lines if ln.get("split") != "eval"]
    evals = [ln for ln in lines if ln.get("split") == "eval"]
    console.print()
    table = Table("dim", "held-out selection acc before", "after", "train reward acc",
                  "λ (over steps)",
                  box=box.SIMPLE_HEAD, title=f"run {run}")
    for d in summary.get("dims", []):
        before = summary["eval_before"].get(d, {}).get("selection_accuracy")
        after = summary["eval_after"].get(d, {}).get("selection_accuracy")
        lam = [dim_lambda(ln, d) for ln in steps]
        table.add_row(d, "—" if before is None else f"{before:.2f}",
                      "—" if after is None else f"{after:.2f}",
                      sparkline([ln["dims"][d]["accuracy"] for ln in steps]), sparkline(lam))
    console.print(table)
    if evals:
        console.print("mean held-out selection accuracy: "
                      f"{summary['mean_accuracy_before']:.3f} -> "
                      f"{summary['mean_accuracy_after']:.3f}")
    if summary.get("constraint"):
        console.print("Lag-DPO: " + constraint_sentence(summary["constraint"]))
    console.print(f"adapter: {run / 'adapter'}   metrics: {run / 'metrics.jsonl'}")


def constraint_sentence(c: dict) -> str:
    """Whether Lag-DPO's tolerance bound in a run (summary.json "constraint"), in words."""
    unit = "ε·L₀" if c["form"] == "leader" else "ε"
    spread = f"the largest spread of the EMA losses was {c['max_spread']:.3f}"
    over = c["max_spread"] > c["bound"]
    if c.get("objective", "dpo") != "dpo":
        return f"no constraint: objective {c['objective']} trains without duals"
    if not c.get("duals", True):
        return (f"duals off (dual_lr 0): plain multi-objective DPO; {spread}, "
                + ("above" if over else "within") + f" {unit} = {c['bound']:.3f}")
    if not c["engaged"]:
        return (f"no constraint bound during the run: {spread}, "
                + ("above" if over else "within")
                + f" {unit} = {c['bound']:.3f}, and no λ moved: this run was plain "
                "multi-objective DPO")
    return (f"bound ({c['form']} form): largest spread {c['max_spread']:.3f} against {unit} = "
            f"{c['bound']:.3f}; λ > 0 in {c['steps_with_lambda']} steps from step "
            f"{c['first_step_with_lambda']}, largest λ {c['max_lambda']:.3f}")
