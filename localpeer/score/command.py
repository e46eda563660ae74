"""`localpeer score`: read ratings, fit every dimension, report, write JSON/CSV.

    localpeer score transcripts/ --json scores.json
    localpeer score transcripts/ --calibration runs/calibration/calibration.json
    localpeer score --selftest

A judge calibration (`localpeer judge calibrate`) is shown beside each judge's severity when
one is found: --calibration FILE, else PATH/calibration.json or PATH/ratings/calibration.json.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace

import numpy as np

from localpeer.errors import InputError, WorkFailed

log = logging.getLogger(__name__)


def _console(quiet: bool):
    from rich.console import Console

    return Console(quiet=quiet)


def ratings_arrays(columns, dimensions: list[str]):
    """Long-format columns (models, items, judges, dimensions as `formats.Labels`, scores) of
    the chosen dimensions, from `formats.RatingColumns`."""
    if dimensions:
        wanted = [k for k, name in enumerate(columns.dimension.names) if name in dimensions]
        if not wanted:
            found = sorted(columns.dimension.names)
            raise InputError(f"no ratings for dimension(s) {', '.join(dimensions)}; "
                             f"the ratings have {', '.join(found)}")
        if len(wanted) < len(columns.dimension.names):
            columns = columns.select(np.isin(columns.dimension.codes, wanted))
    return columns.model, columns.item, columns.judge, columns.dimension, columns.score


def _refuse_overwriting_inputs(args) -> None:
    """--json or --csv naming a file the command reads (e.g. `score X.csv --csv X.csv`)."""
    from pathlib import Path

    from localpeer.formats import _collect

    ratings, transcripts = _collect(list(args.paths), list(args.ratings))
    inputs = {Path(p).resolve() for p in (*ratings, *transcripts)}
    for flag, out in (("--json", args.json), ("--csv", args.csv)):
        if out is not None and Path(out).resolve() in inputs:
            raise InputError(f"{flag} {out} is one of the files being read; write the result "
                             "to another file", out)


def run_score(args) -> int:
    from localpeer.formats import Scale, atomic_write_text, load_rating_columns
    from localpeer.judge.calibrate import find_calibration, read_calibration
    from localpeer.report import render_score
    from localpeer.score.result import to_csv, to_json_dict
    from localpeer.score.run import score_arrays

    if args.quad_points < 1:
        raise InputError("--quad-points must be at least 1 (7 is plenty for most data)")
    if args.threads is not None and args.threads < 1:
        raise InputError("--threads must be at least 1 (leave it out to use every CPU)")
    if args.selftest:
        return run_selftest(args)
    if not args.paths and not args.ratings:
        raise InputError("give a transcripts folder or a ratings file, e.g. "
                         "`localpeer score transcripts/` (or --selftest)")
    scale = Scale.parse(args.scale)
    _refuse_overwriting_inputs(args)
    ratings = load_rating_columns(list(args.paths), scale, list(args.ratings))
    models, items, judges, dims, scores = ratings_arrays(ratings, args.dimension)
    console = _console(args.quiet)
    calibration = find_calibration(args.paths, getattr(args, "calibration", None))
    with console.status(f"fitting {len(scores):,} ratings ({args.estimator})"):
        result = score_arrays(models, items, judges, dims, scores, scale.min, scale.max,
                              estimator=args.estimator, quad_points=args.quad_points,
                              threads=args.threads)
    if calibration is not None:
        result = replace(result, calibration=read_calibration(calibration),
                         calibration_file=str(calibration))
    render_score(result, console)
    if args.json:
        atomic_write_text(args.json, json.dumps(to_json_dict(result), indent=2) + "\n")
        console.print(f"wrote {args.json}")
    if args.csv:
        atomic_write_text(args.csv, to_csv(result))
        console.print(f"wrote {args.csv}")
    failed = [d for d, r in result.dimensions.items() if not r.converged]
    if failed:
        raise WorkFailed(f"the fit did not converge for dimension(s) {', '.join(failed)}; "
                         "see the warnings above (try --estimator mml, or check for "
                         "near-extreme elements)")
    return 0


def run_selftest(args) -> int:
    """Simulate 5 models x 200 prompts x 3 judges, fit, and compare with the truth."""
    from localpeer.report import render_selftest
    from localpeer.score.design import build_design
    from localpeer.score.run import fit
    from localpeer.score.simulate import simulate

    console = _console(args.quiet)
    if args.replications < 1:
        raise InputError("--replications must be at least 1")
    truths, estimates, ses, rows = [], [], [], []
    for r in range(args.replications):
        sim = simulate(n_models=5, n_items=200, n_judges=3, seed=args.seed + r)
        design = build_design("selftest", sim.models, sim.items, sim.judges, sim.scores,
                              sim.scale_min, sim.scale_max)
        est = fit(design, args.estimator, args.quad_points, args.threads)
        order = [int(name.split("-")[1]) for name in design.models.kept]
        truth = sim.truth.theta[order]
        truths.append(truth)
        estimates.append(est.theta)
        ses.append(est.theta_se)
        if r == 0:
            for k, name in enumerate(design.models.kept):
                covered = abs(est.theta[k] - truth[k]) <= 1.959964 * est.theta_se[k]
                rows.append({"parameter": f"theta[{name}]", "truth": float(truth[k]),
                             "estimate": float(est.theta[k]), "se": float(est.theta_se[k]),
                             "covered": bool(covered)})
    truth, est, se = (np.concatenate(a) for a in (truths, estimates, ses))
    slope = float(np.polyfit(truth, est, 1)[0])
    coverage = float(np.mean(np.abs(est - truth) <= 1.959964 * se))
    summary = {"estimator": args.estimator, "slope": slope, "coverage": coverage,
               "replications": args.replications, "n_estimates": int(truth.size)}
    render_selftest(rows, summary, console)
    if not 0.85 <= slope <= 1.15:
        raise WorkFailed(f"selftest: recovery slope {slope:.3f} is outside 0.85-1.15")
    return 0
