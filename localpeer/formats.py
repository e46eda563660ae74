"""The files between stations: transcripts (JSONL) and ratings (CSV or JSONL).

Readers return frozen dataclasses and report bad input as `InputError` with file:line and what
to change; writers are atomic (temporary file, flush, fsync, rename). The formats themselves are
specified in ARCHITECTURE.md, "File formats". `localpeer score DIR` reads through
`load_ratings`; the tests run with

    python -m pytest tests/test_formats.py -q
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import io
import json
import logging
import operator
import os
import re
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from localpeer.errors import InputError

log = logging.getLogger(__name__)

RATING_COLUMNS = ("model", "item", "judge", "dimension", "score")
_FIELDS = (*RATING_COLUMNS, "transcript_id", "rationale")  # the order of Rating's fields
_SCALE_PATTERN = re.compile(r"\s*(-?\d+)\s*(?:\.\.|-)\s*(-?\d+)\s*")
_RATINGS_HELP = "columns model,item,judge,dimension,score (transcript_id, rationale optional)"


MAX_CATEGORIES = 101  # localpeer defines: 0-100 is the widest scale it fits


@dataclass(frozen=True)
class Scale:
    """The rating scale: integer scores from `min` to `max`, both included."""

    min: int  # lowest allowed score
    max: int  # highest allowed score

    def __post_init__(self) -> None:
        if self.min >= self.max:
            raise InputError(f"scale {self.min}-{self.max}: --scale takes MIN-MAX with "
                             "MIN < MAX, e.g. 1-5")
        if self.n_categories > MAX_CATEGORIES:
            raise InputError(f"scale {self.min}-{self.max} has {self.n_categories:,} categories; "
                             f"the rating scale model estimates a threshold between every two, "
                             f"which no ratings file supports beyond {MAX_CATEGORIES} (e.g. "
                             "0-100): pass the scale the judges used")

    @property
    def n_categories(self) -> int:
        return self.max - self.min + 1

    @classmethod
    def parse(cls, text: str) -> Scale:
        """Parse "1-5", "0-10" or "1..5"."""
        match = _SCALE_PATTERN.fullmatch(text)
        if match is None:
            raise InputError(f"scale {text!r}: --scale takes MIN-MAX, e.g. 1-5 or 0-10")
        return cls(int(match[1]), int(match[2]))

    def __str__(self) -> str:
        return f"{self.min}-{self.max}"


@dataclass(frozen=True, slots=True)
class Rating:
    """One score that one judge gave one model's answer to one item on one dimension."""

    model: str  # "" only until `load_ratings` fills it from the transcript
    item: str  # "" only until `load_ratings` fills it from the transcript
    judge: str
    dimension: str
    score: int  # within the Scale it was read with
    transcript_id: str | None
    rationale: str | None
    source: str  # "file:line" where the rating was read, for messages


@dataclass(frozen=True)
class Transcript:
    """One conversation: the model that answered and the item it answered."""

    id: str
    model: str
    item: str
    messages: tuple[dict, ...]  # {"role": ..., "content": ...} in order
    meta: dict  # sampler, hashes, timestamps; free-form
    source: str  # "file:line"


