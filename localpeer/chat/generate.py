"""`localpeer generate MODEL.gguf|URL#MODEL --prompts FILE --out DIR`: batch replies, resumable.

    localpeer generate models/gguf/peer/peer-Q8_0.gguf \\
        --prompts data/personaknob-starter/test.jsonl --out transcripts/ --samples 2
    localpeer generate qwen=http://localhost:8000/v1#Qwen/Qwen2.5-7B-Instruct \\
        --prompts data/personaknob-starter/test.jsonl --out transcripts/ --parallel 16

Prompts are JSONL lines with `id` and either `messages` (a conversation ending in a user turn)
or `prompt` (one user message), so PersonaKnob records work as they are. Each reply is
appended to DIR/<model>.jsonl as one transcript line (fsynced) with id `<model>/<item>/s<k>`;
a rerun skips the ids already written, so an interrupted run resumes where it stopped.
Sample k of an item always uses the same seed, whatever the order or the resume point.
A PersonaKnob record's mask, seed_scene and context go into the transcript's meta as
"personaknob", so `localpeer judge` grades only the masked dimensions and shows the judge
the scenario.

An OpenAI-compatible server (`[NAME=]http(s)://host:port/v1#MODEL`: llama-server, vLLM, Ollama)
gets `--parallel` requests at once (default 8) with the same sampler settings and seeds; a
local GGUF runs one at a time. Each reply comes back to the calling thread, the only writer,
as it completes. A request that fails after its retries is reported and not written, so a
rerun asks again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from localpeer.chat.session import ContextFull, Engine, Sampler
from localpeer.chat.transcript import transcript_line, utc_now
from localpeer.errors import InputError
from localpeer.formats import append_jsonl, cut_torn_tail, jsonl_records
from localpeer.judge.backends import (
    ChatServer,
    RequestFailed,
    as_done,
    need_llama_cpp,
    split_server_spec,
    workers,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PromptItem:
    id: str
    messages: tuple[dict, ...]
    personaknob: dict | None = None  # a record's {"mask", "seed_scene", "context"}, for judges


def record_context(obj: dict, path: Path, line: int) -> dict | None:
    """What a judge needs from a PersonaKnob record line (one with a "mask"): its active
    dimensions and its scenario. Stored in the transcript's meta as "personaknob"."""
    if "mask" not in obj:
        return None
    from localpeer.data.personaknob import parse_mask

    return {"mask": list(parse_mask(obj["mask"], (path, line))),
            **{k: obj[k] for k in ("seed_scene", "context") if isinstance(obj.get(k), str)}}


def read_prompts(path: Path, system: str | None = None) -> list[PromptItem]:
    path = Path(path)
    if not path.is_file():
        raise InputError("no such prompts file; pass a JSONL with id and messages or prompt "
                         "(e.g. data/personaknob-starter/test.jsonl)", path)
    items, seen = [], {}
    for line, obj in jsonl_records(path):
        item_id = obj.get("id")
        if not isinstance(item_id, (str, int)) or str(item_id) == "":
            raise InputError('each line needs an "id" (a string)', path, line)
        item_id = str(item_id)
        if item_id in seen:
            raise InputError(f"duplicate id {item_id!r} (first on line {seen[item_id]})", path,
                             line)
        seen[item_id] = line
        if isinstance(obj.get("messages"), list):
            msgs = obj["messages"]
            ok = all(isinstance(m, dict) and isinstance(m.get("content"), str)
                     and m.get("role") in ("system", "user", "assistant") for m in msgs)
            if not ok or not msgs or msgs[-1]["role"] != "user":
                raise InputError('"messages" must be [{"role": "system"|"user"|"assistant", '
                                 '"content": "..."}, ...] ending with a user message', path,
                                 line)
            messages = [dict(role=m["role"], content=m["content"]) for m in msgs]
        elif isinstance(obj.get("prompt"), str) and obj["prompt"].strip():
            messages = [{"role": "user", "content": obj["prompt"]}]
        else:
            raise InputError('each line needs "messages" (a list) or "prompt" (a string)', path,
                             line)
        if system and messages[0]["role"] != "system":
            messages.insert(0, {"role": "system", "content": system})
        items.append(PromptItem(item_id, tuple(messages), record_context(obj, path, line)))
    if not items:
        raise InputError("the prompts file is empty", path)
    return items


