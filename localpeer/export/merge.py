"""Merge a run's LoRA adapter into the full-precision base, and stage the adapter for llama.cpp.

    from localpeer.export.merge import merge_adapter
    merge_adapter(Path("models/hf/smollm2-135m-instruct"), Path("runs/x/adapter"), Path("tmp/m"))
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from localpeer.deps import require

log = logging.getLogger(__name__)

# save_pretrained writes config + weights only; the converter also needs these from the base
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
                   "generation_config.json", "tokenizer.model", "special_tokens_map.json",
                   "vocab.json", "merges.txt", "added_tokens.json")


def merged_model(base_dir: Path, adapter_dir: Path):
    """The base in fp32 (never 4-bit: merging into quantized weights loses the update) with the
    adapter folded in; a plain transformers model."""
    torch = require("torch")
    peft = require("peft")
    transformers = require("transformers")
    base = transformers.AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    return peft.PeftModel.from_pretrained(base, adapter_dir).merge_and_unload().eval()


def copy_tokenizer(base_dir: Path, out_dir: Path) -> list[str]:
    copied = []
    for name in TOKENIZER_FILES:
        if (base_dir / name).is_file():
            shutil.copy2(base_dir / name, out_dir / name)
            copied.append(name)
    return copied


def merge_adapter(base_dir: Path, adapter_dir: Path, out_dir: Path, model=None) -> Path:
    """Write the merged model (safetensors) plus the base's tokenizer files to `out_dir`,
    through a temporary sibling folder renamed at the end."""
    model = model if model is not None else merged_model(base_dir, adapter_dir)
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    copy_tokenizer(base_dir, tmp)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return out_dir


def stage_adapter(adapter_dir: Path, dest: Path) -> Path:
    """A copy of the adapter without README.md and with base_model_name_or_path cleaned, so the
    LoRA GGUF does not record local paths."""
    dest.mkdir(parents=True, exist_ok=True)
    for f in adapter_dir.iterdir():
        if f.is_file() and f.name != "README.md":
            shutil.copy2(f, dest / f.name)
    cfg_path = dest / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = None  # --base names the folder; no local path leaks
    cfg_path.write_text(json.dumps(cfg, indent=2))
    return dest
