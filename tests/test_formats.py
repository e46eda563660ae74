"""Readers, checks and writers of localpeer.formats: python -m pytest tests/test_formats.py -q"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from localpeer import formats
from localpeer.errors import InputError
from localpeer.formats import (
    Rating,
    Scale,
    append_jsonl,
    atomic_write_text,
    load_ratings,
    read_ratings,
    read_transcripts,
)

SCALE = Scale(1, 5)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def transcript_line(id: str, model: str, item: str) -> str:
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    return json.dumps({"id": id, "model": model, "item": item, "messages": messages,
                       "meta": {"sampler": {"seed": 1}}})


def test_scale_parse_accepts_dash_and_dots():
    assert Scale.parse("1-5") == Scale(1, 5)
    assert Scale.parse("0-10") == Scale(0, 10)
    assert Scale.parse(" 1..5 ") == Scale(1, 5)
    assert Scale.parse("1-5").n_categories == 5
    assert Scale.parse("0-10").n_categories == 11


@pytest.mark.parametrize("text", ["5-1", "3-3", "five", "1-", "1:5", ""])
def test_scale_parse_rejects_with_a_hint(text):
    with pytest.raises(InputError, match="MIN-MAX") as info:
        Scale.parse(text)
    assert info.value.path is None


def test_csv_ratings_round_trip(tmp_path):
    path = write(tmp_path / "r.csv",
                 "model,item,judge,dimension,score,rationale,extra\n"
                 'base,pk-1,j1,A,4,"kind, and ""direct""",x\n'
                 "\n"
                 "tuned, pk-2 ,j2,T,5.0,,y\n")
    ratings = read_ratings(path, SCALE)
    assert ratings == [
        Rating("base", "pk-1", "j1", "A", 4, None, 'kind, and "direct"', f"{path}:2"),
        Rating("tuned", "pk-2", "j2", "T", 5, None, None, f"{path}:4"),
    ]
    assert all(type(r.score) is int for r in ratings)


def test_csv_row_numbers_count_physical_lines(tmp_path):
    path = write(tmp_path / "r.csv", 'model,item,judge,dimension,score,rationale\n'
                                     'm,i,j,A,3,"two\nlines"\n'
                                     'm,i2,j,A,9,\n')
    with pytest.raises(InputError) as info:
        read_ratings(path, SCALE)
    assert info.value.line == 4


def test_csv_fast_path_matches_the_reference_path(tmp_path):
    """Plainly valid rows take a fast path; it must give what _make_rating gives for every row."""
    header = ["transcript_id", "score", "judge", "model", "item", "dimension", "rationale", "x"]
    rows = [["", "3", "j1", "m", "i", "A", "", "1"],
            ["t-1", "5", " j2 ", "", "", "T", "why, not", ""],
            ["t-2", "4.0", "j1", "m", " i ", "E", "", ""],  # "4.0" takes the reference path
            ["", " 1", "j3", "m2", "i", "C"]]  # short row and padded score: reference path
    text = ",".join(header) + "\n" + "".join(
        ",".join(f'"{v}"' if "," in v else v for v in row) + "\n" for row in rows)
    path = write(tmp_path / "r.csv", text)
    expected = [formats._make_rating(dict(zip(header, row, strict=False)), SCALE, path, line)
                for line, row in enumerate(rows, start=2)]
    assert read_ratings(path, SCALE) == expected
    assert [r.score for r in expected] == [3, 5, 4, 1]
    assert expected[1].rationale == "why, not"


def test_csv_without_optional_columns(tmp_path):
    path = write(tmp_path / "r.csv", "judge,score,dimension,item,model\nj,2,A,i,m\n")
    [rating] = read_ratings(path, SCALE)
    assert (rating.model, rating.item, rating.score) == ("m", "i", 2)
    assert (rating.transcript_id, rating.rationale) == (None, None)


