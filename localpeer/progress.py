"""The progress bar of every per-item command (generate, judge, probe): description, bar, n/N,
a per-task note (a speed, the last grade), time left.

    with item_progress(console, quiet=False) as progress:
        task = progress.add_task("judge", total=40, note="")
        progress.update(task, advance=1, note="A=4")
"""

from __future__ import annotations


def item_progress(console, quiet: bool):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[note]}"), TimeRemainingColumn()]
    return Progress(*columns, console=console, disable=quiet)
