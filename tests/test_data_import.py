"""`localpeer data import` from the public release's layouts: JSONL, Parquet, CSV, datasets."""

import csv
import json
import sys

import pytest

from localpeer.cli import main
from localpeer.data.importer import import_records
from localpeer.data.personaknob import read_records, record_pairs

pa = pytest.importorskip("pyarrow")
import pyarrow.parquet as pq  # noqa: E402

COLUMNS = ["mask", "seed_scene", "context", "trigger", "prompt", "golden", "reject_A",
           "reject_T", "reject_E", "reject_C"]


def release_rows():
    """Rows exactly as the public release lays them out: no id, no split, one extra column."""
    rows = []
    for k, mask in enumerate([["A"], ["T", "E"], ["A", "T", "E", "C"], ["C"], ["E", "C"]]):
        row = {"mask": mask, "seed_scene": f"seed {k}", "context": f"context {k}",
               "trigger": f"trigger {k}", "prompt": f"user message number {k}",
               "golden": f"golden reply {k}", "source_model": "gpt-x"}
        for d in "ATEC":
            row[f"reject_{d}"] = f"reject {d} of {k}" if d in mask else None
        rows.append(row)
    return rows


def pairs_of(records):
    return sorted((p.prompt, p.chosen, p.rejected, p.dim) for r in records
                  for p in record_pairs(r))


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_jsonl_and_parquet_round_trip_to_identical_pairs(tmp_path):
    rows = release_rows()
    src = tmp_path / "release"
    src.mkdir()
    write_jsonl(src / "train.jsonl", rows[:3])
    write_jsonl(src / "test.jsonl", rows[3:])
    pq.write_table(pa.Table.from_pylist(rows[:3]), tmp_path / "train.parquet")
    expected = sorted((r["prompt"], r["golden"], r[f"reject_{d}"], d) for r in rows
                      for d in r["mask"])
    assert main(["data", "import", str(src), "--out", str(tmp_path / "out")]) == 0
    imported = read_records(tmp_path / "out" / "train.jsonl") + read_records(
        tmp_path / "out" / "test.jsonl")
    assert pairs_of(imported) == expected
    assert {r.split for r in imported} == {"train", "test"}
    assert all(r.meta == {"source_model": "gpt-x"} for r in imported)
    from_parquet = import_records(tmp_path / "train.parquet")
    assert pairs_of(from_parquet) == pairs_of([r for r in imported if r.split == "train"])
    # ids come from content, so importing again gives the same ids
    assert [r.id for r in import_records(src)] == [r.id for r in import_records(src)]
    # and the written records import again unchanged (our own format is a release layout too)
    again = import_records(tmp_path / "out")
    assert {r.id: r.to_json() for r in again} == {r.id: r.to_json() for r in imported}


def test_csv_with_string_masks_and_empty_cells(tmp_path):
    rows = release_rows()
    path = tmp_path / "personaknob.csv"
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS + ["source_model"])
        w.writeheader()
        for r in rows:
            w.writerow(r | {"mask": json.dumps(r["mask"])} | {
                f"reject_{d}": r[f"reject_{d}"] or "" for d in "ATEC"})
    records = import_records(path)
    assert pairs_of(records) == pairs_of(import_records(_jsonl(tmp_path, rows)))


def _jsonl(tmp_path, rows):
    path = tmp_path / "x.jsonl"
    write_jsonl(path, rows)
    return path


def _arrow_datasets_folder(folder, rows):
    """A `save_to_disk` DatasetDict layout: train/ and test/ folders of Arrow stream files."""
    for split, part in (("train", rows[:4]), ("test", rows[4:])):
        (folder / split).mkdir(parents=True)
        table = pa.Table.from_pylist(part)
        with pa.OSFile(str(folder / split / "data-00000-of-00001.arrow"), "wb") as sink:
            with pa.ipc.new_stream(sink, table.schema) as writer:
                writer.write_table(table)
    (folder / "dataset_dict.json").write_text('{"splits": ["train", "test"]}')


def test_datasets_folder_read_with_pyarrow_when_datasets_is_absent(tmp_path, monkeypatch):
    rows = release_rows()
    folder = tmp_path / "pk_dataset"
    _arrow_datasets_folder(folder, rows)
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    records = import_records(folder)
    assert [r.split for r in records] == ["test"] + ["train"] * 4
    assert pairs_of(records) == pairs_of(import_records(_jsonl(tmp_path, rows)))


def test_datasets_folder_saved_by_datasets(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = release_rows()
    folder = tmp_path / "saved"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[:4]),
                          "test": datasets.Dataset.from_list(rows[4:])}).save_to_disk(str(folder))
    records = import_records(folder)
    assert sorted(r.split for r in records) == ["test"] + ["train"] * 4
    assert pairs_of(records) == pairs_of(import_records(_jsonl(tmp_path, rows)))


def test_missing_required_column_is_a_clear_error(tmp_path, capsys):
    rows = [{k: v for k, v in r.items() if k != "golden"} for r in release_rows()]
    write_jsonl(tmp_path / "train.jsonl", rows)
    assert main(["data", "import", str(tmp_path / "train.jsonl"), "--out",
                 str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "train.jsonl:1: missing required column(s) golden" in err
    assert not (tmp_path / "o").exists()
