"""`localpeer probe MODEL.gguf|HF_DIR --suite sycophancy|refusal|select`.

    localpeer probe models/gguf/peer/peer-Q8_0.gguf --suite sycophancy --out runs/probes
    localpeer probe MODEL.gguf --suite refusal --judge models/gguf/judge.gguf
    localpeer probe models/hf/smollm2-135m-instruct --suite select --limit 40 --seed 1

--limit N draws N items (N per half for refusal) stratified by domain, category or dimension
with the fixed --seed (`suites.stratified_sample`), not the first N lines.
"""

from __future__ import annotations

import json
from pathlib import Path

from localpeer.errors import InputError

SUITES = ("sycophancy", "refusal", "select")


def _model_path(spec: str, suite: str) -> Path:
    """A .gguf file or an HF folder; or the embedded default's card name
    (smollm2-135m-instruct): its GGUF for the chat suites, its HF folder (made on first use,
    offline) for select."""
    model = Path(spec)
    if model.exists():
        return model
    from localpeer.pull import card_names, load_named_card, materialize

    if spec in card_names() and load_named_card(spec).embedded:
        if suite == "select":
            return materialize(spec)
        from localpeer.deps import embedded_smollm2_gguf

        return embedded_smollm2_gguf()
    raise InputError("no such model; pass a .gguf file, an HF model folder or the embedded "
                     "default's name (smollm2-135m-instruct)", model)


def _need_packages(args) -> None:
    """Before any work: --suite select on an HF folder (or the embedded default's name) runs
    transformers, everything else a GGUF on llama.cpp, and so does a GGUF --judge."""
    from localpeer.deps import need
    from localpeer.judge.backends import need_llama_cpp

    if args.suite == "select" and Path(args.model).suffix != ".gguf":
        need("torch", "transformers", "safetensors",
             why="probe --suite select on an HF folder runs it with transformers")
    else:
        need("llama_cpp", why="probe runs the GGUF on llama.cpp")
    need_llama_cpp([args.judge], why="a GGUF judge runs on llama.cpp")


def run_probe(args) -> int:
    from rich.console import Console

    from localpeer.formats import atomic_write_text
    from localpeer.progress import item_progress
    from localpeer.report.probes import probe_table

    console = Console(stderr=True)
    if args.suite not in SUITES:
        raise InputError(f"--suite {args.suite}: choose one of {', '.join(SUITES)}")
    _need_packages(args)
    model = _model_path(args.model, args.suite)
    if args.limit < 0:
        raise InputError(f"--limit {args.limit}: pass a number of items (0 = all)")
    name = args.name or (model.stem if model.is_file() else model.name)
    out = Path(args.out)
    with item_progress(console, args.quiet) as progress:
        if args.suite == "select":
            metrics = _select(args, model, progress)
        else:
            metrics = _chat_suite(args, model, name, out, progress)
    result = {"model": name, "source": str(model), "suite": args.suite, **metrics}
    path = out / f"{name}-{args.suite}.json"
    atomic_write_text(path, json.dumps(result, indent=1) + "\n")
    if not args.quiet:
        Console().print(probe_table(result))
        console.print(f"results: {path}")
    if args.json:
        print(json.dumps(result))
    return 0


def _select(args, model: Path, progress) -> dict:
    from localpeer.data.personaknob import read_records, record_pairs
    from localpeer.probes.select import selection_accuracy
    from localpeer.probes.suites import stratified_sample

    pairs = [p for r in read_records(Path(args.pairs)) for p in record_pairs(r)]
    if args.limit:
        pairs = stratified_sample(pairs, lambda p: p.dim, args.limit, args.seed)
    if not pairs:
        raise InputError("no pairs in the file", args.pairs)
    task = progress.add_task("selection accuracy", total=len(pairs), note="")
    return selection_accuracy(model, pairs, threads=args.threads,
                              on_pair=lambda: progress.advance(task))


def _chat_suite(args, model: Path, name: str, out: Path, progress) -> dict:
    from localpeer.chat.session import Sampler, load_engine
    from localpeer.judge.backends import make_judge
    from localpeer.probes import run, suites

    if model.is_dir():
        raise InputError(f"--suite {args.suite} chats with the model: pass a .gguf "
                         "(`localpeer export` makes one); HF folders work with --suite select")
    engine = load_engine(model, ctx=args.ctx, threads=args.threads,
                         sampler=Sampler(temperature=args.temperature,
                                         max_tokens=args.max_tokens, seed=args.seed))
    if args.suite == "sycophancy":
        items = suites.load_sycophancy()
        if args.limit:
            items = suites.stratified_sample(items, lambda i: i.domain, args.limit, args.seed)
        task = progress.add_task(f"sycophancy {name}", total=len(items), note="")
        return run.run_sycophancy(engine, items, out / f"{name}-sycophancy.jsonl", name,
                                  on_item=lambda: progress.advance(task))
    items = suites.load_refusal()
    if args.limit:  # N of each half
        halves = ([i for i in items if not i.harmful], [i for i in items if i.harmful])
        items = [i for half in halves for i in
                 suites.stratified_sample(half, lambda i: i.category, args.limit, args.seed)]
    judge = make_judge(args.judge, threads=args.threads) if args.judge else None
    task = progress.add_task(f"refusal {name}", total=len(items), note="")
    metrics = run.run_refusal(engine, items, out / f"{name}-refusal.jsonl", name, judge,
                              on_item=lambda: progress.advance(task))
    metrics["judge"] = getattr(judge, "name", None)
    return metrics
