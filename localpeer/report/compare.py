"""`localpeer report`: base and trained side by side, as rich renderables.

Reads what the stations wrote: a score JSON (`localpeer score --json`), probe results
(`localpeer probe`: <model>-<suite>.json), a run folder (metrics.jsonl, summary.json) and an
export folder (export.json). Any part that is absent is left out with a note.

    from localpeer.report.compare import Inputs, render
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from localpeer.dimensions import DIMS, NAMES, describe
from localpeer.report.train import constraint_sentence, sparkline


@dataclass
class Inputs:
    base: str
    trained: str
    score: dict | None = None
    probes: dict = field(default_factory=dict)  # (model, suite) -> result
    metrics: list[dict] = field(default_factory=list)
    summary: dict | None = None
    export: dict | None = None
    notes: list[str] = field(default_factory=list)


def load_inputs(base: str, trained: str, score: Path | None, probes: Path | None,
                run: Path | None, export: Path | None) -> Inputs:
    inp = Inputs(base, trained)
    if score and score.is_file():
        inp.score = json.loads(score.read_text())
    else:
        inp.notes.append(f"no score JSON ({score}): run `localpeer score DIR --json FILE`")
    if probes and probes.is_dir():
        for path in sorted(probes.glob("*.json")):
            result = json.loads(path.read_text())
            if "suite" in result and "model" in result:
                inp.probes[(result["model"], result["suite"])] = result
    if run and (run / "metrics.jsonl").is_file():
        inp.metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()
                       if x.strip()]
        if (run / "summary.json").is_file():
            inp.summary = json.loads((run / "summary.json").read_text())
    elif run:
        inp.notes.append(f"no training run at {run}")
    if export and (export / "export.json").is_file():
        inp.export = json.loads((export / "export.json").read_text())
    return inp


def _ci(m: dict | None) -> str:
    if not m:
        return "—"
    if m.get("status") != "estimated":
        return m.get("status", "—").replace("_", " ")
    lo, hi = m["ci95"]
    return f"{m['theta']:+.2f} ± {(hi - lo) / 2:.2f}"


def theta_table(inp: Inputs) -> Table:
    t = Table(title="Persona traits θ (logits, 95% CI), many-facet Rasch: judge severity and "
              "prompt difficulty removed", title_justify="left", box=box.SIMPLE_HEAVY)
    t.add_column("dim")
    for col in ("base θ", "trained θ", "Δθ", "z", "n"):
        t.add_column(col, justify="right", no_wrap=True)
    dims = (inp.score or {}).get("dimensions", {})
    for d in DIMS:
        r = dims.get(d)
        if r is None:
            continue
        mb, mt = r["models"].get(inp.base), r["models"].get(inp.trained)
        diff, z = "—", ""
        for c in r.get("comparisons", []):
            if {c["a"], c["b"]} == {inp.base, inp.trained}:
                sign = 1 if c["a"] == inp.trained else -1
                style = "green" if sign * c["diff"] > 0 else "red"
                diff = f"[{style}]{sign * c['diff']:+.2f} ± {1.96 * c['se']:.2f}[/]"
                z = f"{sign * c['z']:+.1f}"
        t.add_row(d, _ci(mb), _ci(mt), diff, z, str(r.get("n_ratings", "")))
    t.caption = ("θ ± half the 95% CI; Δθ = trained − base ± 1.96 SE; n ratings. "
                 + describe())
    return t


def judges_table(inp: Inputs) -> Table:
    t = Table(title="Judges (severity ρ: higher = harsher; removed from θ)", title_justify="left",
              box=box.SIMPLE)
    t.add_column("judge")
    for d in DIMS:
        t.add_column(d, justify="right")
    dims = (inp.score or {}).get("dimensions", {})
    names = sorted({j for r in dims.values() for j in r.get("judges", {})})
    for j in names:
        cells = []
        for d in DIMS:
            e = dims.get(d, {}).get("judges", {}).get(j)
            cells.append("—" if not e or "severity" not in e else
                         f"{e['severity']:+.2f} ± {e['se']:.2f}")
        t.add_row(j, *cells)
    return t


def _pct(x) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def _delta(a, b, higher_is_better: bool) -> str:
    if a is None or b is None:
        return ""
    d = b - a
    good = (d > 0) == higher_is_better
    return f"[{'green' if good and d else 'red' if d else 'dim'}]{100 * d:+.1f} pts[/]"


def failures_table(inp: Inputs) -> Table:
    t = Table(title="Dual failure (METHOD.md §4)", title_justify="left", box=box.SIMPLE_HEAVY)
    for col in ("metric", "base", "trained", "change", "n"):
        t.add_column(col, justify="left" if col == "metric" else "right")
    rows = [("sycophancy", "first_accuracy", "first answer correct", True),
            ("sycophancy", "sycophancy_rate", "sycophancy rate (flips)", False),
            ("sycophancy", "consistency", "consistency", True),
            ("refusal", "safe_compliance", "safe compliance (judge)", True),
            ("refusal", "unsafe_refusal", "unsafe refusal (judge)", True),
            ("refusal", "safe_compliance_pattern", "safe compliance (pattern)", True),
            ("refusal", "unsafe_refusal_pattern", "unsafe refusal (pattern)", True)]
    for suite, key, label, up in rows:
        a = inp.probes.get((inp.base, suite), {}).get(key)
        b = inp.probes.get((inp.trained, suite), {}).get(key)
        if a is None and b is None:
            continue
        res = inp.probes.get((inp.trained, suite)) or inp.probes.get((inp.base, suite))
        n = {"first_accuracy": "items", "sycophancy_rate": "first_correct"}.get(key)
        n = str(res.get(n, "")) if n else str(res.get("harmful" if "unsafe" in key else
                                                     "benign", "")) if suite == "refusal" else ""
        t.add_row(label, _pct(a), _pct(b), _delta(a, b, up), n)
    return t


def selection_table(inp: Inputs) -> Table:
    t = Table(title="Selection accuracy on held-out PersonaKnob pairs (golden has the higher "
              "length-normalised log-likelihood)", title_justify="left", box=box.SIMPLE_HEAVY)
    t.add_column("dimension")
    for col in ("base (probe)", "trained (probe)", "run: before", "run: after"):
        t.add_column(col, justify="right")
    pb = inp.probes.get((inp.base, "select"), {}).get("dims", {})
    pt = inp.probes.get((inp.trained, "select"), {}).get("dims", {})
    before = (inp.summary or {}).get("eval_before", {})
    after = (inp.summary or {}).get("eval_after", {})
    for d in DIMS:
        cells = [_pct(pb.get(d, {}).get("selection_accuracy")),
                 _pct(pt.get(d, {}).get("selection_accuracy")),
                 _pct(before.get(d, {}).get("selection_accuracy")),
                 _pct(after.get(d, {}).get("selection_accuracy"))]
        if any(c != "—" for c in cells):
            t.add_row(f"{d} {NAMES[d]}", *cells)
    return t


def _squeeze(values: list[float], width: int = 32) -> list[float]:
    """At most `width` points: the means of equal runs of steps, so a curve fits a column."""
    if len(values) <= width:
        return values
    edges = [round(k * len(values) / width) for k in range(width + 1)]
    return [sum(values[a:b]) / (b - a) for a, b in zip(edges, edges[1:])]


def curves(inp: Inputs) -> Table:
    n_steps = sum(1 for m in inp.metrics if m.get("split") != "eval")
    t = Table(title=f"Training curves ({n_steps} steps; a curve shows at most 32 points, "
              "each the mean of its steps)", title_justify="left",
              box=box.SIMPLE)
    t.add_column("series")
    t.add_column("curve")
    t.add_column("first → last", justify="right")
    steps = [m for m in inp.metrics if m.get("split") != "eval"]
    if not steps:
        return t
    loss = [m["loss"] for m in steps]
    t.add_row("loss", sparkline(_squeeze(loss)), f"{loss[0]:.3f} → {loss[-1]:.3f}")
    for d in DIMS:
        acc = [m["dims"][d]["accuracy"] for m in steps if d in m["dims"]]
        if acc:
            t.add_row(f"reward accuracy {d}", sparkline(_squeeze(acc)),
                      f"{acc[0]:.2f} → {acc[-1]:.2f}")
    for key in steps[-1].get("lambdas", {}):
        lam = [m["lambdas"][key] for m in steps]
        if max(lam) > 0:
            t.add_row(f"λ {key}", sparkline(_squeeze(lam)), f"{lam[0]:.3f} → {lam[-1]:.3f} (max "
                      f"{max(lam):.3f})")
    constraint = (inp.summary or {}).get("constraint")
    if constraint:
        t.add_row("constraint", "", constraint_sentence(constraint))
    elif not any(max(m["lambdas"][k] for m in steps) > 0 for k in steps[-1].get("lambdas", {})):
        t.add_row("λ (all constraints)", "", "0 throughout: no dimension ran away")
    return t



def parity_text(inp: Inputs) -> Text:
    if not inp.export:
        return Text("export: no export.json given", style="dim")
    p = inp.export["parity"]
    parts = [f"export {inp.export.get('name')}: parity {'passed' if p['passed'] else 'FAILED'};"
             f" tokens identical on {p['tokens_identical']} probes; chat template same: "
             f"{p['chat_template_same']}"]
    for f in p["files"]:
        top1 = f.get("top1_agree_decisive", f.get("top1_agree"))
        parts.append(f"  {f['file']}: max |Δlogit| {f['max_abs']:.2e}"
                     + (f", top-1 {top1:.3f}" if top1 is not None else ""))
    return Text("\n".join(parts))


def render(inp: Inputs) -> Group:
    title = Text(f"localpeer report — base: {inp.base}, trained: {inp.trained}", style="bold")
    parts = [title]
    if inp.score:
        parts += [theta_table(inp), judges_table(inp)]
    if inp.probes:
        parts += [failures_table(inp), selection_table(inp)]
    elif inp.summary:
        parts.append(selection_table(inp))
    if inp.metrics:
        parts.append(curves(inp))
    parts.append(parity_text(inp))
    parts += [Text(f"note: {n}", style="yellow") for n in inp.notes]
    return Group(*parts)
