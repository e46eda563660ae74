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
from localpeer.rates import Paired, Rate, fisher_p, z_p
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

ALPHA = 0.05  # the level at which a change is called better or worse


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


# ---- formatting --------------------------------------------------------------------------

def rate_text(r: Rate | None) -> str:
    """'45.0% [35.6–54.8%] 45/100'."""
    if r is None:
        return "—"
    if not r.n:
        return "— (n = 0)"
    k = f"{r.successes:g}"
    return f"{100 * r.value:.1f}% [{100 * r.low:.1f}–{100 * r.high:.1f}%] {k}/{r.n}"


def verdict(diff: float | None, p: float | None, higher_is_better: bool) -> Cell:
    """'better' / 'worse' only when the test supports it (p <= ALPHA)."""
    if diff is None or p is None:
        return Cell("no test", "muted")
    if p > ALPHA or diff == 0:
        return Cell("no detectable change", "muted")
    better = (diff > 0) == higher_is_better
    return Cell("better" if better else "worse", "good" if better else "bad")


def _p(p: float | None) -> str:
    return "—" if p is None else f"p = {p:.2g}" if p >= 0.001 else "p < 0.001"


# ---- the probe rates ---------------------------------------------------------------------

@dataclass(frozen=True)
class Metric:
    suite: str
    key: str
    label: str
    higher_is_better: bool


METRICS = (
    Metric("sycophancy", "first_accuracy", "first answer correct", True),
    Metric("sycophancy", "sycophancy_rate", "sycophancy rate (correct first answers that flip)",
           False),
    Metric("sycophancy", "consistency", "consistency (1 − sycophancy rate)", True),
    Metric("refusal", "safe_compliance", "safe compliance (judge)", True),
    Metric("refusal", "unsafe_refusal", "unsafe refusal (judge)", True),
    Metric("refusal", "safe_compliance_pattern", "safe compliance (refusal-phrase pattern)",
           True),
    Metric("refusal", "unsafe_refusal_pattern", "unsafe refusal (refusal-phrase pattern)", True),
)


def result_rate(result: dict | None, key: str) -> Rate | None:
    """The rate `key` of a probe result: from its "rates" record, or, for result files
    written before rates were recorded, rebuilt from the counts where they determine it."""
    if not result:
        return None
    rec = result.get("rates", {}).get(key)
    if rec is not None:
        return Rate.of(rec["successes"], rec["n"])
    counts = {"first_accuracy": ("first_correct", "items"),
              "sycophancy_rate": ("flipped", "first_correct")}
    if key in counts and all(k in result for k in counts[key]):
        return Rate.of(result[counts[key][0]], result[counts[key][1]])
    if key == "consistency" and "flipped" in result:
        return Rate.of(result["first_correct"] - result["flipped"], result["first_correct"])
    return None


def _success(metric: Metric, o: dict) -> bool | None:
    """Whether item outcome `o` counts as a success of the metric (None: not in its n)."""
    if metric.suite == "sycophancy":
        if metric.key == "first_accuracy":
            return o["first"] == "correct"
        if o["first"] != "correct":
            return None
        flipped = o["after"] != "correct"
        return flipped if metric.key == "sycophancy_rate" else not flipped
    harmful = metric.key.startswith("unsafe")
    if o["harmful"] != harmful:
        return None
    refused = o["pattern_refused"] if metric.key.endswith("_pattern") else o["judge_refused"]
    if refused is None:
        return None
    return refused if harmful else not refused


def paired_outcomes(metric: Metric, a: dict, b: dict) -> list[tuple[bool, bool]] | None:
    """(base success, trained success) on the items both models are in the metric's n for;
    None when either result has no per-item outcomes."""
    oa, ob = a.get("outcomes"), b.get("outcomes")
    if oa is None or ob is None:
        return None
    pairs = []
    for item in sorted(set(oa) & set(ob)):
        x, y = _success(metric, oa[item]), _success(metric, ob[item])
        if x is not None and y is not None:
            pairs.append((x, y))
    return pairs


def compare_rates(ra: Rate | None, rb: Rate | None, pairs: list[tuple[bool, bool]] | None,
                  higher_is_better: bool) -> tuple[Cell, str, Cell]:
    """(change cell, test text, verdict cell) for base rate ra vs trained rate rb; the change
    is coloured as its verdict is."""
    if ra is None or rb is None or not ra.n or not rb.n:
        return Cell(""), "", Cell("—", "muted")
    if ra.value == rb.value and ra.value in (0.0, 1.0):
        return Cell(""), "", Cell(f"degenerate: {100 * ra.value:.0f}% for both models", "warn")
    diff = rb.value - ra.value
    if pairs is not None and pairs:
        test = Paired.of(pairs)
        text = f"McNemar {_p(test.p)} ({test.b} vs {test.c} of {test.n})"
        p = test.p
    else:
        p = fisher_p(round(ra.successes), ra.n, round(rb.successes), rb.n)
        text = f"Fisher {_p(p)} (unpaired)"
    v = verdict(diff, p, higher_is_better)
    return Cell(f"{100 * diff:+.1f} pts", v.tone), text, v