def test_jsonl_ratings_round_trip(tmp_path):
    rows = [{"model": "base", "item": "pk-1", "judge": "j1", "dimension": "A", "score": 2,
             "transcript_id": "t-1", "rationale": "terse"},
            {"transcript_id": "t-2", "judge": "j1", "dimension": "E", "score": "3"},
            {"model": "m", "item": 7, "judge": "j1", "dimension": "C", "score": 1.0}]
    path = write(tmp_path / "r.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n\n")
    ratings = read_ratings(path, SCALE)
    assert ratings[0] == Rating("base", "pk-1", "j1", "A", 2, "t-1", "terse", f"{path}:1")
    assert (ratings[1].model, ratings[1].item, ratings[1].score) == ("", "", 3)
    assert (ratings[2].item, ratings[2].score) == ("7", 1)


def test_folder_fills_model_and_item_from_transcripts(tmp_path):
    write(tmp_path / "chat.jsonl", transcript_line("t-1", "base", "pk-1") + "\n"
          + transcript_line("t-2", "tuned", "pk-1") + "\n")
    write(tmp_path / "ratings" / "r.csv", "transcript_id,judge,dimension,score\n"
                                          "t-1,j1,A,2\n"
                                          "t-2,j1,A,5\n")
    ratings = load_ratings([tmp_path], SCALE)
    assert [(r.model, r.item, r.score) for r in ratings] == [("base", "pk-1", 2),
                                                             ("tuned", "pk-1", 5)]


def test_read_transcripts(tmp_path):
    path = write(tmp_path / "t.jsonl", "\n" + transcript_line("t-9", "base", "pk-3") + "\n")
    [transcript] = read_transcripts(path)
    assert (transcript.id, transcript.model, transcript.item) == ("t-9", "base", "pk-3")
    assert transcript.messages[1] == {"role": "assistant", "content": "hello"}
    assert transcript.meta == {"sampler": {"seed": 1}}
    assert transcript.source == f"{path}:2"


def test_files_are_sorted_into_ratings_and_transcripts(tmp_path):
    chat = write(tmp_path / "a.jsonl", transcript_line("t-1", "base", "pk-1") + "\n")
    rated = write(tmp_path / "b.jsonl", '{"transcript_id": "t-1", "judge": "j", '
                                        '"dimension": "A", "score": 3}\n')
    extra = write(tmp_path / "c.csv", "model,item,judge,dimension,score\nm,i,j,A,1\n")
    ratings = load_ratings([chat, rated], SCALE, ratings_files=[extra])
    assert [(r.model, r.item, r.score) for r in ratings] == [("base", "pk-1", 3), ("m", "i", 1)]


def test_same_file_twice_is_read_once(tmp_path):
    path = write(tmp_path / "ratings" / "r.csv", "model,item,judge,dimension,score\nm,i,j,A,1\n")
    assert len(load_ratings([tmp_path], SCALE, ratings_files=[path])) == 1


def test_empty_folder(tmp_path):
    with pytest.raises(InputError, match=r"expected DIR/ratings/\*\.csv or \*\.jsonl") as info:
        load_ratings([tmp_path], SCALE)
    assert str(tmp_path) in str(info.value)
    assert "--ratings FILE" in str(info.value)


