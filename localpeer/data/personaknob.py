"""PersonaKnob records, their validation, and the labelled preference pairs they yield.

A record (METHOD.md §1) has the columns of the public release: `mask` (active dimensions),
`seed_scene`, `context`, `trigger`, `prompt`, `golden`, and `reject_A/T/E/C` (a response that fails
exactly that dimension; null for inactive ones), plus `id` and an optional `split`. The partial
order is golden ≻ reject_k for every active k, so a record yields one pair per active dimension.

localpeer defines a graded variant: `responses: [{"text": ..., "levels": {"A": 2, ...}}]`
instead of golden/rejects, ordered by the product order; pairs that differ in exactly one
dimension are labelled with it (`graded_pairs`).

    from localpeer.data.personaknob import read_records, record_pairs
    records = read_records("data/personaknob-starter/train.jsonl")
    pairs = [p for r in records for p in record_pairs(r)]
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from localpeer.dimensions import DIMS, describe
from localpeer.errors import InputError
from localpeer.formats import jsonl_records

TEXT_COLUMNS = ("seed_scene", "context", "trigger", "prompt")
REJECT_COLUMNS = tuple(f"reject_{d}" for d in DIMS)
COLUMNS = ("mask", *TEXT_COLUMNS, "golden", *REJECT_COLUMNS)  # the public release's columns
SPLITS = ("train", "test")


@dataclass(frozen=True)
class GradedResponse:
    text: str
    levels: dict[str, int]  # dimension -> level, higher = better


@dataclass(frozen=True)
class Record:
    """One scenario. Exactly one of (golden + rejects) or responses is set."""

    id: str
    mask: tuple[str, ...]  # active dimensions, in A, T, E, C order
    seed_scene: str
    context: str
    trigger: str
    prompt: str
    golden: str | None
    rejects: dict[str, str]  # active dimension -> reject text
    split: str | None = None
    responses: tuple[GradedResponse, ...] = ()
    meta: dict = field(default_factory=dict)
    source: str = ""  # file:line, for messages

    @property
    def graded(self) -> bool:
        return bool(self.responses)

    def to_json(self) -> dict:
        out: dict = {"id": self.id, "mask": list(self.mask)}
        out.update({c: getattr(self, c) for c in TEXT_COLUMNS})
        if self.graded:
            out["responses"] = [{"text": r.text, "levels": r.levels} for r in self.responses]
        else:
            out["golden"] = self.golden
            out.update({f"reject_{d}": self.rejects.get(d) for d in DIMS})
        if self.split is not None:
            out["split"] = self.split
        if self.meta:
            out["meta"] = self.meta
        return out


@dataclass(frozen=True)
class Pair:
    """One preference: `chosen` ≻ `rejected` for `prompt`, on dimension `dim`."""

    record_id: str
    prompt: str
    chosen: str
    rejected: str
    dim: str  # "A" | "T" | "E" | "C"; graded pairs differing in several dims: e.g. "A+E"


def parse_mask(value, where: tuple) -> tuple[str, ...]:
    """A mask as the release may write it: ["A","E"], "AE", "A,E" or '["A","E"]'."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as err:
                raise InputError(f"mask {value!r} is not valid JSON: {err.msg}", *where) from None
        else:
            value = [c for c in re.split(r"[\s,;|+]+", text) if c]
            if len(value) == 1 and len(value[0]) > 1:
                value = list(value[0])
    if not isinstance(value, list | tuple) or not value:
        raise InputError(f"mask {value!r} must be a non-empty list of A, T, E, C", *where)
    letters = [str(v).strip().upper() for v in value]
    unknown = sorted(set(letters) - set(DIMS))
    if unknown:
        raise InputError(f"mask has unknown dimension(s) {', '.join(unknown)}; use only "
                         f"{describe()}", *where)
    if len(set(letters)) != len(letters):
        raise InputError(f"mask {letters} repeats a dimension", *where)
    return tuple(d for d in DIMS if d in letters)


def _text(obj: dict, key: str, where: tuple, required: bool = True) -> str | None:
    value = obj.get(key)
    if value is None or (isinstance(value, float) and value != value):  # NaN from pandas
        value = None
    if value is not None and not isinstance(value, str):
        raise InputError(f"{key} must be text, not {type(value).__name__}", *where)
    if value is not None and not value.strip():
        value = None
    if required and value is None:
        raise InputError(f"{key} is missing or empty; every record needs a non-empty {key}",
                         *where)
    return value


def _graded(obj: dict, mask: tuple[str, ...], where: tuple) -> tuple[GradedResponse, ...]:
    responses = obj.get("responses")
    if not isinstance(responses, list) or len(responses) < 2:
        raise InputError("responses must be a list of at least two {text, levels}", *where)
    out = []
    for k, r in enumerate(responses):
        if not isinstance(r, dict) or not isinstance(r.get("text"), str) or not r["text"].strip():
            raise InputError(f"responses[{k}] needs a non-empty text", *where)
        levels = r.get("levels")
        if not isinstance(levels, dict) or set(levels) != set(mask) or not all(
                isinstance(v, int) and not isinstance(v, bool) for v in levels.values()):
            raise InputError(f"responses[{k}].levels must give an integer level for exactly the "
                             f"mask's dimensions {list(mask)}", *where)
        out.append(GradedResponse(r["text"], {d: levels[d] for d in mask}))
    return tuple(out)


