"""Reference log-probs: the same model with the LoRA adapter disabled, computed once.

With `train.cache_reference` they are stored in runs/.reference-cache/<key>.safetensors, the
key hashing the tokenized pairs (so data, tokenizer and truncation) and the base weights, the
quantization and the dtype; a later run with the same key skips the reference forward passes.
Training pairs are computed lazily (`LazyReference`): the first time a pair is drawn, in one
no-grad forward over the micro-batch's new pairs, then kept (on disk at every checkpoint), so
a run shorter than an epoch pays only for the pairs it uses and later epochs and runs pay
nothing.

    from localpeer.train.reference import reference_logps
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from localpeer.deps import require
from localpeer.train.backends import resolve_dtype
from localpeer.train.logps import TokenizedPair, collate, sequence_logps, to_device

torch = require("torch")
safetensors_torch = require("safetensors.torch")
load_file, save_file = safetensors_torch.load_file, safetensors_torch.save_file

log = logging.getLogger(__name__)
CACHE = Path("runs") / ".reference-cache"


def base_fingerprint(folder: Path) -> str:
    """sha256 over the base model's config and weights, memoised by file size and mtime."""
    folder = Path(folder)
    memo_path = folder / ".localpeer-hash.json"
    files = sorted([folder / "config.json", *folder.glob("*.safetensors")])
    stamp = [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]
    if memo_path.exists():
        memo = json.loads(memo_path.read_text())
        if memo.get("stamp") == stamp:
            return memo["sha256"]
    digest = hashlib.sha256()
    for f in files:
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                digest.update(block)
    try:
        memo_path.write_text(json.dumps({"stamp": stamp, "sha256": digest.hexdigest()}))
    except OSError:
        pass  # a read-only model folder: hash again next time
    return digest.hexdigest()


def cache_key(policy, pairs: list[TokenizedPair], recipe) -> str:
    digest = hashlib.sha256()
    for p in pairs:
        digest.update(json.dumps([p.prompt, p.chosen, p.rejected]).encode())
    base = base_fingerprint(policy.source) if policy.source else "unknown"
    # the resolved dtype and the device: `dtype: auto` is fp32 on a CPU and bf16 on a GPU,
    # whose log-probs differ; a cache from one must not serve the other
    dtype = resolve_dtype(recipe, policy.device)
    digest.update(f"{base}|{recipe.quantize}|{dtype}|{policy.device.type}|{policy.backend}|v2"
                  .encode())
    return digest.hexdigest()[:24]


def compute_reference(policy, pairs: list[TokenizedPair], batch_size: int,
                      pad_id: int, keep_on_device: bool = False) -> torch.Tensor:
    """(N, 2) reference log-probs of (chosen, rejected), adapter disabled, no gradients, in
    fp32: on the CPU, or with `keep_on_device` where the model is (the training loop's
    per-batch and lazy references: a copy to the host would wait for the GPU).

    With train.cache_reference off, the loop calls this on each micro-batch instead."""
    out = []
    was_training = policy.model.training
    policy.model.eval()
    with torch.no_grad(), policy.model.disable_adapter():
        for start in range(0, len(pairs), batch_size):
            pc, pr = sequence_logps(policy.model, collate(pairs[start:start + batch_size],
                                                          pad_id, policy.share_prompt))
            both = torch.stack([pc, pr], dim=1).float()
            out.append(both if keep_on_device else both.cpu())
    policy.model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, 2)


def reference_logps(policy, pairs: list[TokenizedPair], recipe, pad_id: int,
                    split: str) -> torch.Tensor:
    """All pairs' reference log-probs, from the disk cache when the key matches."""
    path = CACHE / f"{cache_key(policy, pairs, recipe)}.safetensors"
    if path.exists():
        stored = load_file(str(path))["logps"]
        if stored.shape == (len(pairs), 2) and not stored.isnan().any():
            log.info("reference log-probs (%s) from the cache %s", split, path)
            return stored
        # a partial file (the lazy training cache under the same key): computed afresh
    logps = compute_reference(policy, pairs, recipe.train.batch_size, pad_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({"logps": logps.contiguous()}, str(tmp))
    tmp.replace(path)
    return logps


class LazyReference:
    """Reference log-probs of the training pairs, each computed the first time it is used.

    Rows not yet computed are NaN, on disk too; a complete file from `reference_logps` is
    simply all known. The values live on the policy's device and which rows are known is
    tracked on the host, so a lookup never waits for the GPU; `save` copies them back (at a
    checkpoint)."""

    def __init__(self, policy, pairs: list[TokenizedPair], recipe, pad_id: int):
        self.policy, self.pad_id = policy, pad_id
        self.path = CACHE / f"{cache_key(policy, pairs, recipe)}.safetensors"
        logps = torch.full((len(pairs), 2), float("nan"))
        if self.path.exists():
            stored = load_file(str(self.path))["logps"]
            if stored.shape == logps.shape:
                logps = stored.clone()
        self.is_known = ~logps.isnan().any(dim=1)  # (N,) bool, on the host
        self.logps = logps.to(policy.device)
        self.dirty = False

    @property
    def known(self) -> int:
        return int(self.is_known.sum())

    def get(self, ids: list[int], chunk: list[TokenizedPair]) -> torch.Tensor:
        """(len(ids), 2) on the policy's device for the pairs `ids` (whose tokenized pairs are
        `chunk`)."""
        new = [k for k, i in enumerate(ids) if not self.is_known[i]]
        if new:
            values = compute_reference(self.policy, [chunk[k] for k in new], len(new),
                                       self.pad_id, keep_on_device=True)
            rows = [ids[k] for k in new]
            self.logps[to_device(torch.tensor(rows), self.logps.device)] = \
                values.to(self.logps.dtype)
            self.is_known[rows] = True
            self.dirty = True
        return self.logps[to_device(torch.tensor(ids), self.logps.device)]

    def save(self) -> None:
        if not self.dirty:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        save_file({"logps": self.logps.cpu().contiguous()}, str(tmp))
        tmp.replace(self.path)
        self.dirty = False

