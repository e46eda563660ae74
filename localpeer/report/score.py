"""Rich renderables for `localpeer score` (STYLE.md rule 5: presentation apart from computation).

    from rich.console import Console
    from localpeer.report import render_score
    render_score(score_arrays(models, items, judges, dims, scores, 1, 5), Console())

Every function but the two `render_*` ones returns a renderable and prints nothing. User data
(names, warnings) goes in as `Text`, never as markup, so a name like `llama[8b]` prints as is.
"""

from __future__ import annotations

import math
from itertools import pairwise

import numpy as np
from rich import box
from rich.columns import Columns
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.measure import Measurement
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from localpeer.score.result import DimensionResult, ElementResult, ScoreResult

MISFIT_MS = 1.5  # Linacre: mean-squares above this degrade measurement
MUTED_MS = 0.5  # below this the ratings are more predictable than the model allows
Z_CLEAR = 1.96  # two-sided 5%
Z_BIAS = 2.0
BAR_WIDTH = 30
WRIGHT_ROWS = 25
WRIGHT_STEPS = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.5, 2.0, 3.0, 5.0)
ESTIMATOR_LABEL = {"mml": "MML: prompts as random effect", "jml": "JML: prompts as fixed effects"}
STATUS_TEXT = {
    "extreme_max": "extreme_max: every rating at the top",
    "extreme_min": "extreme_min: every rating at the bottom",
    "no_data": "no_data: no ratings",
}
# Where an extreme element sits on the Wright map: all-top ratings make a model the best but a
# judge the most lenient and a prompt the easiest.
ABOVE = {"models": "extreme_max", "judges": "extreme_min", "items": "extreme_min"}
BELOW = {"models": "extreme_min", "judges": "extreme_max", "items": "extreme_max"}


def _num(v: float | None, spec: str = ".2f") -> str:
    return "—" if v is None or not math.isfinite(v) else format(v, spec)


def _mean_square(v: float | None) -> Text:
    """A fit mean-square, red when noisy (> 1.5), yellow when too predictable (< 0.5)."""
    style = "" if v is None else "red" if v > MISFIT_MS else "yellow" if v < MUTED_MS else ""
    return Text(_num(v), style=style)


def _table(names: tuple = (), numbers: tuple = (), labels: tuple = ()) -> Table:
    """Columns: names (folded when narrow), then right-aligned numbers, then labels."""
    t = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for name in names:
        t.add_column(name, overflow="fold")
    for name in numbers:
        t.add_column(name, justify="right", no_wrap=True)
    for name in labels:
        t.add_column(name)
    return t


def _titled(title: str, table: Table, note: str | None = None) -> Group:
    """A bold title (markup, never user data) above, a note below: unlike a Table's own title
    and caption, neither is wrapped to the table's width."""
    notes = [Text(note, style="dim")] if note else []
    return Group(Text.from_markup(title, style="bold"), table, *notes)


def _by_measure(elements: list[ElementResult]) -> list[ElementResult]:
    """Estimated elements, highest measure first."""
    return sorted((e for e in elements if e.estimated), key=lambda e: -e.measure)


def _finite(*values: float | None) -> bool:
    return all(v is not None and math.isfinite(v) for v in values)


def _status_row(e: ElementResult, n_columns: int) -> list[Text]:
    """Name, blanks, n, status text last: an extreme element has no estimate to show."""
    status = Text(STATUS_TEXT.get(e.status, e.status), style="yellow italic")
    return [Text(e.name)] + [Text("")] * (n_columns - 3) + [Text(str(e.n)), status]


