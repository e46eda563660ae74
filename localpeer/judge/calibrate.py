"""Judge calibration: can a judge tell a PersonaKnob golden from its reject (METHOD.md §4)?

    localpeer judge calibrate --judge J.gguf --data data/personaknob-starter/test.jsonl

For each held-out record and each active dimension k, the judge grades the golden and
reject_k on dimension k, each as the transcript [user: prompt, assistant: response] with the
record's scenario as background, through the same code path as `localpeer judge`
(`localpeer.judge.run.grade`: same messages, schema and retries). Per judge label
("<judge>:<rubric>", the `judge` column of the ratings) and dimension:

    accuracy = (pairs with golden > reject + ½ · pairs with golden = reject) / n

with n the pairs where both grades parsed, and a Wilson 95% interval (localpeer.rates.Rate).
localpeer defines the flags: "degenerate" when the judge gave one grade to everything it
graded on the dimension (then it is also at chance), else "chance" when the interval holds
0.5; `reversed` when the interval lies below 0.5 (the judge prefers the rejects). With n = 0
the interval is the whole [0, 1]: at chance, nothing checked. Grades that never parsed are
counted as `missing`, not guessed.

Every grade is appended (fsynced) to OUT/calibration-grades.jsonl as it is made; a rerun
skips what is there. OUT/calibration.json (written atomically) holds the summary, which
`localpeer score` shows beside each judge's severity.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from localpeer.dimensions import DIMS, in_order
from localpeer.errors import InputError
from localpeer.formats import (
    Transcript,
    append_jsonl,
    atomic_write_text,
    cut_torn_tail,
    jsonl_records,
)
from localpeer.judge.run import GRADES_FILE, grade, item_context, record_context
from localpeer.rates import Rate

FORMAT = 1
SUMMARY_FILE = "calibration.json"
CHANCE = 0.5


@dataclass(frozen=True)
class DimCalibration:
    """One judge label on one dimension: how often it grades the golden above reject_k."""

    accuracy: float | None  # share of pairs golden > reject, ties ½; None when n = 0
    low: float  # Wilson 95% interval
    high: float
    n: int  # pairs with both grades parsed
    flag: str | None  # "degenerate", "chance" or None
    at_chance: bool  # low <= 0.5 <= high
    degenerate: bool  # one grade for everything graded on this dimension
    reversed: bool  # high < 0.5: prefers the rejects
    missing: int  # grades (golden or reject) that never parsed
    golden_mean: float | None  # mean grade of the goldens of the n pairs
    reject_mean: float | None

    @property
    def flagged(self) -> bool:
        """θ from this judge on this dimension is not interpretable (or reversed)."""
        return self.flag is not None or self.reversed

    def describe(self) -> str:
        """"52% [38%, 66%], n = 47" (an n of 0 says so)."""
        if not self.n:
            return "no graded pairs, n = 0"
        return f"{self.accuracy:.0%} [{self.low:.0%}, {self.high:.0%}], n = {self.n}"

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict, where: str) -> DimCalibration:
        try:
            return cls(**{k: obj[k] for k in cls.__dataclass_fields__})
        except (KeyError, TypeError):
            raise InputError(f"{where}: needs {', '.join(cls.__dataclass_fields__)}; "
                             "write it again with `localpeer judge calibrate`") from None


def dim_calibration(pairs: list[tuple[int | None, int | None]]) -> DimCalibration:
    """The calibration of one dimension from its (golden grade, reject grade) pairs; None is
    a grade that never parsed. Worked example: pairs (5, 2), (3, 3), (2, 4), (4, None) give
    n = 3, 1 + ½ + 0 = 1.5 successes, accuracy 0.5, missing 1."""
    complete = [(g, r) for g, r in pairs if g is not None and r is not None]
    missing = sum((g is None) + (r is None) for g, r in pairs)
    n = len(complete)
    wins = sum(1.0 if g > r else 0.5 if g == r else 0.0 for g, r in complete)
    graded = [s for pair in pairs for s in pair if s is not None]
    degenerate = n >= 1 and len(set(graded)) == 1
    if n:
        rate = Rate.of(wins, n)
        accuracy, low, high = rate.value, rate.low, rate.high
    else:
        accuracy, low, high = None, 0.0, 1.0  # no evidence: the whole interval
    at_chance = low <= CHANCE <= high
    flag = "degenerate" if degenerate else "chance" if at_chance else None
    mean = (lambda xs: sum(xs) / len(xs)) if n else (lambda xs: None)
    return DimCalibration(accuracy, low, high, n, flag, at_chance, degenerate, high < CHANCE,
                          missing, mean([g for g, _ in complete]), mean([r for _, r in complete]))


def verdict(label: str, dims: dict[str, DimCalibration]) -> str:
    """One sentence on what a judge's calibration allows."""
    chance = [d for d, c in dims.items() if c.at_chance]
    degenerate = [d for d, c in dims.items() if c.degenerate]
    reverse = [d for d, c in dims.items() if c.reversed]
    if not chance and not reverse:
        return (f"{label} grades the golden above the reject beyond chance on "
                f"{', '.join(dims)}: its θ on those dimensions can be read.")
    parts = []
    if chance:
        note = f" (one grade for everything on {', '.join(degenerate)})" if degenerate else ""
        parts.append(f"is at chance on {', '.join(chance)}{note}")
    if reverse:
        parts.append(f"prefers the rejects on {', '.join(reverse)}")
    return (f"{label} {' and '.join(parts)}: θ on those dimensions is not interpretable from "
            "this judge.")


