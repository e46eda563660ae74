"""`localpeer chat` and `generate` on the embedded SmolLM2 GGUF (llama-cpp-python for real):
sandboxed templates, context overflow, transcripts that survive a kill, resumable generate,
and the REPL driven in a real terminal through tmux."""

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from localpeer.chat.generate import generate, read_prompts
from localpeer.chat.session import Sampler, load_engine
from localpeer.chat.template import ChatTemplate
from localpeer.chat.transcript import ChatLog
from localpeer.cli import main
from localpeer.errors import InputError
from localpeer.formats import read_transcripts

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ROOT / "data" / "personaknob-starter" / "test.jsonl"
# a classic sandbox escape: reach os.system through a function's globals
EVIL = "{{ cycler.__init__.__globals__.os.system('touch MARKER') }}"


@pytest.fixture(scope="module")
def engine(gguf):
    return load_engine(gguf, ctx=512, sampler=Sampler(max_tokens=24, temperature=0.7),
                       threads=1)


def test_template_sandbox_refuses_python_internals(tmp_path):
    marker = tmp_path / "pwned"
    template = ChatTemplate(EVIL.replace("MARKER", str(marker)), "", "", "gguf", "x.gguf")
    with pytest.raises(InputError, match="Python internals"):
        template.render([{"role": "user", "content": "hi"}])
    assert not marker.exists()
    ok = ChatTemplate("{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}",
                      "", "", "gguf")
    assert ok.render([{"role": "user", "content": "hi"}]) == "[user]hi"
    raising = ChatTemplate("{{ raise_exception('roles must alternate') }}", "", "", "gguf")
    with pytest.raises(InputError, match="roles must alternate"):
        raising.render([])


