"""`localpeer generate MODEL.gguf --prompts FILE --out DIR`: batch replies, resumable.

    localpeer generate models/gguf/peer/peer-Q8_0.gguf \\
        --prompts data/personaknob-starter/test.jsonl --out transcripts/ --samples 2

Prompts are JSONL lines with `id` and either `messages` (a conversation ending in a user turn)
or `prompt` (one user message), so PersonaKnob records work as they are. Each reply is
appended to DIR/<model>.jsonl as one transcript line (fsynced) with id `<model>/<item>/s<k>`;
a rerun skips the ids already written, so an interrupted run resumes where it stopped.
Sample k of an item always uses the same seed, whatever the order or the resume point.
A PersonaKnob record's mask, seed_scene and context go into the transcript's meta as
"personaknob", so `localpeer judge` grades only the masked dimensions and shows the judge
the scenario.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from localpeer.chat.session import ContextFull, Engine
from localpeer.chat.transcript import transcript_line, utc_now
from localpeer.errors import InputError
from localpeer.formats import append_jsonl, cut_torn_tail, jsonl_records

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


@dataclass
class Summary:
    written: int = 0
    skipped_done: int = 0
    too_long: int = 0
    tokens: int = 0
    seconds: float = 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def generate(engine: Engine, items: list[PromptItem], out: Path, samples: int, model: str,
             meta: dict, on_done: Callable[[str, Summary], None] | None = None) -> Summary:
    """Append one transcript line per (item, sample) not yet in `out`."""
    done = done_ids(out)
    summary = Summary()
    for item in items:
        for k in range(samples):
            tid = f"{model}/{item.id}/s{k}"
            if tid in done:
                summary.skipped_done += 1
                continue
            seed = sample_seed(engine.sampler.seed, item.id, k)
            try:
                prompt, dropped, room = engine.fit(list(item.messages),
                                                   engine.sampler.max_tokens)
            except ContextFull as e:
                log.warning("%s: skipped, %s", item.id, e)
                summary.too_long += 1
                continue
            reply = "".join(engine.stream(prompt, seed=seed, max_tokens=room))
            stats = engine.stats
            extra = {"personaknob": item.personaknob} if item.personaknob else {}
            line = transcript_line(tid, model, item.id, [*item.messages,
                                                         {"role": "assistant", "content": reply}],
                                   dict(meta, seed=seed, sample=k, finish=stats.finish,
                                        tokens=stats.tokens, dropped_messages=dropped,
                                        created=utc_now(), **extra))
            append_jsonl(out, line)
            summary.written += 1
            summary.tokens += stats.tokens
            summary.seconds += stats.seconds
            if on_done is not None:
                on_done(tid, summary)
    return summary


def run_generate(args) -> int:
    from rich.console import Console

    from localpeer.chat.session import Sampler, gguf_sha256, load_engine
    from localpeer.progress import item_progress

    console = Console(stderr=True)
    if args.samples < 1:
        raise InputError(f"--samples must be at least 1, got {args.samples}")
    items = read_prompts(args.prompts, args.system)
    if args.limit:
        items = items[: args.limit]
    sampler = Sampler(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                      repeat_penalty=args.repeat_penalty, max_tokens=args.max_tokens,
                      seed=args.seed)
    engine = load_engine(args.model, ctx=args.ctx, sampler=sampler, threads=args.threads)
    model = args.name or engine.name
    out = Path(args.out) / f"{model}.jsonl"
    meta = {"gguf": engine.path.name, "gguf_sha256": gguf_sha256(engine.path),
            "sampler": sampler.to_dict(), "template_sha256": engine.template.sha256,
            "n_ctx": engine.n_ctx, "prompts": str(args.prompts)}
    total = len(items) * args.samples
    already = len(done_ids(out) & {f"{model}/{i.id}/s{k}" for i in items
                                   for k in range(args.samples)})
    with item_progress(console, args.quiet) as progress:
        task = progress.add_task(f"generate {model}", total=total, completed=already,
                                 note="")

        def on_done(_tid: str, s: Summary) -> None:
            progress.update(task, advance=1, note=f"{s.tokens_per_s:.1f} tokens/s")

        summary = generate(engine, items, out, args.samples, model, meta, on_done)
    if not args.quiet:
        console.print(f"{out}: {summary.written} written, {summary.skipped_done} already there, "
                      f"{summary.too_long} too long for the context; {summary.tokens} tokens at "
                      f"{summary.tokens_per_s:.1f} tokens/s")
    if args.json:
        print(json.dumps({"out": str(out), "written": summary.written,
                          "skipped": summary.skipped_done, "too_long": summary.too_long,
                          "tokens": summary.tokens,
                          "tokens_per_s": round(summary.tokens_per_s, 2)}))
    return 0
