"""Rich renderables for judge calibration (`localpeer judge calibrate`, and beside each
judge and θ in `localpeer score`).

    from localpeer.report.calibration import calibration_view
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from localpeer.report.score import _by_measure, _num, _table, _titled
from localpeer.score.result import DimensionResult

if TYPE_CHECKING:
    from localpeer.judge.calibrate import DimCalibration


def _calibration_flag(cal: DimCalibration) -> str:
    return "reversed" if cal.reversed else cal.flag or ""


def judge_calibration_table(r: DimensionResult, calibration: dict | None) -> Group | None:
    """Beside the judges table: each judge's accuracy at grading a PersonaKnob golden above
    its reject on this dimension (`localpeer judge calibrate`), in the same judge order."""
    if calibration is None:
        return None
    t = _table(("judge",), ("severity", "accuracy [95% CI]", "n"), ("flag",))
    for e in _by_measure(r.judges) + [e for e in r.judges if not e.estimated]:
        cal = calibration.get(e.name, {}).get(r.dimension)
        severity = _num(e.measure, "+.2f") if e.estimated else e.status
        if cal is None:
            t.add_row(Text(e.name), severity, Text("not calibrated", style="dim"), "", "")
            continue
        style = "red" if cal.flagged else "green"
        accuracy = (f"{cal.accuracy:.0%} [{cal.low:.0%}, {cal.high:.0%}]" if cal.n else "—")
        t.add_row(Text(e.name), severity, Text(accuracy, style=style), str(cal.n),
                  Text(_calibration_flag(cal), style="bold red"))
    return _titled(f"Judge calibration on {r.dimension} (golden graded above reject_k)", t)


def interpretability_notes(r: DimensionResult, calibration: dict | None) -> list[Text]:
    """One line per judge of this dimension whose calibration flags it, for beside θ."""
    if calibration is None:
        return []
    notes, uncalibrated = [], []
    for e in r.judges:
        cal = calibration.get(e.name, {}).get(r.dimension)
        if cal is None:
            uncalibrated.append(e.name)
        elif cal.flagged:
            why = ("it prefers the rejects, " if cal.reversed else
                   "one grade for everything, " if cal.degenerate else "")
            notes.append(Text(f"θ on {r.dimension} is not interpretable from {e.name} "
                              f"({why}calibration {cal.describe()})", style="bold red"))
    if uncalibrated:
        notes.append(Text(f"no calibration on {r.dimension} for {', '.join(uncalibrated)}",
                          style="dim"))
    return notes


def calibration_view(summary: dict[str, dict[str, DimCalibration]],
                     verdicts: dict[str, str]) -> Group:
    """`localpeer judge calibrate`: one row per judge and dimension (accuracy with its 95%
    interval, n, mean grades of goldens and rejects, flags), then one verdict per judge."""
    t = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    t.add_column("judge", no_wrap=True, min_width=min(max(map(len, summary), default=5), 32))
    t.add_column("dim", no_wrap=True)
    t.add_column("accuracy [95% CI]", justify="right", no_wrap=True)
    t.add_column("n", justify="right", no_wrap=True)
    t.add_column("golden/reject", justify="right", no_wrap=True)
    t.add_column("flag")
    for label, by_dim in summary.items():
        for k, (d, cal) in enumerate(by_dim.items()):
            flags = ["degenerate" if cal.degenerate else "reversed" if cal.reversed
                     else cal.flag or ""] + ([f"{cal.missing} missing"] if cal.missing else [])
            means = (f"{cal.golden_mean:.1f} / {cal.reject_mean:.1f}" if cal.n else "—")
            t.add_row(Text(label if k == 0 else ""), d,
                      Text(f"{cal.accuracy:.0%} [{cal.low:.0%}, {cal.high:.0%}]" if cal.n
                           else "—", style="red" if cal.flagged else "green"),
                      str(cal.n), means, Text(", ".join(f for f in flags if f), style="bold red"))
    lines = [Text(v, style="bold red" if " not interpretable " in v else "green")
             for v in verdicts.values()]
    return Group(_titled("Judge calibration: is the golden graded above reject_k? (ties "
                         "count ½)", t,
                         "chance: the 95% CI holds 50%; degenerate: one grade for everything; "
                         "reversed: prefers the rejects; golden/reject: mean grades"), *lines)
