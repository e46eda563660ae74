"""Concurrent judges and generation against an OpenAI-compatible server: at most --parallel
requests in flight, retries on 429 / 5xx / timeouts, no retry on other 4xx, one writer (a kill
then a rerun leaves every grade and reply exactly once), the transcript format, and an
unreachable server as exit 1.

    HF_HUB_OFFLINE=1 .venv/bin/python -m pytest -q tests/test_parallel.py

The server is http.server's ThreadingHTTPServer in this process; `Server.faults` maps a
request's number (1, 2, ...) to what goes wrong with it: an HTTP status or "timeout" (the
handler sleeps past the client's timeout, set short through LOCALPEER_HTTP_TIMEOUT_S).
"""

from __future__ import annotations

import io
import json
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from localpeer.chat.generate import generate, read_prompts, sample_seed, server_model
from localpeer.chat.session import Sampler
from localpeer.chat.transcript import transcript_line
from localpeer.cli import main
from localpeer.formats import read_transcripts
from localpeer.judge.backends import HttpJudge, as_done, make_judge, workers
from localpeer.judge.run import judge_folder

TIMEOUT_S = 0.5


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 (http.server's name)
        st = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with st.lock:
            st.requests += 1
            n = st.requests
            st.bodies.append(body)
            st.in_flight += 1
            st.max_in_flight = max(st.max_in_flight, st.in_flight)
        try:
            fault = st.faults.get(n)
            time.sleep(TIMEOUT_S * 2 if fault == "timeout" else st.delay_s)
            if fault == "timeout":
                return
            if isinstance(fault, int):
                self.reply(fault, {"error": {"message": f"injected {fault}"}},
                           {"Retry-After": "0"} if fault == 429 else {})
                return
            if "response_format" in body:  # a judge
                content = json.dumps({"rationale": "fine", "score": 1 + n % 5})
            else:
                content = "reply to " + body["messages"][-1]["content"]
            self.reply(200, {"choices": [{"message": {"role": "assistant", "content": content},
                                          "finish_reason": "stop"}],
                             "usage": {"completion_tokens": 3}}, {})
        finally:
            with st.lock:
                st.in_flight -= 1

    def reply(self, status: int, obj: dict, headers: dict) -> None:
        data = json.dumps(obj).encode()
        try:
            self.send_response(status)
            for k, v in {"Content-Type": "application/json",
                         "Content-Length": str(len(data)), **headers}.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout)
            pass

    def log_message(self, *args):
        pass


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("LOCALPEER_HTTP_TIMEOUT_S", str(TIMEOUT_S))
    monkeypatch.setenv("LOCALPEER_HTTP_BACKOFF_S", "0.01")
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.lock, srv.requests, srv.bodies = threading.Lock(), 0, []
    srv.in_flight = srv.max_in_flight = 0
    srv.faults, srv.delay_s = {}, 0.0
    srv.url = f"http://127.0.0.1:{srv.server_port}/v1"
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv
    srv.shutdown()
    srv.server_close()


def transcripts(folder: Path, n: int = 6) -> Path:
    lines = [transcript_line(f"m/p{i}/s0", "m", f"p{i}",
                             [{"role": "user", "content": f"question {i}"},
                              {"role": "assistant", "content": f"answer {i}"}], {})
             for i in range(n)]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "m.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return folder


def graded(folder: Path) -> Counter:
    out = Counter()
    for name in ("j_standard.jsonl", "j_standard.missing"):
        path = folder / "ratings" / name
        if path.exists():
            out.update((o["transcript_id"], o["dimension"])
                       for o in map(json.loads, path.read_text().splitlines()))
    return out


def every_grade(n: int = 6, dims=("A", "T")) -> set:
    return {(f"m/p{i}/s0", d) for i in range(n) for d in dims}


def test_parallel_n_means_at_most_n_requests_in_flight(server, tmp_path):
    server.delay_s = 0.2
    folder = transcripts(tmp_path / "t")
    judge = make_judge(f"j={server.url}#judge")
    summary = judge_folder(folder, [judge], dims=("A", "T"), parallel=4)
    assert server.max_in_flight == 4
    assert summary.rated == 12 and graded(folder) == Counter(every_grade())
    assert (folder / "ratings" / "j_standard.jsonl").read_text().count("\n") == 12


def test_429_500_and_a_timeout_are_retried_and_everything_is_written_once(server, tmp_path):
    server.faults = {1: 429, 2: 500, 3: "timeout"}
    folder = transcripts(tmp_path / "t")
    summary = judge_folder(folder, [make_judge(f"j={server.url}#judge")], dims=("A", "T"),
                           parallel=4)
    assert (summary.rated, summary.missing) == (12, 0)
    assert graded(folder) == Counter(every_grade())
    assert server.requests == 12 + 3


def test_generation_survives_429_500_and_a_timeout(server, tmp_path):
    server.faults = {1: 429, 2: 500, 3: "timeout"}
    items = read_prompts(prompts(tmp_path))
    _, model = server_model(f"{server.url}#org/model", Sampler(seed=3))
    summary = generate(model, items, tmp_path / "out" / "m.jsonl", 2, "m", {}, parallel=3)
    assert (summary.written, summary.failed) == (10, 0)
    ids = [t.id for t in read_transcripts(tmp_path / "out" / "m.jsonl")]
    assert sorted(ids) == sorted(f"m/{i.id}/s{k}" for i in items for k in range(2))


