"""The report as one standalone HTML page: tables, inline SVG plots, no script, no network.

    from localpeer.report.html import render_html
    Path("report.html").write_text(render_html(report))   # report: a sections.Report

    localpeer report runs/demo --html report.html           # the same, from the command line

Every text from the user's files (model, judge and prompt names) is escaped; the page has a
Content-Security-Policy that forbids scripts and every external load, so it opens the same
offline, from an e-mail or from a CI artifact.
"""

from __future__ import annotations

import html
import math

from localpeer.report import svg
from localpeer.report.sections import LinePlot, Note, Report, Section, WrightMap, WrightPoint

# Okabe–Ito: distinguishable with the common colour-vision deficiencies
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")
DASHES = ("", "6 3", "2 2", "8 3 2 3")  # after the palette runs out, dashes tell series apart

TONE_MEANING = {
    "good": "change supported by a test (p ≤ 0.05), for the better",
    "bad": "change supported by a test (p ≤ 0.05), for the worse",
    "warn": "flagged: read before trusting the row",
    "muted": "no detectable change, or missing",
}

CSS = """
:root { color-scheme: light dark; --fg: #1f2328; --bg: #fff; --line: #d0d7de; --head: #f6f8fa;
  --good: #1a7f37; --bad: #cf222e; --warn-fg: #7d4e00; --warn-bg: #fff8c5; --muted: #656d76; }
@media (prefers-color-scheme: dark) { :root { --fg: #e6edf3; --bg: #0d1117; --line: #30363d;
  --head: #161b22; --good: #3fb950; --bad: #f85149; --warn-fg: #e3b341; --warn-bg: #2d2208;
  --muted: #8d96a0; } }
body { margin: 0; background: var(--bg); color: var(--fg); line-height: 1.45;
  font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
  "Noto Sans", "Liberation Sans", sans-serif; }
main { max-width: 60rem; margin: 0 auto; padding: 1.5rem 1rem 3rem; }
h1 { font-size: 1.5rem; margin: 0 0 .5rem; }
.legend { color: var(--muted); font-size: .85rem; }
.table-wrap { overflow-x: auto; margin: 1.5rem 0 .25rem; }
table { border-collapse: collapse; min-width: 50%; font-variant-numeric: tabular-nums; }
caption { caption-side: top; text-align: left; font-weight: 600; padding-bottom: .4rem; }
th, td { border-bottom: 1px solid var(--line); padding: .3rem .7rem; text-align: left;
  vertical-align: top; }
thead th { background: var(--head); border-bottom-width: 2px; white-space: nowrap; }
tbody tr:hover { background: var(--head); }
.num { text-align: right; white-space: nowrap; }
.good { color: var(--good); font-weight: 600; }
.bad { color: var(--bad); font-weight: 600; }
.warn { color: var(--warn-fg); background: var(--warn-bg); }
.muted { color: var(--muted); font-style: italic; }
td.good::before, span.good::before { content: "✓ "; }
td.bad::before, span.bad::before { content: "✗ "; }
td.warn::before, span.warn::before, p.note.warn::before { content: "⚠ "; }
.table-note { color: var(--muted); font-size: .85rem; margin: .25rem 0 1rem; }
p.note { margin: 1rem 0; padding: .5rem .75rem; border-left: 4px solid var(--line); }
p.note.warn { border-left-color: var(--warn-fg); font-weight: 600; }
figure { margin: 1.75rem 0; }
figure svg { display: block; max-width: 100%; height: auto; color: var(--fg); }
figcaption { color: var(--muted); font-size: .85rem; margin-top: .3rem; }
"""

CSP = "default-src 'none'; style-src 'unsafe-inline'"


def esc(text) -> str:
    return html.escape(str(text), quote=True)


def render_html(report: Report) -> str:
    """The whole page; `report` comes from `report.compare.build`."""
    body = "\n".join(_block(b) for b in report.blocks)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
            f"<title>{esc(report.title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<main>\n"
            f"<h1>{esc(report.title)}</h1>\n{_tone_legend(report)}{body}\n</main>\n</body>\n</html>\n")


