"""Checkpoints without pickle: tensors in safetensors, everything else in JSON, written atomically.

    checkpoints/step-N/
        adapter.safetensors     LoRA weights
        optimizer.safetensors   AdamW moments (keys "<param index>.<name>")
        state.json              optimizer hyper-parameters and step counts, scheduler, duals,
                                loss EMAs, sampler cursor, torch RNG, the step, last metrics
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from localpeer.formats import atomic_write_text


def _optimizer_split(optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, state in sd["state"].items():
        for name, value in state.items():
            if torch.is_tensor(value) and value.dim() > 0:
                tensors[f"{idx}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{name}"] = float(value)
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _optimizer_join(tensors: dict, meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    for key, value in meta["scalars"].items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = torch.tensor(value)
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(folder: Path, step: int, adapter: dict[str, torch.Tensor], optimizer,
                    scheduler, extra: dict, tensors: dict[str, torch.Tensor]) -> Path:
    """Write checkpoints/step-N atomically (a temporary folder renamed at the end)."""
    final = Path(folder) / f"step-{step}"
    tmp = Path(folder) / f".step-{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in adapter.items()}, str(tmp / "adapter.safetensors"))
    opt_tensors, opt_meta = _optimizer_split(optimizer)
    save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / "state.safetensors"))
    state = {"step": step, "optimizer": opt_meta, "scheduler": scheduler.state_dict(), **extra}
    atomic_write_text(tmp / "state.json", json.dumps(state))
    for f in tmp.iterdir():
        with f.open("rb") as fh:
            os.fsync(fh.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def latest_checkpoint(folder: Path) -> Path | None:
    steps = [(int(p.name.split("-")[1]), p) for p in Path(folder).glob("step-*")
             if p.is_dir() and (p / "state.json").exists()]
    return max(steps)[1] if steps else None


def prune_checkpoints(folder: Path, keep: int = 2) -> None:
    steps = sorted((int(p.name.split("-")[1]), p) for p in Path(folder).glob("step-*"))
    for _, path in steps[:-keep]:
        shutil.rmtree(path, ignore_errors=True)


def load_checkpoint(path: Path):
    """(state dict, adapter tensors, optimizer state_dict, extra tensors)."""
    path = Path(path)
    state = json.loads((path / "state.json").read_text())
    optimizer = _optimizer_join(load_file(str(path / "optimizer.safetensors")),
                                state["optimizer"])
    return (state, load_file(str(path / "adapter.safetensors")), optimizer,
            load_file(str(path / "state.safetensors")))