def stratified_sample(records: list, limit: int, seed: int) -> list:
    """`limit` records, spread over the dimensions and masks, in file order.

    localpeer defines the draw: shuffle with the seed; then repeatedly take the dimension
    with the fewest pairs chosen so far and, among the records not yet chosen that have it,
    one whose mask has been chosen least often (the first in the shuffled order). So every
    dimension gets pairs and no mask crowds out the others, whatever the file's order."""
    import numpy as np

    if not limit or limit >= len(records):
        return list(records)
    order = [records[k] for k in np.random.default_rng(seed).permutation(len(records))]
    pairs, masks, chosen = Counter(), Counter(), []
    while len(chosen) < limit:
        dim = min({d for r in order for d in r.mask},
                  key=lambda d: (pairs[d], DIMS.index(d) if d in DIMS else len(DIMS)))
        pick = min((r for r in order if dim in r.mask), key=lambda r: masks[r.mask])
        order.remove(pick)
        chosen.append(pick)
        masks[pick.mask] += 1
        pairs.update(pick.mask)
    position = {id(r): k for k, r in enumerate(records)}
    return sorted(chosen, key=lambda r: position[id(r)])


def calibration_records(path: Path) -> list:
    """The golden/reject records of a PersonaKnob file (graded records have no golden)."""
    from localpeer.data.personaknob import read_records

    records = [r for r in read_records(path) if not r.graded]
    if not records:
        raise InputError("no records with golden and reject_k; calibration needs PersonaKnob "
                         "records such as data/personaknob-starter/test.jsonl", path)
    return records


def calibration_transcripts(record) -> list[tuple[str, str, Transcript]]:
    """(response, dimension, transcript) to grade for one record: the golden on every active
    dimension, then each reject_k on k (the golden's grades share a cached prompt prefix)."""
    meta = {"personaknob": {"mask": list(record.mask), **record_context(record).scenario}}

    def transcript(name: str, reply: str) -> Transcript:
        return Transcript(f"{record.id}/{name}", name, record.id,
                          ({"role": "user", "content": record.prompt},
                           {"role": "assistant", "content": reply}), meta, record.source)

    golden = transcript("golden", record.golden)
    return ([("golden", d, golden) for d in record.mask] +
            [("reject", d, transcript(f"reject_{d}", record.rejects[d])) for d in record.mask])


def _key(label: str, record: str, dim: str, response: str) -> tuple[str, str, str, str]:
    return (label, record, dim, response)


def read_grades(path: Path, scale: tuple[int, int] = (1, 5)
                ) -> dict[tuple[str, str, str, str], int | None]:
    """The grades already made on this scale: (label, record, dimension, response) -> score,
    or None for a grade that never parsed. Grades on another scale are left out."""
    path = Path(path)
    cut_torn_tail(path)  # a crash mid-write leaves a torn last line; the grade is redone
    if not path.exists():
        return {}
    return {_key(str(o.get("judge")), str(o.get("record")), str(o.get("dimension")),
                 str(o.get("response"))): o.get("score")
            for _, o in jsonl_records(path) if o.get("scale", [1, 5]) == list(scale)}


@dataclass
class CalibrationRun:
    graded: int = 0
    missing: int = 0
    skipped: int = 0
    retries: int = 0


def count_grades(records: list, judges: list, rubrics) -> int:
    return 2 * sum(len(r.mask) for r in records) * len(judges) * len(rubrics)


