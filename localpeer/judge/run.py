"""Judge every transcript under a folder on each dimension; ratings appended, resumable.

For each judge and rubric phrasing, ratings go to DIR/ratings/<judge>.jsonl in the
ARCHITECTURE.md long format (model, item, judge, dimension, score, transcript_id, rationale),
one fsynced line each. Output that does not parse is retried with a new seed; after the last
try the (transcript, dimension) is written to DIR/ratings/<judge>.missing (JSON lines that
`localpeer score` does not read) and never guessed. A rerun skips what either file holds.
Server judges grade `parallel` transcripts at once (default 8; a GGUF judge one at a time);
each result comes back to the calling thread, which alone appends it, so a kill loses only the
grades in flight. A request that fails for good (a 4xx, or the last of its retries) is
missing at once, without the other tries.

A transcript that answers a PersonaKnob record (meta "personaknob" written by `localpeer
generate`, or its item found in `--data RECORDS.jsonl`) is graded only on the record's masked
dimensions, and the judge sees the record's scenario as background. Any other transcript is
graded on every requested dimension, without a scenario.

    from localpeer.judge.run import judge_folder
    summary = judge_folder(Path("transcripts"), [judge], rubrics=("standard",))
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from localpeer.dimensions import DIMS
from localpeer.errors import InputError
from localpeer.formats import Transcript, append_jsonl, jsonl_records, read_transcripts
from localpeer.judge.backends import BadGrade, RequestFailed, as_done, parse_grade, workers
from localpeer.judge.rubric import DIMENSIONS, judge_messages, score_schema

log = logging.getLogger(__name__)
GRADES_FILE = "calibration-grades.jsonl"  # `judge calibrate`'s grades: not transcripts


@dataclass(frozen=True)
class ItemContext:
    """What the judge learns about a transcript's item when it is a PersonaKnob record."""

    mask: tuple[str, ...]  # the record's active dimensions: the only ones graded
    scenario: dict  # {"seed_scene": ..., "context": ...}, shown to the judge as background


def record_context(record) -> ItemContext:
    """The context of a PersonaKnob record (localpeer.data.personaknob.Record)."""
    return ItemContext(tuple(record.mask), {"seed_scene": record.seed_scene,
                                            "context": record.context})


def records_by_id(path: Path) -> dict[str, ItemContext]:
    """`--data RECORDS.jsonl`: every record's context by id, to look transcripts' items up."""
    from localpeer.data.personaknob import read_records

    return {r.id: record_context(r) for r in read_records(path)}


def item_context(t: Transcript, records: dict[str, ItemContext] | None = None
                 ) -> ItemContext | None:
    """The record a transcript answers: from --data by item id, else from the
    meta "personaknob" that `localpeer generate` stores; None for any other item."""
    if records and t.item in records:
        return records[t.item]
    pk = t.meta.get("personaknob")
    if pk is None:
        return None
    mask = pk.get("mask") if isinstance(pk, dict) else None
    if not isinstance(mask, list) or not mask or not set(mask) <= set(DIMS):
        raise InputError(f'meta "personaknob" needs "mask": a list of {", ".join(DIMS)}, '
                         f"got {mask!r}; fix or remove it", *_where(t.source))
    return ItemContext(tuple(d for d in DIMS if d in mask),
                       {k: str(pk.get(k) or "") for k in ("seed_scene", "context")})


def _where(source: str) -> tuple[str, int | None]:
    path, _, line = source.rpartition(":")
    return (path, int(line)) if line.isdigit() else (source, None)


def dims_to_grade(dims: tuple[str, ...], context: ItemContext | None) -> tuple[str, ...]:
    """A record's transcript is graded on its masked dimensions only; any other on all."""
    return dims if context is None else tuple(d for d in dims if d in context.mask)


def transcripts_under(folder: Path) -> list[Transcript]:
    """Every conversation in *.jsonl under the folder (ratings/ and calibration grades
    excluded) that has a reply."""
    out = []
    for path in sorted(Path(folder).rglob("*.jsonl")):
        if "ratings" in path.relative_to(folder).parts or path.name == GRADES_FILE:
            continue
        out += [t for t in read_transcripts(path)
                if any(m.get("role") == "assistant" for m in t.messages)]
    return out


