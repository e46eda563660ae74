"""The `localpeer` subcommands that use and measure a model: chat, generate, judge (and judge
calibrate), probe, report, score (their parsers and help texts; `localpeer.cli` puts them
together).

    localpeer score --help
"""

from __future__ import annotations

import argparse
from pathlib import Path

from localpeer.cli import _lazy
from localpeer.dimensions import DIMS, describe

CHAT_EPILOG = """\
Chat with a GGUF in the terminal (llama-cpp-python). Replies stream as they are written; every
completed turn is appended to a transcript in --transcripts (default transcripts/) and fsynced,
so `localpeer score transcripts/` can grade it and a crash loses at most the turn in flight.
The chat template comes from the GGUF and is rendered in a sandbox; a template that reaches for
Python internals is refused (exit 2). The context is the GGUF's trained length (capped at 8192)
or --ctx; when a conversation outgrows it, the oldest turns are left out with a notice.

In the chat: /help /system TEXT /reset /retry /undo /save [FILE] /load FILE /quit;
\"\"\" on its own line starts and ends multi-line input; Ctrl-C stops a reply.

examples:
  localpeer chat models/gguf/peer-smollm2-135m/peer-smollm2-135m-Q8_0.gguf
  localpeer chat MODEL.gguf --system "Be direct." --temperature 0.3 --ctx 4096
  localpeer chat MODEL.gguf -p "Is it safe to give honey to a six-month-old?"
"""

GENERATE_EPILOG = """\
Replies to every prompt of a JSONL file (lines with "id" and "messages" or "prompt", so
PersonaKnob records work as they are), appended to DIR/<model>.jsonl as transcripts with ids
<model>/<item>/s<k>. Rerunning skips the ids already written (resume after Ctrl-C or a crash);
sample k of an item always gets the same seed.

MODEL may be an OpenAI-compatible server ([NAME=]http(s)://host:port/v1#MODEL: llama-server,
vLLM, Ollama): --parallel requests at once (default 8), each with --temperature, --top-p,
--max-tokens and its sample's seed, retried on 429, 5xx, timeouts and dropped connections;
one that still fails is reported and not written (a rerun asks again). The transcripts record
the URL and model instead of the GGUF's hash. A bearer token is read from LOCALPEER_API_KEY.
A local GGUF always runs one reply at a time.

examples:
  localpeer generate MODEL.gguf --prompts data/personaknob-starter/test.jsonl --out transcripts/
  localpeer generate MODEL.gguf --prompts probes.jsonl --out transcripts/ --samples 3 --seed 7
  localpeer generate qwen=http://localhost:8000/v1#Qwen/Qwen2.5-7B-Instruct \\
      --prompts data/personaknob-starter/test.jsonl --out transcripts/ --parallel 16
"""


def _sampler_flags(p) -> None:
    p.add_argument("--temperature", type=float, default=0.7, help="0 = greedy (default 0.7)")
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling (default 0.95)")
    p.add_argument("--top-k", type=int, default=40, help="default 40")
    p.add_argument("--repeat-penalty", type=float, default=1.0, help="default 1.0 (off)")
    p.add_argument("--max-tokens", type=int, default=512, help="per reply (default 512)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--ctx", type=int, default=0, metavar="N",
                   help="context tokens (default: the GGUF's trained context, at most 8192)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: llama.cpp's)")


def _add_chat(sub) -> None:
    p = sub.add_parser("chat", help="chat with a GGUF in the terminal; transcripts kept",
                       description="Chat with a GGUF model; every turn is saved.",
                       epilog=CHAT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path, metavar="MODEL.gguf")
    p.add_argument("--system", metavar="TEXT", help="system message")
    p.add_argument("-p", "--prompt", metavar="TEXT", help="one message, print the reply, exit")
    p.add_argument("--transcripts", type=Path, default=Path("transcripts"), metavar="DIR",
                   help="where transcripts go (default transcripts/)")
    p.add_argument("--no-save", action="store_true", help="keep no transcript")
    p.add_argument("--name", metavar="NAME", help="model name in transcripts (default: file stem)")
    _sampler_flags(p)
    p.set_defaults(run=_lazy("localpeer.chat.repl", "run_chat"))


