"""Selection accuracy (METHOD.md §4): per dimension, the share of held-out PersonaKnob pairs
where the model gives the golden response a higher length-normalised log-likelihood than the
reject. No judge. From a GGUF (llama-cpp-python, logits of every position) or an HF folder
(transformers, the training code's packed log-probs).

    from localpeer.probes.select import selection_accuracy
    result = selection_accuracy(Path("model.gguf"), pairs)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from localpeer.data.personaknob import Pair
from localpeer.deps import require
from localpeer.dimensions import in_order
from localpeer.probes.suites import rate_json


def _summarise(pairs: list[Pair], oks: list[bool]) -> dict:
    """Selection accuracy per dimension (with its Wilson interval under "rates"), the mean over
    dimensions, and each pair's outcome keyed "<record id>/<dim>" ("#2", "#3" on repeats: a
    graded record gives several pairs on one dimension)."""
    hits = {d: [bool(ok) for p, ok in zip(pairs, oks) if p.dim == d]
            for d in in_order({p.dim for p in pairs})}
    per = {d: {"pairs": len(h), "selection_accuracy": float(np.mean(h))} for d, h in hits.items()}
    mean = float(np.mean([v["selection_accuracy"] for v in per.values()])) if per else None
    rates = {f"selection_accuracy/{d}": rate_json(sum(h), len(h)) for d, h in hits.items()}
    outcomes: dict[str, dict] = {}
    for p, ok in zip(pairs, oks):
        key = base = f"{p.record_id}/{p.dim}"
        repeat = 1
        while key in outcomes:
            repeat += 1
            key = f"{base}#{repeat}"
        outcomes[key] = {"dim": p.dim, "ok": bool(ok)}
    return {"pairs": len(pairs), "dims": per, "mean_selection_accuracy": mean, "rates": rates,
            "outcomes": outcomes}


def gguf_selection(path: Path, pairs: list[Pair], ctx: int = 2048, threads: int | None = None,
                   on_pair: Callable[[], None] | None = None) -> dict:
    from localpeer.chat.session import GGUF_RUNS, load_engine

    llama_cpp = require("llama_cpp", why=GGUF_RUNS)
    engine = load_engine(path, ctx=ctx, threads=threads)  # template (sandboxed) and tokenizer
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=ctx, n_batch=min(ctx, 512),
                          n_threads=threads, logits_all=True, verbose=False)
    cache: dict[tuple[str, str], tuple[float, int]] = {}

    def mean_logp(prompt: str, response: str) -> tuple[float, int]:
        if (prompt, response) in cache:
            return cache[(prompt, response)]
        user = [{"role": "user", "content": prompt}]
        head = engine.tokens(user)
        text = engine.template.render(user + [{"role": "assistant", "content": response}],
                                      add_generation_prompt=False)
        bos = engine.template.bos_token
        full = llm.tokenize(text.encode("utf-8"), special=True,
                            add_bos=engine.add_bos and not (bos and text.startswith(bos)))
        if full[:len(head)] != head:  # the template renders the turn differently: plain append
            full = head + llm.tokenize(response.encode("utf-8"), add_bos=False, special=False)
        full = full[:ctx]
        llm.reset()
        llm.eval(full)
        logits = np.asarray(llm.scores[len(head) - 1:len(full) - 1], dtype=np.float64)
        top = logits.max(axis=-1, keepdims=True)
        logz = np.log(np.exp(logits - top).sum(axis=-1)) + top[:, 0]
        targets = np.asarray(full[len(head):])
        lp = logits[np.arange(len(targets)), targets] - logz
        cache[(prompt, response)] = (float(lp.sum()), len(targets))
        return cache[(prompt, response)]

    oks = []
    try:
        for p in pairs:
            lc, nc = mean_logp(p.prompt, p.chosen)
            lr, nr = mean_logp(p.prompt, p.rejected)
            oks.append(lc / max(nc, 1) > lr / max(nr, 1))
            if on_pair is not None:
                on_pair()
    finally:
        llm.close()
    return _summarise(pairs, oks)


def hf_selection(folder: Path, pairs: list[Pair], max_length: int = 2048,
                 on_pair: Callable[[], None] | None = None) -> dict:
    from localpeer.train.logps import collate, sequence_logps, tokenize_pairs

    torch = require("torch")
    transformers = require("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(str(folder))
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(folder), dtype=torch.float32, use_safetensors=True).eval()
    dims = in_order({p.dim for p in pairs})
    tokenized, _ = tokenize_pairs(tok, pairs, dims, max_length, max_length)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    oks = []
    with torch.no_grad():
        for start in range(0, len(tokenized), 4):
            chunk = tokenized[start:start + 4]
            pc, pr = sequence_logps(model, collate(chunk, pad, share_prompt=True))
            for t, a, b in zip(chunk, pc.tolist(), pr.tolist()):
                oks.append(a / len(t.chosen) > b / len(t.rejected))
                if on_pair is not None:
                    on_pair()
    return _summarise(pairs, oks)


def selection_accuracy(model: Path, pairs: list[Pair], **kw) -> dict:
    model = Path(model)
    if model.is_dir():
        kw.pop("threads", None)
        kw.pop("ctx", None)
        return hf_selection(model, pairs, **kw)
    kw.pop("max_length", None)
    return gguf_selection(model, pairs, **kw)
