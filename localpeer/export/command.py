"""`localpeer export RUN_DIR [--quant Q4_K_M,Q8_0] [--adapter] [--out DIR] [--check-only]`.

    localpeer export runs/smollm2-135m-cpu --adapter

Merges the run's adapter into the fp32 base, converts it to F16 with llama.cpp's converter,
quantizes in-process from the F16 (as calling llama.cpp's tools directly would), checks parity
against the merged HF model (an F32 twin, converted beside the quantizer, gives the sharp check)
and only then renames every file into the export folder; export.json is written last.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

from localpeer.deps import need, require
from localpeer.errors import InputError, WorkFailed
from localpeer.export.outdir import check_out_folder, listed_files, sigterm_unwinds
from localpeer.formats import atomic_write_text, sha256_file

log = logging.getLogger(__name__)
GGUF_ROOT = Path("models") / "gguf"
# the merge and the HF reference (train); the conversion, the parity check and converting the
# embedded default on first use (gguf)
EXPORT_MODULES = ("torch", "transformers", "peft", "safetensors", "llama_cpp", "gguf")


def adapter_sha256(adapter_dir: Path) -> str:
    digest = hashlib.sha256()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        if (adapter_dir / name).is_file():
            digest.update(sha256_file(adapter_dir / name).encode())
    return digest.hexdigest()


def _check_run(run: Path) -> Path:
    if not run.is_dir():
        raise InputError("run folder not found; pass a folder written by `localpeer train` "
                         "(runs/<name>/)", run)
    if not (run / "recipe.yaml").is_file():
        raise InputError("no recipe.yaml in this run folder; is it a `localpeer train` run?", run)
    adapter = run / "adapter"
    config = adapter / "adapter_config.json"
    if not config.is_file():
        raise InputError("no adapter/adapter_config.json; the run has not finished training "
                         "(a checkpoint's adapter can be copied to RUN/adapter)", run)
    try:
        peft_type = json.loads(config.read_text()).get("peft_type")
    except (json.JSONDecodeError, AttributeError, UnicodeDecodeError):
        peft_type = None
    if peft_type != "LORA":
        raise InputError("not a PEFT LoRA adapter config (it needs \"peft_type\": \"LORA\"); "
                         "copy RUN/adapter again from a checkpoint or rerun training", config)
    return adapter


def _base_dir(run: Path) -> Path:
    from localpeer.config import load_recipe
    from localpeer.train.command import model_source

    return Path(model_source(load_recipe(run / "recipe.yaml"))[0])


def _check_disk(base_dir: Path, out: Path, adapter: bool) -> None:
    """The work folder holds the merged fp32 model, an F32 and an F16 GGUF and the quants."""
    cfg = json.loads((base_dir / "config.json").read_text())
    dtype = str(cfg.get("dtype") or cfg.get("torch_dtype") or "float32")
    weights = sum(f.stat().st_size for f in base_dir.glob("*.safetensors"))
    merged_fp32 = weights * (1 if "32" in dtype else 2)
    need = merged_fp32 * (4 if adapter else 3)
    free = shutil.disk_usage(out).free
    if free < need:
        raise InputError(f"export needs about {need / 1e9:.1f} GB free but {out} has "
                         f"{free / 1e9:.1f} GB; free some space or pass --out on another disk")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_work(out: Path) -> list[Path]:
    """Remove work folders left by exports that were killed (their process is gone)."""
    removed = []
    for work in out.glob(".work-*"):
        pid = work.name.removeprefix(".work-")
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(work, ignore_errors=True)
            removed.append(work)
    return removed


def _modelfile(name: str, target: str, eos: str | None) -> str:
    lines = [f"# Ollama: ollama create {name} -f Modelfile",
             "# Ollama reads the chat template from the GGUF metadata (tokenizer.chat_template);",
             "# no TEMPLATE is written here because translating Jinja to Go templates is lossy.",
             f"FROM ./{target}"]
    if eos:
        lines.append(f"PARAMETER stop {json.dumps(eos)}")
    return "\n".join(lines) + "\n"


def _file_entry(path: Path, gguf_type: str) -> dict:
    return {"file": path.name, "type": gguf_type, "size": path.stat().st_size,
            "sha256": sha256_file(path)}


class Stages:
    """Prints each stage with its duration (a line per stage; rich is kept out of the
    library code, this is the command)."""

    def __init__(self, console, quiet: bool):
        self.console, self.quiet, self.timings = console, quiet, {}

    def run(self, label: str, fn, *a, **kw):
        t = time.perf_counter()
        if self.quiet:
            result = fn(*a, **kw)
        else:
            with self.console.status(label + " ..."):
                result = fn(*a, **kw)
        dt = time.perf_counter() - t
        self.timings[label] = round(dt, 1)
        if not self.quiet:
            self.console.print(f"[green]✓[/] {label} ({dt:.1f} s)")
        return result


def _reference(stages: Stages, model, base_dir: Path):
    """(tokenizer, parity.Reference): the probes through the HF tokenizer and model."""
    from localpeer.export.parity import hf_reference

    transformers = require("transformers")

    def reference():
        tok = transformers.AutoTokenizer.from_pretrained(base_dir)
        return tok, hf_reference(model, tok)

    return stages.run("HF reference logits", reference)


def _import_merge_libraries() -> None:
    """torch, transformers and peft, which the merge and the HF reference need (and nothing
    else in an export): its own stage so that its cost is visible."""
    torch = require("torch")
    require("transformers")
    require("peft")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))


class Alongside:
    """Work that runs beside the main line (hashes in a thread, converter processes): started
    early, collected when needed; its wall times go to export.json "alongside_s"."""

    def __init__(self):
        from concurrent.futures import ThreadPoolExecutor

        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sha256")
        self.hashes: dict[str, object] = {}
        self.jobs: list = []
        self.timings: dict[str, float] = {}

    def hash(self, key: str, fn, *args) -> None:
        def timed():
            t = time.perf_counter()
            digest = fn(*args)
            label = "sha256 of the files (a thread)"
            self.timings[label] = round(self.timings.get(label, 0.0) + time.perf_counter() - t,
                                        2)
            return digest
        self.hashes[key] = self.pool.submit(timed)

    def digest(self, key: str) -> str:
        return self.hashes[key].result()

    def close(self) -> None:
        try:
            for job in self.jobs:
                job.kill()
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)


def _convert_and_quantize(stages: Stages, side: Alongside, conv: Path, merged: Path,
                          work: Path, name: str, quants: tuple[str, ...]):
    """The main line: the merged folder to F16, then each quant from the F16; each file is
    hashed (in a thread, on the other core) as soon as it is complete, while the quantizer
    makes the next one. Returns ({type: path}, notes)."""
    from localpeer.export import converter
    from localpeer.export.quantize import quantize

    files = {"F16": work / f"{name}-F16.gguf"}
    stages.run("convert to F16", converter.convert_model, merged, files["F16"], "f16", conv)
    side.hash("F16", sha256_file, files["F16"])
    notes = []
    for q in quants:
        files[q], note = stages.run(f"quantize to {q}", quantize, files["F16"],
                                    work / f"{name}-{q}.gguf", q)
        side.hash(q, sha256_file, files[q])
        if note:
            notes.append(note)
    return files, notes


def _lora_files(stages: Stages, side: Alongside, conv: Path, adapter: Path, base_dir: Path,
                work: Path, name: str) -> tuple[Path, Path]:
    """(base F32 GGUF, LoRA GGUF): the adapter for `llama-cli --lora`, and the base it is
    checked on."""
    from localpeer.export import converter, merge

    staged = merge.stage_adapter(adapter, work / "adapter")
    lora_file = stages.run("convert the adapter to a LoRA GGUF", converter.convert_lora,
                           staged, base_dir, work / f"{name}-lora-F32.gguf", "f32", conv)
    side.hash("LORA-F32", sha256_file, lora_file)
    base_f32 = stages.run("convert the base to F32 (parity: the adapter check)",
                          converter.convert_model, base_dir, work / "base-F32.gguf", "f32",
                          conv)
    return base_f32, lora_file


def _parity_checks(side: Alongside, ref, files: dict, lora, twin_job, merged: Path,
                   keep_f32: bool):
    """Check the files while the F32 twin converts, then the twin; the merged folder goes
    once the twin's converter, its last reader, is done."""
    from localpeer.export import parity

    report = parity.check_export(ref, files, lora)
    t = time.perf_counter()
    twin_job.wait()
    side.timings["convert to F32 (the parity twin, beside the checks)"] = round(
        twin_job.seconds, 1)
    side.timings["waited for the F32 twin"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    shutil.rmtree(merged)
    side.timings["delete the merged HF folder (in the parity stage)"] = round(
        time.perf_counter() - t, 2)
    twin_report = parity.check_export(ref, {"F32": twin_job.outfile})
    if not keep_f32:
        twin_job.outfile.unlink()
    return parity.merge_reports(report, twin_report)


def _publish(stages: Stages, side: Alongside, out: Path, work: Path, keep: dict[str, Path],
             target: Path, eos: str | None, name: str, sources: dict, conv: Path,
             notes: list[str], report) -> dict:
    """The Modelfile, then every kept file renamed into `out`, then export.json last."""
    from localpeer.export import converter

    (work / "Modelfile").write_text(_modelfile(name, target.name, eos))
    t = time.perf_counter()
    digests = {key: side.digest(key) for key in [*keep, "base", "adapter"]}
    stages.timings["wait for the hashes"] = round(time.perf_counter() - t, 1)
    info = {
        "format": 1, "name": name,
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "sources": {**sources, "base_sha256": digests["base"],
                    "adapter_sha256": digests["adapter"],
                    "llama_cpp_python": converter.check_llama_cpp_version(),
                    "converter": converter.converter_info(conv)},
        "files": [{"file": p.name, "type": ty, "size": p.stat().st_size,
                   "sha256": digests[ty]} for ty, p in keep.items()]
        + [_file_entry(work / "Modelfile", "Modelfile")],
        "notes": notes, "parity": report.to_dict(), "timings_s": stages.timings,
        "alongside_s": side.timings}
    old = listed_files(out)
    for p in [*keep.values(), work / "Modelfile"]:
        os.replace(p, out / p.name)
    atomic_write_text(out / "export.json", json.dumps(info, indent=1) + "\n")
    # the folder's managed files are one unit: what the previous export listed and this one
    # does not (another quant, the other run's name) goes, so nothing stale sits beside it
    for name_ in old - {f["file"] for f in info["files"]}:
        (out / name_).unlink(missing_ok=True)
    return info


def _export(args, run: Path, adapter: Path, out: Path, name: str, quants: tuple[str, ...],
            stages: Stages) -> dict:
    """The main line is what calling the converter and the quantizer directly would do:
    convert to F16, quantize each type from it, with a thread hashing each finished file
    beside it. The parity check's work comes before (the HF reference logits, while the
    merged model is still in memory) and after (the F32 twin converts while the other files
    are checked)."""
    from localpeer.export import converter, merge

    conv = converter.find_converter()
    base_dir = _base_dir(run)
    out.mkdir(parents=True, exist_ok=True)
    for stale in clean_stale_work(out):
        log.warning("removed %s, left by an export that was killed", stale)
    _check_disk(base_dir, out, args.adapter)
    work = out / f".work-{os.getpid()}"
    work.mkdir()
    side = Alongside()
    try:
        side.hash("adapter", adapter_sha256, adapter)
        stages.run("import torch, transformers and peft", _import_merge_libraries)
        model = stages.run("merge the adapter into the fp32 base", merge.merged_model,
                           base_dir, adapter)
        merged = stages.run("save the merged model", merge.merge_adapter, base_dir, adapter,
                            work / "merged-hf", model=model)
        from localpeer.train.reference import base_fingerprint

        side.hash("base", base_fingerprint, base_dir)
        tok, ref = _reference(stages, model, base_dir)
        del model  # before the converter runs: it needs the memory more
        files, notes = _convert_and_quantize(stages, side, conv, merged, work, name, quants)
        # the parity reference's twin (fp32, like HF) converts while the other files are
        # checked; it is checked last
        twin = work / f"{name}-F32.gguf"
        twin_job = converter.start_model(merged, twin, "f32", conv)
        side.jobs.append(twin_job)
        lora = None
        if args.adapter:
            lora = _lora_files(stages, side, conv, adapter, base_dir, work, name)
        report = stages.run("parity checks", _parity_checks, side, ref, files, lora, twin_job,
                            merged, args.keep_f32)
        if not report.passed:
            raise WorkFailed("parity check failed, nothing was written to "
                             f"{out}:\n  " + "\n  ".join(report.failures))
        if args.keep_f32:
            side.hash("F32", sha256_file, twin)
        keep = {"F32": twin, **files} if args.keep_f32 else dict(files)
        if lora:
            keep["LORA-F32"] = lora[1]
        target = files.get("Q4_K_M", files[quants[0]] if quants else files["F16"])
        info = _publish(stages, side, out, work, keep, target, tok.eos_token, name,
                        {"run_dir": str(run), "base_dir": str(base_dir)}, conv, notes, report)
        return info
    finally:
        side.close()
        shutil.rmtree(work, ignore_errors=True)


def _check_only(run: Path, adapter: Path, out: Path, stages: Stages) -> dict:
    from localpeer.export import merge, parity

    if not (out / "export.json").is_file():
        raise InputError("no export.json here; run `localpeer export RUN_DIR` first or pass "
                         "--out to the export folder", out)
    info = json.loads((out / "export.json").read_text())
    failures, files = [], {}
    for entry in info["files"]:
        path = out / entry["file"]
        if not path.is_file():
            failures.append(f"{entry['file']} is missing")
        elif stages.run(f"sha256 of {path.name}", sha256_file, path) != entry["sha256"]:
            failures.append(f"{entry['file']} changed since export (sha256 differs)")
        elif entry["type"] in ("F32", "F16") or entry["type"].startswith(("Q", "I", "B", "T")):
            files[entry["type"]] = path
    if not files:
        raise InputError("export.json lists no GGUF model files", out / "export.json")
    base_dir = _base_dir(run)
    model = stages.run("merge the adapter into the fp32 base", merge.merged_model, base_dir,
                       adapter)
    _, ref = _reference(stages, model, base_dir)
    del model
    report = stages.run("parity checks", parity.check_export, ref, files)
    failures += report.failures
    if failures:
        raise WorkFailed("parity check failed for " + str(out) + ":\n  " + "\n  ".join(failures))
    return {"name": info.get("name"), "files": info["files"], "parity": report.to_dict(),
            "notes": ["the LoRA check needs the base F32 GGUF; it runs on a full export only"]}


def _summary(console, out: Path, info: dict) -> None:
    for f in info["files"]:
        console.print(f"  {out / f['file']}  {f.get('size', 0) / 1e6:.1f} MB")
    for fp in info["parity"]["files"]:
        top1 = (f"top-1 {fp['top1_agree_decisive']:.3f} of {fp['decisive_positions']} decisive"
                f" positions, {fp['top1_agree']:.3f} of all {fp['top1_positions']}"
                if fp.get("top1_agree_decisive") is not None else "")
        console.print(f"  parity {fp['file']}: max |Δlogit| {fp['max_abs']:.2e}, {top1}"
                      f"{' (' + fp['tolerance'] + ')' if fp['tolerance'] else ''}")
    console.print(f"  tokens identical on {info['parity']['tokens_identical']} probes; "
                  f"chat template same: {info['parity']['chat_template_same']}")
    for n in info.get("notes", []):
        console.print(f"  note: {n}")


def run_export(args) -> int:
    # before anything else: a missing package is told before any folder is made or work done
    need(*EXPORT_MODULES, why="export merges the adapter and converts the model to GGUF")
    from rich.console import Console

    from localpeer.export.converter import check_llama_cpp_version
    from localpeer.export.quantize import parse_quants

    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    run = Path(args.run_dir)
    names = parse_quants(args.quant)
    quants = tuple(q for q in names if q not in ("F16", "F32", "ALL_F32"))
    args.keep_f32 = args.keep_f32 or bool({"F32", "ALL_F32"} & set(names))  # keep the twin
    adapter = _check_run(run)
    check_llama_cpp_version()
    name = args.name or run.resolve().name
    out = Path(args.out) if args.out else GGUF_ROOT / name
    console = Console(stderr=True)
    stages = Stages(console, getattr(args, "quiet", False))
    if args.check_only:
        info = _check_only(run, adapter, out, stages)
    else:
        check_out_folder(out, run, getattr(args, "force", False))
        with sigterm_unwinds():
            info = _export(args, run, adapter, out, name, quants, stages)
    if not stages.quiet:
        console.print(f"[bold green]export {'check ' if args.check_only else ''}passed[/]: "
                      f"{out}")
        _summary(console, out, info)
    return 0