def _add_generate(sub) -> None:
    p = sub.add_parser("generate", help="replies to a file of prompts, as transcripts; resumable",
                       description="Generate replies to a JSONL of prompts.",
                       epilog=GENERATE_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    # a str, not a Path: Path would fold the URL's "//"
    p.add_argument("model", metavar="MODEL.gguf|URL#MODEL",
                   help="a GGUF file or [NAME=]http(s)://host:port/v1#MODEL")
    p.add_argument("--prompts", type=Path, required=True, metavar="FILE",
                   help="JSONL: id + messages or prompt")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="transcripts folder")
    p.add_argument("--samples", type=int, default=1, help="replies per prompt (default 1)")
    p.add_argument("--system", metavar="TEXT", help="system message for prompts without one")
    p.add_argument("--name", metavar="NAME", help="model name (default: the GGUF file stem)")
    p.add_argument("--limit", type=int, default=0, help="only the first N prompts")
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--parallel", type=int, default=None, metavar="N",
                   help="requests at once to a URL#MODEL server (default 8); a GGUF runs 1")
    _sampler_flags(p)
    p.set_defaults(run=_lazy("localpeer.chat.generate", "run_generate"))


JUDGE_EPILOG = f"""\
Grade every transcript under DIR on {describe()},
with rubrics that describe every score level. Local GGUF judges answer through a JSON-schema
grammar ({{"rationale": str, "score": int}}, rationale first); OpenAI-compatible servers
(llama-server, vLLM, Ollama) get the same schema, in the same order, as response_format. The
transcript is delimited and the judge told to ignore instructions inside it. Output that does
not parse is retried (--tries), then recorded in DIR/ratings/<judge>.missing, never guessed.
Ratings are appended to DIR/ratings/<judge>:<rubric>.jsonl; a rerun skips what is there.

A transcript that answers a PersonaKnob record (generated from a records file, or its item
found in --data RECORDS.jsonl) is graded only on the record's masked dimensions, and the judge
sees the record's scenario (seed_scene, context) as background. At the end, a judge that gave
one grade to every transcript of a dimension is reported as degenerate.

--rubric standard,contrast makes each judge two judges: the same model with two phrasings of
the rubric, labelled <judge>:standard and <judge>:contrast.

check a judge before believing it: `localpeer judge calibrate` grades held-out goldens
against their rejects (localpeer judge calibrate --help).

examples:
  localpeer judge transcripts/ --judge models/gguf/judge/judge-Q8_0.gguf
  localpeer judge transcripts/ --judge qwen=http://localhost:8080/v1#qwen2.5-7b --judge local=J.gguf
  localpeer judge transcripts/ --judge J.gguf --rubric standard,contrast --dims A,T
  localpeer judge transcripts/ --judge J.gguf --data data/personaknob-starter/test.jsonl
  localpeer judge calibrate --judge J.gguf --data data/personaknob-starter/test.jsonl
then: localpeer score transcripts/ --calibration runs/calibration/calibration.json
"""

CALIBRATE_EPILOG = """\
what is measured (METHOD.md §4: judges are checked before they are believed):
  for each held-out PersonaKnob record and each active dimension k, the judge grades the
  golden and reject_k on k, each as the conversation [user: prompt, assistant: response] with
  the record's scenario as background, exactly as `localpeer judge` grades (same prompt,
  schema, retries). Per judge label (<judge>:<rubric>, as in the ratings) and dimension:
    accuracy = share of pairs with the golden graded above reject_k (a tie counts half),
  with a Wilson 95% interval and n (pairs where both grades parsed; grades that never
  parsed are counted as missing, not guessed).

flags (localpeer defines them):
  degenerate  the judge gave one grade to everything it graded on the dimension
              (then it is also at chance)
  chance      the 95% interval contains 50%: on that dimension the judge cannot be told
              from a coin, and θ on it is not interpretable from this judge
  reversed    the interval lies below 50%: the judge prefers the rejects

writes OUT/calibration-grades.jsonl (every grade, fsynced; a rerun skips what is there) and
OUT/calibration.json (per judge and dimension: accuracy, low, high, n, flag, at_chance,
degenerate, reversed, missing, golden_mean, reject_mean). OUT must be a folder of its own,
not a transcripts folder. `localpeer score DIR --calibration OUT/calibration.json` shows the
calibration beside each judge's severity and names the dimensions a judge cannot vouch for.
--limit N draws N records spread over the dimensions and masks (with --seed), not the first N.

examples:
  localpeer judge calibrate --judge J.gguf --data data/personaknob-starter/test.jsonl
  localpeer judge calibrate --judge smol=SMOL.gguf --rubric standard,contrast \\
      --data data/personaknob-starter/test.jsonl --limit 16 --temperature 1.0 --out runs/cal
  localpeer judge calibrate --judge qwen=http://localhost:8080/v1#qwen2.5-7b \\
      --data data/personaknob/test.jsonl --json
"""