def header(r: DimensionResult) -> Panel:
    """Estimator, convergence and data used, as label/value pairs in two columns."""
    mark = (Text(f"✓ in {r.iterations} iterations", style="green") if r.converged
            else Text(f"✗ not after {r.iterations} iterations", style="bold red"))
    sd = f"{r.item_sd:.2f}" + (f" ± {r.item_sd_se:.2f}" if r.item_sd_se is not None else "")
    grid = Table.grid(padding=(0, 2))
    for style in ("dim", "", "dim", ""):
        grid.add_column(style=style)
    grid.add_row("estimator", ESTIMATOR_LABEL.get(r.estimator, r.estimator), "ratings used",
                 f"{r.n_ratings:,} of {r.n_ratings_total:,}")
    grid.add_row("converged", mark, "prompt SD", sd)
    grid.add_row("log-likelihood", _num(r.loglik), "max |gradient|", _num(r.max_gradient, ".1e"))
    return Panel(grid, title=Text(f"Dimension {r.dimension}", style="bold"), title_align="left")


def _axis_pos(x: float, axis: tuple[float, float], width: int) -> int:
    lo, hi = axis
    return int(round((x - lo) / (hi - lo) * (width - 1))) if hi > lo else width // 2


def axis_ruler(axis: tuple[float, float], width: int) -> Text:
    """The ends of the axis, and 0 where it falls between them."""
    left, right = f"{axis[0]:.1f}", f"{axis[1]:.1f}"
    cells = list(left + " " * max(width - len(left) - len(right), 1) + right)
    zero = _axis_pos(0.0, axis, width)
    if axis[0] < 0 < axis[1] and len(left) + 1 < zero < width - len(right) - 1:
        cells[zero] = "0"
    return Text("".join(cells[:width]), style="bold")


def ci_bar(theta: float, ci: tuple[float, float], axis: tuple[float, float], width: int) -> Text:
    """θ as '●', its 95% CI as '─' and zero as '┊', on the axis shared by all models."""
    cells = [" "] * width
    if axis[0] < 0 < axis[1]:
        cells[_axis_pos(0.0, axis, width)] = "┊"
    a, b = _axis_pos(ci[0], axis, width), _axis_pos(ci[1], axis, width)
    cells[a : b + 1] = "─" * (b - a + 1)
    cells[_axis_pos(theta, axis, width)] = "●"
    return Text("".join(cells), style="cyan")


def _models_table(r: DimensionResult, scale_min: int, scale_max: int, bar_width: int,
                  extremes: bool = True) -> Table:
    """bar_width 0: no plot column (the status of an extreme model then goes under its name)."""
    ranked = _by_measure(r.models)
    cis = [e.ci95 for e in ranked if _finite(*e.ci95)]
    axis = (min(c[0] for c in cis), max(c[1] for c in cis)) if cis else (0.0, 0.0)
    t = _table(("model",), ("θ", "SE", "95% CI", "fair avg", "infit", "outfit", "n"))
    if bar_width:
        t.add_column(axis_ruler(axis, bar_width), min_width=bar_width)
    for e in ranked:
        lo, hi = e.ci95
        bar = ([ci_bar(e.measure, e.ci95, axis, bar_width) if _finite(lo, hi) else Text("")]
               if bar_width else [])
        t.add_row(Text(e.name, style="bold"), _num(e.measure), _num(e.se),
                  f"[{_num(lo)}, {_num(hi)}]", _num(e.fair_average), _mean_square(e.infit),
                  _mean_square(e.outfit), str(e.n), *bar)
    for e in r.models if extremes else []:
        if not e.estimated:
            name, *cells, status = _status_row(e, 9)
            if bar_width:
                t.add_row(name, *cells, status)
            else:
                t.add_row(Text("\n").join([name, status]), *cells)
    return t


class ModelsTable:
    """The models table, built when printed: its θ plot takes the width the numbers leave."""

    def __init__(self, r: DimensionResult, scale_min: int, scale_max: int):
        self.args = (r, scale_min, scale_max)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        numbers = _models_table(*self.args, bar_width=0, extremes=False)
        room = options.max_width - Measurement.get(console, options, numbers).maximum - 3
        table = _models_table(*self.args, bar_width=min(room, BAR_WIDTH) if room >= 10 else 0)
        _, lo, hi = self.args
        yield _titled(f"Models (higher θ = better; fair average on the {lo}–{hi} scale)", table)