def _block(block) -> str:
    if isinstance(block, Section):
        return _section(block)
    if isinstance(block, LinePlot):
        return _figure(line_plot_svg(block), block.note)
    if isinstance(block, WrightMap):
        return _figure(wright_map_svg(block), "")
    if isinstance(block, Note):
        return f'<p class="note{_cls(block.tone)}">{esc(block.text)}</p>'
    raise TypeError(f"render_html: no renderer for {type(block).__name__}")


def _cls(tone: str | None) -> str:
    return f" {tone}" if tone else ""


def _tone_legend(report: Report) -> str:
    used = {c.tone for s in report.sections() for row in s.rows for c in row} - {None}
    if not used:
        return ""
    parts = [f'<span class="{t}">{esc(TONE_MEANING[t])}</span>' for t in TONE_MEANING if t in used]
    return f'<p class="legend">{" · ".join(parts)}</p>\n'


# ---- tables ----------------------------------------------------------------------------------

def numeric_columns(section: Section) -> list[bool]:
    """`section.numeric`, or a guess: a column whose cells all start like a number, except
    the first, which names the rows; muted cells ("—", "extreme max") do not count."""
    if section.numeric is not None:
        return list(section.numeric)

    def looks_numeric(text: str) -> bool:
        t = text.strip().lstrip("+-−±~≈<>").lstrip()
        return t in ("", "—", "-") or t[:1].isdigit() or t[:1] == "."

    def column(i: int) -> bool:
        texts = [r[i].text for r in section.rows if r[i].tone != "muted"]
        return i > 0 and bool(texts) and all(looks_numeric(t) for t in texts)

    return [column(i) for i in range(len(section.columns))]


def _section(s: Section) -> str:
    numeric = numeric_columns(s)
    head = "".join(f'<th scope="col"{" class=num" if numeric[i] else ""}>{esc(c)}</th>'
                   for i, c in enumerate(s.columns))
    rows = "\n".join("<tr>" + "".join(_cell(c, numeric[i], i == 0) for i, c in enumerate(r))
                     + "</tr>" for r in s.rows)
    note = f'<p class="table-note">{esc(s.caption)}</p>\n' if s.caption else ""
    return (f'<div class="table-wrap"><table>\n<caption>{esc(s.title)}</caption>\n'
            f"<thead><tr>{head}</tr></thead>\n<tbody>\n{rows}\n</tbody>\n</table></div>\n{note}")


def _cell(cell, numeric: bool, header: bool) -> str:
    classes = " ".join(c for c in ("num" if numeric else "", cell.tone or "") if c)
    attrs = f' class="{classes}"' if classes else ""
    if cell.tone:
        attrs += f' title="{esc(TONE_MEANING[cell.tone])}"'
    tag = "th" if header else "td"
    scope = ' scope="row"' if header else ""
    return f"<{tag}{scope}{attrs}>{esc(cell.text)}</{tag}>"


def _figure(svg_text: str, note: str) -> str:
    caption = f"<figcaption>{esc(note)}</figcaption>" if note else ""
    return f"<figure>\n{svg_text}\n{caption}</figure>\n"


# ---- SVG building blocks ----------------------------------------------------------------------

def _svg(width: int, height: int, summary: str, parts: list[str]) -> str:
    return (f'<svg viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
            f'font-family="system-ui, sans-serif" font-size="11" fill="currentColor">'
            f"<title>{esc(summary)}</title>\n" + "\n".join(parts) + "\n</svg>")


def _text(x: float, y: float, text: str, anchor: str = "start", extra: str = "",
          tip: str = "") -> str:
    """A label centred on y; `tip` is the hover text (a full name where `text` is short)."""
    tip = f"<title>{esc(tip)}</title>" if tip else ""
    return (f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" '
            f'dominant-baseline="middle"{extra}>{tip}{esc(text)}</text>')


