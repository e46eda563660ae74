"""`localpeer report`: base and trained side by side, every number with its uncertainty.

Reads what the stations wrote: a score JSON (`localpeer score --json`), probe results
(`localpeer probe`: <model>-<suite>.json), judge calibration (`localpeer judge calibrate`:
calibration.json), a run folder (metrics.jsonl, summary.json, recipe.yaml) and an export
folder (export.json). Any part that is absent is left out with a note.

`build(inputs)` turns them into a `Report` (report/sections.py); the terminal (`render`) and
the HTML page (report/html.py) draw that one object. The statistics (METHOD.md §4):
- every rate has its count and a Wilson 95% interval (localpeer.rates.Rate);
- a base-vs-trained change of a rate on the same items gets McNemar's exact test from the
  per-item outcomes the probes record (Fisher's exact test, unpaired, when a result file has
  no outcomes); a θ difference gets the z of the score JSON and its two-sided p;
- localpeer defines: a change is "better" or "worse" only when p <= 0.05; otherwise it reads
  "no detectable change" and is not coloured. A rate that is 0% (or 100%) for both models is
  named "degenerate": the measuring instrument (a judge, a classifier) did not vary;
- a judge whose calibration interval includes 50% on a dimension is flagged there, and θ on
  that dimension is "not interpretable" when every judge that rated it is flagged.

    from localpeer.report.compare import build, load_inputs, render
    report = build(load_inputs("base", "trained", score, probes, run, export, calibration))
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from localpeer.dimensions import DIMS, NAMES, describe, in_order
from localpeer.rates import z_p
from localpeer.report.rate_sections import (
    failures_section,
    p_text,
    selection_sections,
    verdict,
)
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


@dataclass
class Inputs:
    base: str
    trained: str
    score: dict | None = None
    probes: dict = field(default_factory=dict)  # (model, suite) -> result
    metrics: list[dict] = field(default_factory=list)
    summary: dict | None = None
    export: dict | None = None
    calibration: dict | None = None
    length_baseline: dict = field(default_factory=dict)  # dim -> Rate ("longer wins")
    notes: list[str] = field(default_factory=list)


def _read_json(path: Path):
    from localpeer.errors import InputError

    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"not valid JSON ({e.msg}); rerun the command that wrote it", path,
                         e.lineno) from None


def load_inputs(base: str, trained: str, score: Path | None, probes: Path | None,
                run: Path | None, export: Path | None,
                calibration: Path | None = None) -> Inputs:
    inp = Inputs(base, trained)
    if score and score.is_file():
        inp.score = _read_json(score)
    else:
        inp.notes.append(f"no score JSON ({score}): run `localpeer score DIR --json FILE`")
    if probes and probes.is_dir():
        for path in sorted(probes.glob("*.json")):
            result = _read_json(path)
            if isinstance(result, dict) and "suite" in result and "model" in result:
                inp.probes[(result["model"], result["suite"])] = result
    if run and (run / "metrics.jsonl").is_file():
        from localpeer.formats import jsonl_records

        inp.metrics = [obj for _, obj in jsonl_records(run / "metrics.jsonl", appended=True)]
        if (run / "summary.json").is_file():
            inp.summary = _read_json(run / "summary.json")
        inp.length_baseline = _length_baseline(run)
    elif run:
        inp.notes.append(f"no training run at {run}")
    if export and (export / "export.json").is_file():
        inp.export = _read_json(export / "export.json")
    if calibration and calibration.is_file():
        inp.calibration = _read_json(calibration)
    elif inp.score:
        inp.notes.append("no judge calibration: run `localpeer judge calibrate --judge J "
                         "--data data/personaknob-starter/test.jsonl`; until then nothing shows "
                         "that the judges can tell a good reply from a bad one")
    return inp


def _length_baseline(run: Path) -> dict:
    """'The longer response wins' per dimension on the run's held-out records (METHOD §4)."""
    try:
        from localpeer.config import load_recipe
        from localpeer.data.personaknob import read_records
        from localpeer.data.stats import data_stats

        test = Path(load_recipe(run / "recipe.yaml").data.test)
        if not test.is_file():
            return {}
        return {d: s.longer_wins for d, s in data_stats(read_records(test)).dims.items()
                if s.pairs}
    except Exception:  # a baseline is a courtesy: an old or moved run still reports
        return {}