def _judge_flag(e: ElementResult, r: DimensionResult) -> Text:
    """Fit flags, and "degenerate" for a judge that gave one grade to all its ratings."""
    flags = []
    if max(e.infit, e.outfit) > MISFIT_MS:
        flags.append(Text("misfit", style="bold red"))
    elif min(e.infit, e.outfit) < MUTED_MS:
        flags.append(Text("muted", style="yellow"))
    if e.name in r.constant_judges:
        flags.append(Text("degenerate", style="bold red"))
    return Text("\n").join(flags)


def judges_table(r: DimensionResult) -> Group:
    t = _table(("judge",), ("severity", "SE", "infit", "infit Z", "outfit", "outfit Z", "n"),
               ("flag",))
    for e in _by_measure(r.judges):
        t.add_row(Text(e.name), _num(e.measure, "+.2f"), _num(e.se), _mean_square(e.infit),
                  _num(e.infit_z, "+.1f"), _mean_square(e.outfit), _num(e.outfit_z, "+.1f"),
                  str(e.n), _judge_flag(e, r))
    for e in r.judges:
        if not e.estimated:
            t.add_row(*_status_row(e, 9))
    constant = [Text(f"degenerate: {j} gave {score} to all {n} ratings on {r.dimension}; it "
                     "cannot tell these replies apart", style="bold red")
                for j, (score, n) in r.constant_judges.items()]
    return Group(_titled("Judges (higher severity = harsher)", t), *constant)


def _shown_comparisons(r: DimensionResult, max_models: int) -> list:
    """Every pair for a few models; for more, the neighbours in the ranking only."""
    ranked = [e.name for e in _by_measure(r.models)]
    if len(ranked) <= max_models:
        return list(r.comparisons)
    by_pair = {(c.a, c.b): c for c in r.comparisons}
    return [by_pair[p] for p in pairwise(ranked) if p in by_pair]


def comparisons_table(r: DimensionResult, max_models: int = 6) -> Group:
    shown = _shown_comparisons(r, max_models)
    title = "Pairwise comparisons (Δθ = θa − θb"
    if len(shown) < len(r.comparisons):
        title += f"; neighbours in the ranking, {len(shown)} of {len(r.comparisons)} pairs"
    title += ")"
    t = _table(("a", "b"), ("Δθ", "SE", "z"), ("verdict",))
    for c in shown:
        verdict = (Text("a > b", style="green") if c.z >= Z_CLEAR
                   else Text("no clear difference", style="dim"))
        t.add_row(Text(c.a), Text(c.b), _num(c.diff, "+.2f"), _num(c.se), _num(c.z, ".1f"),
                  verdict)
    return _titled(title, t)


def thresholds_table(r: DimensionResult, scale_min: int, scale_max: int) -> Group:
    taus = [th.tau for th in r.thresholds]
    ordered = all(b > a for a, b in pairwise(taus))
    status = "[green]ordered[/]" if ordered else "[bold red]disordered[/]"
    t = _table(numbers=("score", "count", "τ", "SE"))
    by_k = {th.k: th for th in r.thresholds}
    for value in range(scale_min, scale_max + 1):
        count, th = r.category_counts.get(value, 0), by_k.get(value)
        style = "bold yellow" if count == 0 else ""
        t.add_row(str(value), "0 unused" if count == 0 else f"{count:,}",
                  _num(th.tau if th else None, "+.2f"), _num(th.se if th else None), style=style)
    return _titled(f"Thresholds: {status}", t, "τ: the step up into this score")


def separation_table(r: DimensionResult) -> Group:
    t = _table(("facet",), ("separation", "reliability", "strata"))
    for facet, s in r.separation.items():
        t.add_row("prompts" if facet == "items" else facet, _num(s.separation), _num(s.reliability),
                  _num(s.strata, ".1f"))
    return _titled("Separation", t)


