"""Log-probs of one fixed batch under one backend, in a process of its own.

unsloth patches transformers and peft when it is imported, so the peft reference must never
share a process with it; test_cuda_training.py runs this once per backend and compares.

    python tests/gpu/logps_worker.py --backend peft --model DIR --batch batch.json --out out.json

batch.json: {"pairs": [[prompt ids, chosen ids, rejected ids], ...], "pad_id": int}. For each
of --quantize (nf4,none) the output holds, with the adapter on and off: `sequence_logps`
(chosen (B,), rejected (B,)), the per-token log-probs of every response token (2B lists),
and the largest |lora_B| (zero at initialisation, so adapter on == base model). Exit 0 and
{"skip": why} when `import unsloth` fails: the caller skips, it does not fail.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", choices=("peft", "unsloth"), required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--batch", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--quantize", default="nf4,none")
    args = parser.parse_args(argv)
    if args.backend == "unsloth":
        # unsloth may hand back empty logits to save memory; localpeer needs them
        os.environ.setdefault("UNSLOTH_RETURN_LOGITS", "1")
        try:
            import unsloth  # noqa: F401  (first: it patches transformers on import)
        except Exception as err:  # not installed, or installed but unusable here
            Path(args.out).write_text(json.dumps(
                {"skip": f"import unsloth failed: {type(err).__name__}: {err}"}))
            return 0
    import torch

    from localpeer.config import load_recipe
    from localpeer.train.backends import load_policy
    from localpeer.train.logps import TokenizedPair, collate

    spec = json.loads(Path(args.batch).read_text())
    pairs = [TokenizedPair(p, c, r, 0, f"pair-{k}") for k, (p, c, r) in enumerate(spec["pairs"])]
    batch = collate(pairs, spec["pad_id"])
    out = {"backend": args.backend, "torch": torch.__version__}
    for quantize in args.quantize.split(","):
        recipe = load_recipe(None, [f"model={args.model}", f"quantize={quantize}",
                                    f"backend={args.backend}", "dtype=auto", "lora.rank=8",
                                    "train.max_length=256", "train.max_prompt_length=128"])
        policy = load_policy(recipe, Path(args.model))
        out[quantize] = logps_on_and_off(policy, batch)
        del policy
        gc.collect()
        torch.cuda.empty_cache()
    Path(args.out).write_text(json.dumps(out))
    return 0


def logps_on_and_off(policy, batch) -> dict:
    import torch

    model = policy.model
    model.eval()
    lora_b = [p.detach().abs().max().item() for n, p in model.named_parameters()
              if "lora_B" in n]
    result = {"backend": policy.backend, "quantized": policy.quantized,
              "lora_b_max": max(lora_b) if lora_b else None, "lora_modules": len(lora_b)}
    with torch.no_grad():
        result["on"] = _logps(model, batch)
        with model.disable_adapter():
            result["off"] = _logps(model, batch)
    return result


def _logps(model, batch) -> dict:
    import torch

    from localpeer.train.logps import sequence_logps

    chosen, rejected = sequence_logps(model, batch)  # (B,) each
    device = next(model.parameters()).device
    ids = batch["input_ids"].to(device)
    logits = model(input_ids=ids, attention_mask=batch["attention_mask"].to(device)).logits
    token_logps = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    token_logps = token_logps.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    mask = batch["response_mask"][:, 1:].to(device)
    return {"chosen": chosen.float().tolist(), "rejected": rejected.float().tolist(),
            "tokens": [row[m].tolist() for row, m in zip(token_logps, mask)],
            "logits_dtype": str(logits.dtype)}


if __name__ == "__main__":
    sys.exit(main())