def test_nonexistent_path(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(InputError, match="no such file or folder") as info:
        load_ratings([missing], SCALE)
    assert info.value.path == str(missing)


def test_malformed_json_line(tmp_path):
    good = '{"model": "m", "item": "i", "judge": "j", "dimension": "A", "score": 3}'
    write(tmp_path / "ratings" / "bad.jsonl", f"{good}\n\n{good[:-1]}\n")
    with pytest.raises(InputError) as info:
        load_ratings([tmp_path], SCALE)
    message = str(info.value)
    assert "bad.jsonl:3:" in message
    assert "not valid JSON" in message


@pytest.mark.parametrize("score", ["0", "6", "-1"])
def test_score_outside_scale(tmp_path, score):
    path = write(tmp_path / "r.csv", f"model,item,judge,dimension,score\nm,i,j,A,{score}\n")
    with pytest.raises(InputError, match="outside the scale 1-5") as info:
        read_ratings(path, SCALE)
    assert f"r.csv:2: score {score}" in str(info.value)
    assert "--scale 0-10" in str(info.value)


def test_wider_scale_accepts_the_same_score(tmp_path):
    path = write(tmp_path / "r.csv", "model,item,judge,dimension,score\nm,i,j,A,9\n")
    assert read_ratings(path, Scale.parse("0-10"))[0].score == 9


@pytest.mark.parametrize("score", ['"3.5"', '"good"', "3.5", "true", "null", "[3]"])
def test_non_integer_score(tmp_path, score):
    line = f'{{"model": "m", "item": "i", "judge": "j", "dimension": "A", "score": {score}}}'
    path = write(tmp_path / "r.jsonl", line + "\n")
    with pytest.raises(InputError, match="score") as info:
        read_ratings(path, SCALE)
    assert info.value.line == 1
    assert "from 1 to 5" in str(info.value)


def test_missing_column(tmp_path):
    path = write(tmp_path / "r.csv", "model,item,rater,dimension,points\nm,i,j,A,3\n")
    with pytest.raises(InputError) as info:
        read_ratings(path, SCALE)
    message = str(info.value)
    assert info.value.line == 1
    assert "missing column(s) judge, score" in message
    assert "found model, item, rater, dimension, points" in message


def test_column_named_twice(tmp_path):
    path = write(tmp_path / "r.csv", "model,item,judge,dimension,score,Score\nm,i,j,A,3,4\n")
    with pytest.raises(InputError, match="column.s. score appear twice") as info:
        read_ratings(path, SCALE)
    assert info.value.line == 1


def test_missing_key_in_jsonl(tmp_path):
    path = write(tmp_path / "r.jsonl",
                 '{"model": "m", "item": "i", "judge": "j", "dimension": "A", "score": 3}\n'
                 '{"model": "m", "item": "i", "dimension": "A", "score": 3}\n')
    with pytest.raises(InputError, match="judge is missing") as info:
        read_ratings(path, SCALE)
    assert info.value.line == 2


def test_model_and_item_needed_without_transcript_id(tmp_path):
    path = write(tmp_path / "r.csv", "model,item,judge,dimension,score\n,i,j,A,3\n")
    with pytest.raises(InputError, match="model missing or empty and no transcript_id"):
        read_ratings(path, SCALE)


def test_empty_judge(tmp_path):
    path = write(tmp_path / "r.csv", "model,item,judge,dimension,score\nm,i, ,A,3\n")
    with pytest.raises(InputError, match="judge is missing or empty") as info:
        read_ratings(path, SCALE)
    assert info.value.line == 2


def test_duplicate_rating_rows(tmp_path):
    write(tmp_path / "ratings" / "a.csv", "model,item,judge,dimension,score\n"
                                          "m,i,j,A,3\n"
                                          "m,i,j,T,3\n")
    write(tmp_path / "ratings" / "b.csv", "model,item,judge,dimension,score\n"
                                          "m,i2,j,A,3\n"
                                          "m,i,j,T,4\n")
    with pytest.raises(InputError, match="duplicate rating") as info:
        load_ratings([tmp_path], SCALE)
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'ratings' / 'b.csv'}:3:")
    assert f"as {tmp_path / 'ratings' / 'a.csv'}:3" in message
    assert "model=m, item=i, judge=j, dimension=T" in message


def test_duplicates_with_transcript_ids_are_keyed_by_transcript(tmp_path):
    write(tmp_path / "ratings" / "r.csv", "model,item,judge,dimension,score,transcript_id\n"
                                          "m,i,j,A,3,t-1\n"
                                          "m,i,j,A,3,t-2\n")
    assert len(load_ratings([tmp_path], SCALE)) == 2
    write(tmp_path / "ratings" / "s.csv", "model,item,judge,dimension,score,transcript_id\n"
                                          "m,i,j,A,3,t-2\n")
    with pytest.raises(InputError, match="same transcript_id=t-2, judge=j, dimension=A as"):
        load_ratings([tmp_path], SCALE)