def _judge_backend_flags(p) -> None:
    p.add_argument("--judge", action="append", required=True, metavar="[NAME=]MODEL.gguf|URL#MODEL",
                   help="a judge; repeat for several")
    p.add_argument("--rubric", default="standard", help="standard, contrast or both "
                   "(comma-separated; default standard)")
    p.add_argument("--scale", default="1-5", help="score scale (default 1-5)")
    p.add_argument("--tries", type=int, default=3, help="tries per grade before 'missing'")
    p.add_argument("--temperature", type=float, default=0.0,
                   help="judge sampling temperature (default 0: greedy); the score is sampled "
                   "from the grammar-constrained distribution")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ctx", type=int, default=4096, help="local judges' context (default 4096)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    p.add_argument("--quiet", action="store_true")


def _add_judge(sub) -> None:
    p = sub.add_parser("judge", help="rate transcripts on A, T, E, C with local or HTTP judges; "
                       "`judge calibrate` checks a judge first",
                       usage="localpeer judge DIR --judge J [options]\n"
                             "       localpeer judge calibrate --judge J --data RECORDS.jsonl "
                             "[options]",
                       description="Rate transcripts with LLM judges.", epilog=JUDGE_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir", type=Path, metavar="DIR", help="a transcripts folder (the word "
                   "calibrate here starts `localpeer judge calibrate`; write ./calibrate for a "
                   "folder of that name)")
    _judge_backend_flags(p)
    p.add_argument("--dims", default=",".join(DIMS), help=f"dimensions (default {','.join(DIMS)})")
    p.add_argument("--data", type=Path, metavar="RECORDS.jsonl",
                   help="PersonaKnob records: a transcript whose item is a record's id is graded "
                   "on its masked dimensions only, with its scenario shown to the judge")
    p.add_argument("--limit", type=int, default=0, help="only the first N transcripts")
    p.add_argument("--parallel", type=int, default=None, metavar="N",
                   help="requests at once to each URL#MODEL judge (default 8); a GGUF judge "
                   "runs 1")
    p.set_defaults(run=_lazy("localpeer.judge.command", "run_judge"))
    # Reached as `localpeer judge calibrate` through _subcommand_argv; no help=, so the
    # top-level command list does not show it twice.
    c = sub.add_parser("judge-calibrate", prog="localpeer judge calibrate",
                       description="Check judges on held-out PersonaKnob pairs: how often does "
                       "each grade the golden above its reject?", epilog=CALIBRATE_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _judge_backend_flags(c)
    c.add_argument("--data", type=Path, required=True, metavar="RECORDS.jsonl",
                   help="held-out PersonaKnob records, e.g. data/personaknob-starter/test.jsonl")
    c.add_argument("--limit", type=int, default=0, metavar="N",
                   help="N records drawn stratified by dimension and mask (default: all)")
    c.add_argument("--out", type=Path, default=Path("runs/calibration"), metavar="DIR",
                   help="where calibration-grades.jsonl and calibration.json go "
                   "(default runs/calibration)")
    c.set_defaults(run=_lazy("localpeer.judge.command", "run_calibrate"),
                   command="judge calibrate")



PROBE_EPILOG = """\
Dual-failure probes (METHOD.md §4), written for localpeer as data files
(localpeer/probes/data/README.md):
  sycophancy  216 questions over 9 domains with a checkable key (number, choice, name), then
              "I'm quite sure it's X": each answer is read by a constrained "Final answer
              only" turn and compared with the key; sycophancy rate (correct first answers
              that are not correct after the push-back) and consistency
  refusal     150 benign requests that look risky and 100 clearly harmful ones: safe
              compliance and unsafe refusal, decided by --judge, with a refusal-phrase
              pattern check beside
  select      per-dimension selection accuracy on PersonaKnob test pairs from log-likelihoods
              (GGUF or HF folder; no judge)
Every rate comes with its count and a Wilson 95% interval. Every exchange is appended to
OUT/<model>-<suite>.jsonl (a rerun resumes); the metrics and the per-item outcomes go to
OUT/<model>-<suite>.json, which `localpeer report` reads (McNemar's test needs the base and the
trained model run on the same items: the same --limit and --seed).

examples:
  localpeer probe models/gguf/peer-smollm2-135m/peer-smollm2-135m-Q8_0.gguf --suite sycophancy
  localpeer probe MODEL.gguf --suite refusal --judge models/gguf/judge/judge-Q8_0.gguf
  localpeer probe MODEL.gguf --suite sycophancy --limit 48 --seed 1   # 48 items, all domains
  localpeer probe models/hf/smollm2-135m-instruct --suite select
"""


def _add_probe(sub) -> None:
    p = sub.add_parser("probe", help="sycophancy, over-/under-refusal and selection probes",
                       description="Measure the dual failure: sycophancy and refusal.",
                       epilog=PROBE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="MODEL.gguf|HF_DIR")
    p.add_argument("--suite", required=True, help="sycophancy, refusal or select")
    p.add_argument("--judge", metavar="[NAME=]MODEL.gguf|URL#MODEL",
                   help="decides refusals (refusal suite); without it only the pattern check")
    p.add_argument("--out", type=Path, default=Path("runs") / "probes", metavar="DIR",
                   help="where exchanges and results go (default runs/probes)")
    p.add_argument("--name", help="model name (default: file stem or folder name)")
    p.add_argument("--pairs", type=Path, default=Path("data/personaknob-starter/test.jsonl"),
                   help="PersonaKnob records for --suite select")
    p.add_argument("--limit", type=int, default=0,
                   help="N items drawn stratified by domain / category / dimension with --seed "
                   "(refusal: N per half; default 0 = all)")
    p.add_argument("--temperature", type=float, default=0.0, help="default 0 (greedy)")
    p.add_argument("--max-tokens", type=int, default=160, help="per reply (default 160)")
    p.add_argument("--seed", type=int, default=0,
                   help="sampling seed and the seed of --limit's draw (default 0)")
    p.add_argument("--ctx", type=int, default=2048)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", action="store_true", help="print the result JSON on stdout")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(run=_lazy("localpeer.probes.command", "run_probe"))


REPORT_EPILOG = """\
One report with base and trained side by side: θ per dimension with 95% CIs, Δθ with z and p
(from `localpeer score --json`), judge severities with their calibration (`localpeer judge
calibrate`), the dual-failure rates and selection accuracy (from `localpeer probe`) each with
its count and Wilson 95% interval, McNemar's test on the same items, the training curves
(metrics.jsonl) and the export parity (export.json). A change reads "better" or "worse" only
when its test gives p <= 0.05, otherwise "no detectable change"; a rate at 0% or 100% for both
models is named degenerate; θ from a judge that fails calibration is marked not
interpretable. A folder's report.json names the parts (`just demo` writes one); flags
override it. --html writes the same report as a standalone page (tables, SVG plots, no
script, nothing from a network).

examples:
  localpeer report runs/demo
  localpeer report runs/demo --html runs/demo/report.html
  localpeer report runs/smollm2-135m-cpu
  localpeer report out/ --base base --trained peer --score out/score.json --probes out/probes
"""


def _add_report(sub) -> None:
    p = sub.add_parser("report", help="base vs trained: θ, dual failure, curves, parity",
                       description="The side-by-side report.", epilog=REPORT_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir", type=Path, metavar="RUN_DIR|DIR")
    p.add_argument("--base", help="the base model's name in ratings and probes")
    p.add_argument("--trained", help="the trained model's name")
    p.add_argument("--score", help="score JSON (default DIR/score.json)")
    p.add_argument("--probes", help="probe results folder (default DIR/probes)")
    p.add_argument("--run", dest="run_folder", help="the training run folder")
    p.add_argument("--export", help="the export folder (export.json)")
    p.add_argument("--calibration", metavar="FILE",
                   help="calibration.json of `localpeer judge calibrate` (default "
                   "DIR/calibration.json)")
    p.add_argument("--html", metavar="FILE", help="also write the report as an HTML page")
    p.add_argument("--width", type=int, default=None, help="terminal width for the report")
    p.set_defaults(run=_lazy("localpeer.report.command", "run_report"))



def _run_score(args) -> int:
    from localpeer.score.command import run_score

    return run_score(args)



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
    p.add_argument("--calibration", type=Path, metavar="FILE",
                   help="a `localpeer judge calibrate` calibration.json, shown beside each "
                   "judge (default: PATH/calibration.json or PATH/ratings/calibration.json "
                   "when there)")
    p.add_argument("--quad-points", type=int, default=7, metavar="Q",
                   help="adaptive Gauss-Hermite nodes per prompt for mml (default 7)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="threads for mml's quadrature nodes (default: the CPUs, or "
                   "OMP_NUM_THREADS when set, at most one a node); any N gives the same numbers")
    p.add_argument("--selftest", action="store_true",
                   help="simulate ratings from known parameters, fit them, show the recovery")
    p.add_argument("--replications", type=int, default=10, metavar="R",
                   help="simulated data sets for --selftest (default 10)")
    p.add_argument("--seed", type=int, default=0, help="seed for --selftest (default 0)")
    p.add_argument("--quiet", action="store_true", help="no report on the terminal")
    p.set_defaults(run=_run_score)
