"""`localpeer judge DIR --judge MODEL.gguf|URL#model [--judge ...] [--rubric standard,contrast]`
and `localpeer judge calibrate --judge ... --data RECORDS.jsonl [--out DIR]`.

    localpeer judge transcripts/ --judge models/gguf/judge.gguf --rubric standard,contrast
    localpeer judge calibrate --judge models/gguf/judge.gguf \
        --data data/personaknob-starter/test.jsonl --limit 16
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


def _check_tries(tries: int) -> None:
    if tries < 1:
        raise InputError(f"--tries {tries}: each grade needs at least one try (default 3); "
                         "with none every grade would be marked missing without asking")


def _check_parallel(parallel: int | None, backends: list, console) -> None:
    """--parallel N: at least 1; a local GGUF runs one request at a time whatever N is."""
    if parallel is not None and parallel < 1:
        raise InputError(f"--parallel {parallel}: run at least 1 request at a time "
                         "(default 8 for servers)")
    local = [getattr(b, "name", "the model") for b in backends
             if not getattr(b, "concurrent", False)]
    if parallel is not None and parallel > 1 and local:
        console.print(f"[yellow]--parallel {parallel}: {', '.join(local)} is a local GGUF "
                      "and runs 1 request at a time (llama.cpp's context is not thread-safe); "
                      "--parallel applies to URL#MODEL servers[/]")


def run_judge(args) -> int:
    from rich.console import Console
    from rich.text import Text

    from localpeer.formats import Scale
    from localpeer.judge.backends import make_judge, need_llama_cpp

    need_llama_cpp(args.judge, why="a GGUF judge runs on llama.cpp")
    _check_tries(args.tries)
    from localpeer.judge.run import (
        constant_judges,
        count_work,
        judge_folder,
        missing_report,
        records_by_id,
    )
    from localpeer.progress import item_progress

    console = Console(stderr=True)
    if not args.dir.is_dir():
        raise InputError("no such transcripts folder", args.dir)
    rubrics = _parse_list(args.rubric, tuple(RUBRICS), "rubric")
    dims = _parse_list(args.dims, DIMENSIONS, "dims")
    scale = Scale.parse(args.scale)
    records = records_by_id(args.data) if args.data else None
    judges = [make_judge(spec, ctx=args.ctx, threads=args.threads) for spec in args.judge]
    parallel = getattr(args, "parallel", None)
    _check_parallel(parallel, judges, console)
    total = count_work(args.dir, judges, rubrics, dims, args.limit, records)
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
                               on_rating=on_rating, records=records, parallel=parallel)
    constant = constant_judges(args.dir, list(summary.by_judge))
    if not args.quiet:
        for label, c in summary.by_judge.items():
            console.print(f"{label}: {c['rated']} ratings, {c['missing']} missing")
        console.print(f"already rated (skipped): {summary.skipped}; ratings in "
                      f"{args.dir / 'ratings'}; score them with `localpeer score {args.dir}`")
        for name, n in missing_report(args.dir).items():
            console.print(f"[yellow]{name}: {n} grades missing (output never parsed)[/]")
        for c in constant:
            console.print(Text(f"{c}: this judge cannot tell these replies apart",
                               style="yellow"))
    if args.json:
        print(json.dumps({"rated": summary.rated, "missing": summary.missing,
                          "skipped": summary.skipped, "retries": summary.retries,
                          "judges": summary.by_judge,
                          "degenerate": [vars(c) for c in constant]}))
    return 0


def run_calibrate(args) -> int:
    """`localpeer judge calibrate`: grade goldens and rejects, write calibration.json, show
    the table and one verdict per judge."""
    from rich.console import Console
    from rich.text import Text

    from localpeer.formats import Scale
    from localpeer.judge import calibrate as cal
    from localpeer.judge.backends import make_judge, need_llama_cpp

    need_llama_cpp(args.judge, why="a GGUF judge runs on llama.cpp")
    _check_tries(args.tries)
    from localpeer.progress import item_progress
    from localpeer.report.calibration import calibration_view

    console = Console(stderr=True)
    rubrics = _parse_list(args.rubric, tuple(RUBRICS), "rubric")
    scale = Scale.parse(args.scale)
    if args.limit < 0:
        raise InputError(f"--limit must be 0 (all records) or more, got {args.limit}")
    cal.check_out_folder(args.out)
    records = cal.stratified_sample(cal.calibration_records(args.data), args.limit, args.seed)
    judges = [make_judge(spec, ctx=args.ctx, threads=args.threads) for spec in args.judge]
    labels = [f"{j.name}:{r}" for j in judges for r in rubrics]
    total = cal.count_grades(records, judges, rubrics)
    with item_progress(console, args.quiet) as progress:
        task = progress.add_task("calibrate", total=total, note="")

        def on_grade(label, run, score):
            progress.update(task, advance=1, description=f"calibrate {label}",
                            note=f"{run.graded} graded, {run.skipped} already there, "
                            f"{run.missing} missing")

        run, grades = cal.grade_all(judges, records, rubrics, args.out, (scale.min, scale.max),
                                    tries=args.tries, seed=args.seed,
                                    temperature=args.temperature, on_grade=on_grade)
    summary = cal.summarise(grades, labels, records)
    doc = cal.summary_json(summary, args.data, len(records), (scale.min, scale.max),
                           rubrics=list(rubrics), temperature=args.temperature,
                           seed=args.seed, limit=args.limit)
    path = cal.write_summary(args.out, doc)
    if not args.quiet:
        console.print(calibration_view(summary, {k: cal.verdict(k, v)
                                                 for k, v in summary.items()}))
        console.print(Text(f"{run.graded} graded now, {run.skipped} already there, "
                           f"{run.missing} missing, {run.retries} retries; grades in "
                           f"{args.out / cal.GRADES_FILE}; summary in {path}; show it beside "
                           f"θ with `localpeer score DIR --calibration {path}`"))
    if args.json:
        print(json.dumps(doc))
    return 0