def file_stem(judge_label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", judge_label)


def _done(path: Path, judge: str) -> set[tuple[str, str]]:
    if not path.exists():
        return set()
    return {(str(o.get("transcript_id")), str(o.get("dimension")))
            for _, o in jsonl_records(path, appended=True) if o.get("judge") == judge}


@dataclass
class JudgeSummary:
    rated: int = 0
    missing: int = 0
    skipped: int = 0
    retries: int = 0
    by_judge: dict = field(default_factory=dict)


def grade(judge, transcript: Transcript, dim: str, rubric: str, scale: tuple[int, int],
          tries: int, seed: int, temperature: float = 0.0,
          scenario: dict | None = None) -> tuple[int | None, str, list[str]]:
    """(score or None, rationale, the errors of failed tries). The first try samples at
    `temperature` (0: greedy), later tries at least at 0.7 with new seeds. `scenario`: the
    record's background (ItemContext.scenario), shown to the judge as data. `localpeer judge`
    and `localpeer judge calibrate` both grade through this function."""
    messages = judge_messages(list(transcript.messages), dim, rubric, scale, scenario)
    errors = []
    for attempt in range(tries):
        try:
            raw = judge.complete(messages, score_schema(scale), seed=seed + attempt,
                                 temperature=temperature if attempt == 0 else max(temperature,
                                                                                  0.7))
        except RequestFailed as e:  # retried inside already: another seed will not help
            errors.append(str(e))
            return None, "", errors
        try:
            score, rationale = parse_grade(raw, scale)
            return score, rationale, errors
        except BadGrade as e:
            errors.append(f"{e}: {raw[:80]!r}")
    return None, "", errors


def judge_folder(folder: Path, judges: list, rubrics: tuple[str, ...] = ("standard",),
                 dims: tuple[str, ...] = DIMENSIONS, scale: tuple[int, int] = (1, 5),
                 tries: int = 3, seed: int = 0, limit: int = 0, temperature: float = 0.0,
                 on_rating: Callable[[str, JudgeSummary], None] | None = None,
                 records: dict[str, ItemContext] | None = None,
                 parallel: int | None = None) -> JudgeSummary:
    """Grade every transcript (its record's masked dimensions, or all `dims`) with every
    judge and rubric. `records`: contexts by item id (`records_by_id`), else the
    transcripts' meta "personaknob" says which items are records. `parallel`: requests at
    once to a server judge (None: 8); a local judge always runs one at a time."""
    folder = Path(folder)
    transcripts = transcripts_under(folder)
    if limit:
        transcripts = transcripts[:limit]
    contexts = [item_context(t, records) for t in transcripts]
    summary = JudgeSummary()
    for judge in judges:
        for rubric in rubrics:
            label = f"{judge.name}:{rubric}"
            out = folder / "ratings" / f"{file_stem(label)}.jsonl"
            missing = folder / "ratings" / f"{file_stem(label)}.missing"
            done = _done(out, label) | _done(missing, label)
            counts = summary.by_judge.setdefault(label, {"rated": 0, "missing": 0})
            todo = []
            for t, context in zip(transcripts, contexts, strict=True):
                scenario = context.scenario if context is not None else None
                for dim in dims_to_grade(dims, context):
                    if (t.id, dim) in done:
                        summary.skipped += 1
                    else:
                        todo.append((t, dim, scenario))

            def one(job, judge=judge, rubric=rubric):
                t, dim, scenario = job
                return grade(judge, t, dim, rubric, scale, tries, seed, temperature, scenario)

            # results arrive here, in this thread, as they complete: the only writer
            for (t, dim, _), (score, rationale, errors) in as_done(one, todo,
                                                                   workers(judge, parallel)):
                summary.retries += len(errors)
                row = {"model": t.model, "item": t.item, "judge": label, "dimension": dim}
                if score is None:
                    append_jsonl(missing, {**row, "transcript_id": t.id, "errors": errors})
                    summary.missing += 1
                    counts["missing"] += 1
                    log.warning("%s on %s (%s): no valid grade (%s)", label, t.id, dim,
                                errors[-1] if errors else "no tries")
                else:
                    append_jsonl(out, {**row, "score": score, "transcript_id": t.id,
                                       "rationale": rationale})
                    summary.rated += 1
                    counts["rated"] += 1
                if on_rating is not None:
                    on_rating(label, summary)
    return summary


def count_work(folder: Path, judges: list, rubrics, dims, limit: int = 0,
               records: dict[str, ItemContext] | None = None) -> int:
    transcripts = transcripts_under(folder)
    if limit:
        transcripts = transcripts[:limit]
    grades = sum(len(dims_to_grade(tuple(dims), item_context(t, records))) for t in transcripts)
    return grades * len(judges) * len(rubrics)


@dataclass(frozen=True)
class ConstantJudge:
    """A judge that gave one grade to everything it graded on a dimension (n >= 2)."""

    judge: str
    dimension: str
    score: int
    n: int

    def __str__(self) -> str:
        return (f"{self.judge}: degenerate: gave {self.score} to all {self.n} transcripts on "
                f"{self.dimension}")


def constant_judges(folder: Path, labels: list[str]) -> list[ConstantJudge]:
    """Per judge label and dimension, from everything in its ratings file: one grade for all
    of at least two transcripts means the judge cannot tell replies apart there."""
    out = []
    for label in labels:
        path = Path(folder) / "ratings" / f"{file_stem(label)}.jsonl"
        if not path.exists():
            continue
        scores: dict[str, list[int]] = {}
        for _, o in jsonl_records(path, appended=True):
            if o.get("judge") == label and isinstance(o.get("score"), int):
                scores.setdefault(str(o.get("dimension")), []).append(o["score"])
        for dim in sorted(scores, key=lambda d: (DIMS.index(d) if d in DIMS else len(DIMS), d)):
            values = scores[dim]
            if len(values) >= 2 and len(set(values)) == 1:
                out.append(ConstantJudge(label, dim, values[0], len(values)))
    return out


def missing_report(folder: Path) -> dict[str, int]:
    return {p.name: sum(1 for _ in jsonl_records(p, appended=True))
            for p in sorted((Path(folder) / "ratings").glob("*.missing"))}