# ---- θ and judges ------------------------------------------------------------------------

def _score_dims(inp: Inputs) -> list[tuple[str, dict]]:
    """The score JSON's dimensions in the registry's order (A, T, E, C, then any other)."""
    dims = (inp.score or {}).get("dimensions", {})
    return [(d, dims[d]) for d in in_order(dims)]


def _calibration_of(inp: Inputs, judge: str, d: str) -> dict | None:
    return ((inp.calibration or {}).get("judges", {}).get(judge) or {}).get(d)


def flagged(c: dict | None) -> bool:
    """A calibration entry that makes θ from this judge on this dimension uninterpretable."""
    return bool(c) and (c.get("flag") is not None or bool(c.get("reversed")))


def calibration_text(c: dict | None) -> str:
    if not c:
        return "not calibrated"
    text = (f"{100 * c['accuracy']:.0f}% [{100 * c['low']:.0f}–{100 * c['high']:.0f}%] "
            f"n = {c['n']}" if c.get("n") else "n = 0")
    flag = c.get("flag") or ("reversed" if c.get("reversed") else None)
    return text + (f" ({flag})" if flag else "")


def _theta(m: dict | None) -> str:
    if not m:
        return "—"
    if m.get("status") != "estimated":
        return m.get("status", "—").replace("_", " ")
    lo, hi = m["ci95"]
    return f"{m['theta']:+.2f} [{lo:+.2f}, {hi:+.2f}]"


def theta_section(inp: Inputs) -> tuple[Section, list[Note]]:
    s = Section("Persona traits θ (logits, 95% CI), many-facet Rasch: judge severity and prompt "
                "difficulty removed",
                ["dim", "base θ", "trained θ", "Δθ ± 1.96 SE", "z", "p", "verdict",
                 "judge calibration", "ratings"],
                numeric=[False, True, True, True, True, True, False, False, True])
    notes = []
    for d, r in _score_dims(inp):
        mb, mt = r["models"].get(inp.base), r["models"].get(inp.trained)
        diff_text, z_text, p_cell, v = "—", "", "", Cell("no test", "muted")
        for c in r.get("comparisons", []):
            if {c["a"], c["b"]} == {inp.base, inp.trained}:
                sign = 1 if c["a"] == inp.trained else -1
                p = z_p(c["z"])
                v = verdict(sign * c["diff"], p, True)
                diff_text = f"{sign * c['diff']:+.2f} ± {1.96 * c['se']:.2f}"
                z_text, p_cell = f"{sign * c['z']:+.1f}", p_text(p)
        judges = sorted(r.get("judges", {}))
        cal = {j: _calibration_of(inp, j, d) for j in judges}
        bad = [j for j in judges if flagged(cal[j])]
        for j in bad:
            notes.append(Note(f"θ on {d} ({NAMES.get(d, d)}) is not interpretable from judge {j}"
                              f": calibration {calibration_text(cal[j])}", "warn"))
        if judges and len(bad) == len(judges):
            v = Cell("not interpretable: every judge fails calibration", "warn")
        cal_cell = ("; ".join(f"{j} {calibration_text(cal[j])}" for j in judges)
                    if inp.calibration else "not calibrated")
        s.add(d, _theta(mb), _theta(mt), Cell(diff_text, v.tone if v.tone != "warn" else None),
              z_text, p_cell, v, Cell(cal_cell, "warn" if bad else None),
              str(r.get("n_ratings", "")))
    s.caption = (f"Δθ = trained − base; z and two-sided p from the score's paired comparison; "
                 f"{describe()}")
    return s, notes


