"""The fault and bad-input suite (issue 14): each case asserts the exit code, a message that
names the file or key, no traceback, and the files afterwards (nothing lost, nothing
half-written, nothing stale under an output name)."""

import json
import logging

import pytest

from localpeer.cli import main
from localpeer.formats import append_jsonl, cut_torn_tail, jsonl_records, read_transcripts

# ---- 1. one torn-tail rule for every appended JSONL file ------------------------------------


def _lines(path):
    return path.read_text().splitlines()


def test_a_complete_last_record_without_newline_is_kept(tmp_path, caplog):
    path = tmp_path / "out.jsonl"
    path.write_text('{"id": "a"}\n{"id": "b"}')  # complete, only the newline is missing
    with caplog.at_level(logging.WARNING):
        assert cut_torn_tail(path) is False
    assert path.read_text() == '{"id": "a"}\n{"id": "b"}\n' and not caplog.records
    path.write_text('{"id": "a"}\n{"id": "b"}')
    append_jsonl(path, {"id": "c"})  # appending re-terminates the line first
    assert [o["id"] for _, o in jsonl_records(path)] == ["a", "b", "c"]


def test_a_torn_last_line_is_cut_before_appending_and_skipped_when_read(tmp_path, caplog):
    path = tmp_path / "out.jsonl"
    path.write_text('{"id": "a"}\n{"id": "b", "te')  # a crash mid-write
    with caplog.at_level(logging.WARNING):
        assert [o["id"] for _, o in jsonl_records(path, appended=True)] == ["a"]
    assert "incomplete" in caplog.text
    append_jsonl(path, {"id": "c"})
    assert _lines(path) == ['{"id": "a"}', '{"id": "c"}']
    # an input file (not one localpeer appends to) keeps the strict error, with its line
    path.write_text('{"id": "a"}\n{"id": "b", "te')
    with pytest.raises(Exception, match=r"out.jsonl:2: not valid JSON"):
        list(jsonl_records(path))


def _rating_rows(n_items=12):
    rows = []
    for m, shift in (("base", 0), ("peer", 1)):
        for i in range(n_items):
            for j in ("j1", "j2"):
                rows.append({"model": m, "item": f"i{i}", "judge": j, "dimension": "A",
                             "score": 1 + (i + shift + (j == "j2")) % 5})
    return rows


def test_score_reads_past_a_torn_ratings_tail(tmp_path, capsys):
    folder = tmp_path / "t" / "ratings"
    folder.mkdir(parents=True)
    path = folder / "j.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _rating_rows()) + '{"model": "ba')
    assert main(["score", str(tmp_path / "t"), "--json", str(tmp_path / "s.json"),
                 "--quiet"]) == 0
    assert json.loads((tmp_path / "s.json").read_text())["dimensions"]["A"]["n_ratings"] == 48
    assert path.read_text().endswith('{"model": "ba')  # reading changes nothing


def test_transcripts_and_metrics_with_torn_tails_still_read(tmp_path, capsys):
    t = tmp_path / "chat.jsonl"
    line = {"id": "c1", "model": "m", "item": "x",
            "messages": [{"role": "user", "content": "hi"}], "meta": {}}
    t.write_text(json.dumps(line) + "\n" + json.dumps(line)[:30])
    assert [x.id for x in read_transcripts(t)] == ["c1"]
    run = tmp_path / "run"
    run.mkdir()
    step = {"step": 1, "loss": 0.6, "lr": 1e-4, "tokens_per_s": 1.0, "peak_mem_mb": 1.0,
            "dims": {"A": {"loss": 0.6, "loss_ema": 0.6, "margin": 0.0, "accuracy": 0.5,
                           "weight": 1.0, "pairs": 2}}, "lambdas": {"A": 0.0}}
    (run / "metrics.jsonl").write_text(json.dumps(step) + "\n" + json.dumps(step)[:40])
    assert main(["report", str(run)]) == 0
    assert "DPO loss" in capsys.readouterr().out


# ---- 2. CSV encodings; 7. data import's bad input --------------------------------------------