def _read_text(path: Path) -> str:
    """The file decoded as UTF-8 (a BOM is dropped); bad bytes raise at their line."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InputError(f"cannot read the file ({e.strerror})", path) from None
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    try:
        # One decode of the whole file is much faster than line by line; the error's byte
        # offset still gives the line.
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - data.rfind(b"\n", 0, e.start)
        raise InputError(f"not UTF-8 (byte 0x{data[e.start]:02x} at column {column}); "
                         "save the file as UTF-8", path, line) from None


def jsonl_records(path: Path, text: str | None = None,
                  appended: bool = False) -> Iterator[tuple[int, dict]]:
    """(line number, object) for every non-blank line of a JSONL file (or of its `text`).

    `appended`: the file is one localpeer appends to (transcripts, ratings, probe output,
    metrics.jsonl): a last line that has no newline and does not parse is a write cut short
    by a crash; it is skipped with a warning, and the next append removes it (cut_torn_tail).
    Anything else that does not parse is an error naming the line."""
    body = _read_text(path) if text is None else text
    lines = body.split("\n")
    for line, text in enumerate(lines, start=1):  # noqa: B020 (body is split first)
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            if appended and line == len(lines):
                log.warning("%s: line %d is incomplete (an interrupted write); ignored", path,
                            line)
                return
            raise InputError(f"not valid JSON ({e.msg}, column {e.colno}); "
                             "write one JSON object per line", path, line) from None
        if not isinstance(obj, dict):
            raise InputError(f"expected a JSON object {{...}}, got {type(obj).__name__}; "
                             "write one object per line", path, line)
        yield line, obj


def _csv_ratings(path: Path, scale: Scale) -> list[Rating]:
    """The ratings of a CSV file with a header line."""
    reader = csv.reader(io.StringIO(_read_text(path), newline=""))
    try:
        columns = _check_header(next(reader, None), path, reader.line_num)
        return list(_csv_rows_to_ratings(reader, columns, scale, path))
    except csv.Error as e:
        raise InputError(f"not valid CSV ({e}); check the quoting", path, reader.line_num) from None


def _csv_rows_to_ratings(reader: Iterator[list[str]], columns: list[str], scale: Scale,
                         path: Path) -> Iterator[Rating]:
    # Rows that are plainly valid skip the per-field checks of _make_rating, which halves the
    # time for a 1M-row file; any other row goes through it, for the same Rating or the error.
    # Column -1 is the "" appended to every row: the value of optional columns the header lacks.
    indices = [columns.index(field) if field in columns else -1 for field in _FIELDS]
    pick, n_needed = operator.itemgetter(*indices), max(indices) + 2
    scores = {str(k): k for k in range(scale.min, scale.max + 1)}
    where, start = str(path), reader.line_num + 1
    for row in reader:
        line, start = start, reader.line_num + 1
        if not row or (len(row) == 1 and not row[0].strip()):
            continue  # blank line
        row.append("")
        if len(row) >= n_needed:
            model, item, judge, dimension, score, transcript_id, rationale = pick(row)
            model, item, transcript_id = model.strip(), item.strip(), transcript_id.strip()
            judge, dimension = judge.strip(), dimension.strip()
            if score in scores and judge and dimension and (transcript_id or (model and item)):
                yield Rating(model, item, judge, dimension, scores[score], transcript_id or None,
                             rationale or None, f"{where}:{line}")
                continue
        yield _make_rating(dict(zip(columns, row[:-1], strict=False)), scale, path, line)


def _check_header(header: list[str] | None, path: Path, line: int) -> list[str]:
    if not header:
        raise InputError(f"no header line; {_RATINGS_HELP}", path, 1)
    columns = [name.strip().lower() for name in header]
    twice = sorted({name for name in columns if name and columns.count(name) > 1})
    if twice:
        raise InputError(f"column(s) {', '.join(twice)} appear twice; keep one of each", path, line)
    needed = RATING_COLUMNS if "transcript_id" not in columns else RATING_COLUMNS[2:]
    missing = [name for name in needed if name not in columns]
    if missing:
        raise InputError(f"missing column(s) {', '.join(missing)} (found {', '.join(columns)}); "
                         f"{_RATINGS_HELP}", path, line)
    return columns


def _text(value: object, key: str, path: Path, line: int) -> str | None:
    """A stripped string, or None for missing or empty; integers are taken as their text."""
    if type(value) is str:  # the common case first: this runs for every field of every row
        return value.strip() or None
    if value is None:
        return None
    if type(value) is int:
        return str(value)
    raise InputError(f"{key} must be a string, got {json.dumps(value)}", path, line)


def _integer(value: object) -> int | None:
    """`value` as an int if it is an exact integer (4, 4.0, "4", "4.0"), else None."""
    if type(value) is str:
        try:
            value = float(value)
        except ValueError:
            return None
    if type(value) is float and value.is_integer():
        return int(value)
    return value if type(value) is int else None  # not bool, a subclass of int


def _score_error(value: object, scale: Scale, path: Path, line: int) -> InputError:
    allowed = f"scores from {scale.min} to {scale.max}"
    score = _integer(value)
    if value is None or value == "":
        return InputError(f"score is missing or empty; give {allowed}", path, line)
    if score is None:
        return InputError(f"score {json.dumps(value)} is not an integer; write whole-number "
                          f"{allowed}", path, line)
    return InputError(f"score {score} is outside the scale {scale}; use {allowed}, "
                      "or pass e.g. --scale 0-10 if your rubric uses another scale", path, line)


def _make_rating(record: Mapping[str, object], scale: Scale, path: Path, line: int) -> Rating:
    """One rating from a CSV row or JSONL object; model and item may wait for a transcript_id."""
    get = record.get
    transcript_id = _text(get("transcript_id"), "transcript_id", path, line)
    model = _text(get("model"), "model", path, line) or ""
    item = _text(get("item"), "item", path, line) or ""
    if not transcript_id and not (model and item):
        empty = " and ".join(key for key, value in (("model", model), ("item", item)) if not value)
        raise InputError(f"{empty} missing or empty and no transcript_id; fill in model and "
                         "item, or give the transcript_id of the conversation", path, line)
    judge = _text(get("judge"), "judge", path, line)
    dimension = _text(get("dimension"), "dimension", path, line)
    if not judge or not dimension:
        key = "dimension" if judge else "judge"
        raise InputError(f"{key} is missing or empty; give every rating its {key}", path, line)
    score = _integer(get("score"))
    if score is None or not scale.min <= score <= scale.max:
        raise _score_error(get("score"), scale, path, line)
    rationale = get("rationale")
    return Rating(model, item, judge, dimension, score, transcript_id,
                  None if rationale in (None, "") else str(rationale), f"{path}:{line}")


def _make_transcript(obj: dict, path: Path, line: int) -> Transcript:
    missing = [key for key in ("id", "model", "item", "messages") if key not in obj]
    if missing:
        hint = " (this looks like a rating: put it under DIR/ratings/)" if "score" in obj else ""
        raise InputError(f"transcript lacks {', '.join(missing)}; each line needs id, model, item, "
                         f"messages (meta optional){hint}", path, line)
    fields = {key: _text(obj[key], key, path, line) for key in ("id", "model", "item")}
    if not all(fields.values()):
        raise InputError("id, model and item must not be empty; give every conversation all three",
                         path, line)
    messages, meta = obj["messages"], obj.get("meta") or {}
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise InputError('messages must be a list of {"role": ..., "content": ...}', path, line)
    if not isinstance(meta, dict):
        raise InputError("meta must be a JSON object {...} or left out", path, line)
    return Transcript(**fields, messages=tuple(messages), meta=meta, source=f"{path}:{line}")


def read_transcripts(path: Path) -> list[Transcript]:
    """Every conversation in one transcripts JSONL file (blank lines skipped). Within a file, a
    later line with the same id supersedes the earlier one: `localpeer chat` appends the whole
    conversation after every turn, so the last line of an id is the conversation. A torn last
    line (a crash mid-write, no final newline) is left out with a warning."""
    path = Path(path)
    records = jsonl_records(path, appended=True)
    by_id: dict[str, Transcript] = {}
    for line, obj in records:
        t = _make_transcript(obj, path, line)
        by_id.pop(t.id, None)
        by_id[t.id] = t
    transcripts = sorted(by_id.values(), key=lambda t: _where(t.source)[1])
    log.debug("%s: %d transcripts", path, len(transcripts))
    return transcripts


def read_ratings(path: Path, scale: Scale) -> list[Rating]:
    """Every rating in one ratings file, .csv (with a header) or .jsonl.

    `model` and `item` are "" where a row leaves them out but gives a transcript_id;
    `load_ratings` fills them in from the transcripts.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        ratings = _csv_ratings(path, scale)
    elif suffix == ".jsonl":
        ratings = [_make_rating(obj, scale, path, line)
                   for line, obj in jsonl_records(path, appended=True)]
    else:
        raise InputError("a ratings file must be .csv or .jsonl; convert or rename it", path)
    log.debug("%s: %d ratings", path, len(ratings))
    return ratings


