"""Rich renderables for `localpeer data`: validation, stats, build progress and summary."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from localpeer.data.stats import DataStats, LengthSummary
from localpeer.dimensions import NAMES as DIM_NAMES


def render_validation(records, pairs: int, dupes, leaks, console: Console) -> None:
    """One verdict line, then the problems that make a data set unfit for training."""
    ok = not dupes and not leaks
    mark = Text("✓ valid" if ok else "✗ problems", style="bold green" if ok else "bold red")
    console.print(mark, Text(f"  {len(records)} records, {pairs} preference pairs"))
    for dropped, kept in dupes:
        console.print(Text(f"  duplicate prompt: {dropped} repeats {kept}", style="yellow"))
    for train_id, test_id in leaks:
        console.print(Text(f"  leak: {train_id} (train) and {test_id} (test) share a prompt",
                           style="red"))


def _length(s: LengthSummary | None) -> str:
    return "—" if s is None or s.max == 0 else f"{s.mean:.0f} ({s.min}–{s.max})"


def _arrow(golden: LengthSummary | None, reject: LengthSummary | None) -> str:
    if golden is None or reject is None or golden.max == 0:
        return "—"
    return f"{golden.mean:.0f} → {reject.mean:.0f}"


def render_data_stats(stats: DataStats, console: Console) -> None:
    splits = ", ".join(f"{k} {v}" for k, v in sorted(stats.splits.items()))
    console.print(Text(f"{stats.records} records ({splits}); {stats.graded_records} graded",
                       style="bold"))
    masks = Table("mask", "records", title="Records per mask", box=box.SIMPLE_HEAD)
    for mask, n in stats.masks.items():
        masks.add_row(mask, str(n))
    console.print(masks)
    dims = Table("dim", "active in", "pairs", "chars golden → reject", "reject/golden",
                 title="Pairs per dimension (means; ratio range in brackets)",
                 box=box.SIMPLE_HEAD)
    if stats.prompt_tokens is not None:
        dims.add_column("tokens golden → reject")
    for d, lengths in stats.dims.items():
        share = stats.active[d] / stats.records if stats.records else 0.0
        ratio = lengths.ratio
        row = [f"{d} {DIM_NAMES[d]}", f"{stats.active[d]} ({share:.0%})", str(lengths.pairs),
               _arrow(lengths.golden_chars, lengths.reject_chars),
               "—" if not lengths.pairs else
               f"{ratio.mean / 10:.0f}% ({ratio.min / 10:.0f}–{ratio.max / 10:.0f}%)"]
        if stats.prompt_tokens is not None:
            row.append(_arrow(lengths.golden_tokens, lengths.reject_tokens))
        dims.add_row(*row)
    console.print(dims)
    shortcuts = Table("dim", "pairs", "longer wins", "more contractions", box=box.SIMPLE_HEAD,
                      title="Shortcut baselines: how often the golden is the longer response "
                      "(characters) or has more contractions, ties half, 95% interval; a "
                      "selection accuracy must beat these")
    for d, lengths in stats.dims.items():
        shortcuts.add_row(d, str(lengths.pairs), _rate(lengths.longer_wins),
                          _rate(lengths.more_contractions))
    console.print(shortcuts)
    if stats.prompt_tokens is not None:
        console.print(f"prompt tokens: {_length(stats.prompt_tokens)}")
    if stats.domains:
        console.print("domains: " + ", ".join(f"{k} {v}" for k, v in
                                              sorted(stats.domains.items())))
    for w in stats.warnings:
        console.print(Text("warning: " + w, style="yellow"))


@contextmanager
def build_progress(console: Console, total: int) -> Iterator[Callable]:
    """A progress bar over seeds; yields the callback `build` calls after each seed."""
    counts = {"accepted": 0, "rejected": 0, "skipped": 0}
    progress = Progress(TextColumn("building"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[counts]}"), TimeRemainingColumn(),
                        console=console, transient=False)
    task = progress.add_task("seeds", total=total, counts="")

    def advance(seed, outcome: str) -> None:
        counts[outcome] += 1
        progress.update(task, advance=1,
                        counts=" ".join(f"{k} {v}" for k, v in counts.items()))

    with progress:
        yield advance


def render_build_summary(summary, out: Path, console: Console) -> None:
    console.print(Text(f"{summary.accepted} records accepted into {out}, "
                       f"{summary.skipped} already there", style="bold"))
    if summary.rejected:
        table = Table("rejected generations", "count", box=box.SIMPLE_HEAD)
        for reason, n in summary.rejected.most_common():
            table.add_row(Text(reason), str(n))
        console.print(table)


def _rate(rate) -> str:
    if not rate.n:
        return "—"
    return f"{rate.value:.0%} [{rate.low:.0%}–{rate.high:.0%}]"