def test_malicious_template_in_a_gguf_exits_2_and_runs_nothing(gguf, tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.gguf"
    subprocess.run([sys.executable, "-m", "gguf.scripts.gguf_new_metadata", str(gguf),
                    str(evil), "--chat-template", EVIL.replace("MARKER", str(marker)),
                    "--force"], check=True, capture_output=True)
    assert main(["chat", str(evil), "-p", "hi", "--transcripts", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err
    assert "tried to reach Python internals and was refused" in err and "evil.gguf" in err
    assert not marker.exists() and not (tmp_path / "t").exists()


def test_not_a_gguf_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"PK\x03\x04 not a gguf")
    assert main(["chat", str(bad), "-p", "hi"]) == 2
    assert "not a GGUF file" in capsys.readouterr().err


def _chat(engine, folder):
    from rich.console import Console

    from localpeer.chat.repl import Chat

    console = Console(file=io.StringIO(), width=200, highlight=False)
    return Chat(engine, ChatLog(folder, "smol", {"sampler": engine.sampler.to_dict()}), console)


def test_context_overflow_drops_oldest_turns_and_keeps_going(engine, tmp_path):
    chat = _chat(engine, tmp_path)
    chat.set_system("Be brief.")
    long = "Tell me about rivers. " + "The river flows to the sea and back again. " * 12
    for k in range(6):
        chat.messages.append({"role": "user", "content": f"({k}) {long}"})
        chat.reply()
    out = chat.console.file.getvalue()
    assert "earlier message(s) left out of the prompt to fit 512 tokens" in out
    assert len(chat.messages) == 13 and chat.messages[0]["role"] == "system"
    assert all(m["role"] == "assistant" for m in chat.messages[2::2])
    ids, dropped, room = engine.fit(chat.messages + [{"role": "user", "content": long}], 24)
    assert dropped >= 2 and len(ids) + room <= 512 and room == 24
    saved = read_transcripts(chat.log.path)
    assert len(saved) == 1 and len(saved[0].messages) == 13  # the transcript keeps them all
    # a single message longer than the context is refused for that turn, not fatal
    chat.messages.append({"role": "user", "content": long * 4})
    chat.reply()
    assert "this turn does not fit" in chat.console.file.getvalue()
    assert len(chat.messages) == 13


def test_chat_commands_retry_undo_save_load(engine, tmp_path):
    chat = _chat(engine, tmp_path / "live")
    chat.messages.append({"role": "user", "content": "Name a colour."})
    chat.reply()
    first = chat.messages[-1]["content"]
    assert chat.command("/retry") and len(chat.messages) == 2
    assert chat.generations == 2  # a new seed for the retry
    assert chat.command("/system Answer in French.") and chat.messages[0]["role"] == "system"
    assert chat.command(f"/save {tmp_path / 'copy.jsonl'}")
    copy = read_transcripts(tmp_path / "copy.jsonl")[0]
    assert copy.messages[0]["content"] == "Answer in French." and len(copy.messages) == 3
    assert chat.command("/undo") and [m["role"] for m in chat.messages] == ["system"]
    assert chat.command(f"/load {tmp_path / 'copy.jsonl'}") and len(chat.messages) == 3
    assert chat.command("/reset") and len(chat.messages) == 1
    assert not chat.command("/quit")
    assert isinstance(first, str)


def test_killed_chat_leaves_every_completed_turn(gguf, tmp_path):
    """SIGKILL while a reply streams: every completed turn is on disk, every line parses.

    The kill is sent on the first streamed piece of the third reply (read from stdout), not
    after a fixed sleep: a fast machine finished the whole reply inside a one-second sleep.
    A reply that still completes inside that window is allowed only when stdout shows its
    closing stats line, i.e. it really completed before the kill."""
    folder = tmp_path / "t"
    proc = subprocess.Popen([sys.executable, "-m", "localpeer", "chat", str(gguf),
                             "--transcripts", str(folder), "--max-tokens", "400",
                             "--threads", "1"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, bufsize=0)
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(iter(lambda: proc.stdout.read(1), "")),
                              daemon=True)
    reader.start()

    def lines():
        files = list(folder.glob("*.jsonl"))
        return files[0].read_text().splitlines() if files else []

    def third_reply() -> str:
        text = "".join(seen)
        return text.split("peer › ")[3] if text.count("peer › ") >= 3 else ""

    try:
        for k, text in enumerate(["Hello!", "What is 2 + 2?"]):
            proc.stdin.write(text + "\n")
            proc.stdin.flush()
            deadline = time.time() + 120
            while len(lines()) < k + 1 and time.time() < deadline:
                time.sleep(0.05)
        assert len(lines()) == 2
        proc.stdin.write("Count from 1 to 300, one number per line.\n")
        proc.stdin.flush()
        deadline = time.time() + 120
        while not third_reply() and time.time() < deadline:
            time.sleep(0.001)
        assert third_reply(), "the third reply never started streaming"
        proc.send_signal(signal.SIGKILL)  # mid-reply
        proc.wait(30)
    finally:
        proc.kill()
    reader.join(5)
    raw = lines()
    finished = "tokens/s" in third_reply()
    assert len(raw) == 2 or (len(raw) == 3 and finished), (len(raw), third_reply())
    assert all(json.loads(x) for x in raw)  # every line parses
    conversation = read_transcripts(next(folder.glob("*.jsonl")))[-1]
    assert [m["role"] for m in conversation.messages] == ["user", "assistant"] * len(raw)
    assert conversation.messages[2]["content"] == "What is 2 + 2?"
    assert conversation.meta["gguf_sha256"] and conversation.meta["template_sha256"]
    assert conversation.meta["sampler"]["max_tokens"] == 400


def test_generate_resumes_without_duplicating_ids(engine, tmp_path):
    items = read_prompts(PROMPTS)[:3]
    out = tmp_path / "smol.jsonl"

    class Stop(Exception):
        pass

    def stop_after_three(_tid, summary):
        if summary.written == 3:
            raise Stop

    with pytest.raises(Stop):
        generate(engine, items, out, 2, "smol", {}, stop_after_three)
    with out.open("a") as f:
        f.write('{"id": "smol/torn')  # a crash mid-write
    summary = generate(engine, items, out, 2, "smol", {})
    assert (summary.written, summary.skipped_done) == (3, 3)
    ids = [json.loads(x)["id"] for x in out.read_text().splitlines()]
    assert sorted(ids) == sorted(f"smol/{i.id}/s{k}" for i in items for k in range(2))
    transcripts = read_transcripts(out)
    assert {t.item for t in transcripts} == {i.id for i in items}
    assert all(t.messages[-1]["role"] == "assistant" for t in transcripts)
    seeds = {t.id: t.meta["seed"] for t in transcripts}
    again = tmp_path / "again.jsonl"
    generate(engine, items[::-1], again, 2, "smol", {})  # another order: same seeds
    assert {t.id: t.meta["seed"] for t in read_transcripts(again)} == seeds


def test_generate_cli_and_bad_prompts(gguf, tmp_path, capsys):
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"id": "a", "prompt": "hi"}\n{"id": "b"}\n')
    assert main(["generate", str(gguf), "--prompts", str(bad), "--out", str(tmp_path)]) == 2
    assert f"{bad}:2:" in capsys.readouterr().err
    assert main(["generate", str(gguf), "--prompts", str(PROMPTS), "--out", str(tmp_path),
                 "--limit", "2", "--max-tokens", "8", "--quiet", "--json",
                 "--threads", "1"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["written"] == 2 and summary["tokens"] > 0


# ------------------------------------------------------------------ the REPL in a real terminal


def _pane(session):
    return subprocess.run(["tmux", "capture-pane", "-p", "-t", session, "-S", "-200"],
                          capture_output=True, text=True).stdout


def _wait_for(session, predicate, timeout=90.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        text = _pane(session)
        if predicate(text):
            return text
        time.sleep(0.2)
    raise AssertionError("timed out; the pane shows:\n" + _pane(session))


def _keys(session, *keys):
    subprocess.run(["tmux", "send-keys", "-t", session, *keys], check=True)


@pytest.mark.slow
def test_repl_in_tmux(gguf, tmp_path):
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed (.ci/run installs it)")
    session = f"lp{os.getpid()}"
    cmd = (f"cd {ROOT} && {sys.executable} -m localpeer chat {gguf} --transcripts {tmp_path} "
           "--max-tokens 400 --threads 1; echo CHAT-EXITED; sleep 30")
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "160", "-y", "50", cmd],
                   check=True)
    try:
        _wait_for(session, lambda t: "you ›" in t)
        # streaming: text appears while the reply is written; Ctrl-C stops it and the prompt
        # comes back (this prompt runs to --max-tokens with this model)
        _keys(session, "Write a 1000-word essay about the history of Rome.", "Enter")
        _wait_for(session, lambda t: "peer ›" in t and len(t.rpartition("peer ›")[2].strip()) > 40,
                  timeout=60)
        _keys(session, "C-c")
        text = _wait_for(session, lambda t: "[interrupted]" in t and t.rstrip().endswith("›"))
        assert "CHAT-EXITED" not in text
        _keys(session, "/system Always answer in one short sentence.", "Enter")
        _wait_for(session, lambda t: "system message set" in t)
        _keys(session, "/reset", "Enter")
        _wait_for(session, lambda t: "new conversation" in t)
        _keys(session, "What is the capital of France?", "Enter")
        _wait_for(session, lambda t: t.count("tokens/s") >= 2 and t.rstrip().endswith("›"),
                  timeout=120)
        _keys(session, "/retry", "Enter")
        _wait_for(session, lambda t: t.count("tokens/s") >= 3 and t.rstrip().endswith("›"),
                  timeout=120)
        saved = tmp_path / "saved.jsonl"
        _keys(session, f"/save {saved}", "Enter")
        _wait_for(session, lambda t: "saved to" in t)
        (conv,) = read_transcripts(saved)
        assert [m["role"] for m in conv.messages] == ["system", "user", "assistant"]
        assert conv.messages[0]["content"] == "Always answer in one short sentence."
        _keys(session, "/quit", "Enter")
        _wait_for(session, lambda t: "CHAT-EXITED" in t)
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