def load_ratings(paths: Sequence[Path], scale: Scale,
                 ratings_files: Sequence[Path] = ()) -> list[Rating]:
    """All ratings under `paths` (folders or files) and `ratings_files`, checked and complete.

    A folder D gives ratings from D/ratings/*.csv and *.jsonl and transcripts from every other
    *.jsonl under D. Ratings without model/item get them from their transcript.
    """
    rating_paths, transcript_paths = _collect(paths, ratings_files)
    ratings = [rating for path in rating_paths for rating in read_ratings(path, scale)]
    if not ratings:
        where = ", ".join(str(p) for p in (*paths, *ratings_files)) or "(no paths given)"
        raise InputError(f"no ratings found in {where}; expected DIR/ratings/*.csv or *.jsonl, "
                         "or pass --ratings FILE")
    transcripts = _index_transcripts(transcript_paths)
    ratings = [r if r.model and r.item else _fill_from_transcript(r, transcripts) for r in ratings]
    _check_duplicates(ratings)
    _check_dimensions(ratings)
    log.info("%d ratings from %d files", len(ratings), len(rating_paths))
    return ratings


@dataclass(frozen=True)
class Labels:
    """A text column as integer codes: row r holds names[codes[r]]."""

    names: tuple[str, ...]  # distinct values in first-seen order
    codes: object  # (N,) numpy int64 array of indices into names

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, rows) -> Labels:
        return Labels(self.names, self.codes[rows])

    @classmethod
    def of(cls, values) -> Labels:
        """Code a sequence of strings (first-seen order)."""
        import numpy as np

        index = {name: k for k, name in enumerate(dict.fromkeys(values))}
        return cls(tuple(index), np.fromiter(map(index.__getitem__, values), np.int64,
                                             len(values)))


