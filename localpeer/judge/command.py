"""`localpeer judge DIR --judge MODEL.gguf|URL#model [--judge ...] [--rubric standard,contrast]`.

    localpeer judge transcripts/ --judge models/gguf/judge.gguf --rubric standard,contrast
"""

from __future__ import annotations

import json

from localpeer.errors import InputError
from localpeer.judge.rubric import DIMENSIONS, RUBRICS


def _parse_list(text: str, valid, what: str) -> tuple[str, ...]:
    items = tuple(t.strip() for t in text.split(",") if t.strip())
    bad = [t for t in items if t not in valid]
    if not items or bad:
        raise InputError(f"--{what}: {', '.join(bad) or 'empty'} not one of {', '.join(valid)}")
    return items


def run_judge(args) -> int:
    from rich.console import Console

    from localpeer.formats import Scale
    from localpeer.judge.backends import make_judge
    from localpeer.judge.run import count_work, judge_folder, missing_report
    from localpeer.progress import item_progress

    console = Console(stderr=True)
    if not args.dir.is_dir():
        raise InputError("no such transcripts folder", args.dir)
    rubrics = _parse_list(args.rubric, tuple(RUBRICS), "rubric")
    dims = _parse_list(args.dims, DIMENSIONS, "dims")
    scale = Scale.parse(args.scale)
    judges = [make_judge(spec, ctx=args.ctx, threads=args.threads) for spec in args.judge]
    total = count_work(args.dir, judges, rubrics, dims, args.limit)
    if total == 0:
        raise InputError("no transcripts with an assistant reply under this folder; run "
                         "`localpeer generate` or `localpeer chat` first", args.dir)
    with item_progress(console, args.quiet) as progress:
        task = progress.add_task("judge", total=total, note="")

        def on_rating(label, s):
            progress.update(task, advance=1, description=f"judge {label}",
                            note=f"{s.rated} rated, {s.missing} missing, {s.retries} retries")

        summary = judge_folder(args.dir, judges, rubrics, dims, (scale.min, scale.max),
                               tries=args.tries, seed=args.seed, limit=args.limit,
                               temperature=args.temperature,
                               on_rating=on_rating)
    if not args.quiet:
        for label, c in summary.by_judge.items():
            console.print(f"{label}: {c['rated']} ratings, {c['missing']} missing")
        console.print(f"already rated (skipped): {summary.skipped}; ratings in "
                      f"{args.dir / 'ratings'}; score them with `localpeer score {args.dir}`")
        for name, n in missing_report(args.dir).items():
            console.print(f"[yellow]{name}: {n} grades missing (output never parsed)[/]")
    if args.json:
        print(json.dumps({"rated": summary.rated, "missing": summary.missing,
                          "skipped": summary.skipped, "retries": summary.retries,
                          "judges": summary.by_judge}))
    return 0
