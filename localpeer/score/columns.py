"""The fast reader behind `formats.load_rating_columns`: plain ratings files, whole, by pyarrow.

A file is taken here only if every row is one the row-by-row reader would accept as is
(`formats._csv_rows_to_ratings`' plain rows, or JSONL objects with string fields and integer
scores); anything else returns None and the caller reads everything the slow, checked way, so
results and error messages are the same. Text values are stripped and checked once per
distinct value, not once per row. Without pyarrow every file goes the slow way.

    python -m pytest tests/test_formats.py tests/test_score_cli.py -q
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from localpeer.deps import available, require
from localpeer.formats import _FIELDS, Labels, RatingColumns, Scale, _check_header

log = logging.getLogger(__name__)

_TEXT = ("model", "item", "judge", "dimension", "transcript_id")


@dataclass(frozen=True)
class Part:
    """One file's ratings, and the transcript ids (names "" = none) the duplicate check needs."""

    columns: RatingColumns
    transcript_id: Labels

    def __len__(self) -> int:
        return len(self.columns)


def fast_columns(path: Path, scale: Scale) -> Part | None:
    if not available("pyarrow"):
        return None
    suffix = Path(path).suffix.lower()
    try:
        data = Path(path).read_bytes()
    except OSError:
        return None
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    if not data.isascii():
        try:
            data.decode("utf-8")  # the slow path reports bad bytes at their line
        except UnicodeDecodeError:
            return None
    try:
        if suffix == ".csv":
            return _csv_part(data, scale)
        if suffix == ".jsonl":
            return _jsonl_part(data, scale)
    except Exception as e:  # pyarrow's parse errors: the slow path names the line
        log.debug("%s: fast reader declined (%s)", path, e)
    return None


