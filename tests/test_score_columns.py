"""The fast column reader of `localpeer score` gives exactly what the checked row-by-row
reader gives: the same coded ratings, or the same error naming the file and line."""

import json

import numpy as np
import pytest

from localpeer.errors import InputError
from localpeer.formats import Scale, load_rating_columns, load_ratings, rating_columns_of

HEADER = "model,item,judge,dimension,score\n"
ROW = dict(model="a", item="p", judge="j", dimension="A", score=3)
CASES = {
    "plain.csv": HEADER + "a,p1,j,A,3\nb,p1,j,A,4\n",
    "spaces.csv": HEADER + " a ,p1,j ,A, 3\nb,p1,j,A,4\n\n",
    "transcript_ids.csv": ("model,item,judge,dimension,score,transcript_id\n"
                           "a,p1,j,A,3,t1\na,p1,j,A,4,t2\n"),
    "duplicate.csv": HEADER + "a,p1,j,A,3\na,p1,j,A,4\n",
    "stray_dimension.csv": HEADER + "a,p1,j,A,3\na,p1,j,X,4\n",
    "out_of_scale.csv": HEADER + "a,p1,j,A,9\n",
    "short_row.csv": HEADER + "a,p1,j,A\n",
    "quotes.csv": HEADER + '"a,b",p1,j,A,3\n"x""y",p2,j,A,2\n',
    "leading_zero.csv": HEADER + "a,p1,j,A,04\n",
    "plain.jsonl": json.dumps(ROW) + "\n" + json.dumps(dict(ROW, model=" b", score=2,
                                                           transcript_id=None)) + "\n",
    "float_score.jsonl": json.dumps(dict(ROW, score=3.0)) + "\n",
    "duplicate.jsonl": (json.dumps(ROW) + "\n") * 2,
    "torn.jsonl": json.dumps(ROW) + "\n" + '{"mod',
    "blank_lines.jsonl": json.dumps(ROW) + "\n\n  \n",
    "repeated_key.jsonl": ('{"model": "a", "model": "b", "item": "p", "judge": "j", '
                           '"dimension": "A", "score": 3}\n'),
}


def _result(read):
    try:
        return "ok", read()
    except InputError as e:
        return "error", str(e)


@pytest.mark.parametrize("name", sorted(CASES))
def test_fast_columns_equal_the_checked_reader(tmp_path, name):
    pytest.importorskip("pyarrow")
    path = tmp_path / name
    path.write_text(CASES[name])
    scale = Scale(1, 5)
    fast = _result(lambda: load_rating_columns([path], scale))
    slow = _result(lambda: rating_columns_of(load_ratings([path], scale)))
    assert fast[0] == slow[0], (fast, slow)
    if fast[0] == "error":
        assert fast[1] == slow[1]
        return
    for facet in ("model", "item", "judge", "dimension"):
        a, b = getattr(fast[1], facet), getattr(slow[1], facet)
        assert a.names == b.names and np.array_equal(a.codes, b.codes), facet
    assert np.array_equal(fast[1].score, slow[1].score)


def test_a_large_file_read_without_pyarrow_names_the_fix(tmp_path, monkeypatch, caplog):
    import localpeer.deps
    import localpeer.formats
    import localpeer.score.columns

    path = tmp_path / "ratings.csv"
    path.write_text(CASES["plain.csv"])
    real = localpeer.deps.available
    for module in (localpeer.deps, localpeer.score.columns):  # as if pyarrow were not there
        monkeypatch.setattr(module, "available", lambda m: m != "pyarrow" and real(m))
    monkeypatch.setattr(localpeer.formats, "SLOW_READ_BYTES", path.stat().st_size - 1)
    with caplog.at_level("WARNING"):
        columns = load_rating_columns([path], Scale.parse("1-5"))
    assert len(columns) == 2  # read the slow way, same ratings
    assert "pip install pyarrow" in caplog.text
    caplog.clear()
    monkeypatch.setattr(localpeer.formats, "SLOW_READ_BYTES", path.stat().st_size)
    with caplog.at_level("WARNING"):
        load_rating_columns([path], Scale.parse("1-5"))
    assert "pyarrow" not in caplog.text  # small files: no hint
