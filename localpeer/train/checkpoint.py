"""Checkpoints without pickle: tensors in safetensors, everything else in JSON, written atomically.

    checkpoints/step-N/
        adapter.safetensors     LoRA weights
        optimizer.safetensors   every tensor of optimizer.state_dict(), keyed by its path
                                ("state/0/exp_avg", "state/0/__bnb_optimizer_quant_state__/...")
        state.json              the rest of optimizer.state_dict() (its nesting, numbers and
                                hyper-parameters, tensors by path), scheduler, duals, loss EMAs,
                                sampler cursor, the step, last metrics
        state.safetensors       duals, loss EMAs, torch RNG

The optimizer state is stored whatever its nesting: torch's AdamW keeps flat per-parameter
moments, bitsandbytes' 8-bit optimizers (AdamW8bit, PagedAdamW8bit) nest their quantization
maps and block maxima under "__bnb_optimizer_quant_state__". The same code saves and loads
both, on CPU and CUDA.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from localpeer.deps import require
from localpeer.formats import atomic_write_text

torch = require("torch")
safetensors_torch = require("safetensors.torch")
load_file, save_file = safetensors_torch.load_file, safetensors_torch.save_file


def _encode(value, path: str, tensors: dict[str, torch.Tensor], seen: dict | None = None):
    """Optimizer state of any nesting -> JSON data, its tensors moved into `tensors` under their
    path ("/state/3/__bnb_optimizer_quant_state__/absmax1"). Dict keys keep their type (torch
    numbers parameters by int, bitsandbytes nests string keys), tuples stay tuples, and 0-dim
    tensors stay tensors of their own dtype, so the load gives back exactly what was saved.
    A tensor that several entries share (bitsandbytes' quantization maps, one for all
    parameters) is stored once and referenced by its first path, so it is shared again after
    the load; safetensors refuses tensors that share memory."""
    seen = {} if seen is None else seen
    if torch.is_tensor(value):
        same = (value.device, value.data_ptr(), value.dtype, tuple(value.shape),
                tuple(value.stride()))
        if same not in seen:
            seen[same] = path
            tensors[path] = value.detach().to("cpu", copy=True).contiguous()
        return {"tensor": seen[same]}
    if isinstance(value, dict):
        return {"dict": [[_key(k), _encode(v, f"{path}/{k}", tensors, seen)]
                         for k, v in value.items()]}
    if isinstance(value, list | tuple):
        kind = "tuple" if isinstance(value, tuple) else "list"
        return {kind: [_encode(v, f"{path}/{i}", tensors, seen) for i, v in enumerate(value)]}
    if value is None or isinstance(value, bool | int | float | str):
        return {"value": value}
    raise TypeError(f"optimizer state at {path} holds a {type(value).__name__}, which a "
                    "checkpoint cannot store without pickle")


def _key(k) -> list:
    if isinstance(k, bool) or not isinstance(k, int | str):
        raise TypeError(f"optimizer state key {k!r} is neither an int nor a string")
    return ["int" if isinstance(k, int) else "str", k]


def _decode(node, tensors: dict[str, torch.Tensor]):
    (kind, body), = node.items()
    if kind == "tensor":
        return tensors[body]
    if kind == "dict":
        return {int(k) if t == "int" else k: _decode(v, tensors) for (t, k), v in body}
    if kind in ("list", "tuple"):
        items = [_decode(v, tensors) for v in body]
        return tuple(items) if kind == "tuple" else items
    return body


def _optimizer_split(optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors for optimizer.safetensors, JSON for state.json) of optimizer.state_dict()."""
    tensors: dict[str, torch.Tensor] = {}
    return tensors, {"format": 2, "state_dict": _encode(optimizer.state_dict(), "", tensors)}


def _optimizer_join(tensors: dict, meta: dict) -> dict:
    if meta.get("format") == 2:
        return _decode(meta["state_dict"], tensors)
    # format 1 (checkpoints written before 2026-12): flat "<param>.<name>" keys, scalars as floats
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