def _csv_part(data: bytes, scale: Scale) -> Part | None:
    pa, pacsv = require("pyarrow"), require("pyarrow.csv")

    end = data.find(b"\n")
    first = (data if end < 0 else data[:end]).decode("utf-8").rstrip("\r")
    if not first.strip() or '"' in first or "\r" in first:
        return None
    header = next(csv.reader(io.StringIO(first, newline="")))
    try:
        columns = _check_header(header, Path(), 1)
    except Exception:
        return None
    names = [f"c{k}" for k in range(len(columns))]
    wanted = {field: names[columns.index(field)] for field in _FIELDS[:6] if field in columns}
    table = pacsv.read_csv(
        pa.py_buffer(data),
        read_options=pacsv.ReadOptions(column_names=names, skip_rows=1),
        parse_options=pacsv.ParseOptions(newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(
            column_types={n: pa.string() for n in names}, include_columns=list(wanted.values()),
        ),
    )
    labels = {field: _encode(table[col]) for field, col in wanted.items()}
    scores = labels.pop("score")
    by_text = {str(k): k for k in range(scale.min, scale.max + 1)}
    if any(name not in by_text for name in scores.names):  # " 4", "4.0", "", "9": slow path
        return None
    values = np.array([by_text[name] for name in scores.names], np.int64)
    return _part(labels, values[scores.codes], table.num_rows)


def _jsonl_part(data: bytes, scale: Scale) -> Part | None:
    pa, pajson = require("pyarrow"), require("pyarrow.json")

    if not data.endswith(b"\n"):  # a torn tail is the slow path's to judge
        return None
    table = pajson.read_json(pa.py_buffer(data),
                             read_options=pajson.ReadOptions(block_size=1 << 24))
    labels = {}
    for field in _TEXT:
        if field not in table.column_names:
            continue
        column = table[field]
        if column.type == pa.null():  # every value null: as if the key were left out
            continue
        if column.type != pa.string() or (field not in ("model", "item", "transcript_id")
                                          and column.null_count):
            return None
        labels[field] = _encode(column.fill_null(""))
    if "score" not in table.column_names or table["score"].type != pa.int64():
        return None
    score = table["score"]
    if score.null_count:
        return None
    values = _numbers(score.combine_chunks())
    if values.size and (values.min() < scale.min or values.max() > scale.max):
        return None
    return _part(labels, values.astype(np.int64), table.num_rows)


def _encode(column) -> Labels:
    """A pyarrow string column as Labels of its stripped values (first-seen order)."""
    encoded = column.combine_chunks().dictionary_encode() if column.num_chunks != 1 \
        else column.chunk(0).dictionary_encode()
    raw = encoded.dictionary.to_pylist()
    index: dict[str, int] = {}
    remap = np.array([index.setdefault(name.strip(), len(index)) for name in raw], np.int64)
    return Labels(tuple(index), remap[_numbers(encoded.indices)])


def _numbers(array) -> np.ndarray:
    """A pyarrow integer array with no nulls as numpy, read from its buffer: pyarrow's own
    to_numpy imports pandas when it is installed, a tenth of a second of the whole command."""
    if array.null_count:
        raise ValueError("nulls")  # the caller's fast reader declines; the slow path judges
    dtype = np.dtype(str(array.type))  # int8 .. int64: the same names in both libraries
    return np.frombuffer(array.buffers()[1], dtype=dtype, count=len(array),
                         offset=array.offset * dtype.itemsize)


def _part(labels: dict[str, Labels], scores: np.ndarray, n: int) -> Part | None:
    """The part, or None where a row is not plain (an empty judge or dimension, a rating that
    needs its transcript for model or item)."""
    empty = Labels(("",), np.zeros(n, np.int64))
    model, item, judge, dimension = (labels.get(k, empty) for k in _TEXT[:4])
    tid = labels.get("transcript_id", empty)
    if "" in judge.names or "" in dimension.names:
        return None
    gaps = _is_empty(model) | _is_empty(item)
    if gaps is not None and gaps.any():
        return None  # filled from transcripts (or refused) by the slow path
    return Part(RatingColumns(model, item, judge, dimension, scores), tid)


def _is_empty(labels: Labels):
    if "" not in labels.names:
        return np.zeros(len(labels), bool)
    return labels.codes == labels.names.index("")


def _merge(parts: list[Labels]) -> Labels:
    if len(parts) == 1:
        return parts[0]
    index: dict[str, int] = {}
    codes = [np.array([index.setdefault(n, len(index)) for n in p.names], np.int64)[p.codes]
             for p in parts]
    return Labels(tuple(index), np.concatenate(codes))


def _has_duplicates(keys: list[np.ndarray], sizes: list[int]) -> bool:
    """Whether two rows share every key column (codes of columns of the given sizes)."""
    if not keys or keys[0].size < 2:
        return False
    key = keys[0].astype(np.int64)
    for codes, size in zip(keys[1:], sizes[1:]):
        if key.max(initial=0) >= (1 << 62) // max(size, 1):
            key = np.unique(key, sorted=True, return_inverse=True)[1].astype(np.int64)
        key = key * size + codes
    n_keys = int(np.prod(np.array(sizes, dtype=float)))
    if n_keys <= 8 * key.size:  # a count per possible key is cheaper than sorting
        return bool(np.bincount(key, minlength=1).max() > 1)
    key.sort()  # numpy's hashed np.unique is several times slower on 1M int64
    return bool((key[1:] == key[:-1]).any())


def concat_checked(parts: list[Part]) -> RatingColumns | None:
    """All parts as one, or None if `formats._check_duplicates` or `_check_dimensions` would
    object (the slow path then raises their message)."""
    from localpeer.dimensions import DIMS

    model, item, judge, dimension = (_merge([getattr(p.columns, k) for p in parts])
                                     for k in ("model", "item", "judge", "dimension"))
    tid = _merge([p.transcript_id for p in parts])
    score = np.concatenate([p.columns.score for p in parts])
    by_tid = ~_is_empty(tid)
    sizes = [len(model.names), len(item.names), len(judge.names), len(dimension.names)]
    if _has_duplicates([c.codes[~by_tid] for c in (model, item, judge, dimension)], sizes):
        return None
    if _has_duplicates([c.codes[by_tid] for c in (tid, judge, dimension)],
                       [len(tid.names), *sizes[2:]]):
        return None
    used = set(dimension.names)
    if used - set(DIMS) and used & set(DIMS):
        return None
    return RatingColumns(model, item, judge, dimension, score)
