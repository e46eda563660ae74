"""`localpeer export`: merge, llama.cpp conversion, quantization and parity.

    pytest tests/test_export.py -m "not slow"   # the fast half: argument errors, converter cache
    pytest tests/test_export.py                 # + a real export of SmolLM2-135M with a LoRA

The slow tests need llama.cpp's converter in the cache (`just converter`, once online); they
skip without it. They use the embedded SmolLM2-135M (`localpeer pull`, offline) because the
converter only accepts tokenizers whose pre-tokenizer it knows, which a home-made BPE is not.
"""

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

pytest.importorskip("llama_cpp")

from localpeer.cli import main  # noqa: E402
from localpeer.errors import InputError, WorkFailed  # noqa: E402
from localpeer.export import converter  # noqa: E402
from localpeer.export.merge import stage_adapter  # noqa: E402
from localpeer.export.quantize import fallback_note, parse_quants  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "models" / "hf" / "smollm2-135m-instruct"
VERSION = converter.LLAMA_CPP_PYTHON_VERSION


def fake_run(run: Path, adapter: bool = True) -> Path:
    run.mkdir(parents=True)
    (run / "recipe.yaml").write_text("model: smollm2-135m-instruct\n")
    if adapter:
        (run / "adapter").mkdir()
        (run / "adapter" / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    return run


# ---------------------------------------------------------------- fast: arguments, cache


def test_unknown_quant_exits_2_listing_valid_types(tmp_path, capsys):
    run = fake_run(tmp_path / "run")
    assert main(["export", str(run), "--quant", "Q8_0,Q5_X"]) == 2
    err = capsys.readouterr().err
    assert "'Q5_X'" in err and "Q4_K_M" in err and "Q8_0" in err


def test_parse_quants_normalises_and_dedupes():
    assert parse_quants(" q8_0, Q4_K_M ,q8_0") == ("Q8_0", "Q4_K_M")
    with pytest.raises(InputError, match="empty"):
        parse_quants(" , ")


def test_missing_run_and_run_without_adapter_exit_2(tmp_path, capsys):
    assert main(["export", str(tmp_path / "nope")]) == 2
    assert "run folder not found" in capsys.readouterr().err
    run = fake_run(tmp_path / "bare", adapter=False)
    assert main(["export", str(run)]) == 2
    assert "adapter_config.json" in capsys.readouterr().err


def test_check_only_without_export_exits_2(tmp_path, capsys):
    run = fake_run(tmp_path / "run")
    assert main(["export", str(run), "--check-only", "--out", str(tmp_path / "none")]) == 2
    assert "no export.json" in capsys.readouterr().err


def test_clean_stale_work_keeps_live_exports(tmp_path):
    from localpeer.export.command import clean_stale_work

    (tmp_path / f".work-{os.getpid()}").mkdir()
    (tmp_path / ".work-99999999").mkdir()  # above any pid_max: that process is gone
    assert clean_stale_work(tmp_path) == [tmp_path / ".work-99999999"]
    assert [p.name for p in tmp_path.iterdir()] == [f".work-{os.getpid()}"]


def _fake_sdist(folder: Path, files: dict[str, str]) -> Path:
    path = folder / f"llama_cpp_python-{VERSION}.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"llama_cpp_python-{VERSION}/{name}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


GOOD_SDIST = {"vendor/llama.cpp/convert_hf_to_gguf.py": "print('hf')",
              "vendor/llama.cpp/convert_lora_to_gguf.py": "print('lora')",
              "vendor/llama.cpp/LICENSE": "MIT",
              "vendor/llama.cpp/gguf-py/gguf/__init__.py": "",
              "vendor/llama.cpp/conversion/llama.py": "",
              "vendor/llama.cpp/src/llama.cpp": "// not kept",
              "llama_cpp/llama.py": "# not kept"}


def test_fetch_converter_extracts_only_the_converter_once(tmp_path, monkeypatch):
    calls = []

    def download(version, dest):
        calls.append(version)
        return _fake_sdist(dest, GOOD_SDIST)

    monkeypatch.setenv("LOCALPEER_CACHE", str(tmp_path / "cache"))
    with pytest.raises(InputError, match="just converter"):
        converter.find_converter()
    dest = converter.fetch_converter(download=download)
    assert dest == tmp_path / "cache" / f"llama.cpp-{VERSION}" == converter.find_converter()
    kept = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert kept == [".complete.json", "LICENSE", "conversion/llama.py", "convert_hf_to_gguf.py",
                    "convert_lora_to_gguf.py", "gguf-py/gguf/__init__.py"]
    marker = json.loads((dest / ".complete.json").read_text())
    assert marker["llama_cpp_python"] == VERSION and marker["files"] == 5
    assert converter.fetch_converter(download=download) == dest and calls == [VERSION]
    converter.fetch_converter(download=download, force=True)
    assert calls == [VERSION, VERSION]
    assert [p.name for p in dest.parent.iterdir()] == [dest.name]  # no staging left


def test_fetch_converter_rejects_an_incomplete_sdist(tmp_path):
    bad = {k: v for k, v in GOOD_SDIST.items() if "lora" not in k}
    with pytest.raises(WorkFailed, match="convert_lora_to_gguf.py"):
        converter.fetch_converter(tmp_path, download=lambda v, d: _fake_sdist(d, bad))
    assert list(tmp_path.iterdir()) == []  # no marker, no half-extracted folder


def test_fallback_note_reads_the_quantize_log():
    log = ("llama_model_quantize_impl: quant size  =    98.87 MiB (6.17 BPW)\n"
           "llama_model_quantize_impl: WARNING: 180 of 272 tensor(s) required fallback "
           "quantization\n")
    note = fallback_note("Q4_K_M", log)
    assert "180 of 272" in note and "6.17 bits" in note
    assert fallback_note("Q8_0", "quant size = 138.1 MiB (8.50 BPW)") is None


def test_stage_adapter_drops_readme_and_local_base_path(tmp_path):
    src = tmp_path / "adapter"
    src.mkdir()
    (src / "README.md").write_text("card")
    (src / "adapter_model.safetensors").write_bytes(b"x")
    (src / "adapter_config.json").write_text(json.dumps(
        {"base_model_name_or_path": "/home/me/models/hf/base", "r": 4}))
    staged = stage_adapter(src, tmp_path / "staged")
    assert sorted(p.name for p in staged.iterdir()) == ["adapter_config.json",
                                                         "adapter_model.safetensors"]
    cfg = json.loads((staged / "adapter_config.json").read_text())
    assert cfg == {"base_model_name_or_path": None, "r": 4}


# ---------------------------------------------------------------- slow: a real export


def make_run(run: Path, model: str = "smollm2-135m-instruct") -> Path:
    """A run folder with a random (non-zero) r=4 LoRA on q_proj/v_proj of SmolLM2-135M."""
    import torch
    import yaml
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from localpeer.config import load_recipe, recipe_dict

    run.mkdir(parents=True)
    base = AutoModelForCausalLM.from_pretrained(BASE, dtype=torch.float32)
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"],
                      task_type="CAUSAL_LM")
    policy = get_peft_model(base, lora)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:  # zeros by default: the adapter would change nothing
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    policy.save_pretrained(run / "adapter")
    recipe = recipe_dict(load_recipe(None, [f"model={model}", f"out_dir={run}"]))
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    return run


