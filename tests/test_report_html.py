"""The HTML report: plotting primitives, the page's structure, and the page in a real browser.

    HF_HUB_OFFLINE=1 python -m pytest -q tests/test_report_html.py

The browser tests run headless chromium when one is installed (.ci/run installs Debian's
`chromium`) and are skipped otherwise.
"""

from __future__ import annotations

import math
import random
import re
import shutil
import struct
import subprocess
import zlib
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from localpeer.report import svg
from localpeer.report.html import PALETTE, numeric_columns, render_html
from localpeer.report.sections import (
    Cell,
    LinePlot,
    Note,
    Report,
    Section,
    Series,
    WrightMap,
    WrightPoint,
)

HOSTILE = "<script>alert(1)</script>"


# ---- plotting primitives ----------------------------------------------------------------------

def test_svg_nice_ticks_examples():
    assert svg.nice_ticks(0.21, 0.69) == [0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
    assert svg.nice_ticks(0, 200) == [0, 50, 100, 150, 200]
    assert svg.nice_ticks(-3.2, 2.7) == [-4, -2, 0, 2, 4]
    assert svg.nice_ticks(0.7, 0.7) == [0.6, 0.65, 0.7, 0.75, 0.8]  # constant: widened by 10%
    assert svg.nice_ticks(0, 0) == [-1, -0.5, 0, 0.5, 1]
    assert all(str(t) != "-0.0" for t in svg.nice_ticks(-1, 1))
    with pytest.raises(ValueError, match="finite"):
        svg.nice_ticks(0, math.nan)


def test_svg_nice_ticks_4_to_6_covering_any_range():
    rng = random.Random(0)
    for _ in range(5000):
        lo = rng.uniform(-1e3, 1e3) * 10 ** rng.randint(-6, 6)
        hi = lo + abs(rng.gauss(0, 1)) * 10 ** rng.randint(-6, 6)
        ticks = svg.nice_ticks(lo, hi)
        step = ticks[1] - ticks[0]
        slack = max(1e-6 * step, 1e-12 * abs(lo))
        assert 4 <= len(ticks) <= 6, (lo, hi, ticks)
        assert ticks[0] <= lo + slack and ticks[-1] >= hi - slack, (lo, hi, ticks)
        assert all(math.isclose(b - a, step, rel_tol=1e-6) for a, b in zip(ticks, ticks[1:]))


def test_svg_tick_labels_use_the_decimals_the_spacing_needs():
    assert [svg.tick_label(t, [0, 50]) for t in (0, 50)] == ["0", "50"]
    assert svg.tick_label(0.25, [0, 0.25]) == "0.25"
    assert svg.tick_label(0.5, [0, 0.5]) == "0.5"
    assert svg.tick_label(2e-5, [0, 1e-5]) == "2e-05"


def test_svg_scale_maps_linearly_and_backwards():
    assert svg.scale(5, (0, 10), (100, 200)) == 150
    assert svg.scale(0, (0, 10), (300, 100)) == 300  # y grows downwards in SVG
    assert svg.scale(3, (1, 1), (0, 10)) == 5


def test_svg_runs_break_at_none_nan_and_inf():
    ys = [1.0, None, 2.0, 3.0, math.nan, math.inf, 4.0]
    assert svg.runs(list(range(7)), ys) == [[(0, 1.0)], [(2, 2.0), (3, 3.0)], [(6, 4.0)]]
    assert svg.runs([0, 1], [None, math.nan]) == []
    assert svg.runs(np.arange(2), np.array([1.0, 2.0])) == [[(0, 1.0), (1, 2.0)]]
    assert svg.runs([0, 1, 2], [True, "1", 3.0]) == [[(2, 3.0)]]


def test_svg_thin_keeps_ends_and_a_spike():
    points = [(i, 0.0) for i in range(5000)]
    points[2500] = (2500, 9.0)
    kept = svg.thin(points, most=600)
    assert len(kept) <= 604 and kept[0] == points[0] and kept[-1] == points[-1]
    assert (2500, 9.0) in kept
    assert [x for x, _ in kept] == sorted(x for x, _ in kept)
    assert svg.thin(points[:10]) == points[:10]


def test_svg_spread_keeps_a_gap_inside_the_bounds():
    placed = svg.spread([50, 51, 52, 300, 299], gap=12, lo=0, hi=300)
    assert placed[:3] == [50, 62, 74]
    assert placed[3] == 300 and placed[4] == 288  # pushed back up from the bottom edge
    ordered = sorted(placed)
    assert all(b - a >= 12 for a, b in zip(ordered, ordered[1:]))


def test_svg_pick_labels_thins_but_keeps_the_extremes():
    values = [random.Random(1).random() for _ in range(40)]
    picked = svg.pick_labels(values, 15)
    assert len(picked) == 15
    assert values.index(max(values)) in picked and values.index(min(values)) in picked
    assert svg.pick_labels(values[:5], 15) == [0, 1, 2, 3, 4]


def test_svg_lanes_put_side_by_side_only_what_overlaps():
    # two overlapping intervals, then one well below them, then one overlapping that one
    assert svg.lanes([(0, 50), (40, 90), (120, 130), (125, 140)], gap=2) == [0, 1, 0, 1]
    assert svg.lanes([(i * 10, i * 10 + 8) for i in range(20)], gap=2) == [0] * 20
    assert max(svg.lanes([(0, 10)] * 20, gap=2, most=8)) == 7


# ---- the page -------------------------------------------------------------------------------

def sample_report() -> Report:
    """2 tables with every tone, 4 curves over 200 steps, a one-point plot, a Wright map with
    2 models, 2 judges and 40 prompts, and a note."""
    theta = Section("Persona traits θ", ["dim", "base θ", "trained θ", "Δθ"],
                    caption="many-facet Rasch; judge severity and prompt difficulty removed")
    theta.add("A", "-0.41 ± 0.12", "+0.39 ± 0.11", Cell("+0.80", "good"))
    theta.add("T", "+0.10 ± 0.12", "-0.20 ± 0.13", Cell("-0.30", "bad"))
    theta.add("E", "+0.02 ± 0.12", Cell("—", "muted"), Cell("no detectable change", "muted"))
    judges = Section("Judges", ["judge", "accuracy", "flag"], numeric=[False, True, False])
    judges.add(HOSTILE, "0.51", Cell("chance", "warn"))
    judges.add("j2", "0.83", "")
    rng = random.Random(0)
    steps = list(range(1, 201))
    loss = LinePlot("Training loss", [
        Series(name, steps, [0.7 * math.exp(-s / (60 + 20 * k)) + 0.2 + 0.02 * rng.random()
                             for s in steps])
        for k, name in enumerate(("total", "A", "T", "E"))], y_label="loss",
        note="L_A − L_T ≤ 0.05 held at 198 of 200 steps")
    single = LinePlot("Held-out accuracy", [Series("A", [200], [0.71])], y_label="accuracy")
    items = [WrightPoint(f"pk-test-{i:04d}", rng.gauss(0, 1)) for i in range(40)]
    wright = WrightMap("A", models=[WrightPoint("base", -0.41, -0.53, -0.29),
                                    WrightPoint(HOSTILE, 0.39, 0.28, 0.50)],
                       judges=[WrightPoint("j1", 0.2), WrightPoint("j2", -0.2)], items=items)
    note = Note("judge j1 is at chance on A; its ratings carry little information", "warn")
    return Report("localpeer report: base vs trained", [theta, judges, loss, single, wright, note])


class Tree(HTMLParser):
    """Just enough of a DOM: every element as {tag, attrs, children, text}, in document order."""

    VOID = {"meta", "link", "br", "img", "hr", "input"}

    def __init__(self, page: str):
        super().__init__(convert_charrefs=True)
        self.root = {"tag": "#root", "attrs": {}, "children": [], "text": ""}
        self.stack, self.all = [self.root], []
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        node = {"tag": tag, "attrs": dict(attrs), "children": [], "text": ""}
        self.stack[-1]["children"].append(node)
        self.all.append(node)
        if tag not in self.VOID:
            self.stack.append(node)

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in self.VOID:
            self.stack.pop()

    def handle_endtag(self, tag):
        while len(self.stack) > 1 and self.stack.pop()["tag"] != tag:
            pass

    def handle_data(self, data):
        for node in self.stack:
            node["text"] += data

    def find(self, tag: str, within: dict | None = None) -> list[dict]:
        if within is None:
            return [n for n in self.all if n["tag"] == tag]
        out = []
        for child in within["children"]:
            out += [child] * (child["tag"] == tag) + self.find(tag, child)
        return out


def test_page_has_tables_plots_and_nothing_external():
    page = render_html(sample_report())
    dom = Tree(page)
    assert page.startswith("<!DOCTYPE html>")
    assert dom.find("html")[0]["attrs"]["lang"] == "en"
    assert dom.find("meta")[0]["attrs"] == {"charset": "utf-8"}
    assert any(m["attrs"].get("name") == "viewport" for m in dom.find("meta"))
    assert dom.find("title")[0]["text"] == "localpeer report: base vs trained"

    tables = dom.find("table")
    assert len(tables) == 2
    assert [dom.find("caption", t)[0]["text"] for t in tables] == ["Persona traits θ", "Judges"]
    head = dom.find("thead", tables[0])[0]
    assert [th["text"] for th in dom.find("th", head)] == ["dim", "base θ", "trained θ", "Δθ"]
    first_row = dom.find("tr", dom.find("tbody", tables[0])[0])[0]
    cells = dom.find("td", first_row)
    assert cells[-1]["text"] == "+0.80" and cells[-1]["attrs"]["class"] == "num good"
    assert dom.find("th", first_row)[0]["attrs"]["scope"] == "row"
    assert "many-facet Rasch" in page.split("</table>")[1]  # the caption text under the table
    flag = dom.find("td", dom.find("tr", dom.find("tbody", tables[1])[0])[0])[-1]
    assert flag["text"] == "chance" and flag["attrs"]["class"] == "warn"

    svgs = dom.find("svg")
    assert len(svgs) == 3
    assert all(s["attrs"]["viewbox"].startswith("0 0 ") for s in svgs)  # parser lowercases
    assert all(s["children"][0]["tag"] == "title" and s["attrs"]["role"] == "img" for s in svgs)
    assert len(dom.find("polyline", svgs[0])) == 4
    assert len(dom.find("polyline", svgs[1])) == 0
    assert len(dom.find("circle", svgs[1])) == 1  # the lone point is a dot
    assert len(dom.find("rect", svgs[2])) >= 4  # 40 prompts are a histogram
    assert len(dom.find("circle", svgs[2])) == 4  # models and judges are dots
    assert [f["text"] for f in dom.find("figcaption")] == [
        "L_A − L_T ≤ 0.05 held at 198 of 200 steps"]
    assert dom.find("p")[-1]["attrs"]["class"] == "note warn"

    assert "<script" not in page.lower()
    assert "http://" not in page and "https://" not in page
    assert not [n for n in dom.all if {"src", "href"} & set(n["attrs"])]


def test_hostile_names_are_escaped_everywhere():
    page = render_html(sample_report())
    assert HOSTILE not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    dom = Tree(page)
    assert not dom.find("script")
    assert any(td["text"] == HOSTILE for td in dom.find("th"))  # shown as text, as named
    report = Report(HOSTILE, [Note(HOSTILE), LinePlot(HOSTILE, [Series(HOSTILE, [1], [2])],
                                                      x_label=HOSTILE, y_label=HOSTILE)])
    assert "<script" not in render_html(report)


def test_line_plot_edge_cases_draw_without_errors():
    many = list(range(5000))
    plot = LinePlot("edges", [
        Series("constant", [0, 1, 2], [0.5, 0.5, 0.5]),
        Series("gappy", [0, 1, 2, 3, 4], [1.0, None, math.nan, 2.0, 3.0]),
        Series("empty", [0, 1], [None, math.nan]),
        Series("long", many, [math.sin(i / 100) for i in many])])
    dom = Tree(render_html(Report("edges", [plot])))
    polylines = dom.find("polyline")
    assert len(polylines) == 3  # constant, gappy's second run, long
    assert len(dom.find("circle")) == 1  # gappy's first run is one point
    assert len(polylines[-1]["attrs"]["points"].split()) <= 604  # 5000 steps thinned
    for p in polylines:
        for pair in p["attrs"]["points"].split():
            x, y = map(float, pair.split(","))
            assert 0 <= x <= 860 and 0 <= y <= 400
    empty = Tree(render_html(Report("none", [LinePlot("nothing", [])])))
    assert "no data" in empty.find("svg")[0]["text"]


def test_wright_map_with_few_prompts_labels_each_one():
    items = [WrightPoint(f"p{i}", i / 4 - 1) for i in range(9)]
    w = WrightMap("T", [WrightPoint("m", 0.1, math.nan, None)], [], items)
    dom = Tree(render_html(Report("r", [w])))
    assert not dom.find("rect") and len(dom.find("circle")) == 10
    labels = [t["text"] for t in dom.find("text")]
    assert sum(label.startswith("p") for label in labels) >= 9


def test_numeric_columns_are_guessed_when_not_given():
    s = Section("t", ["model", "θ", "status"])
    s.add("base", "+0.41", "estimated")
    s.add("trained", Cell("—", "muted"), "extreme max")
    assert numeric_columns(s) == [False, True, False]
    s.numeric = [False, False, True]
    assert numeric_columns(s) == [False, False, True]


def demo_page(folder: Path) -> Path:
    """`localpeer report DIR --html FILE` on a folder like the demo leaves."""
    from test_report_compare import write_demo_folder

    from localpeer.cli import main

    write_demo_folder(folder)
    page = folder / "report.html"
    assert main(["report", str(folder), "--html", str(page)]) == 0
    return page


def test_cli_writes_the_report_as_a_page(tmp_path, capsys):
    page = demo_page(tmp_path).read_text()
    assert "wrote" in capsys.readouterr().err
    dom = Tree(page)
    captions = [c["text"] for c in dom.find("caption")]
    assert len(dom.find("table")) >= 3 and any(c.startswith("Persona traits") for c in captions)
    assert "sycophancy rate" in page
    titles = [t["text"] for t in dom.find("text") if "font-size" in t["attrs"]]
    assert {"DPO loss (weighted, per step)", "Lagrange multipliers λ",
            "Dimension weights w"} <= set(titles)
    assert sum(t.startswith("Wright map, dimension") for t in titles) == 4  # A, T, E, C
    assert len(dom.find("svg")) == 8 and len(dom.find("polyline")) >= 4
    assert "<script" not in page and "http://" not in page and "https://" not in page


# ---- in a browser ---------------------------------------------------------------------------

def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if found := shutil.which(name):
            return found
    return None


needs_chromium = pytest.mark.skipif(_chromium() is None,
                                    reason="no chromium installed (.ci/run installs Debian's)")


def run_chromium(page: Path, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    """Headless chromium on a local page, with its own throwaway profile."""
    profile = tmp / f"profile-{page.stem}"
    return subprocess.run(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
         "--enable-logging=stderr", "--v=0", "--no-first-run", "--hide-scrollbars", *args,
         page.resolve().as_uri()], capture_output=True, text=True, timeout=120)


# Chromium (150 here) logs each message a page writes to its console as
#   [pid:tid:date/time.us:INFO:CONSOLE:1] "boom", source: file:///tmp/x.html (1)
# at INFO whatever the message's level (older builds wrote CONSOLE(1)). Our page runs no script,
# so anything on its console is an error: a malformed SVG attribute ("Error: <polyline>
# attribute points: ..."), a load or a script refused by the page's Content-Security-Policy.
CONSOLE = re.compile(r'^\[[^\]]*:CONSOLE[:(]\d+\)?\] "(.*)", source: (\S*)', re.M)


def console_messages(stderr: str) -> list[str]:
    return [message for message, _ in CONSOLE.findall(stderr)]


def test_console_messages_are_read_from_both_log_formats():
    stderr = ("[1:2:1204/214947.37:ERROR:dbus/bus.cc:405] Failed to connect to the bus\n"
              '[1:1:1204/214955.01:INFO:CONSOLE:1] "boom", source: file:///tmp/a.html (1)\n'
              '[1:1:1204/214955.02:INFO:CONSOLE(7)] "Uncaught x", source: file:///tmp/a.html (7)\n')
    assert console_messages(stderr) == ["boom", "Uncaught x"]  # not chromium's own errors


@needs_chromium
def test_console_check_catches_a_deliberate_error(tmp_path):
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html lang="en"><body><p>x</p>'
                   '<script>console.error("boom")</script></body></html>')
    assert "boom" in console_messages(run_chromium(bad, tmp_path, "--dump-dom").stderr)
    good = tmp_path / "good.html"
    good.write_text('<!DOCTYPE html><html lang="en"><body><p>x</p></body></html>')
    assert console_messages(run_chromium(good, tmp_path, "--dump-dom").stderr) == []
    broken_svg = tmp_path / "svg.html"
    broken_svg.write_text('<!DOCTYPE html><svg viewBox="0 0 9 9"><polyline points="0,0 x"/>'
                          "</svg>")
    messages = console_messages(run_chromium(broken_svg, tmp_path, "--dump-dom").stderr)
    assert any("polyline" in m for m in messages)