def grade_all(judges: list, records: list, rubrics, out: Path, scale: tuple[int, int] = (1, 5),
              tries: int = 3, seed: int = 0, temperature: float = 0.0,
              on_grade: Callable[[str, CalibrationRun, int | None], None] | None = None
              ) -> tuple[CalibrationRun, dict]:
    """Grade every (record, dimension, golden/reject) not yet in OUT/calibration-grades.jsonl;
    returns the run's counts and every grade (done before or now)."""
    path = Path(out) / GRADES_FILE
    grades = read_grades(path, scale)
    run = CalibrationRun()
    for judge in judges:
        for rubric in rubrics:
            label = f"{judge.name}:{rubric}"
            for record in records:
                for response, dim, t in calibration_transcripts(record):
                    key = _key(label, record.id, dim, response)
                    if key in grades:
                        run.skipped += 1
                        if on_grade is not None:
                            on_grade(label, run, grades[key])
                        continue
                    context = item_context(t)
                    score, rationale, errors = grade(judge, t, dim, rubric, scale, tries, seed,
                                                     temperature, context.scenario)
                    append_jsonl(path, {"judge": label, "record": record.id, "dimension": dim,
                                        "response": response, "score": score,
                                        "rationale": rationale, "errors": errors,
                                        "scale": list(scale), "temperature": temperature})
                    grades[key] = score
                    run.retries += len(errors)
                    run.graded += score is not None
                    run.missing += score is None
                    if on_grade is not None:
                        on_grade(label, run, score)
    return run, grades


def summarise(grades: dict, labels: list[str], records: list) -> dict[str, dict]:
    """{label: {dimension: DimCalibration}} over the given records, dimensions in order."""
    out = {}
    for label in labels:
        by_dim: dict[str, list] = {}
        for record in records:
            for dim in record.mask:
                by_dim.setdefault(dim, []).append(
                    (grades.get(_key(label, record.id, dim, "golden")),
                     grades.get(_key(label, record.id, dim, "reject"))))
        out[label] = {d: dim_calibration(by_dim[d]) for d in in_order(by_dim)}
    return out


def summary_json(summary: dict, data: Path, n_records: int, scale: tuple[int, int],
                 **provenance) -> dict:
    return {"format": FORMAT, "data": str(data), "records": n_records, "scale": list(scale),
            **provenance,
            "judges": {label: {d: c.to_json() for d, c in dims.items()}
                       for label, dims in summary.items()}}


def write_summary(out: Path, doc: dict) -> Path:
    path = Path(out) / SUMMARY_FILE
    atomic_write_text(path, json.dumps(doc, indent=1, allow_nan=False) + "\n")
    return path


def read_calibration(path: Path) -> dict[str, dict[str, DimCalibration]]:
    """calibration.json -> {judge label: {dimension: DimCalibration}}."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise InputError(f"cannot read the calibration file ({e.strerror})", path) from None
    except json.JSONDecodeError as e:
        raise InputError(f"not valid JSON ({e.msg}, line {e.lineno}); write it again with "
                         "`localpeer judge calibrate`", path) from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(
            doc.get("judges"), dict):
        raise InputError(f'not a calibration file (format {FORMAT} with "judges"); write it '
                         "with `localpeer judge calibrate`", path)
    return {label: {d: DimCalibration.from_json(c, f"{path}: {label} {d}")
                    for d, c in dims.items()} for label, dims in doc["judges"].items()}


def find_calibration(paths, explicit: Path | None = None) -> Path | None:
    """--calibration FILE, else the first PATH/calibration.json or PATH/ratings/calibration.json
    of the folders given to `localpeer score`."""
    if explicit is not None:
        if not Path(explicit).is_file():
            raise InputError("no such calibration file; write it with `localpeer judge "
                             "calibrate --out DIR` and pass DIR/calibration.json", explicit)
        return Path(explicit)
    for folder in map(Path, paths):
        for candidate in (folder / SUMMARY_FILE, folder / "ratings" / SUMMARY_FILE):
            if folder.is_dir() and candidate.is_file():
                return candidate
    return None


def check_out_folder(out: Path) -> None:
    """OUT must not be a transcripts folder: `localpeer score` would read its grades file as
    transcripts. A folder of its own (default runs/calibration) is what `score --calibration`
    and the PATH/calibration.json lookup expect."""
    out = Path(out)
    if not out.is_dir():
        return
    others = [p for p in out.rglob("*.jsonl") if p.name != GRADES_FILE]
    if (out / "ratings").exists() or others:
        raise InputError("--out holds transcripts or ratings; give calibration a folder of its "
                         "own (e.g. runs/calibration) and pass OUT/calibration.json to "
                         "`localpeer score --calibration`", out)