@pytest.fixture(scope="module")
def converter_ready():
    try:
        return converter.find_converter()
    except InputError as err:
        pytest.skip(str(err))


@pytest.fixture(scope="module")
def run1(converter_ready, tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(ROOT)
        assert main(["pull", "smollm2-135m-instruct", "--quiet"]) == 0
    return make_run(tmp_path_factory.mktemp("export") / "run1")


@pytest.fixture(scope="module")
def exported(run1):
    out = run1.parent / "gguf" / "peer"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(ROOT)
        t = time.perf_counter()
        assert main(["export", str(run1), "--adapter", "--name", "peer", "--out", str(out),
                     "--quiet"]) == 0
        print(f"export took {time.perf_counter() - t:.0f} s")
    return out


@pytest.mark.slow
def test_export_writes_checked_files_that_chat(exported):
    names = sorted(p.name for p in exported.iterdir())
    assert names == ["Modelfile", "export.json", "peer-F16.gguf", "peer-Q4_K_M.gguf",
                     "peer-Q8_0.gguf", "peer-lora-F32.gguf"]
    info = json.loads((exported / "export.json").read_text())
    assert info["sources"]["llama_cpp_python"] == VERSION
    assert len(info["sources"]["base_sha256"]) == 64 and info["sources"]["adapter_sha256"]
    for entry in info["files"]:
        assert (exported / entry["file"]).stat().st_size == entry["size"]
    parity = info["parity"]
    assert parity["passed"] and parity["chat_template_same"]
    assert parity["tokens_identical"] == "24/24"
    by_type = {f["gguf_type"]: f for f in parity["files"]}
    assert by_type["F32"]["max_abs"] <= 5e-4 and by_type["F16"]["max_abs"] <= 0.5
    assert by_type["F16"]["top1_agree_decisive"] >= 0.98
    assert by_type["Q8_0"]["top1_agree_decisive"] >= 0.95
    assert by_type["Q8_0"]["decisive_positions"] >= 100  # the gate is not vacuous
    # the LoRA GGUF on the base F32 GGUF reproduces the merged HF model
    assert by_type["LORA"]["max_abs_last"] <= 1e-4 and by_type["LORA"]["max_abs"] <= 5e-4
    assert any("fallback" in n for n in info["notes"])  # 576-wide rows: no true Q4_K
    # the F32 twin was converted beside the checks, checked, and not kept
    assert info["alongside_s"]["convert to F32 (the parity twin, beside the checks)"] > 0
    assert "F32" in by_type and not any(e["type"] == "F32" for e in info["files"])
    assert list(info["timings_s"])[:4] == ["import torch, transformers and peft",
                                           "merge the adapter into the fp32 base",
                                           "save the merged model", "HF reference logits"]
    modelfile = (exported / "Modelfile").read_text()
    assert "FROM ./peer-Q4_K_M.gguf" in modelfile and 'PARAMETER stop "<|im_end|>"' in modelfile

    from llama_cpp import Llama

    llm = Llama(str(exported / "peer-F16.gguf"), n_ctx=256, n_threads=1, verbose=False)
    try:
        reply = llm.create_chat_completion(
            [{"role": "user", "content": "What is the capital of France?"}],
            temperature=0.0, max_tokens=12, seed=0)
    finally:
        llm.close()
    assert reply["choices"][0]["message"]["content"].strip()


@pytest.mark.slow
def test_check_only_passes_then_fails_naming_a_changed_chat_template(exported, run1, tmp_path,
                                                                     capsys):
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(ROOT)
        assert main(["export", str(run1), "--check-only", "--out", str(exported),
                     "--quiet"]) == 0
    # a base that differs from the exported one only in its chat template
    base = tmp_path / "base"
    base.mkdir()
    for f in BASE.iterdir():
        if f.is_file() and not f.name.startswith("."):
            (base / f.name).symlink_to(f)
    (base / "chat_template.jinja").unlink()
    (base / "chat_template.jinja").write_text(
        (BASE / "chat_template.jinja").read_text() + "{# edited after export #}")
    run2 = tmp_path / "run2"
    run2.mkdir()
    (run2 / "adapter").symlink_to(run1 / "adapter")
    (run2 / "recipe.yaml").write_text(
        (run1 / "recipe.yaml").read_text().replace("model: smollm2-135m-instruct",
                                                   f"model: {base}"))
    assert main(["export", str(run2), "--check-only", "--out", str(exported), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "chat template differs" in err and "tokens differ" not in err


def _converters_writing_into(out: Path) -> list[int]:
    """pids of live processes whose command line names a file under `out`."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
            state = (proc / "stat").read_text().split()[2]
        except (OSError, IndexError):
            continue
        if str(out) in cmdline and "convert_hf_to_gguf" in cmdline and state != "Z":
            pids.append(int(proc.name))
    return pids


@pytest.mark.slow
def test_killed_export_leaves_no_file_at_the_final_path_and_no_converter(run1, tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "localpeer", "export", str(run1), "--quant", "F16",
           "--out", str(out), "--quiet"]
    proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not list(out.glob(".work-*/*.gguf.partial")):
            assert proc.poll() is None, "export ended before writing a GGUF"
            assert time.monotonic() < deadline, "no .partial GGUF appeared"
            time.sleep(0.1)
        assert _converters_writing_into(out)  # the converter is running ...
        proc.kill()  # ... and only the export process is killed
        proc.wait()
        deadline = time.monotonic() + 10
        while _converters_writing_into(out) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _converters_writing_into(out), "the converter outlived the export"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    assert list(out.glob("*.gguf")) == [] and not (out / "export.json").exists()