def sample_seed(base: int, item: str, k: int) -> int:
    """The seed of sample k of an item: fixed by (base, item, k), not by the order of work."""
    digest = hashlib.sha256(f"{base}|{item}|{k}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def done_ids(path: Path) -> set[str]:
    """Transcript ids already in the output; a torn last line (a crash mid-write) is cut off."""
    cut_torn_tail(path)
    if not path.exists():
        return set()
    ids = set()
    for line, obj in jsonl_records(path):
        if "id" not in obj:
            raise InputError("not a transcript line; --out must hold files that generate "
                             "wrote", path, line)
        ids.add(str(obj["id"]))
    return ids


@dataclass(frozen=True)
class Reply:
    text: str
    finish: str  # stop | length (| what the server says)
    tokens: int  # completion tokens
    seconds: float
    dropped: int = 0  # oldest messages left out to fit the context


class LocalModel:
    """A loaded GGUF (chat.session.Engine) behind `reply`; one call at a time."""

    concurrent = False

    def __init__(self, engine: Engine):
        self.engine, self.sampler = engine, engine.sampler
        self.name = getattr(engine, "name", "the GGUF")

    def reply(self, messages: tuple[dict, ...], seed: int) -> Reply:
        prompt, dropped, room = self.engine.fit(list(messages), self.sampler.max_tokens)
        text = "".join(self.engine.stream(prompt, seed=seed, max_tokens=room))
        stats = self.engine.stats
        return Reply(text, stats.finish, stats.tokens, stats.seconds, dropped)


@dataclass
class ServerModel:
    """A model behind an OpenAI-compatible server: POST {base_url}/chat/completions with the
    sampler's temperature, top_p, max_tokens and the sample's seed. Thread-safe."""

    base_url: str
    model: str
    sampler: Sampler
    api_key: str | None = None
    timeout_s: float = 600.0  # a whole reply of max_tokens, queued behind others
    concurrent = True

    def __post_init__(self):
        self.server = ChatServer.from_env(self.base_url, self.api_key, self.timeout_s)

    def body(self, messages: tuple[dict, ...], seed: int) -> dict:
        s = self.sampler
        return {"model": self.model, "messages": [dict(m) for m in messages],
                "temperature": s.temperature, "top_p": s.top_p, "max_tokens": s.max_tokens,
                "seed": seed}

    def reply(self, messages: tuple[dict, ...], seed: int) -> Reply:
        start = time.perf_counter()
        answer = self.server.post(self.body(messages, seed), f"generate {self.model}")
        seconds = time.perf_counter() - start
        try:
            choice = answer["choices"][0]
            text = choice["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise RequestFailed(f"{self.server.url}: the reply has no "
                                "choices[0].message.content") from None
        tokens = (answer.get("usage") or {}).get("completion_tokens")
        return Reply(text, str(choice.get("finish_reason") or ""),
                     tokens if isinstance(tokens, int) else 0, seconds)


def server_model(spec: str, sampler: Sampler) -> tuple[str | None, ServerModel] | None:
    """`[NAME=]http(s)://host:port/v1#MODEL` -> (NAME or None, ServerModel); None for a path."""
    name, rest = split_server_spec(spec)
    if not rest.startswith(("http://", "https://")):
        return None
    url, _, model = rest.partition("#")
    if not model:
        raise InputError(f"{spec}: name the server's model after '#', e.g. "
                         "http://localhost:8080/v1#qwen2.5-7b-instruct")
    return name, ServerModel(url, model, sampler, api_key=os.environ.get("LOCALPEER_API_KEY"))


@dataclass
class Summary:
    written: int = 0
    skipped_done: int = 0
    too_long: int = 0
    failed: int = 0  # server requests that failed after their retries; a rerun asks again
    tokens: int = 0
    seconds: float = 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def generate(engine, items: list[PromptItem], out: Path, samples: int, model: str,
             meta: dict, on_done: Callable[[str, Summary], None] | None = None,
             parallel: int | None = None) -> Summary:
    """Append one transcript line per (item, sample) not yet in `out`. `engine`: a loaded
    GGUF (one reply at a time) or a ServerModel (`parallel` at once, default 8)."""
    backend = engine if isinstance(engine, ServerModel) else LocalModel(engine)
    done = done_ids(out)
    summary = Summary()
    todo = []
    for item in items:
        for k in range(samples):
            tid = f"{model}/{item.id}/s{k}"
            if tid in done:
                summary.skipped_done += 1
            else:
                todo.append((tid, item, k, sample_seed(backend.sampler.seed, item.id, k)))

    def one(job) -> Reply | Exception:
        _, item, _, seed = job
        try:
            return backend.reply(item.messages, seed)
        except (ContextFull, RequestFailed) as e:  # reported below; the run goes on
            return e

    n_workers = workers(backend, parallel)
    start = time.perf_counter()
    # replies arrive here, in this thread, as they complete: the only writer of `out`
    for (tid, item, k, seed), reply in as_done(one, todo, n_workers):
        if isinstance(reply, ContextFull):
            log.warning("%s: skipped, %s", item.id, reply)
            summary.too_long += 1
            continue
        if isinstance(reply, RequestFailed):
            log.warning("%s: not written (a rerun asks again): %s", tid, reply)
            summary.failed += 1
            continue
        extra = {"personaknob": item.personaknob} if item.personaknob else {}
        line = transcript_line(tid, model, item.id, [*item.messages,
                                                     {"role": "assistant", "content": reply.text}],
                               dict(meta, seed=seed, sample=k, finish=reply.finish,
                                    tokens=reply.tokens, dropped_messages=reply.dropped,
                                    created=utc_now(), **extra))
        append_jsonl(out, line)
        summary.written += 1
        summary.tokens += reply.tokens
        # concurrent replies overlap: their throughput is tokens over the wall clock
        summary.seconds = (time.perf_counter() - start if n_workers > 1
                           else summary.seconds + reply.seconds)
        if on_done is not None:
            on_done(tid, summary)
    return summary


def run_generate(args) -> int:
    from rich.console import Console

    from localpeer.chat.session import GGUF_RUNS, gguf_sha256, load_engine
    from localpeer.judge.command import _check_parallel
    from localpeer.progress import item_progress

    need_llama_cpp([args.model], why=GGUF_RUNS)
    console = Console(stderr=True)
    if args.samples < 1:
        raise InputError(f"--samples must be at least 1, got {args.samples}")
    items = read_prompts(args.prompts, args.system)
    if args.limit:
        items = items[: args.limit]
    sampler = Sampler(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                      repeat_penalty=args.repeat_penalty, max_tokens=args.max_tokens,
                      seed=args.seed)
    parallel = getattr(args, "parallel", None)
    served = server_model(str(args.model), sampler)
    if served is not None:
        name, engine = served
        model = args.name or name or re.sub(r"[^A-Za-z0-9._-]+", "_", engine.model)
        sent = {k: v for k, v in sampler.to_dict().items()
                if k in ("temperature", "top_p", "max_tokens", "seed")}
        meta = {"server": engine.base_url, "server_model": engine.model, "sampler": sent,
                "prompts": str(args.prompts)}
    else:
        engine = load_engine(Path(args.model), ctx=args.ctx, sampler=sampler,
                             threads=args.threads)
        model = args.name or engine.name
        meta = {"gguf": engine.path.name, "gguf_sha256": gguf_sha256(engine.path),
                "sampler": sampler.to_dict(), "template_sha256": engine.template.sha256,
                "n_ctx": engine.n_ctx, "prompts": str(args.prompts)}
    _check_parallel(parallel, [engine if served else LocalModel(engine)], console)
    out = Path(args.out) / f"{model}.jsonl"
    total = len(items) * args.samples
    already = len(done_ids(out) & {f"{model}/{i.id}/s{k}" for i in items
                                   for k in range(args.samples)})
    with item_progress(console, args.quiet) as progress:
        task = progress.add_task(f"generate {model}", total=total, completed=already,
                                 note="")

        def on_done(_tid: str, s: Summary) -> None:
            progress.update(task, advance=1, note=f"{s.tokens_per_s:.1f} tokens/s")

        summary = generate(engine, items, out, args.samples, model, meta, on_done, parallel)
    if not args.quiet:
        console.print(f"{out}: {summary.written} written, {summary.skipped_done} already there, "
                      f"{summary.too_long} too long for the context; {summary.tokens} tokens at "
                      f"{summary.tokens_per_s:.1f} tokens/s")
        if summary.failed:
            console.print(f"[yellow]{summary.failed} requests failed after their retries and "
                          "were not written; rerun the same command to ask again[/]")
    if args.json:
        print(json.dumps({"out": str(out), "written": summary.written,
                          "skipped": summary.skipped_done, "too_long": summary.too_long,
                          "failed": summary.failed,
                          "tokens": summary.tokens,
                          "tokens_per_s": round(summary.tokens_per_s, 2)}))
    return 0
