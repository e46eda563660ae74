"""`localpeer data import|validate|stats|build`.

    localpeer data validate data/personaknob-starter/
    localpeer data stats data/personaknob-starter/train.jsonl
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from localpeer.errors import InputError, WorkFailed

log = logging.getLogger(__name__)


def _console(quiet: bool = False):
    from rich.console import Console

    return Console(quiet=quiet)


def record_files(path: Path) -> list[Path]:
    """A records file, or every *.jsonl directly in a folder."""
    if not path.exists():
        raise InputError("no such file or folder", path)
    files = sorted(path.glob("*.jsonl")) if path.is_dir() else [path]
    if not files:
        raise InputError("no .jsonl record files in this folder", path)
    return files


def load_all(paths: list[Path]):
    """Records of every file; ids must be unique across files."""
    from localpeer.data.personaknob import read_records

    records, first = [], {}
    for path in paths:
        for f in record_files(Path(path)):
            for r in read_records(f):
                if r.id in first:
                    raise InputError(f"duplicate id {r.id!r} (first at {first[r.id]})",
                                     *r.source.rsplit(":", 1))
                first[r.id] = r.source
                records.append(r)
    return records


def run_import(args) -> int:
    from localpeer.data.importer import import_records
    from localpeer.data.personaknob import deduplicate, leakage
    from localpeer.formats import atomic_write_text

    records = import_records(Path(args.src))
    records, dropped = deduplicate(records)
    for rid, kept in dropped:
        log.warning("dropped %s: same prompt as %s", rid, kept)
    console = _console(args.quiet)
    by_split = {s: [r for r in records if r.split == s] for s in ("train", "test")}
    leaks = leakage(by_split["train"], by_split["test"])
    if leaks:
        raise WorkFailed(f"{len(leaks)} prompt(s) appear in both train and test, e.g. "
                         f"{leaks[0][0]} and {leaks[0][1]}; fix the source splits")
    out = Path(args.out)
    src = Path(args.src).resolve()
    for split in by_split:
        target = (out / f"{split}.jsonl").resolve()
        if target == src or (src.is_dir() and src in target.parents):
            raise InputError(f"--out {out} would overwrite the source {args.src}; write to "
                             "another folder", out / f"{split}.jsonl")
    # the two split files are one unit: a split the new import lacks must not keep an old file
    for split, rows in by_split.items():
        path = out / f"{split}.jsonl"
        if rows:
            text = "".join(json.dumps(r.to_json(), ensure_ascii=False) + "\n" for r in rows)
            atomic_write_text(path, text)
            console.print(f"wrote {len(rows)} records to {path}")
        elif path.exists():
            path.unlink()
            console.print(f"removed {path}: the new import has no {split} records")
    if dropped:
        console.print(f"dropped {len(dropped)} duplicate prompt(s)")
    return 0


def run_validate(args) -> int:
    from localpeer.data.personaknob import deduplicate, leakage, record_pairs
    from localpeer.report import render_validation

    records = load_all(args.paths)
    _, dupes = deduplicate(records)
    train = [r for r in records if r.split != "test"]
    test = [r for r in records if r.split == "test"]
    leaks = leakage(train, test)
    pairs = sum(len(record_pairs(r)) for r in records)
    render_validation(records, pairs, dupes, leaks, _console(args.quiet))
    if dupes or leaks:
        raise WorkFailed(f"{len(dupes)} duplicate prompt(s) and {len(leaks)} train/test "
                         "leak(s); see above")
    return 0


def _token_counter(path: Path | None):
    if path is None:
        return None
    path = Path(path)
    from localpeer.deps import require

    if path.suffix == ".gguf":
        llama_cpp = require("llama_cpp", why="counting tokens with a GGUF")
        vocab = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
        return lambda text: len(vocab.tokenize(text.encode(), add_bos=False))
    transformers = require("transformers", why="counting tokens with an HF tokenizer")
    tok = transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    return lambda text: len(tok(text, add_special_tokens=False)["input_ids"])


def run_stats(args) -> int:
    from localpeer.data.stats import data_stats
    from localpeer.report import render_data_stats

    records = load_all(args.paths)
    render_data_stats(data_stats(records, _token_counter(args.tokenizer)), _console())
    return 0


def run_build(args) -> int:
    from localpeer.data.build import LlamaTeacher, build, read_seeds
    from localpeer.deps import embedded_smollm2_gguf, need
    from localpeer.report import build_progress, render_build_summary

    need("llama_cpp", why="data build runs the teacher GGUF on llama.cpp")
    seeds = read_seeds(Path(args.seeds))
    if args.limit:
        seeds = seeds[: args.limit]
    teacher_path = embedded_smollm2_gguf() if args.teacher == "smollm2" else Path(args.teacher)
    console = _console(args.quiet)
    teacher = LlamaTeacher(teacher_path, n_ctx=args.ctx, temperature=args.temperature)
    with build_progress(console, len(seeds)) as advance:
        summary = build(seeds, teacher, Path(args.out), attempts=args.attempts,
                        max_tokens=args.max_tokens, length_tolerance=args.length_tolerance,
                        on_seed=advance)
    render_build_summary(summary, Path(args.out), console)
    return 0 if summary.accepted or summary.skipped else 1