def test_duplicate_transcript_ids(tmp_path):
    write(tmp_path / "a.jsonl", transcript_line("t-1", "base", "pk-1") + "\n")
    write(tmp_path / "b.jsonl", transcript_line("t-1", "tuned", "pk-1") + "\n")
    write(tmp_path / "ratings" / "r.csv", "transcript_id,judge,dimension,score\nt-1,j,A,3\n")
    with pytest.raises(InputError, match="duplicate transcript id 't-1'") as info:
        load_ratings([tmp_path], SCALE)
    assert str(tmp_path / "a.jsonl:1") in str(info.value)
    assert info.value.path == str(tmp_path / "b.jsonl")


def test_non_utf8_bytes(tmp_path):
    path = tmp_path / "r.csv"
    path.write_bytes(b"model,item,judge,dimension,score\nm,caf\xe9,j,A,3\n")
    with pytest.raises(InputError, match="not UTF-8.*save the file as UTF-8") as info:
        read_ratings(path, SCALE)
    assert (info.value.path, info.value.line) == (str(path), 2)


def test_utf8_bom_is_accepted(tmp_path):
    path = tmp_path / "r.csv"
    path.write_bytes("model,item,judge,dimension,score\ncafé,i,j,A,3\n".encode("utf-8-sig"))
    assert read_ratings(path, SCALE)[0].model == "café"


def test_unknown_transcript_id(tmp_path):
    path = write(tmp_path / "ratings" / "r.csv", "transcript_id,judge,dimension,score\n"
                                                 "t-404,j,A,3\n")
    with pytest.raises(InputError, match="transcript_id 't-404' is unknown") as info:
        load_ratings([tmp_path], SCALE)
    assert (info.value.path, info.value.line) == (str(path), 2)
    assert "pass the transcripts folder" in str(info.value)


def test_transcript_without_messages(tmp_path):
    path = write(tmp_path / "t.jsonl", transcript_line("t-1", "m", "i") + "\n"
                 + '{"id": "t-2", "model": "m", "item": "i"}\n')
    with pytest.raises(InputError, match="transcript lacks messages") as info:
        read_transcripts(path)
    assert (info.value.path, info.value.line) == (str(path), 2)


def test_ratings_jsonl_in_the_transcripts_folder_is_named(tmp_path):
    write(tmp_path / "ratings" / "r.csv", "model,item,judge,dimension,score\nm,i,j,A,3\n")
    write(tmp_path / "misplaced.jsonl", '{"model": "m", "item": "i", "judge": "j", '
                                        '"dimension": "T", "score": 3}\n')
    with pytest.raises(InputError, match="looks like a rating: put it under DIR/ratings/"):
        load_ratings([tmp_path], SCALE)


def test_unsupported_file_type(tmp_path):
    path = write(tmp_path / "ratings.tsv", "model\titem\n")
    with pytest.raises(InputError, match="expected a folder, a ratings .csv or a .jsonl file"):
        load_ratings([path], SCALE)


def test_atomic_write_text_writes_and_replaces(tmp_path):
    path = tmp_path / "deep" / "out.json"
    atomic_write_text(path, "first\n")
    assert path.stat().st_mode & 0o777 == 0o644  # not the 0600 of a temporary file
    path.chmod(0o640)
    atomic_write_text(path, "second ✓\n")
    assert path.read_text(encoding="utf-8") == "second ✓\n"
    assert path.stat().st_mode & 0o777 == 0o640  # the mode of the file it replaced
    assert os.listdir(path.parent) == ["out.json"]


def test_atomic_write_text_keeps_the_old_file_when_replace_fails(tmp_path, monkeypatch):
    path = tmp_path / "out.txt"
    path.write_text("original", encoding="utf-8")

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(formats.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(path, "new content")
    assert path.read_text(encoding="utf-8") == "original"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_append_jsonl_appends_parseable_lines(tmp_path):
    path = tmp_path / "t" / "chat.jsonl"
    append_jsonl(path, {"id": "t-1", "text": "héllo"})
    append_jsonl(path, {"id": "t-2", "n": [1, 2]})
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == [{"id": "t-1", "text": "héllo"},
                                                    {"id": "t-2", "n": [1, 2]}]
    assert "héllo" in lines[0]  # ensure_ascii=False keeps text readable
