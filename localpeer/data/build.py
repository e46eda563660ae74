"""`localpeer data build`: grow PersonaKnob records from seed scenes with a local teacher model.

For each seed scene the teacher (a GGUF run by llama-cpp-python) writes the scenario (context,
trigger, prompt), then the golden response, then one reject per active dimension. Every call is
grammar-constrained to a JSON schema, so the output always parses unless it runs out of tokens.
Each record is validated (and its rejects' lengths checked against the golden) before it is
appended to the output with one fsynced write; ids already in the output are skipped, so an
interrupted build resumes where it stopped.

    localpeer data build --teacher models/gguf/qwen2.5-7b-Q4_K_M.gguf \\
        --seeds data/seeds/personaknob-seeds.jsonl --out data/built.jsonl
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from localpeer.data.personaknob import parse_mask, record_from_json
from localpeer.dimensions import DIMS
from localpeer.dimensions import NAMES as DIMENSION_NAMES
from localpeer.errors import InputError
from localpeer.formats import append_jsonl, cut_torn_tail, jsonl_records

log = logging.getLogger(__name__)

PEER = {
    "A": "keeps a correct position under social pressure and corrects a flawed premise kindly",
    "T": "is accurate, calibrated and safe, and declines only a genuinely dangerous part",
    "E": "notices the person's situation and feelings and answers the person",
    "C": "gives concrete, resourceful, non-generic help and offers alternatives to a flat no",
}
FAILURE = {
    "A": "stays warm and inventive but caves: it agrees with the user's false belief or flawed "
         "premise",
    "T": "stays kind and inventive but is wrong, over-confident or unsafe (it may make up facts)",
    "E": "stays correct and helpful but is cold, curt or lecturing, ignoring the person's feelings",
    "C": "stays correct and kind but is generic boilerplate, or evasively refuses a benign request",
}
SYSTEM = ("You write training data for a chat assistant. Follow the instructions exactly and "
          "answer only with the requested JSON.")
# maxLength bounds every string in the grammar, so a rambling teacher still closes its JSON
# inside --max-tokens (about 4 characters a token)
SCENARIO_SCHEMA = {
    "type": "object",
    "properties": {"context": {"type": "string", "minLength": 20, "maxLength": 400},
                   "trigger": {"type": "string", "minLength": 10, "maxLength": 300},
                   "prompt": {"type": "string", "minLength": 80, "maxLength": 800}},
    "required": ["context", "trigger", "prompt"],
}
TEXT_SCHEMA = {"type": "object",
               "properties": {"text": {"type": "string", "minLength": 200, "maxLength": 1200}},
               "required": ["text"]}


@dataclass(frozen=True)
class Seed:
    id: str
    seed_scene: str
    mask: tuple[str, ...]
    domain: str | None = None


class Teacher(Protocol):
    def json(self, user: str, schema: dict, max_tokens: int, seed: int) -> dict: ...


class GenerationRejected(Exception):
    """A generated record that does not go into the output; str() is the reason."""


@dataclass
class BuildSummary:
    accepted: int = 0
    skipped: int = 0  # already in the output
    rejected: Counter = field(default_factory=Counter)  # reason -> generations


def read_seeds(path: Path) -> list[Seed]:
    """Seed scenes: JSONL with id, seed_scene, mask, and optional domain."""
    path = Path(path)
    if not path.is_file():
        raise InputError("no such seeds file", path)
    seeds, seen = [], {}
    for line_no, obj in jsonl_records(path):
        if not str(obj.get("id", "")).strip() or not str(obj.get("seed_scene", "")).strip():
            raise InputError("a seed needs a non-empty id and seed_scene", path, line_no)
        sid = str(obj["id"])
        if sid in seen:
            raise InputError(f"duplicate seed id {sid!r} (first at line {seen[sid]})", path,
                             line_no)
        seen[sid] = line_no
        mask = parse_mask(obj.get("mask", list(DIMS)), (path, line_no))
        seeds.append(Seed(sid, obj["seed_scene"].strip(), mask, obj.get("domain")))
    if not seeds:
        raise InputError("no seeds in the file", path)
    return seeds


def existing_ids(out: Path) -> set[str]:
    """Ids already built; a torn last line (a crash mid-write) is cut off first."""
    cut_torn_tail(out)
    if not out.exists():
        return set()
    ids = set()
    for line_no, raw in enumerate(out.read_bytes().splitlines(), 1):
        if raw.strip():
            try:
                ids.add(str(json.loads(raw)["id"]))
            except (json.JSONDecodeError, KeyError, TypeError):
                raise InputError("not a record line; --out must be a file that data build "
                                 "wrote, or a new file", out, line_no) from None
    return ids


def _scenario_prompt(seed: Seed) -> str:
    active = "; ".join(f"{d} ({DIMENSION_NAMES[d]}): the scenario must call for an assistant "
                       f"that {PEER[d]}" for d in seed.mask)
    return (f"Seed scene: {seed.seed_scene}\nDomain: {seed.domain or 'any'}\n"
            f"Active dimensions: {active}.\n"
            "Write JSON with: context (2 sentences, third person, the situation), trigger (one "
            "sentence naming what in it calls for each active dimension), prompt (the user's "
            "first-person message, 40-100 words, specific, containing every trigger).")


def _golden_prompt(seed: Seed, scenario: dict) -> str:
    wants = "; ".join(PEER[d] for d in seed.mask)
    return (f"User message: {scenario['prompt']}\n"
            f"Write the reply of a careful expert friend that {wants}. 80-150 words, specific "
            'to this person, no "As an AI". JSON: {"text": ...}')


def _reject_prompt(dim: str, scenario: dict, golden: str) -> str:
    return (f"User message: {scenario['prompt']}\nGood reply: {golden}\n"
            f"Rewrite the good reply so that it fails ONLY {DIMENSION_NAMES[dim]}: it "
            f"{FAILURE[dim]}. Keep everything else as good, and about the same length "
            f"({len(golden.split())} words). JSON: {{\"text\": ...}}")


def _call(teacher: Teacher, user: str, schema: dict, max_tokens: int, seed: int) -> dict:
    try:
        out = teacher.json(user, schema, max_tokens, seed)
    except json.JSONDecodeError:
        raise GenerationRejected("teacher output was cut off (raise --max-tokens)") from None
    if not isinstance(out, dict):
        raise GenerationRejected("teacher output is not a JSON object")
    return out


def generate_record(seed: Seed, teacher: Teacher, attempt: int, max_tokens: int,
                    length_tolerance: float) -> dict:
    """One record for `seed`, validated; GenerationRejected says why it is unusable."""
    base = int.from_bytes(hashlib.sha256(f"{seed.id}:{attempt}".encode()).digest()[:4], "big")
    scenario = _call(teacher, _scenario_prompt(seed), SCENARIO_SCHEMA, max_tokens, base)
    golden = _call(teacher, _golden_prompt(seed, scenario), TEXT_SCHEMA, max_tokens,
                   base + 1).get("text", "")
    obj = {"id": f"built-{seed.id}", "mask": list(seed.mask), "seed_scene": seed.seed_scene,
           **{k: scenario.get(k) for k in ("context", "trigger", "prompt")}, "golden": golden}
    for k, d in enumerate(DIMS):
        obj[f"reject_{d}"] = None
        if d in seed.mask and golden.strip():
            obj[f"reject_{d}"] = _call(teacher, _reject_prompt(d, scenario, golden), TEXT_SCHEMA,
                                       max_tokens, base + 2 + k).get("text", "")
    obj["meta"] = {"domain": seed.domain, "teacher_attempt": attempt}
    try:
        record = record_from_json(obj)
    except InputError as err:
        raise GenerationRejected(err.message.split(";")[0]) from None
    for d, text in record.rejects.items():
        ratio = len(text) / len(record.golden)
        if abs(ratio - 1.0) > length_tolerance:
            raise GenerationRejected(f"reject_{d} length is {ratio:.0%} of the golden's "
                                     f"(allowed {1 - length_tolerance:.0%}-"
                                     f"{1 + length_tolerance:.0%})")
    return record.to_json()


def build(seeds: list[Seed], teacher: Teacher, out: Path, attempts: int = 2,
          max_tokens: int = 512, length_tolerance: float = 0.4,
          on_seed: Callable[[Seed, str], None] | None = None) -> BuildSummary:
    """Generate a record for every seed not yet in `out`, appending each as it is accepted."""
    out = Path(out)
    done = existing_ids(out)
    summary = BuildSummary()
    for seed in seeds:
        if f"built-{seed.id}" in done:
            summary.skipped += 1
            outcome = "skipped"
        else:
            outcome = "rejected"
            for attempt in range(attempts):
                try:
                    record = generate_record(seed, teacher, attempt, max_tokens, length_tolerance)
                except GenerationRejected as why:
                    summary.rejected[str(why)] += 1
                    log.info("seed %s attempt %d rejected: %s", seed.id, attempt, why)
                    continue
                append_jsonl(out, record)
                summary.accepted += 1
                outcome = "accepted"
                break
        if on_seed is not None:
            on_seed(seed, outcome)
    return summary


class LlamaTeacher:
    """A GGUF teacher through llama-cpp-python; output constrained by a JSON-schema grammar."""

    def __init__(self, gguf: Path, n_ctx: int = 4096, temperature: float = 0.7,
                 n_threads: int | None = None):
        from localpeer.deps import require

        llama_cpp = require("llama_cpp", why="the teacher GGUF runs on llama.cpp")
        if not Path(gguf).is_file():
            raise InputError("no such teacher GGUF", gguf)
        self.llama_cpp = llama_cpp
        self.llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=n_ctx, n_threads=n_threads,
                                   verbose=False)
        self.temperature = temperature
        self._grammars: dict[str, object] = {}

    def json(self, user: str, schema: dict, max_tokens: int, seed: int) -> dict:
        key = json.dumps(schema, sort_keys=True)
        if key not in self._grammars:
            self._grammars[key] = self.llama_cpp.LlamaGrammar.from_json_schema(key,
                                                                               verbose=False)
        reply = self.llm.create_chat_completion(
            messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}],
            grammar=self._grammars[key], max_tokens=max_tokens, temperature=self.temperature,
            repeat_penalty=1.15, seed=seed)
        return json.loads(reply["choices"][0]["message"]["content"])
