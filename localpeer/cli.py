"""The `localpeer` command line. Each subcommand imports its module only when it runs.

    localpeer --help
    localpeer score transcripts/ --json scores.json
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from localpeer import __version__
from localpeer.errors import InputError, WorkFailed

MAIN_EPILOG = """\
the pipeline (each station reads files and writes files):
  PersonaKnob data -> train (QLoRA + Lag-DPO) -> export (GGUF) -> chat / generate
  -> judge -> score -> report

examples:
  localpeer score transcripts/                      grade rated transcripts (MML, 1-5 scale)
  localpeer score ratings.csv --estimator jml       the Facets estimator on a ratings file
  localpeer score --selftest                        simulate, fit and show parameter recovery

exit codes: 0 success, 1 the work failed (e.g. a fit did not converge),
            2 bad input or usage (the message names the file, the line and what to change)
"""

SCORE_EPILOG = """\
input:
  PATH is a transcripts folder or a ratings file. A folder contributes its ratings from
  PATH/ratings/*.csv and *.jsonl, and its transcripts from every other *.jsonl below it
  (used to fill model and item from transcript_id). Ratings are long format, one rating a
  row: model,item,judge,dimension,score[,transcript_id,rationale].

model (per dimension, METHOD.md §3):
  log P(X=k)/P(X=k-1) = theta[model] - delta[prompt] - rho[judge] - tau[k]
  higher theta = better model, higher rho = harsher judge, higher delta = harder prompt.
  mml (default): prompts are a random effect N(0, sigma^2), integrated by adaptive
  Gauss-Hermite quadrature; jml: every prompt a fixed parameter (what Facets does; it
  over-spreads theta when prompts have few ratings).

examples:
  localpeer score transcripts/
  localpeer score transcripts/ --json scores.json --csv scores.csv
  localpeer score chats/ --ratings extra/ratings.csv --scale 0-10
  localpeer score ratings.jsonl --estimator jml --dimension E
  localpeer score --selftest --estimator jml
"""


def _add_score(sub) -> None:
    p = sub.add_parser(
        "score", help="fit a many-facet Rasch model to judge ratings and report model traits",
        description="Separate each chat model's trait from judge severity and prompt difficulty.",
        epilog=SCORE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="*", type=Path, metavar="PATH",
                   help="transcripts folder(s) or ratings file(s)")
    p.add_argument("--ratings", action="append", type=Path, default=[], metavar="FILE",
                   help="an extra ratings file (CSV or JSONL); may be repeated")
    p.add_argument("--estimator", choices=("mml", "jml"), default="mml",
                   help="mml: prompts random (default); jml: joint ML, the Facets estimator")
    p.add_argument("--scale", default="1-5", metavar="MIN-MAX",
                   help="the rating scale (default 1-5)")
    p.add_argument("--dimension", action="append", default=[], metavar="D",
                   help="score only this dimension; may be repeated (default: all)")
    p.add_argument("--json", type=Path, metavar="FILE", help="write every estimate as JSON")
    p.add_argument("--csv", type=Path, metavar="FILE", help="write one row per element as CSV")
    p.add_argument("--quad-points", type=int, default=7, metavar="Q",
                   help="adaptive Gauss-Hermite nodes per prompt for mml (default 7)")
    p.add_argument("--selftest", action="store_true",
                   help="simulate ratings from known parameters, fit them, show the recovery")
    p.add_argument("--replications", type=int, default=10, metavar="R",
                   help="simulated data sets for --selftest (default 10)")
    p.add_argument("--seed", type=int, default=0, help="seed for --selftest (default 0)")
    p.add_argument("--quiet", action="store_true", help="no report on the terminal")
    p.set_defaults(run=_run_score)


def _run_score(args) -> int:
    from localpeer.score.command import run_score

    return run_score(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="localpeer",
        description="Turn a local chat model into a dignified peer, and measure it.",
        epilog=MAIN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"localpeer {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show tracebacks and debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_score(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.run(args)
    except (InputError, WorkFailed) as err:
        if args.debug:
            raise
        print(f"localpeer {args.command}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"localpeer {args.command}: interrupted", file=sys.stderr)
        return 130
