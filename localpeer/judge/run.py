"""Judge every transcript under a folder on each dimension; ratings appended, resumable.

For each judge and rubric phrasing, ratings go to DIR/ratings/<judge>.jsonl in the
ARCHITECTURE.md long format (model, item, judge, dimension, score, transcript_id, rationale),
one fsynced line each. Output that does not parse is retried with a new seed; after the last
try the (transcript, dimension) is written to DIR/ratings/<judge>.missing (JSON lines that
`localpeer score` does not read) and never guessed. A rerun skips what either file holds.

    from localpeer.judge.run import judge_folder
    summary = judge_folder(Path("transcripts"), [judge], rubrics=("standard",))
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from localpeer.formats import Transcript, append_jsonl, jsonl_records, read_transcripts
from localpeer.judge.backends import BadGrade, parse_grade
from localpeer.judge.rubric import DIMENSIONS, judge_messages, score_schema

log = logging.getLogger(__name__)


def transcripts_under(folder: Path) -> list[Transcript]:
    """Every conversation in *.jsonl under the folder (ratings/ excluded) that has a reply."""
    out = []
    for path in sorted(Path(folder).rglob("*.jsonl")):
        if "ratings" in path.relative_to(folder).parts:
            continue
        out += [t for t in read_transcripts(path)
                if any(m.get("role") == "assistant" for m in t.messages)]
    return out


def file_stem(judge_label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", judge_label)


def _done(path: Path, judge: str) -> set[tuple[str, str]]:
    if not path.exists():
        return set()
    return {(str(o.get("transcript_id")), str(o.get("dimension"))) for _, o in jsonl_records(path)
            if o.get("judge") == judge}


@dataclass
class JudgeSummary:
    rated: int = 0
    missing: int = 0
    skipped: int = 0
    retries: int = 0
    by_judge: dict = field(default_factory=dict)


def grade(judge, transcript: Transcript, dim: str, rubric: str, scale: tuple[int, int],
          tries: int, seed: int, temperature: float = 0.0) -> tuple[int | None, str, list[str]]:
    """(score or None, rationale, the errors of failed tries). The first try samples at
    `temperature` (0: greedy), later tries at least at 0.7 with new seeds."""
    messages = judge_messages(list(transcript.messages), dim, rubric, scale)
    errors = []
    for attempt in range(tries):
        raw = judge.complete(messages, score_schema(scale), seed=seed + attempt,
                             temperature=temperature if attempt == 0 else max(temperature,
                                                                              0.7))
        try:
            score, rationale = parse_grade(raw, scale)
            return score, rationale, errors
        except BadGrade as e:
            errors.append(f"{e}: {raw[:80]!r}")
    return None, "", errors


def judge_folder(folder: Path, judges: list, rubrics: tuple[str, ...] = ("standard",),
                 dims: tuple[str, ...] = DIMENSIONS, scale: tuple[int, int] = (1, 5),
                 tries: int = 3, seed: int = 0, limit: int = 0, temperature: float = 0.0,
                 on_rating: Callable[[str, JudgeSummary], None] | None = None) -> JudgeSummary:
    folder = Path(folder)
    transcripts = transcripts_under(folder)
    if limit:
        transcripts = transcripts[:limit]
    summary = JudgeSummary()
    for judge in judges:
        for rubric in rubrics:
            label = f"{judge.name}:{rubric}"
            out = folder / "ratings" / f"{file_stem(label)}.jsonl"
            missing = folder / "ratings" / f"{file_stem(label)}.missing"
            done = _done(out, label) | _done(missing, label)
            counts = summary.by_judge.setdefault(label, {"rated": 0, "missing": 0})
            for t in transcripts:
                for dim in dims:
                    if (t.id, dim) in done:
                        summary.skipped += 1
                        continue
                    score, rationale, errors = grade(judge, t, dim, rubric, scale, tries,
                                                     seed, temperature)
                    summary.retries += len(errors)
                    row = {"model": t.model, "item": t.item, "judge": label, "dimension": dim}
                    if score is None:
                        append_jsonl(missing, {**row, "transcript_id": t.id, "errors": errors})
                        summary.missing += 1
                        counts["missing"] += 1
                        log.warning("%s on %s (%s): no valid grade after %d tries", label, t.id,
                                    dim, tries)
                    else:
                        append_jsonl(out, {**row, "score": score, "transcript_id": t.id,
                                           "rationale": rationale})
                        summary.rated += 1
                        counts["rated"] += 1
                    if on_rating is not None:
                        on_rating(label, summary)
    return summary


def count_work(folder: Path, judges: list, rubrics, dims, limit: int = 0) -> int:
    n = len(transcripts_under(folder))
    n = min(n, limit) if limit else n
    return n * len(judges) * len(rubrics) * len(dims)


def missing_report(folder: Path) -> dict[str, int]:
    return {p.name: sum(1 for _ in jsonl_records(p))
            for p in sorted((Path(folder) / "ratings").glob("*.missing"))}