def record_from_json(obj: dict, path: str | Path = "", line: int | None = None) -> Record:
    """Validate one record (METHOD.md §1); InputError names file, line and what to change."""
    where = (path, line)
    if not isinstance(obj, dict):
        raise InputError("a record must be a JSON object", *where)
    rid = obj.get("id")
    if not isinstance(rid, str | int) or not str(rid).strip():
        raise InputError("id is missing; every record needs a stable id", *where)
    if "mask" not in obj:
        raise InputError("mask is missing; list the active dimensions, e.g. [\"A\", \"E\"]",
                         *where)
    mask = parse_mask(obj["mask"], where)
    texts = {c: _text(obj, c, where) for c in TEXT_COLUMNS}
    split = obj.get("split")
    if split is not None and split not in SPLITS:
        raise InputError(f"split {split!r} must be one of {', '.join(SPLITS)}", *where)
    meta = obj.get("meta") or {}
    if "responses" in obj:
        return Record(str(rid), mask, **texts, golden=None, rejects={}, split=split,
                      responses=_graded(obj, mask, where), meta=meta, source=f"{path}:{line}")
    golden = _text(obj, "golden", where)
    rejects = {}
    for d in DIMS:
        text = _text(obj, f"reject_{d}", where, required=False)
        if d in mask and text is None:
            raise InputError(f"reject_{d} is missing but {d} is in the mask {list(mask)}; "
                             f"write a reject that fails only {d}, or drop {d} from the mask",
                             *where)
        if d not in mask and text is not None:
            raise InputError(f"reject_{d} is given but {d} is not in the mask {list(mask)}; "
                             f"add {d} to the mask or set reject_{d} to null", *where)
        if text is not None and text.strip() == golden.strip():
            raise InputError(f"reject_{d} is identical to golden; a reject must fail {d}", *where)
        if text is not None:
            rejects[d] = text
    return Record(str(rid), mask, **texts, golden=golden, rejects=rejects, split=split,
                  meta=meta, source=f"{path}:{line}")


def read_records(path: str | Path) -> list[Record]:
    """Every record of a PersonaKnob JSONL file, validated; duplicate ids are an error."""
    path = Path(path)
    if not path.is_file():
        raise InputError("no such records file", path)
    records: list[Record] = []
    first_line: dict[str, int] = {}
    for line_no, obj in jsonl_records(path):
        record = record_from_json(obj, path, line_no)
        if record.id in first_line:
            raise InputError(f"duplicate id {record.id!r} (first at line "
                             f"{first_line[record.id]}); ids must be unique", path, line_no)
        first_line[record.id] = line_no
        records.append(record)
    return records


def record_pairs(record: Record) -> list[Pair]:
    """golden ≻ reject_k for every active k; graded records give their single-dimension pairs."""
    if record.graded:
        return graded_pairs(record)
    return [Pair(record.id, record.prompt, record.golden, record.rejects[d], d)
            for d in record.mask]


def dominates(a: dict[str, int], b: dict[str, int]) -> bool:
    """Product order: a ≥ b on every dimension and > on at least one."""
    return all(a[d] >= b[d] for d in a) and any(a[d] > b[d] for d in a)


def graded_pairs(record: Record, single_dimension_only: bool = True) -> list[Pair]:
    """Every (r, r') with r ≻ r' in the product order; by default only pairs that differ in
    exactly one dimension (the clean per-dimension signal the loss uses)."""
    pairs = []
    for hi in record.responses:
        for lo in record.responses:
            if not dominates(hi.levels, lo.levels):
                continue
            differ = [d for d in record.mask if hi.levels[d] != lo.levels[d]]
            if single_dimension_only and len(differ) != 1:
                continue
            pairs.append(Pair(record.id, record.prompt, hi.text, lo.text, "+".join(differ)))
    return pairs


def hashed_split(record_id: str, test_fraction: float = 0.2, salt: str = "localpeer") -> str:
    """"test" for a fixed, id-determined share of records: the same id always lands the same."""
    digest = hashlib.sha256(f"{salt}:{record_id}".encode()).digest()
    return "test" if int.from_bytes(digest[:8], "big") / 2**64 < test_fraction else "train"


def normalise_prompt(prompt: str) -> str:
    return " ".join(re.findall(r"\w+", prompt.lower()))


def deduplicate(records: list[Record]) -> tuple[list[Record], list[tuple[str, str]]]:
    """Drop records whose prompt (case and punctuation aside) repeats an earlier one;
    returns the kept records and (dropped id, kept id) pairs."""
    seen: dict[str, str] = {}
    kept, dropped = [], []
    for r in records:
        key = normalise_prompt(r.prompt)
        if key in seen:
            dropped.append((r.id, seen[key]))
            continue
        seen[key] = r.id
        kept.append(r)
    return kept, dropped


def leakage(train: list[Record], test: list[Record]) -> list[tuple[str, str]]:
    """(train id, test id) for every prompt that appears in both splits."""
    by_prompt = {normalise_prompt(r.prompt): r.id for r in train}
    return [(by_prompt[k], r.id) for r in test if (k := normalise_prompt(r.prompt)) in by_prompt]