def _line(x1: float, y1: float, x2: float, y2: float, stroke: str, width: float = 1) -> str:
    return (f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" '
            f'stroke="{stroke}" stroke-width="{width}"/>')


def _y_axis(ticks: list[float], y_of, left: float, right: float, label: str) -> list[str]:
    """Grid lines, tick labels and the rotated axis label, for a plot spanning left..right."""
    parts = []
    for t in ticks:
        y = y_of(t)
        parts.append(_line(left, y, right, y, "#8c959f", 0.5))
        parts.append(_text(left - 6, y, svg.tick_label(t, ticks), "end"))
    mid = (y_of(ticks[0]) + y_of(ticks[-1])) / 2
    if label:
        parts.append(_text(14, mid, label, "middle", f' transform="rotate(-90 14 {mid:.1f})"'))
    parts.append(_line(left, y_of(ticks[0]), left, y_of(ticks[-1]), "currentColor"))
    return parts


def _fmt(v: float) -> str:
    return f"{v:.3g}"


# ---- line plots -------------------------------------------------------------------------------

WIDTH, PLOT_H, LEFT, RIGHT = 860, 240, 64, 16  # pixels of the viewBox; CSS scales it down


def _legend(names: list[str], top: float) -> tuple[list[str], float]:
    """Swatches and names flowing left to right, wrapping; returns the parts and the height."""
    parts, x, y = [], LEFT, top
    for i, name in enumerate(names):
        label = svg.shorten(name, 40)
        width = 30 + 6.5 * len(label) + 14
        if x + width > WIDTH - RIGHT and x > LEFT:
            x, y = LEFT, y + 18
        parts.append(f'<line x1="{x}" y1="{y}" x2="{x + 22}" y2="{y}" {_stroke(i)} '
                     f'stroke-width="2.5"/>')
        parts.append(_text(x + 28, y, label))
        x += width
    return parts, (y - top + 18 if names else 0)