@needs_chromium
def test_page_in_chromium_has_tables_and_plots_and_a_clean_console(tmp_path):
    page = tmp_path / "report.html"
    page.write_text(render_html(sample_report()))
    done = run_chromium(page, tmp_path, "--dump-dom")
    assert done.returncode == 0, done.stderr[-2000:]
    dom = Tree(done.stdout)
    assert len(dom.find("table")) == 2 and len(dom.find("svg")) == 3
    assert len(dom.find("polyline")) == 4
    assert console_messages(done.stderr) == []
    # the page's own policy refuses a script that got in: caught and reported
    smuggled = tmp_path / "smuggled.html"
    smuggled.write_text(page.read_text().replace(
        "</main>", '<script>console.error("boom")</script></main>'))
    messages = console_messages(run_chromium(smuggled, tmp_path, "--dump-dom").stderr)
    assert messages and "boom" not in messages[0] and "Content Security Policy" in messages[0]


@needs_chromium
def test_cli_page_in_chromium_has_a_clean_console(tmp_path, capsys):
    page = demo_page(tmp_path)
    done = run_chromium(page, tmp_path, "--dump-dom")
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(Tree(done.stdout).find("svg")) == 8
    assert console_messages(done.stderr) == []


def read_png(path: Path) -> tuple[int, int, list[bytes]]:
    """Width, height and RGB(A) rows of an 8-bit PNG (what chromium writes)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        header = chunk if kind == b"IHDR" else header
        idat += chunk if kind == b"IDAT" else b""
        pos += 12 + length
    width, height, depth, colour = struct.unpack(">IIBB", header[:10])
    assert depth == 8 and colour in (2, 6), (depth, colour)
    bpp = 3 if colour == 2 else 4
    raw, rows, prev = zlib.decompress(idat), [], bytes(width * bpp)
    for r in range(height):
        start = r * (width * bpp + 1)
        kind, line = raw[start], bytearray(raw[start + 1:start + 1 + width * bpp])
        for i in range(len(line)):
            a, b = line[i - bpp] if i >= bpp else 0, prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            paeth = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
            line[i] = (line[i] + (0, a, b, (a + b) // 2, paeth)[kind]) & 0xFF
        rows.append(bytes(line))
        prev = rows[-1]
    return width, height, [bytes(b for i, b in enumerate(row) if i % bpp < 3) for row in rows]


@needs_chromium
def test_screenshot_of_a_plot_shows_coloured_curves_not_black(tmp_path):
    page = tmp_path / "plot.html"
    page.write_text(render_html(Report("curves", [sample_report().blocks[2]])))
    shot = tmp_path / "plot.png"
    done = run_chromium(page, tmp_path, f"--screenshot={shot}", "--window-size=800,500")
    assert shot.is_file(), done.stderr[-2000:]
    width, height, rows = read_png(shot)
    pixels = [row[i:i + 3] for row in rows for i in range(0, len(row), 3)]
    dark = sum(max(p) < 60 for p in pixels) / len(pixels)
    assert dark < 0.05, f"{dark:.0%} of the screenshot is black"
    for colour in PALETTE[:4]:
        rgb = bytes.fromhex(colour[1:])
        near = sum(sum(abs(a - b) for a, b in zip(p, rgb)) < 60 for p in pixels)
        assert near > 200, f"series colour {colour}: {near} pixels"
