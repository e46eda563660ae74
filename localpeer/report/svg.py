"""Plotting primitives for the HTML report: nice ticks, linear scales, point runs, label layout.

Pure functions on numbers and strings; report/html.py turns them into inline SVG.

    >>> nice_ticks(0.21, 0.69)
    [0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
    >>> scale(5, (0, 10), (100, 200))
    150.0
    >>> runs([0, 1, 2, 3], [1.0, None, 2.0, 3.0])
    [[(0, 1.0)], [(2, 2.0), (3, 3.0)]]

Run the checks: `python -m pytest -q tests/test_report_html.py -k svg`.
"""

from __future__ import annotations

import math
import numbers

# multiples of a power of ten that read well on an axis
_NICE = (1.0, 2.0, 2.5, 5.0)


def finite(v) -> bool:
    """A plottable number (numpy's too): not None, NaN, ±inf, a bool or a string."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def _steps_from(raw: float):
    """Nice steps in ascending order, starting at or just below `raw`."""
    power = 10.0 ** math.floor(math.log10(raw))
    while True:
        for m in _NICE:
            yield m * power
        power *= 10


def _ticks_for(lo: float, hi: float, step: float) -> list[float]:
    start, stop = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
    digits = max(0, -math.floor(math.log10(step))) + 2  # drop float noise like 0.30000000000000004
    return [round(i * step, digits) + 0.0 for i in range(start, stop + 1)]  # + 0.0: no -0.0


def nice_ticks(lo: float, hi: float, most: int = 6) -> list[float]:
    """4 to `most` evenly spaced round numbers whose span covers [lo, hi]; a zero-width range
    (a constant series, a single point) is widened around its value."""
    if not (finite(lo) and finite(hi)):
        raise ValueError(f"nice_ticks needs finite bounds, got {lo!r}, {hi!r}")
    lo, hi = min(lo, hi), max(lo, hi)
    if hi - lo < 1e-9 * max(1.0, abs(lo), abs(hi)):
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    ticks: list[float] = []
    for step in _steps_from((hi - lo) / most):
        ticks = _ticks_for(lo, hi, step)
        if len(ticks) <= most:
            return ticks
    return ticks  # unreachable: the generator never ends before a fitting step


def tick_label(value: float, ticks: list[float]) -> str:
    """A tick's text with as many decimals as the tick spacing needs (0.25 -> 2, 50 -> 0)."""
    step = abs(ticks[1] - ticks[0]) if len(ticks) > 1 else 1.0
    if step >= 1e6 or step < 1e-4:
        return f"{value:g}"
    decimals = 0
    while decimals < 6 and abs(round(step, decimals) - step) > step * 1e-6:
        decimals += 1
    return f"{value:.{decimals}f}"


def scale(value: float, domain: tuple[float, float], pixels: tuple[float, float]) -> float:
    """Map `value` linearly from `domain` onto `pixels` (either may run backwards)."""
    d0, d1 = domain
    p0, p1 = pixels
    if d1 == d0:
        return (p0 + p1) / 2
    return p0 + (value - d0) / (d1 - d0) * (p1 - p0)


def runs(xs: list, ys: list) -> list[list[tuple[float, float]]]:
    """Split a series into runs of consecutive plottable points; None, NaN and inf are gaps."""
    out: list[list[tuple[float, float]]] = []
    current: list[tuple[float, float]] = []
    for x, y in zip(xs, ys, strict=False):
        if finite(x) and finite(y):
            current.append((x, y))
        elif current:
            out.append(current)
            current = []
    if current:
        out.append(current)
    return out


def thin(points: list[tuple[float, float]], most: int = 600) -> list[tuple[float, float]]:
    """At most about `most` points: each bucket keeps its lowest and highest point, in x
    order, so a spike in a long run survives while the page stays small."""
    if len(points) <= most:
        return points
    size = math.ceil(len(points) / (most // 2))
    kept: list[tuple[float, float]] = []
    for i in range(0, len(points), size):
        bucket = points[i:i + size]
        low, high = min(bucket, key=lambda p: p[1]), max(bucket, key=lambda p: p[1])
        kept.extend(sorted({low, high}, key=lambda p: p[0]))
    # the ends stay where they are, so the curve spans the same steps
    return [points[0]] * (kept[0] != points[0]) + kept + [points[-1]] * (kept[-1] != points[-1])


def points_attr(pixels: list[tuple[float, float]]) -> str:
    """An SVG `points` attribute, rounded to a tenth of a pixel."""
    return " ".join(f"{x:.1f},{y:.1f}" for x, y in pixels)


def spread(wanted: list[float], gap: float, lo: float, hi: float) -> list[float]:
    """Label positions near `wanted` (pixels), at least `gap` apart and inside [lo, hi] when
    they fit, keeping their order; returned in the order given."""
    order = sorted(range(len(wanted)), key=lambda i: wanted[i])
    ys = [min(max(wanted[i], lo), hi) for i in order]
    for k in range(1, len(ys)):  # push down
        ys[k] = max(ys[k], ys[k - 1] + gap)
    if ys and ys[-1] > hi:  # then back up from the bottom edge
        ys[-1] = hi
        for k in range(len(ys) - 2, -1, -1):
            ys[k] = min(ys[k], ys[k + 1] - gap)
    out = [0.0] * len(wanted)
    for k, i in enumerate(order):
        out[i] = ys[k]
    return out


def pick_labels(values: list[float], most: int = 15) -> list[int]:
    """Indices of the elements to label: all of them up to `most`, else `most` spread evenly
    over the ranking, the highest and the lowest always among them."""
    n = len(values)
    if n <= most:
        return list(range(n))
    ranked = sorted(range(n), key=lambda i: values[i])
    return sorted({ranked[round(k * (n - 1) / (most - 1))] for k in range(most)})


def shorten(text: str, most: int = 28) -> str:
    """A label that fits: long names end in an ellipsis (the full name goes in a <title>)."""
    return text if len(text) <= most else text[:most - 1] + "…"


def lanes(spans: list[tuple[float, float]], gap: float, most: int = 8) -> list[int]:
    """A lane (0, 1, …) for each vertical span (top, bottom) so that spans sharing a lane are
    `gap` apart: dots and intervals side by side only where they would overlap. Past `most`
    lanes, a span goes where the lane ends soonest."""
    order = sorted(range(len(spans)), key=lambda i: spans[i][0])
    ends: list[float] = []  # the bottom of the last span in each lane
    out = [0] * len(spans)
    for i in order:
        top, bottom = spans[i]
        free = [k for k, end in enumerate(ends) if top >= end + gap]
        if free:
            lane = free[0]
        elif len(ends) < most:
            lane = len(ends)
            ends.append(bottom)
        else:
            lane = min(range(most), key=lambda k: ends[k])
        ends[lane] = max(ends[lane], bottom)
        out[i] = lane
    return out