def _stroke(i: int) -> str:
    dash = DASHES[(i // len(PALETTE)) % len(DASHES)]
    return f'stroke="{PALETTE[i % len(PALETTE)]}"' + (f' stroke-dasharray="{dash}"' if dash else "")


def line_plot_svg(plot: LinePlot) -> str:
    """One polyline per unbroken run of each series (gaps at None/NaN), a dot for a lone
    point, nice ticks on both axes, a legend above the plot."""
    all_runs = [svg.runs(s.x, s.y) for s in plot.series]
    xs = [x for rs in all_runs for r in rs for x, _ in r]
    ys = [y for rs in all_runs for r in rs for _, y in r]
    x_ticks = svg.nice_ticks(min(xs), max(xs)) if xs else [0.0, 0.5, 1.0]
    y_ticks = svg.nice_ticks(min(ys), max(ys)) if ys else [0.0, 0.5, 1.0]
    legend, legend_h = _legend([s.name for s in plot.series], 40)
    top = 40 + legend_h + 6
    bottom = top + PLOT_H
    x_of = lambda v: svg.scale(v, (x_ticks[0], x_ticks[-1]), (LEFT, WIDTH - RIGHT))  # noqa: E731
    y_of = lambda v: svg.scale(v, (y_ticks[0], y_ticks[-1]), (bottom, top))  # noqa: E731
    parts = [_text(LEFT, 16, plot.title, extra=' font-size="14" font-weight="600"'), *legend]
    parts += _y_axis(y_ticks, y_of, LEFT, WIDTH - RIGHT, plot.y_label)
    parts.append(_line(LEFT, bottom, WIDTH - RIGHT, bottom, "currentColor"))
    for t in x_ticks:
        parts.append(_line(x_of(t), bottom, x_of(t), bottom + 4, "currentColor"))
        parts.append(_text(x_of(t), bottom + 14, svg.tick_label(t, x_ticks), "middle"))
    parts.append(_text((LEFT + WIDTH - RIGHT) / 2, bottom + 32, plot.x_label, "middle"))
    for i, (s, rs) in enumerate(zip(plot.series, all_runs, strict=True)):
        parts.append(_series(i, s.name, rs, x_of, y_of))
    if not ys:
        parts.append(_text((LEFT + WIDTH - RIGHT) / 2, (top + bottom) / 2, "no data", "middle"))
    return _svg(WIDTH, int(bottom + 42), _plot_summary(plot, all_runs, xs, ys), parts)


def _series(i: int, name: str, runs, x_of, y_of) -> str:
    colour = PALETTE[i % len(PALETTE)]
    marks = []
    for run in runs:
        pixels = [(x_of(x), y_of(y)) for x, y in svg.thin(run)]
        if len(pixels) == 1:
            marks.append(f'<circle cx="{pixels[0][0]:.1f}" cy="{pixels[0][1]:.1f}" r="3.5" '
                         f'fill="{colour}"/>')
        else:
            marks.append(f'<polyline points="{svg.points_attr(pixels)}" fill="none" '
                         f'{_stroke(i)} stroke-width="1.75" stroke-linejoin="round"/>')
    return f"<g><title>{esc(name)}</title>{''.join(marks)}</g>"


def _plot_summary(plot: LinePlot, all_runs, xs, ys) -> str:
    if not ys:
        return f"{plot.title}: no data."
    lasts = [f"{s.name} {_fmt(rs[-1][-1][1])}" for s, rs in zip(plot.series, all_runs,
                                                                  strict=True) if rs]
    return (f"{plot.title}: {len(plot.series)} series over {plot.x_label} {_fmt(min(xs))} to "
            f"{_fmt(max(xs))}; {plot.y_label or 'values'} from {_fmt(min(ys))} to "
            f"{_fmt(max(ys))}. Last values: {', '.join(lasts[:8])}.")


# ---- Wright map -------------------------------------------------------------------------------

MAP_H, MAP_TOP, MAP_BOTTOM = 480, 64, 456
COLUMNS = ((76, 360, "Models θ (↑ better)"), (372, 582, "Judges (↑ harsher)"),
           (594, WIDTH - RIGHT, "Prompts (↑ harder)"))
MAX_LABELS = 15


def _plotted(points: list[WrightPoint]) -> list[WrightPoint]:
    return [p for p in points if svg.finite(p.value)]


def wright_map_svg(w: WrightMap) -> str:
    """Models, judges and prompts on one vertical logit axis; labels stacked so they do not
    collide, thinned above 15, and prompts drawn as a histogram above 15."""
    models, judges, items = _plotted(w.models), _plotted(w.judges), _plotted(w.items)
    bounds = [v for p in models + judges + items for v in (p.value, p.low, p.high) if svg.finite(v)]
    ticks = svg.nice_ticks(min(bounds), max(bounds)) if bounds else [-1.0, 0.0, 1.0]
    y_of = lambda v: svg.scale(v, (ticks[0], ticks[-1]), (MAP_BOTTOM, MAP_TOP))  # noqa: E731
    parts = [_text(LEFT, 16, f"Wright map, dimension {w.dimension}",
                   extra=' font-size="14" font-weight="600"')]
    parts += _y_axis(ticks, y_of, LEFT, WIDTH - RIGHT, "logits")
    for (x0, _, header), points in zip(COLUMNS, (models, judges, items), strict=True):
        parts.append(_text(x0, 44, f"{header}, {len(points)}", extra=' font-weight="600"'))
    parts += _points_column(models, COLUMNS[0], y_of, PALETTE[0])
    parts += _points_column(judges, COLUMNS[1], y_of, PALETTE[1])
    if len(items) > MAX_LABELS:
        parts += _histogram_column(items, COLUMNS[2], ticks, y_of)
    else:
        parts += _points_column(items, COLUMNS[2], y_of, PALETTE[2])
    return _svg(WIDTH, MAP_H, _map_summary(w, models, judges, items), parts)


def _points_column(points, column, y_of, colour: str) -> list[str]:
    """A dot per element (its 95% interval as a vertical line), side by side only where they
    would overlap, and labels `name value` stacked to the right, with a leader where moved."""
    x0, x1, _ = column
    spans = [_span(p, y_of) for p in points]
    xs = [x0 + 10 + lane * 9 for lane in svg.lanes(spans, 2)]
    parts = []
    for p, x in zip(points, xs, strict=True):
        y = y_of(p.value)
        if svg.finite(p.low) and svg.finite(p.high):
            parts.append(_line(x, y_of(p.low), x, y_of(p.high), colour, 1.5))
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{colour}">'
                     f"<title>{esc(_describe(p))}</title></circle>")
    labelled = svg.pick_labels([p.value for p in points], MAX_LABELS)
    label_x = max(xs, default=x0) + 14
    parts += _labels([points[i] for i in labelled], [xs[i] for i in labelled], label_x, x1, y_of)
    return parts


def _span(p: WrightPoint, y_of) -> tuple[float, float]:
    """The pixels a dot and its interval cover, top to bottom."""
    ys = [y_of(v) for v in (p.value, p.low, p.high) if svg.finite(v)]
    return min(ys) - 4, max(ys) + 4


def _labels(points, dot_xs, label_x: float, right: float, y_of) -> list[str]:
    wanted = [y_of(p.value) for p in points]
    placed = svg.spread(wanted, 12, MAP_TOP, MAP_BOTTOM)
    room = max(6, int((right - label_x) / 6.2))
    parts = []
    for p, dot_x, want, y in zip(points, dot_xs, wanted, placed, strict=True):
        if abs(y - want) > 1.5:  # the label moved off its dot: a leader says whose it is
            parts.append(_line(dot_x + 4, want, label_x - 3, y, "#8c959f", 0.75))
        parts.append(_text(label_x, y, svg.shorten(f"{p.name} {p.value:+.2f}", room),
                           tip=_describe(p)))
    return parts


def _describe(p: WrightPoint) -> str:
    interval = (f" [{p.low:+.2f}, {p.high:+.2f}]" if svg.finite(p.low) and svg.finite(p.high)
                else "")
    return f"{p.name}: {p.value:+.2f}{interval}"


def _histogram_column(items, column, ticks, y_of) -> list[str]:
    """Prompt difficulties binned at half the tick spacing, bars growing rightwards; the
    hardest, the easiest and a few between are named."""
    x0, x1, _ = column
    width = (ticks[1] - ticks[0]) / 2
    counts = [0] * (round((ticks[-1] - ticks[0]) / width) or 1)
    for p in items:
        counts[min(int((p.value - ticks[0]) / width), len(counts) - 1)] += 1
    longest, bar_max = max(counts), 60
    parts = []
    for k, n in enumerate(counts):
        if n:
            lo, hi = ticks[0] + k * width, ticks[0] + (k + 1) * width
            top, bottom = y_of(hi), y_of(lo)
            parts.append(f'<rect x="{x0 + 4}" y="{top + 0.5:.1f}" '
                         f'width="{n / longest * bar_max:.1f}" '
                         f'height="{max(bottom - top - 1, 1):.1f}" fill="{PALETTE[2]}" '
                         f'fill-opacity="0.55"><title>{n} prompts with difficulty '
                         f"{lo:+.2f} to {hi:+.2f}</title></rect>")
    named = svg.pick_labels([p.value for p in items], 8)
    parts += _labels([items[i] for i in named], [x0 + 4 + bar_max] * len(named),
                     x0 + bar_max + 18, x1, y_of)
    return parts


def _map_summary(w: WrightMap, models, judges, items) -> str:
    def listing(points):
        return "; ".join(_describe(p) for p in points[:10]) + ("; …" if len(points) > 10 else "")

    text = f"Wright map for dimension {w.dimension}, in logits. Models: {listing(models)}."
    text += f" Judges (severity): {listing(judges)}."
    if items:
        values = [p.value for p in items]
        text += (f" {len(items)} prompts, difficulty {min(values):+.2f} to {max(values):+.2f}, "
                 f"mean {math.fsum(values) / len(values):+.2f}.")
    return text