@dataclass(frozen=True)
class RatingColumns:
    """The ratings `localpeer score` fits, as columns: no Rating object per row."""

    model: Labels
    item: Labels
    judge: Labels
    dimension: Labels
    score: object  # (N,) numpy int64

    def __len__(self) -> int:
        return len(self.score)

    def select(self, rows) -> RatingColumns:
        return RatingColumns(self.model[rows], self.item[rows], self.judge[rows],
                             self.dimension[rows], self.score[rows])


def load_rating_columns(paths: Sequence[Path], scale: Scale,
                        ratings_files: Sequence[Path] = ()) -> RatingColumns:
    """`load_ratings` as columns: the same ratings and the same errors, much faster.

    Plain files (every row complete, scores written as integers, no duplicates) are read by
    pyarrow, when it is installed, without a Python object per row. Any file the fast reader
    cannot take whole, and any check that fails, sends everything through `load_ratings`, so
    every message is the one it gives (file:line and what to change)."""
    from localpeer.score.columns import fast_columns

    rating_paths, transcript_paths = _collect(paths, ratings_files)
    parts = [fast_columns(path, scale) for path in rating_paths]
    if parts and all(part is not None for part in parts) and sum(map(len, parts)):
        _index_transcripts(transcript_paths)  # its checks, as load_ratings makes them
        from localpeer.score.columns import concat_checked

        columns = concat_checked(parts)
        if columns is not None:
            log.info("%d ratings from %d files", len(columns), len(rating_paths))
            return columns
    _hint_fast_reader(rating_paths)
    ratings = load_ratings(paths, scale, ratings_files)
    return rating_columns_of(ratings)


