"""`localpeer data import`: the public PersonaKnob release, as users have it, into our records.

Sources: JSONL, CSV, Parquet (needs pyarrow), or a local `datasets` folder (from
`save_to_disk`; read with `datasets` when installed, else its Arrow files with pyarrow).
Columns outside METHOD.md §1 are kept under `meta`; a missing required column is an error
naming the file. A record without an id gets a stable one from its content; a record without
a split gets the split of its file name (train/test) or else the hashed split of its id.

    localpeer data import personaknob/ --out data/personaknob
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path

from localpeer.data.personaknob import COLUMNS, DIMS, SPLITS, Record, hashed_split, record_from_json
from localpeer.deps import require
from localpeer.errors import InputError
from localpeer.formats import jsonl_records

log = logging.getLogger(__name__)

REQUIRED = ("mask", "seed_scene", "context", "trigger", "prompt", "golden")
KNOWN = (*COLUMNS, "id", "split", "responses", "meta")
SOURCE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


def _csv_rows(path: Path) -> Iterator[tuple[int, dict]]:
    # utf-8-sig: a byte-order mark (Excel writes one) is not part of the first column's name
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        try:
            for row in reader:
                # csv has no null: an empty reject cell is an inactive dimension
                yield reader.line_num, {k: (v if v != "" else None) for k, v in row.items()}
        except UnicodeDecodeError as e:
            raise InputError(f"not UTF-8 (byte 0x{e.object[e.start]:02x}); the file looks like "
                             "another encoding (e.g. Latin-1 or Windows-1252): save it as UTF-8",
                             path, reader.line_num + 1) from None
        except csv.Error as e:
            raise InputError(f"not valid CSV ({e}); check the quoting", path,
                             reader.line_num) from None


def _table_rows(table) -> Iterator[tuple[int, dict]]:
    yield from enumerate(table.to_pylist(), 1)


def _parquet_rows(path: Path) -> Iterator[tuple[int, dict]]:
    pa = require("pyarrow", why="reading Parquet")
    pq = require("pyarrow.parquet", why="reading Parquet")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise InputError(f"not a readable Parquet file ({e}); a truncated or partly copied "
                         "file? copy it again or export it anew", path) from None
    yield from _table_rows(table)


def _datasets_folder_rows(folder: Path) -> Iterator[tuple[str, Path, int, dict]]:
    """(split name, file, row, record) from a `save_to_disk` folder (Dataset or DatasetDict)."""
    try:
        datasets = require("datasets")
    except InputError as e:  # not installed (or broken): its Arrow files are read directly
        log.debug("%s", e)
        datasets = None
    if datasets is not None:
        loaded = datasets.load_from_disk(str(folder))
        parts = loaded.items() if isinstance(loaded, datasets.DatasetDict) else [(None, loaded)]
        for split, ds in parts:
            for k, row in enumerate(ds, 1):
                yield split, folder / (split or ""), k, row
        return
    pa = require("pyarrow", why="reading a datasets folder without the datasets package")
    for arrow in sorted(folder.rglob("*.arrow")):
        split = arrow.parent.name if arrow.parent != folder else None
        with pa.memory_map(str(arrow)) as source:
            table = pa.ipc.open_stream(source).read_all()
        for k, row in _table_rows(table):
            yield split, arrow, k, row


def _split_from_name(path: Path) -> str | None:
    name = path.stem.lower()
    for split in SPLITS:
        if split in name:
            return split
    return "test" if "eval" in name or "valid" in name else None


def _content_id(row: dict) -> str:
    """A stable id for a record that has none: a hash of its prompt and golden."""
    text = json.dumps([row.get("prompt"), row.get("golden")], ensure_ascii=False)
    return "pk-" + hashlib.sha256(text.encode()).hexdigest()[:12]


def _to_record(row: dict, split: str | None, path: Path, line: int) -> Record:
    missing = [c for c in REQUIRED if c not in row and not (c == "golden" and "responses" in row)]
    if missing:
        raise InputError(f"missing required column(s) {', '.join(missing)}; found "
                         f"{', '.join(sorted(row))}. PersonaKnob records need "
                         f"{', '.join(COLUMNS)}", path, line)
    obj = {k: row.get(k) for k in KNOWN if k in row}
    extra = {k: v for k, v in row.items() if k not in KNOWN}
    given = row.get("meta") or {}
    if not isinstance(given, dict):
        raise InputError(f"meta must be an object {{\"key\": value, ...}}, got "
                         f"{type(given).__name__} {given!r:.40}", path, line)
    meta = dict(given)
    meta.update(extra)
    obj["meta"] = meta
    obj["id"] = str(row["id"]) if row.get("id") not in (None, "") else _content_id(row)
    obj["split"] = row.get("split") or split or hashed_split(obj["id"])
    for d in DIMS:
        obj.setdefault(f"reject_{d}", None)
    return record_from_json(obj, path, line)


def source_rows(src: Path) -> Iterator[tuple[str | None, Path, int, dict]]:
    """(split hint, file, row number, raw row) for every record under `src`."""
    if not src.exists():
        raise InputError("no such file or folder", src)
    if src.is_dir():
        if (src / "dataset_dict.json").exists() or (src / "dataset_info.json").exists():
            yield from _datasets_folder_rows(src)
            return
        files = sorted(p for p in src.rglob("*") if p.suffix.lower() in SOURCE_SUFFIXES)
        if not files:
            raise InputError(f"no {', '.join(SOURCE_SUFFIXES)} files and no datasets folder", src)
    else:
        files = [src]
    for path in files:
        suffix = path.suffix.lower()
        readers = {".jsonl": jsonl_records, ".json": jsonl_records, ".csv": _csv_rows,
                   ".parquet": _parquet_rows}
        if suffix not in readers:
            raise InputError(f"cannot read {suffix} files; use JSONL, CSV, Parquet or a "
                             "datasets folder", path)
        for line, row in readers[suffix](path):
            yield _split_from_name(path), path, line, row


def import_records(src: Path) -> list[Record]:
    """Every record under `src`, validated, with ids and splits assigned."""
    records, first = [], {}
    for split, path, line, row in source_rows(Path(src)):
        record = _to_record(row, split, path, line)
        if record.id in first:
            raise InputError(f"duplicate id {record.id!r} (first at {first[record.id]})",
                             path, line)
        first[record.id] = f"{path}:{line}"
        records.append(record)
    if not records:
        raise InputError("no records found", src)
    return records