def judges_section(inp: Inputs) -> Section:
    s = Section("Judges: severity ρ (higher = harsher; removed from θ) and calibration "
                "(golden graded above the dimension's reject, ties half)",
                ["judge", "dim", "severity ± SE", "infit", "calibration", "flag"],
                numeric=[False, False, True, True, True, False])
    for d, r in _score_dims(inp):
        for j, e in sorted(r.get("judges", {}).items()):
            c = _calibration_of(inp, j, d)
            flag = (c or {}).get("flag") or ("reversed" if (c or {}).get("reversed") else "")
            sev = f"{e['severity']:+.2f} ± {e['se']:.2f}" if "severity" in e else "—"
            infit = f"{e['infit']:.2f}" if e.get("infit") is not None else "—"
            s.add(j, d, sev, infit, calibration_text(c) if inp.calibration else "not calibrated",
                  Cell(flag, "warn" if flag else None))
    return s


def wright_maps(inp: Inputs) -> list[WrightMap]:
    maps = []
    for d, r in _score_dims(inp):
        models = [WrightPoint(m, e["theta"], *e.get("ci95", (None, None)))
                  for m, e in r.get("models", {}).items() if "theta" in e]
        judges = [WrightPoint(j, e["severity"]) for j, e in r.get("judges", {}).items()
                  if "severity" in e]
        items = [WrightPoint(i, e["difficulty"]) for i, e in r.get("items", {}).items()
                 if "difficulty" in e]
        if models or judges or items:
            maps.append(WrightMap(d, models, judges, items))
    return maps


# ---- training ----------------------------------------------------------------------------

def training_plots(inp: Inputs) -> list[LinePlot]:
    from localpeer.report.train import constraint_sentence

    steps = [m for m in inp.metrics if m.get("split") != "eval"]
    if not steps:
        return []
    x = [float(m["step"]) for m in steps]

    def per_dim(key: str) -> list[Series]:
        return [Series(d, [float(m["step"]) for m in steps if d in m["dims"]],
                       [m["dims"][d][key] for m in steps if d in m["dims"]])
                for d in DIMS if any(d in m["dims"] for m in steps)]

    lam_keys = list(steps[-1].get("lambdas", {}))
    constraint = (inp.summary or {}).get("constraint")
    note = constraint_sentence(constraint) if constraint else ""
    return [
        LinePlot("DPO loss (weighted, per step)", [Series("loss", x, [m["loss"] for m in steps])],
                 y_label="loss"),
        LinePlot("Reward accuracy per dimension (training batches)", per_dim("accuracy"),
                 y_label="accuracy"),
        LinePlot("Lagrange multipliers λ", [Series(k, x, [m["lambdas"].get(k, math.nan)
                                                          for m in steps]) for k in lam_keys],
                 y_label="λ", note=note),
        LinePlot("Dimension weights w", per_dim("weight"), y_label="w"),
    ]


def parity_section(inp: Inputs) -> Section | None:
    if not inp.export:
        return None
    p = inp.export["parity"]
    s = Section(f"Export {inp.export.get('name')}: parity {'passed' if p['passed'] else 'FAILED'}"
                f"; tokens identical on {p['tokens_identical']} probes; chat template same: "
                f"{p['chat_template_same']}", ["file", "max |Δlogit|", "top-1 agreement"],
                numeric=[False, True, True])
    for f in p["files"]:
        top1 = f.get("top1_agree_decisive", f.get("top1_agree"))
        s.add(f["file"], f"{f['max_abs']:.2e}", "—" if top1 is None else f"{top1:.3f}")
    return s


# ---- the report --------------------------------------------------------------------------

def build(inp: Inputs) -> Report:
    report = Report(f"localpeer report — base: {inp.base}, trained: {inp.trained}")
    add = report.blocks.append
    if inp.score:
        theta, notes = theta_section(inp)
        add(theta)
        report.blocks += notes
        add(judges_section(inp))
    failures = failures_section(inp)
    if failures is not None:
        add(failures)
    report.blocks += selection_sections(inp)
    report.blocks += training_plots(inp)
    report.blocks += wright_maps(inp)
    parity = parity_section(inp)
    add(parity if parity is not None else Note("export: no export.json given", "muted"))
    report.blocks += [Note(f"note: {n}", "warn") for n in inp.notes]
    return report


def render(inp: Inputs):
    """The report as a rich renderable for the terminal."""
    from localpeer.report.terminal import to_rich

    return to_rich(build(inp))