SLOW_READ_BYTES = 20_000_000  # about 600k ratings: where the row-by-row reader takes seconds


def _hint_fast_reader(rating_paths: Sequence[Path]) -> None:
    from localpeer.deps import available

    size = sum(p.stat().st_size for p in rating_paths if p.is_file())
    if size > SLOW_READ_BYTES and not available("pyarrow"):
        log.warning("reading %.0f MB of ratings row by row; pip install pyarrow reads plain "
                    "files whole, several times faster", size / 1e6)


def rating_columns_of(ratings: Sequence[Rating]) -> RatingColumns:
    import numpy as np

    return RatingColumns(*(Labels.of([getattr(r, key) for r in ratings])
                           for key in ("model", "item", "judge", "dimension")),
                         np.fromiter((r.score for r in ratings), np.int64, len(ratings)))


def _check_dimensions(ratings: list[Rating]) -> None:
    """Dimensions are free strings, but ratings that use the rubric's letters (A, T, E, C)
    must use only them: localpeer defines that a stray name beside them is a typo (it would
    be fitted as a dimension of its own, from a handful of ratings)."""
    from localpeer.dimensions import DIMS, describe

    used = {r.dimension for r in ratings}
    stray = sorted(used - set(DIMS))
    if not stray or not used & set(DIMS):
        return
    first = next(r for r in ratings if r.dimension in stray)
    count = sum(r.dimension in stray for r in ratings)
    raise InputError(f"unknown dimension {first.dimension!r} ({count} rating(s) with "
                     f"{', '.join(map(repr, stray))}) beside the rubric's {describe()}; fix the "
                     "typo, or give such ratings a file of their own", *_where(first.source))


def _collect(paths: Sequence[Path], ratings_files: Sequence[Path]) -> tuple[list, list]:
    """(ratings files, transcripts files) named by the paths, each file once, in order."""
    rating_paths: list[Path] = []
    transcript_paths: list[Path] = []
    for path in map(Path, paths):
        if not path.exists():
            raise InputError("no such file or folder; pass a transcripts folder or a ratings file",
                             path)
        ratings, transcripts = _split_folder(path) if path.is_dir() else _classify_file(path)
        rating_paths += ratings
        transcript_paths += transcripts
    for path in map(Path, ratings_files):
        if not path.is_file():
            raise InputError("no such ratings file; check the --ratings path", path)
        rating_paths.append(path)
    # The same file reached twice (DIR and --ratings DIR/ratings/x.csv) is read once.
    return list(dict.fromkeys(rating_paths)), list(dict.fromkeys(transcript_paths))


def _split_folder(folder: Path) -> tuple[list[Path], list[Path]]:
    """D/ratings/*.csv and *.jsonl, and every other *.jsonl under D (transcripts)."""
    ratings_folder = folder / "ratings"
    ratings = sorted(p for p in ratings_folder.glob("*")
                     if p.is_file() and p.suffix.lower() in (".csv", ".jsonl"))
    transcripts = sorted(p for p in folder.rglob("*.jsonl")
                         if p.is_file() and not p.is_relative_to(ratings_folder))
    return ratings, transcripts


def _classify_file(path: Path) -> tuple[list[Path], list[Path]]:
    """A .csv holds ratings; a .jsonl holds ratings if its first object has a "score"."""
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".jsonl"):
        raise InputError("expected a folder, a ratings .csv or a .jsonl file", path)
    if suffix == ".csv" or "score" in next(jsonl_records(path), (0, {}))[1]:
        return [path], []
    return [], [path]


def _where(source: str) -> tuple[str, int]:
    path, _, line = source.rpartition(":")
    return path, int(line)


