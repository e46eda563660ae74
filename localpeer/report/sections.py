"""The report as data: what `localpeer report` says, before any renderer draws it.

`report.compare.build(inputs)` returns a `Report`; the terminal (rich) and the HTML page
(report/html.py) both draw the same blocks, so the numbers and the verdicts cannot differ
between them.

    Report(title, blocks=[Section(...), LinePlot(...), WrightMap(...), Note(...)])

A `Cell`'s `tone` says how a renderer may colour it: "good" / "bad" only for a change that a
test supports (p <= 0.05), "warn" for a flagged value (a judge at chance, a degenerate row),
"muted" for "no detectable change" and missing values, None for plain numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

TONES = (None, "good", "bad", "warn", "muted")


@dataclass(frozen=True)
class Cell:
    text: str
    tone: str | None = None

    def __post_init__(self):
        if self.tone not in TONES:
            raise ValueError(f"tone {self.tone!r} not one of {TONES}")


@dataclass
class Section:
    """A table: `columns` names the columns, each row has one Cell per column. `numeric`
    marks the columns a renderer right-aligns."""

    title: str
    columns: list[str]
    rows: list[list[Cell]] = field(default_factory=list)
    caption: str = ""
    numeric: list[bool] | None = None

    def add(self, *cells: Cell | str) -> None:
        row = [c if isinstance(c, Cell) else Cell(str(c)) for c in cells]
        if len(row) != len(self.columns):
            raise ValueError(f"{self.title}: {len(row)} cells for {len(self.columns)} columns")
        self.rows.append(row)


@dataclass
class Series:
    name: str
    x: list[float]
    y: list[float]


@dataclass
class LinePlot:
    """Curves over training steps (loss, per-dimension accuracy, λ, weights)."""

    title: str
    series: list[Series]
    x_label: str = "step"
    y_label: str = ""
    note: str = ""  # e.g. the constraint sentence


@dataclass
class WrightPoint:
    name: str
    value: float
    low: float | None = None  # 95% interval, when the element has one
    high: float | None = None


@dataclass
class WrightMap:
    """One dimension's logit scale: models (θ with CI), judges (severity), prompts
    (difficulty) side by side."""

    dimension: str
    models: list[WrightPoint]
    judges: list[WrightPoint]
    items: list[WrightPoint]


@dataclass(frozen=True)
class Note:
    text: str
    tone: str | None = None  # "warn" for something the reader must not miss


Block = Section | LinePlot | WrightMap | Note


@dataclass
class Report:
    title: str
    blocks: list[Block] = field(default_factory=list)

    def sections(self) -> list[Section]:
        return [b for b in self.blocks if isinstance(b, Section)]

    def section(self, title_start: str) -> Section:
        """The first section whose title starts with `title_start` (tests use this)."""
        for s in self.sections():
            if s.title.startswith(title_start):
                return s
        raise KeyError(title_start)