def _release_csv(path, encoding="utf-8", bom=False, n=20):
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["id", "mask", "seed_scene", "context", "trigger", "prompt", "golden", "reject_A",
                "reject_T", "reject_E", "reject_C", "split"])
    for k in range(n):
        w.writerow([f"r{k:02d}", "A", "scène", "c", "t", f"prompt {k}", f"golden {k}",
                    f"reject {k}", "", "", "", "train"])
    path.write_bytes(("\ufeff" if bom else "").encode(encoding) + buf.getvalue().encode(encoding))


def _no_traceback(err):
    assert "Traceback" not in err


def test_a_csv_with_a_bom_keeps_its_id_column(tmp_path, capsys):
    src = tmp_path / "release.csv"
    _release_csv(src, bom=True)
    assert main(["data", "import", str(src), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    rows = [json.loads(x) for x in (tmp_path / "out" / "train.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [f"r{k:02d}" for k in range(20)]
    assert all("\ufeffid" not in r.get("meta", {}) for r in rows)
    assert not (tmp_path / "out" / "test.jsonl").exists()  # the split column is kept: 20/0


def test_a_latin1_csv_names_the_encoding(tmp_path, capsys):
    src = tmp_path / "release.csv"
    _release_csv(src, encoding="latin-1")
    assert main(["data", "import", str(src), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "release.csv" in err and "not UTF-8" in err and "Latin-1" in err
    _no_traceback(err)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("meta", ["a string", ["a", "list"]])
def test_meta_that_is_not_an_object_is_refused(tmp_path, capsys, meta):
    src = tmp_path / "r.jsonl"
    row = {"id": "x", "mask": ["A"], "seed_scene": "s", "context": "c", "trigger": "t",
           "prompt": "p", "golden": "g", "reject_A": "r", "meta": meta}
    src.write_text(json.dumps(row) + "\n")
    assert main(["data", "import", str(src), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "r.jsonl:1" in err and "meta must be an object" in err
    _no_traceback(err)


def test_a_truncated_parquet_is_a_clear_error(tmp_path, capsys):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    src = tmp_path / "r.parquet"
    pq.write_table(pa.Table.from_pylist([{"id": "x", "prompt": "p" * 1000}]), src)
    src.write_bytes(src.read_bytes()[:200])
    assert main(["data", "import", str(src), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "r.parquet" in err and "not a readable Parquet file" in err
    _no_traceback(err)


# ---- 5. outputs that would overwrite an input or sit stale beside new files -------------------

def test_reimport_leaves_no_stale_split_and_never_overwrites_its_source(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "test.jsonl").write_text('{"old": true}\n')  # from an earlier import
    src = tmp_path / "release.csv"
    _release_csv(src)
    assert main(["data", "import", str(src), "--out", str(out), "--quiet"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["train.jsonl"]
    before = (out / "train.jsonl").read_bytes()
    assert main(["data", "import", str(out / "train.jsonl"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "would overwrite the source" in err
    _no_traceback(err)
    assert (out / "train.jsonl").read_bytes() == before


# ---- 3, 4. resuming: an incompatible recipe, a run killed before its first checkpoint -------

@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from tiny import make_tiny_model_dir

    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "model")


def _train_recipe(tiny_model, tmp_path):
    import yaml
    from test_train import write_synthetic

    recipe = {"model": str(tiny_model), "out_dir": str(tmp_path / "run"),
              "train": {"steps": 2, "batch_size": 8, "lr": 1e-3, "warmup_steps": 0,
                        "eval_every": 0, "checkpoint_every": 1, "max_length": 64},
              "lora": {"rank": 4},
              "data": {"train": str(write_synthetic(tmp_path / "train.jsonl", per_dim=8)),
                       "test": str(write_synthetic(tmp_path / "test.jsonl", per_dim=2,
                                                   seed=1))}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def test_resume_with_an_incompatible_recipe_writes_nothing(tiny_model, tmp_path, capsys):
    recipe = _train_recipe(tiny_model, tmp_path)
    assert main(["train", str(recipe)]) == 0
    run = tmp_path / "run"
    before = _snapshot(run)
    capsys.readouterr()
    assert main(["train", str(recipe), "lora.rank=8", "train.lr=0.01", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "lora.rank: 4 in the run, 8 now" in err and "train.lr" in err
    assert "recipe.yaml" in err and "--restart" in err
    _no_traceback(err)
    assert _snapshot(run) == before  # nothing written, recipe.yaml included
    assert main(["train", str(recipe), "train.steps=3", "--resume"]) == 0  # steps may change
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(x["step"] for x in lines) == 3


def test_a_run_stopped_before_its_first_checkpoint_can_resume_or_restart(tiny_model, tmp_path,
                                                                          capsys):
    from localpeer.config import load_recipe
    from localpeer.train.rundir import prepare_run

    recipe = _train_recipe(tiny_model, tmp_path)
    run = prepare_run(load_recipe(recipe), resume=False)  # as a run killed at once leaves it
    append_jsonl(run / "metrics.jsonl", {"step": 0, "split": "eval", "dims": {}})
    capsys.readouterr()
    assert main(["train", str(recipe)]) == 2  # a new run would overwrite: the ways out are named
    err = capsys.readouterr().err
    assert "--resume" in err and "--restart" in err and "step 0" in err
    _no_traceback(err)
    assert main(["train", str(recipe), "--resume"]) == 0
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if x.get("split") != "eval"] == [1, 2]
    assert main(["train", str(recipe), "--restart"]) == 0
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]
    assert len(aside) == 1 and (aside[0] / "adapter").is_dir()  # the old run kept, aside
    assert (run / "summary.json").is_file()
    assert main(["train", str(recipe), "--restart", "--resume"]) == 2


# ---- 8. export --quant F32 -------------------------------------------------------------------

def test_export_accepts_f32_and_every_type_it_documents(tmp_path, capsys):
    pytest.importorskip("llama_cpp")
    from localpeer.export.quantize import parse_quants, valid_quants

    assert parse_quants("f32,Q8_0") == ("F32", "Q8_0")  # LLAMA_FTYPE_ALL_F32: the kept twin
    for documented in ("F16", "F32", "Q8_0", "Q4_K_M", "Q4_1", "BF16"):
        assert documented in valid_quants()
    from test_export import fake_run

    run = fake_run(tmp_path / "run")
    (run / "adapter" / "adapter_config.json").write_text("{}")  # the next check refuses it
    assert main(["export", str(run), "--quant", "F32"]) == 2
    err = capsys.readouterr().err
    assert "unknown type" not in err and "adapter_config.json" in err
    _no_traceback(err)


# ---- 7, 9. chat and generate: bad GGUFs, templates, read-only outputs, a message too long ------

def _with_template(gguf, tmp_path, template, name):
    import subprocess
    import sys

    out = tmp_path / name
    subprocess.run([sys.executable, "-m", "gguf.scripts.gguf_new_metadata", str(gguf), str(out),
                    "--chat-template", template, "--force"], check=True, capture_output=True)
    return out


@pytest.mark.parametrize("cut", ["half", "header"])
def test_a_truncated_gguf_is_a_clear_error_in_chat_and_generate(gguf, tmp_path, capsys, cut):
    data = gguf.read_bytes()
    bad = tmp_path / "model.gguf"
    bad.write_bytes(data[:len(data) // 2] if cut == "half" else data[:64])
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"id": "a", "prompt": "hi"}\n')
    for argv in (["chat", str(bad), "-p", "hi", "--no-save"],
                 ["generate", str(bad), "--prompts", str(prompts), "--out", str(tmp_path / "o"),
                  "--quiet"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "model.gguf" in err and "cannot load this GGUF" in err
        _no_traceback(err)
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_a_template_with_a_jinja_syntax_error_exits_2(gguf, tmp_path, capsys):
    bad = _with_template(gguf, tmp_path, "{% for m in messages %}{{ m.content }", "bad.gguf")
    assert main(["chat", str(bad), "-p", "hi", "--no-save"]) == 2
    err = capsys.readouterr().err
    assert "bad.gguf" in err and "not valid Jinja" in err
    _no_traceback(err)


def test_a_template_that_would_hang_is_stopped_and_refused(gguf, tmp_path, capsys):
    import time

    slow = _with_template(gguf, tmp_path, "{% for i in range(100000) %}{% for j in "
                          "range(100000) %}{% endfor %}{% endfor %}", "slow.gguf")
    start = time.monotonic()
    assert main(["chat", str(slow), "-p", "hi", "--no-save"]) == 2
    assert time.monotonic() - start < 60  # refused, not hung
    err = capsys.readouterr().err
    assert "slow.gguf" in err and "stopped and refused" in err
    _no_traceback(err)


def test_transcripts_where_nothing_can_be_written_fail_before_the_reply(gguf, tmp_path,
                                                                        capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("in the way\n")
    assert main(["chat", str(gguf), "-p", "hi", "--transcripts", str(blocker)]) == 1
    captured = capsys.readouterr()
    assert "a-file" in captured.err and "EEXIST" in captured.err and captured.out == ""
    _no_traceback(captured.err)
    assert blocker.read_text() == "in the way\n"


def test_a_message_longer_than_the_context_exits_2(gguf, capsys):
    assert main(["chat", str(gguf), "-p", "word " * 400, "--ctx", "128", "--no-save"]) == 2
    captured = capsys.readouterr()
    assert "does not fit the context" in captured.err and "--ctx" in captured.err
    assert captured.out == ""
    _no_traceback(captured.err)


def test_repl_save_and_load_failures_keep_the_session(gguf, tmp_path):
    import io

    from rich.console import Console

    from localpeer.chat.repl import Chat
    from localpeer.chat.session import Sampler, load_engine
    from localpeer.chat.transcript import ChatLog

    engine = load_engine(gguf, ctx=256, sampler=Sampler(max_tokens=4), threads=1)
    out = io.StringIO()
    chat = Chat(engine, ChatLog(None, "smol", {}), Console(file=out, width=200))
    chat.messages.append({"role": "user", "content": "hi"})
    chat.reply()
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert chat.command(f"/save {blocker / 'copy.jsonl'}")  # the session goes on
    malformed = tmp_path / "m.jsonl"
    malformed.write_text('{"id": "x", "model": "m", "item": "i", "messages": '
                         '[{"role": "user", "content": 5}]}\n')
    assert chat.command(f"/load {malformed}")
    assert chat.command(f"/load {tmp_path}")  # a folder
    text = out.getvalue()
    assert "cannot save" in text and "message 1 of the last conversation" in text
    assert [m["role"] for m in chat.messages] == ["user", "assistant"]  # kept as it was


# ---- 7, 9. bounds and malformed inputs of train, score and report -----------------------------

@pytest.mark.parametrize("override,key", [("train.batch_size=0", "train.batch_size=0"),
                                          ("train.steps=-1", "train.steps=-1"),
                                          ("train.lr=0", "train.lr=0")])
def test_recipe_values_out_of_range_exit_2(tmp_path, capsys, override, key):
    assert main(["train", "recipes/smollm2-135m-cpu.yaml", override, "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert key in err and "must be" in err
    _no_traceback(err)


def test_a_scale_wider_than_any_data_supports_is_refused(tmp_path, capsys):
    folder = tmp_path / "t" / "ratings"
    folder.mkdir(parents=True)
    (folder / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rating_rows()))
    assert main(["score", str(tmp_path / "t"), "--scale", "1-100000000"]) == 2
    err = capsys.readouterr().err
    assert "100,000,000 categories" in err and "0-100" in err
    _no_traceback(err)


def test_report_on_an_empty_folder_or_malformed_json_exits_2(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "nothing to report here" in err
    _no_traceback(err)
    (tmp_path / "score.json").write_text('{"dimensions": ')
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "score.json:1" in err and "not valid JSON" in err
    _no_traceback(err)
    (tmp_path / "score.json").unlink()
    (tmp_path / "probes").mkdir()
    (tmp_path / "probes" / "m-refusal.json").write_text("{oops")
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "m-refusal.json:1" in err
    _no_traceback(err)


# ---- 6. offline means offline ---------------------------------------------------------------

NO_NETWORK = """
import os, socket, sys

def refuse(*args, **kwargs):
    with open(os.environ["CONNECT_LOG"], "a") as f:
        f.write(repr(args[1:] or args) + "\\n")
    raise OSError(101, "Network is unreachable (cut by the test)")

socket.socket.connect = refuse
socket.socket.connect_ex = refuse
socket.getaddrinfo = refuse
from localpeer.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_train_and_export_try_no_network_with_hf_hub_offline_unset(tiny_model, tmp_path):
    """Every socket connect and DNS lookup fails and is logged; HF_HUB_OFFLINE and friends are
    unset, as on a user's machine: train and export must not even try."""
    import os
    import subprocess
    import sys

    from test_export import ROOT, converter, make_run

    try:
        converter.find_converter()
    except Exception as e:  # noqa: BLE001 (the converter is fetched by `just setup`)
        pytest.skip(str(e))
    log = tmp_path / "connects.log"
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")}
    env.update(CONNECT_LOG=str(log), PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")

    def run(*argv):
        r = subprocess.run([sys.executable, "-c", NO_NETWORK, *argv], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, r.stderr[-2000:]

    run("train", str(_train_recipe(tiny_model, tmp_path)))
    assert main(["pull", "smollm2-135m-instruct", "--quiet"]) == 0  # offline for this card
    exported = make_run(tmp_path / "smol-run")
    run("export", str(exported), "--quant", "Q8_0", "--out", str(tmp_path / "gguf"), "--quiet")
    assert not log.exists(), log.read_text()


# ---- 5, 9, 10. score, judge and probe inputs ----------------------------------------------------

def test_a_typo_dimension_in_ratings_is_named(tmp_path, capsys):
    folder = tmp_path / "t" / "ratings"
    folder.mkdir(parents=True)
    rows = _rating_rows()
    rows[5] = dict(rows[5], dimension="Z")
    (folder / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["score", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err
    assert "r.jsonl:6" in err and "unknown dimension 'Z'" in err
    _no_traceback(err)


def test_score_refuses_to_write_over_its_own_ratings(tmp_path, capsys):
    ratings = tmp_path / "r.csv"
    lines = ["model,item,judge,dimension,score"] + [
        f"{r['model']},{r['item']},{r['judge']},{r['dimension']},{r['score']}"
        for r in _rating_rows()]
    ratings.write_text("\n".join(lines) + "\n")
    before = ratings.read_bytes()
    for flag in ("--csv", "--json"):
        assert main(["score", str(ratings), flag, str(ratings)]) == 2
        err = capsys.readouterr().err
        assert f"{flag} {ratings} is one of the files being read" in err
        _no_traceback(err)
    assert ratings.read_bytes() == before


def test_judge_refuses_zero_tries(tmp_path, capsys):
    folder = tmp_path / "t"
    folder.mkdir()
    for argv in (["judge", str(folder), "--judge", "J.gguf", "--tries", "0"],
                 ["judge", "calibrate", "--judge", "J.gguf", "--data",
                  "data/personaknob-starter/test.jsonl", "--tries", "0"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "--tries 0" in err
        _no_traceback(err)
    assert not (folder / "ratings").exists()


def test_a_probe_output_line_without_item_is_named(tmp_path):
    from localpeer.errors import InputError
    from localpeer.probes.run import _done

    out = tmp_path / "m-sycophancy.jsonl"
    out.write_text('{"id": "m/syc-001", "item": "syc-001", "meta": {}}\n{"id": "m/x"}\n')
    with pytest.raises(InputError, match=r"m-sycophancy.jsonl:2: a probe exchange without"):
        _done(out)


def test_judge_resumes_past_a_torn_ratings_tail(tmp_path):
    from localpeer.judge.run import _done

    path = tmp_path / "ratings" / "j.jsonl"
    path.parent.mkdir()
    row = {"model": "m", "item": "i", "judge": "j:standard", "dimension": "A", "score": 3,
           "transcript_id": "t1"}
    path.write_text(json.dumps(row) + "\n" + json.dumps(row)[:25])
    assert _done(path, "j:standard") == {("t1", "A")}
    append_jsonl(path, dict(row, dimension="T"))
    assert [o["dimension"] for _, o in jsonl_records(path)] == ["A", "T"]


# ---- 5. export: another run's folder, stale files, SIGTERM ---------------------------------------

def test_export_refuses_a_folder_holding_another_runs_export(tmp_path, capsys):
    pytest.importorskip("llama_cpp")
    from test_export import fake_run

    run = fake_run(tmp_path / "run")
    out = tmp_path / "gguf"
    out.mkdir()
    (out / "other-Q8_0.gguf").write_bytes(b"GGUF")
    (out / "export.json").write_text(json.dumps(
        {"sources": {"run_dir": str(tmp_path / "other-run")},
         "files": [{"file": "other-Q8_0.gguf", "type": "Q8_0"}]}))
    assert main(["export", str(run), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "another run" in err and "--force" in err
    _no_traceback(err)
    assert (out / "other-Q8_0.gguf").read_bytes() == b"GGUF"  # untouched
    (out / "export.json").unlink()
    assert main(["export", str(run), "--out", str(out)]) == 2  # unlisted GGUF files
    assert "no export.json lists (other-Q8_0.gguf)" in capsys.readouterr().err


@pytest.mark.slow
def test_sigterm_during_export_leaves_no_work_folder_and_a_reexport_no_stale_file(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    from test_export import ROOT, converter, make_run

    try:
        converter.find_converter()
    except Exception as e:  # noqa: BLE001
        pytest.skip(str(e))
    assert main(["pull", "smollm2-135m-instruct", "--quiet"]) == 0
    run = make_run(tmp_path / "run")
    out = tmp_path / "gguf"
    proc = subprocess.Popen([sys.executable, "-m", "localpeer", "export", str(run), "--quant",
                             "Q8_0", "--out", str(out), "--quiet"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not list(out.glob(".work-*/merged-hf")):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    proc.wait(120)
    assert "Traceback" not in proc.stderr.read()
    assert list(out.glob(".work-*")) == []  # cleaned up as on Ctrl-C
    # an export, then one with other quants into the same folder: nothing stale is left
    assert main(["export", str(run), "--quant", "Q8_0", "--out", str(out), "--quiet"]) == 0
    assert main(["export", str(run), "--quant", "Q4_0", "--out", str(out), "--quiet"]) == 0
    listed = {f["file"] for f in json.loads((out / "export.json").read_text())["files"]}
    assert {p.name for p in out.iterdir()} == listed | {"export.json"}
    assert not any("Q8_0" in name for name in listed)


def test_disk_full_mid_quantize_is_named_and_leaves_nothing(gguf, tmp_path):
    """A 2 MiB tmpfs as the quantizer's output folder (root only: skipped elsewhere)."""
    import os
    import subprocess
    import sys

    disk = tmp_path / "small"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs",
                                            str(disk)], capture_output=True).returncode != 0:
        pytest.skip("needs root to mount a small tmpfs")
    script = (
        "import sys\nfrom pathlib import Path\n"
        "from localpeer.cli import os_error_message\n"
        "from localpeer.export.quantize import quantize\n"
        "try:\n"
        f"    quantize(Path({str(gguf)!r}), Path({str(disk / 'm-Q8_0.gguf')!r}), 'Q8_0')\n"
        "except OSError as e:\n"
        "    print('caught:', os_error_message(e))\n")
    try:
        r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                           timeout=600)
        left = sorted(p.name for p in disk.iterdir())
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)
    # the terminal is restored after the failure (stdout was the quantize log until then)
    assert "caught:" in r.stdout and "ENOSPC" in r.stdout and str(disk) in r.stdout, r
    assert "free some space" in r.stdout and left == []


def test_an_unwritable_output_path_exits_1_naming_it(tiny_model, tmp_path, capsys):
    """A file where the output folder should be (root ignores permission bits, so this is
    how a test run as root gets a path nothing can be written under)."""
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    recipe = _train_recipe(tiny_model, tmp_path)
    assert main(["train", str(recipe), f"out_dir={blocker / 'run'}"]) == 1
    err = capsys.readouterr().err
    assert str(blocker / "run") in err and "ENOTDIR" in err
    _no_traceback(err)
    assert blocker.read_text() == "x"


def test_export_to_an_unwritable_out_exits_1_naming_it(tmp_path, capsys):
    pytest.importorskip("llama_cpp")
    from test_export import ROOT, fake_run

    from localpeer.export import converter

    try:
        converter.find_converter()
    except Exception as e:  # noqa: BLE001
        pytest.skip(str(e))
    assert main(["pull", "smollm2-135m-instruct", "--quiet"]) == 0
    run = fake_run(tmp_path / "run")
    (run / "recipe.yaml").write_text(f"model: {ROOT / 'models' / 'hf' / 'smollm2-135m-instruct'}\n")
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    assert main(["export", str(run), "--out", str(blocker / "gguf")]) == 1
    err = capsys.readouterr().err
    assert str(blocker / "gguf") in err and "ENOTDIR" in err
    _no_traceback(err)