def bias_view(r: DimensionResult, max_rows: int = 15) -> RenderableType:
    terms = sorted((b for b in r.bias if abs(b.z) >= Z_BIAS), key=lambda b: -abs(b.z))
    if not terms:
        return Text(f"no judge × model bias with |z| ≥ {Z_BIAS:g}", style="dim")
    title = f"Judge × model bias, |z| ≥ {Z_BIAS:g} (positive = the judge favours the model)"
    t = _table(("judge", "model"), ("bias", "SE", "z", "n"), ("meaning",))
    for b in terms[:max_rows]:
        meaning = ("favours", "green") if b.estimate > 0 else ("disfavours", "red")
        t.add_row(Text(b.judge), Text(b.model), _num(b.estimate, "+.2f"), _num(b.se),
                  _num(b.z, "+.1f"), str(b.n), Text(*meaning))
    more = len(terms) - max_rows
    return _titled(title, t, f"… and {more} more" if more > 0 else None)


def prompts_view(r: DimensionResult, top: int = 5) -> RenderableType:
    """Counts, the hardest, the easiest and the worst-fitting prompts: never one row per prompt."""
    ranked = _by_measure(r.items)
    counts = {s: sum(e.status == s for e in r.items) for s in STATUS_TEXT}
    line = Text.assemble(
        ("Prompts ", "bold"), f"{len(r.items):,} in all: {len(ranked):,} estimated, ",
        f"{counts['extreme_max']:,} extreme_max, {counts['extreme_min']:,} extreme_min",
        f", {counts['no_data']:,} without data" if counts["no_data"] else "",
        ("   (higher difficulty = harder)", "dim"),
    )
    if not ranked:
        return line
    misfit = sorted(ranked, key=lambda e: -e.infit)
    t = _table()
    for name, justify in (("hardest", "left"), ("δ ± SE", "right"), ("easiest", "left"),
                          ("δ ± SE", "right"), ("worst fit", "left"), ("infit", "right")):
        t.add_column(name, justify=justify, overflow="ellipsis", max_width=28)
    for k in range(min(top, len(ranked))):
        hard, easy, bad = ranked[k], ranked[-1 - k], misfit[k]
        t.add_row(Text(hard.name), f"{hard.measure:+.2f} ± {hard.se:.2f}", Text(easy.name),
                  f"{easy.measure:+.2f} ± {easy.se:.2f}", Text(bad.name), _mean_square(bad.infit))
    return Group(line, t)


def _wright_step(lo: float, hi: float) -> float:
    for step in WRIGHT_STEPS:
        if math.floor(hi / step + 0.5) - math.floor(lo / step + 0.5) + 1 <= WRIGHT_ROWS:
            return step
    return WRIGHT_STEPS[-1]


def _bin_names(elements: list[ElementResult], step: float) -> dict[int, str]:
    out: dict[int, list[str]] = {}
    for e in filter(lambda e: _finite(e.measure), _by_measure(elements)):
        out.setdefault(math.floor(e.measure / step + 0.5), []).append(e.name)
    return {k: ", ".join(v) for k, v in out.items()}


def wright_map(r: DimensionResult) -> RenderableType:
    """Models, judges and prompts on one logit ruler, one row per bin, highest at the top."""
    measures = [e.measure for e in r.models + r.judges + r.items if e.estimated
                and _finite(e.measure)]
    if not measures:
        return Text("Wright map: no element estimated", style="dim")
    step = _wright_step(min(measures), max(measures))
    models, judges = _bin_names(r.models, step), _bin_names(r.judges, step)
    difficulty = np.array([e.measure for e in r.items if e.estimated and _finite(e.measure)])
    bins = np.floor(difficulty / step + 0.5).astype(int)
    hist = {int(k): int(c) for k, c in zip(*np.unique(bins, return_counts=True), strict=True)}
    widest = max(hist.values(), default=1)
    t = _table(numbers=("logit",))
    t.add_column("models ↑ better", style="bold cyan")
    t.add_column("judges ↑ harsher", style="magenta")
    t.add_column("prompts ↑ harder", no_wrap=True)
    top, bottom = (math.floor(x / step + 0.5) for x in (max(measures), min(measures)))
    _extreme_row(t, r, ABOVE)
    for k in range(top, bottom - 1, -1):
        count = hist.get(k, 0)
        bar = "#" * max(1, round(BAR_WIDTH * count / widest)) + f" {count}" if count else ""
        t.add_row(f"{k * step:+.2f}", Text(models.get(k, "")), Text(judges.get(k, "")),
                  Text(bar, style="green"))
    _extreme_row(t, r, BELOW)
    return _titled(f"Wright map (one row = {step:g} logits; up = better / harsher / harder)", t)