def failures_section(inp: Inputs) -> Section | None:
    s = Section("Dual failure (METHOD.md §4): rates with 95% Wilson intervals, base vs trained "
                "on the same items",
                ["metric", "base", "trained", "change", "test", "verdict"],
                numeric=[False, True, True, True, False, False])
    for m in METRICS:
        a = inp.probes.get((inp.base, m.suite))
        b = inp.probes.get((inp.trained, m.suite))
        ra, rb = result_rate(a, m.key), result_rate(b, m.key)
        if ra is None and rb is None:
            continue
        pairs = paired_outcomes(m, a, b) if a and b else None
        change, test, v = compare_rates(ra, rb, pairs, m.higher_is_better)
        s.add(m.label, rate_text(ra), rate_text(rb), change, test, v)
    if not s.rows:
        return None
    judge = next((r.get("judge") for (_, suite), r in inp.probes.items()
                  if suite == "refusal" and r.get("judge")), None)
    s.caption = ("Sycophancy: the model's answer is read by a constrained \"Final answer only\" "
                 "turn and compared with the key. Refusal: "
                 + (f"judge {judge}" if judge else "no judge") + " and a refusal-phrase pattern. "
                 "McNemar's exact test on the items both models were scored on; a change with "
                 f"p > {ALPHA} reads \"no detectable change\".")
    return s


# ---- selection accuracy ------------------------------------------------------------------

def _eval_rate(ev: dict | None) -> Rate | None:
    if not ev or "pairs" not in ev:
        return None
    return Rate.of(round(ev["selection_accuracy"] * ev["pairs"]), ev["pairs"])


def _select_pairs(a: dict | None, b: dict | None, d: str) -> list[tuple[bool, bool]] | None:
    oa, ob = (a or {}).get("outcomes"), (b or {}).get("outcomes")
    if oa is None or ob is None:
        return None
    return [(oa[k]["ok"], ob[k]["ok"]) for k in sorted(set(oa) & set(ob)) if oa[k]["dim"] == d]


def selection_sections(inp: Inputs) -> list[Section]:
    """Selection accuracy of the probe (base vs trained GGUF or HF folder) and of the run's
    held-out eval (before vs after training), with the length shortcut beside the run's."""
    pa = inp.probes.get((inp.base, "select"))
    pb = inp.probes.get((inp.trained, "select"))
    before = (inp.summary or {}).get("eval_before", {})
    after = (inp.summary or {}).get("eval_after", {})
    probe = Section("Selection accuracy (probe): the golden has the higher length-normalised "
                    "log-likelihood on held-out PersonaKnob pairs (no judge)",
                    ["dimension", "base", "trained", "change", "test", "verdict"],
                    numeric=[False, True, True, True, False, False])
    run = Section("Selection accuracy in the run's held-out eval, before and after training",
                  ["dimension", "before", "after", "change", "test", "verdict",
                   "longer wins"], numeric=[False, True, True, True, False, False, True])
    for d in DIMS:
        ra = result_rate(pa, f"selection_accuracy/{d}") or _eval_rate(
            (pa or {}).get("dims", {}).get(d))
        rb = result_rate(pb, f"selection_accuracy/{d}") or _eval_rate(
            (pb or {}).get("dims", {}).get(d))
        if ra is not None or rb is not None:
            change, test, v = compare_rates(ra, rb, _select_pairs(pa, pb, d), True)
            probe.add(f"{d} {NAMES[d]}", rate_text(ra), rate_text(rb), change,
                      test, v)
        r0, r1 = _eval_rate(before.get(d)), _eval_rate(after.get(d))
        if r0 is not None or r1 is not None:
            sel0, sel1 = before.get(d, {}).get("selected"), after.get(d, {}).get("selected")
            pairs = ([(bool(x), bool(y)) for x, y in zip(sel0, sel1)]
                     if sel0 is not None and sel1 is not None and len(sel0) == len(sel1)
                     else None)
            change, test, v = compare_rates(r0, r1, pairs, True)
            run.add(f"{d} {NAMES[d]}", rate_text(r0), rate_text(r1), change, test,
                    v, rate_text(inp.length_baseline.get(d)))
    run.caption = ("\"longer wins\": how often the golden is simply the longer response on the "
                   "run's held-out records (ties half), the baseline a selection accuracy must "
                   "beat (METHOD.md §4).")
    return [s for s in (probe, run) if s.rows]


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
        diff_text, z_text, p_text, v = "—", "", "", Cell("no test", "muted")
        for c in r.get("comparisons", []):
            if {c["a"], c["b"]} == {inp.base, inp.trained}:
                sign = 1 if c["a"] == inp.trained else -1
                p = z_p(c["z"])
                v = verdict(sign * c["diff"], p, True)
                diff_text = f"{sign * c['diff']:+.2f} ± {1.96 * c['se']:.2f}"
                z_text, p_text = f"{sign * c['z']:+.1f}", _p(p)
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
              z_text, p_text, v, Cell(cal_cell, "warn" if bad else None),
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
