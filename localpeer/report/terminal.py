"""A `Report` (report/sections.py) drawn for the terminal with rich.

Sections become tables, line plots become sparkline rows (at most 32 points, each the mean of
its steps), Wright maps are left to `localpeer score` and the HTML page, notes become lines.

    from localpeer.report.terminal import to_rich
    console.print(to_rich(report))
"""

from __future__ import annotations

import math

from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from localpeer.report.sections import LinePlot, Note, Report, Section, WrightMap
from localpeer.report.train import sparkline

STYLES = {None: "", "good": "green", "bad": "red", "warn": "yellow", "muted": "dim"}


def squeeze(values: list[float], width: int = 32) -> list[float]:
    """At most `width` points: the means of equal runs of steps, so a curve fits a column."""
    if len(values) <= width:
        return values
    edges = [round(k * len(values) / width) for k in range(width + 1)]
    return [sum(values[a:b]) / (b - a) for a, b in zip(edges, edges[1:])]


def section_table(s: Section) -> Table:
    t = Table(title=s.title, title_justify="left", box=box.SIMPLE_HEAVY, caption=s.caption or None,
              caption_justify="left")
    numeric = s.numeric or [False] * len(s.columns)
    for name, right in zip(s.columns, numeric):
        t.add_column(name, justify="right" if right else "left")
    for row in s.rows:
        t.add_row(*(Text(c.text, style=STYLES[c.tone]) for c in row))
    return t


def plot_table(p: LinePlot) -> Table:
    t = Table(title=p.title, title_justify="left", box=box.SIMPLE, caption=p.note or None,
              caption_justify="left")
    t.add_column("series")
    t.add_column("curve")
    t.add_column("first → last", justify="right")
    for s in p.series:
        ys = [y for y in s.y if y is not None and math.isfinite(y)]
        if not ys:
            continue
        t.add_row(s.name, sparkline(squeeze(ys)), f"{ys[0]:.3f} → {ys[-1]:.3f}"
                  + (f" (max {max(ys):.3f})" if max(ys) > max(ys[0], ys[-1]) else ""))
    return t


def to_rich(report: Report) -> Group:
    parts: list = [Text(report.title, style="bold")]
    maps = 0
    for block in report.blocks:
        if isinstance(block, Section):
            parts.append(section_table(block))
        elif isinstance(block, LinePlot):
            parts.append(plot_table(block))
        elif isinstance(block, WrightMap):
            maps += 1
        elif isinstance(block, Note):
            parts.append(Text(block.text, style=STYLES[block.tone]))
    if maps:
        parts.append(Text(f"{maps} Wright map(s): in the HTML page (--html) and in "
                          "`localpeer score`", style="dim"))
    return Group(*parts)