def _extreme_row(t: Table, r: DimensionResult, status: dict[str, str]) -> None:
    """Extreme elements off the ruler's end: named for models and judges, counted for prompts."""
    models, judges = ([e.name for e in es if e.status == status[f]]
                      for f, es in (("models", r.models), ("judges", r.judges)))
    n_items = sum(e.status == status["items"] for e in r.items)
    if models or judges or n_items:
        t.add_row(Text("extreme", style="yellow"), Text(", ".join(models)),
                  Text(", ".join(judges)), Text(f"{n_items} {status['items']}" if n_items else ""))


def warnings_panel(r: DimensionResult) -> Panel | None:
    if not r.warnings:
        return None
    body = Table.grid(padding=(0, 1))  # a grid so a long warning wraps under its own text
    body.add_column(style="yellow")
    body.add_column()
    for w in r.warnings:
        body.add_row("•", Text(w))
    return Panel(body, title="Warnings", title_align="left", border_style="yellow")


def dimension_view(r: DimensionResult, scale_min: int, scale_max: int,
                   calibration: dict | None = None) -> Group:
    """Everything about one dimension, top to bottom."""
    from localpeer.report.calibration import interpretability_notes, judge_calibration_table

    parts = [
        header(r), ModelsTable(r, scale_min, scale_max),
        *interpretability_notes(r, calibration), judges_table(r),
        judge_calibration_table(r, calibration), comparisons_table(r),
        Columns([thresholds_table(r, scale_min, scale_max), separation_table(r)], padding=(0, 4)),
        Text(""), bias_view(r), Text(""), prompts_view(r), wright_map(r), warnings_panel(r),
    ]
    return Group(*(p for p in parts if p is not None))


def render_score(result: ScoreResult, console: Console) -> None:
    if result.calibration_file is not None:
        console.print(Text(f"judge calibration from {result.calibration_file}", style="dim"))
    for r in result.dimensions.values():
        console.print(dimension_view(r, result.scale_min, result.scale_max, result.calibration))
        console.print()


def selftest_table(rows: list[dict], summary: dict) -> Group:
    """Parameter recovery of `localpeer score --selftest`: truth against estimate, per parameter."""
    t = _table(("parameter",), ("truth", "estimate", "SE", "error"), ("in 95% CI",))
    for row in rows:
        mark = Text("✓", style="green") if row["covered"] else Text("✗", style="bold red")
        t.add_row(Text(str(row["parameter"])), _num(row["truth"], "+.3f"),
                  _num(row["estimate"], "+.3f"), _num(row["se"], ".3f"),
                  _num(row["estimate"] - row["truth"], "+.3f"), mark)
    line = Text.assemble(
        ("slope of estimate on truth ", "dim"), _num(summary["slope"], ".3f"),
        ("   95% CI coverage ", "dim"), _num(100 * summary["coverage"], ".0f") + "%",
        ("   estimator ", "dim"), str(summary.get("estimator", "?")),
    )
    return Group(_titled("Self-test: parameter recovery", t), line)


def render_selftest(rows: list[dict], summary: dict, console) -> None:
    """`summary`: slope (estimate on truth), coverage (a fraction, 0..1), estimator."""
    console.print(selftest_table(rows, summary))