def _index_transcripts(paths: list[Path]) -> dict[str, Transcript]:
    by_id: dict[str, Transcript] = {}
    for path in paths:
        for transcript in read_transcripts(path):
            first = by_id.setdefault(transcript.id, transcript)
            if first is not transcript:
                raise InputError(f"duplicate transcript id {transcript.id!r}, first at "
                                 f"{first.source}; give each conversation its own id",
                                 *_where(transcript.source))
    return by_id


def _fill_from_transcript(rating: Rating, transcripts: dict[str, Transcript]) -> Rating:
    transcript = transcripts.get(rating.transcript_id or "")
    if transcript is None:
        raise InputError(f"transcript_id {rating.transcript_id!r} is unknown and the rating has no "
                         "model/item; pass the transcripts folder that holds it, or fill in "
                         "model and item", *_where(rating.source))
    return replace(rating, model=rating.model or transcript.model,
                   item=rating.item or transcript.item)


def _check_duplicates(ratings: list[Rating]) -> None:
    seen: dict[tuple, Rating] = {}
    for rating in ratings:
        # A key by transcript has 3 fields and one by model and item 4, so the two never collide.
        key = ((rating.transcript_id, rating.judge, rating.dimension) if rating.transcript_id
               else (rating.model, rating.item, rating.judge, rating.dimension))
        first = seen.setdefault(key, rating)
        if first is not rating:
            names = ("transcript_id", "judge", "dimension") if rating.transcript_id else (
                "model", "item", "judge", "dimension")
            same = ", ".join(f"{n}={v}" for n, v in zip(names, key, strict=True))
            raise InputError(f"duplicate rating: same {same} as {first.source}; remove one or "
                             "give each a transcript_id", *_where(rating.source))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace `path` with `data` all at once: readers see the old file or the new, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    tmp = tempfile.NamedTemporaryFile(delete=False, dir=path.parent,
                                      prefix=f".{path.name}.", suffix=".tmp")
    try:
        with tmp:
            tmp.write(data)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.chmod(tmp.name, mode)  # NamedTemporaryFile creates 0600
        os.replace(tmp.name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp.name)
        raise


def sha256_file(path: Path, block: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in 4 MiB blocks (hashlib releases the GIL on each block, so
    a hashing thread runs beside C work such as llama.cpp's quantizer)."""
    import hashlib

    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(block), b""):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write_text(path: Path, text: str) -> None:
    """`atomic_write_bytes` of `text` encoded as UTF-8 (newlines written as given)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def _complete_line(tail: bytes) -> bool:
    """Whether the bytes after a JSONL file's last newline are a whole JSON object: a record
    written completely but for its newline, not a write cut short."""
    try:
        return isinstance(json.loads(tail.decode("utf-8")), dict)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False


def cut_torn_tail(path: Path) -> bool:
    """The one torn-tail rule for append-only JSONL files, applied before appending: a last
    line without its newline is kept (and the newline added) when it is a whole JSON object,
    and cut off when it is not (a crash mid-write); True if something was cut."""
    path = Path(path)
    if not path.exists():
        return False
    data = path.read_bytes()
    cut = data.rfind(b"\n") + 1
    if cut == len(data):
        return False
    complete = _complete_line(data[cut:])
    with path.open("r+b") as f:
        if complete:
            f.seek(0, os.SEEK_END)
            f.write(b"\n")
        else:
            log.warning("%s: removing an incomplete last line left by an interrupted run", path)
            f.truncate(cut)
        f.flush()
        os.fsync(f.fileno())
    return not complete


def _ends_mid_line(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() == 0:
                return False
            f.seek(-1, os.SEEK_END)
            return f.read(1) != b"\n"
    except FileNotFoundError:
        return False


def append_jsonl(path: Path, obj: dict) -> None:
    """Append `obj` as one JSON line and fsync, so a crash loses at most the line being written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if _ends_mid_line(path):  # a torn or unterminated tail: the one rule, before appending
        cut_torn_tail(path)
    line = json.dumps(obj, ensure_ascii=False) + "\n"
    with path.open("a", encoding="utf-8", newline="\n") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())
