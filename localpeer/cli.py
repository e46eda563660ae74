"""The `localpeer` command line. Each subcommand imports its module only when it runs.

    localpeer --help
    localpeer score transcripts/ --json scores.json
"""

from __future__ import annotations

import argparse
import gc
import logging
import sys

from localpeer import __version__
from localpeer.errors import InputError, WorkFailed

MAIN_EPILOG = """\
the pipeline (each station reads files and writes files):
  PersonaKnob data -> train (QLoRA + Lag-DPO) -> export (GGUF) -> chat / generate
  -> judge -> score -> report

examples:
  python3 dev.py demo                                all of it on the embedded SmolLM2-135M
  localpeer pull smollm2-135m-instruct               the embedded default, offline
  localpeer data validate data/personaknob-starter/  check PersonaKnob records
  localpeer train recipes/smollm2-135m-cpu.yaml      LoRA + Lag-DPO on a CPU
  localpeer export runs/smollm2-135m-cpu             GGUF files + parity check
  localpeer chat MODEL.gguf                          chat in the terminal; transcripts kept
  localpeer generate MODEL.gguf --prompts F --out transcripts/   replies to a prompt file
  localpeer judge transcripts/ --judge J.gguf        rate transcripts on A, T, E, C
  localpeer score transcripts/                       theta per model (MML, 1-5 scale)
  localpeer probe MODEL.gguf --suite sycophancy      the dual-failure probes
  localpeer report runs/demo                         base and trained side by side
  localpeer score --selftest                         simulate, fit, show parameter recovery

exit codes: 0 success, 1 the work failed (e.g. a fit did not converge),
            2 bad input or usage (the message names the file, the line and what to change)
"""


def _subcommand_argv(argv: list[str]) -> list[str]:
    """`judge calibrate ...` -> the `judge-calibrate` parser: `judge` takes its DIR as a
    positional, so argparse cannot also give it a `calibrate` subcommand."""
    for k, word in enumerate(argv):
        if not word.startswith("-"):  # the command (only flags without values come before it)
            if word == "judge" and argv[k + 1:k + 2] == ["calibrate"]:
                return argv[:k] + ["judge-calibrate"] + argv[k + 2:]
            break
    return argv


def _lazy(module: str, function: str):
    """A runner that imports its module only when the command runs."""
    def run(args) -> int:
        import importlib

        return getattr(importlib.import_module(module), function)(args)
    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="localpeer",
        description="Turn a local chat model into a dignified peer, and measure it.",
        epilog=MAIN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"localpeer {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show tracebacks and debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    # imported here: the parser modules take _lazy from this one
    from localpeer.cli_measure import (
        _add_chat,
        _add_generate,
        _add_judge,
        _add_probe,
        _add_report,
        _add_score,
    )
    from localpeer.cli_model import _add_data, _add_export, _add_pull, _add_train

    _add_pull(sub)
    _add_data(sub)
    _add_train(sub)
    _add_export(sub)
    _add_chat(sub)
    _add_generate(sub)
    _add_judge(sub)
    _add_probe(sub)
    _add_report(sub)
    _add_score(sub)
    return parser


def entry(argv: list[str] | None = None) -> int:
    """The console script and `python -m localpeer`: main(), then gc.freeze() before the
    interpreter exits. Freezing moves every live object out of the cyclic collector's reach,
    so shutdown does not walk the millions of objects torch, transformers and peft leave
    behind (measured: 1.3 s of exit after importing them, 0.2 s frozen). atexit handlers still
    run; `__del__` of objects caught in reference cycles may not (localpeer writes every file
    atomically and closes it before a command returns, so nothing waits on one)."""
    rc = main(argv)
    gc.freeze()
    return rc


NETWORK_COMMANDS = ("pull",)  # with the converter's --fetch, all that may use the network
OFFLINE_SWITCHES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE",
                    "HF_HUB_DISABLE_TELEMETRY")


def go_offline() -> None:
    """Offline first: every command but pull sets the Hugging Face libraries' offline switches
    before they are imported, so nothing (transformers, peft, or bitsandbytes fetching a
    kernel through the hub) tries the network. An HTTP judge or server is reached with
    urllib, which these switches do not touch."""
    import os

    for name in OFFLINE_SWITCHES:
        os.environ[name] = "1"
    # transformers' `kernels` dependency says, at every start, that offline it skips a check
    logging.getLogger("kernels").setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(_subcommand_argv(list(sys.argv[1:] if argv is None else argv)))
    if args.command is None:
        parser.print_help()
        return 2
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if args.command not in NETWORK_COMMANDS:
        go_offline()
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
    except OSError as err:  # the machine failed: disk full, read-only or missing path, ...
        if args.debug:
            raise
        print(f"localpeer {args.command}: error: {os_error_message(err)}", file=sys.stderr)
        return 1


OS_HINTS = {"ENOSPC": "free some space or choose another output folder",
            "EROFS": "the file system is read-only: choose another output folder",
            "EACCES": "no permission: choose a folder you can write to",
            "EPERM": "not permitted: choose a folder you can write to",
            "EDQUOT": "the disk quota is used up",
            "EEXIST": "a file of that name is in the way of a folder",
            "ENOTDIR": "a part of the path is a file, not a folder"}


def os_error_message(err: OSError) -> str:
    """'PATH: No space left on device (ENOSPC); free some space ...' from any OSError."""
    import errno

    name = errno.errorcode.get(err.errno or 0, "")
    where = err.filename if err.filename is not None else ""
    what = err.strerror or str(err)
    text = (f"{where}: " if where else "") + what + (f" ({name})" if name else "")
    hint = OS_HINTS.get(name)
    return text + (f"; {hint}" if hint else "")