def test_a_400_is_not_retried_and_the_grade_is_missing(server, tmp_path):
    server.faults = {1: 400}
    folder = transcripts(tmp_path / "t", n=1)
    summary = judge_folder(folder, [make_judge(f"j={server.url}#judge")], dims=("A",), tries=3)
    assert server.requests == 1 and (summary.rated, summary.missing) == (0, 1)
    missing = json.loads((folder / "ratings" / "j_standard.missing").read_text())
    assert "HTTP 400" in missing["errors"][0] and "injected 400" in missing["errors"][0]
    assert judge_folder(folder, [make_judge(f"j={server.url}#judge")], dims=("A",)).skipped == 1


def test_a_kill_mid_run_then_a_rerun_leaves_no_duplicates_and_no_gaps(server, tmp_path):
    server.delay_s = 0.02
    folder = transcripts(tmp_path / "t", n=10)

    class Killed(Exception):
        pass

    def kill_after_five(_label, summary):
        if summary.rated == 5:
            raise Killed

    with pytest.raises(Killed):
        judge_folder(folder, [make_judge(f"j={server.url}#judge")], dims=("A", "T"),
                     parallel=4, on_rating=kill_after_five)
    assert sum(graded(folder).values()) == 5  # in-flight grades were dropped, not written
    again = judge_folder(folder, [make_judge(f"j={server.url}#judge")], dims=("A", "T"),
                         parallel=4)
    assert (again.skipped, again.rated) == (5, 15)
    assert graded(folder) == Counter(every_grade(10))


def test_generate_kill_then_rerun_leaves_each_id_once(server, tmp_path):
    server.delay_s = 0.02
    items = read_prompts(prompts(tmp_path))
    out = tmp_path / "out" / "m.jsonl"

    class Killed(Exception):
        pass

    def kill_after_three(_tid, summary):
        if summary.written == 3:
            raise Killed

    _, model = server_model(f"{server.url}#m", Sampler())
    with pytest.raises(Killed):
        generate(model, items, out, 2, "m", {}, kill_after_three, parallel=4)
    assert len(out.read_text().splitlines()) == 3
    summary = generate(model, items, out, 2, "m", {}, parallel=4)
    assert (summary.skipped_done, summary.written) == (3, 7)
    ids = [json.loads(x)["id"] for x in out.read_text().splitlines()]
    assert sorted(ids) == sorted(f"m/{i.id}/s{k}" for i in items for k in range(2))


def prompts(tmp_path: Path, n: int = 5) -> Path:
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"question {i}"}) + "\n"
                            for i in range(n)))
    return path


def test_generate_cli_against_a_server_writes_todays_transcript_format(server, tmp_path,
                                                                       capsys):
    path = prompts(tmp_path)
    assert main(["generate", f"peer={server.url}#org/model-7b", "--prompts", str(path),
                 "--out", str(tmp_path / "out"), "--parallel", "4", "--temperature", "0.5",
                 "--top-p", "0.9", "--max-tokens", "32", "--seed", "7", "--quiet",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["written"] == 5
    lines = [json.loads(x) for x in (tmp_path / "out" / "peer.jsonl").read_text().splitlines()]
    assert sorted(x["id"] for x in lines) == [f"peer/p{i}/s0" for i in range(5)]
    for line in lines:
        assert set(line) == {"id", "model", "item", "messages", "meta"}
        assert line["model"] == "peer" and line["messages"] == [
            {"role": "user", "content": f"question {line['item'][1:]}"},
            {"role": "assistant", "content": f"reply to question {line['item'][1:]}"}]
        meta = line["meta"]
        assert meta["server"] == server.url and meta["server_model"] == "org/model-7b"
        assert "gguf_sha256" not in meta
        assert meta["seed"] == sample_seed(7, line["item"], 0) and meta["sample"] == 0
        assert (meta["finish"], meta["tokens"]) == ("stop", 3)
        assert meta["sampler"] == {"temperature": 0.5, "top_p": 0.9, "max_tokens": 32,
                                   "seed": 7}
    sent = {b["messages"][-1]["content"]: b for b in server.bodies}
    assert sent["question 2"] == {"model": "org/model-7b",
                                  "messages": [{"role": "user", "content": "question 2"}],
                                  "temperature": 0.5, "top_p": 0.9, "max_tokens": 32,
                                  "seed": sample_seed(7, "p2", 0)}
    assert len(read_transcripts(tmp_path / "out" / "peer.jsonl")) == 5
    # the judge reads them as they are, concurrently, through the CLI
    assert main(["judge", str(tmp_path / "out"), "--judge", f"j={server.url}#judge",
                 "--dims", "A", "--parallel", "4", "--quiet", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rated"] == 5


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_server_exits_1_naming_the_url(tmp_path, capsys):
    url = f"http://127.0.0.1:{closed_port()}/v1"
    folder = transcripts(tmp_path / "t")
    assert main(["judge", str(folder), "--judge", f"{url}#judge", "--parallel", "4"]) == 1
    err = capsys.readouterr().err
    assert f"cannot reach {url}" in err and "Traceback" not in err
    assert main(["generate", f"{url}#m", "--prompts", str(prompts(tmp_path)), "--out",
                 str(tmp_path / "out"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert f"cannot reach {url}" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "m.jsonl").exists()


def test_a_gguf_runs_one_at_a_time_and_says_so():
    from rich.console import Console

    from localpeer.judge.command import _check_parallel

    class Local:
        name = "judge.gguf"

    assert workers(Local(), 8) == 1 and workers(HttpJudge("u", "m", "m"), None) == 8
    assert workers(HttpJudge("u", "m", "m"), 3) == 3
    console = Console(file=io.StringIO(), width=200)
    _check_parallel(4, [Local()], console)
    assert "judge.gguf is a local GGUF and runs 1 request at a time" in console.file.getvalue()
    seen = []
    assert [j for j, _ in as_done(lambda j: seen.append(j), range(5), 1)] == list(range(5))
    assert {j for j, _ in as_done(lambda j: j, range(50), 4)} == set(range(50))
