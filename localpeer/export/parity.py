"""Parity of a GGUF export with the transformers model it came from.

Checks: the chat template in the GGUF metadata equals the HF tokenizer's; llama.cpp tokenizes
every probe conversation exactly like HF; logits agree within a per-type tolerance; quantized
files keep the HF top-1 token at most positions.

    from localpeer.export.parity import hf_reference, check_file
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from localpeer.deps import require

log = logging.getLogger(__name__)

# max |logit difference| over all positions, by GGUF type (fp32 KV cache in llama.cpp)
# F16: weights rounded to 11-bit mantissas move logits (|logit| up to ~45) by ~0.1 typically;
# the max over ~20M logits reached 0.25 on one CI run, so 0.5, plus top-1 agreement >= 0.98
MAX_ABS = {"F32": 5e-4, "F16": 0.5}
# top-1 agreement with HF, gated on the *decisive* positions: those where HF's top-1 logit leads
# the runner-up by at least DECISIVE_MARGIN. At a near tie the winner is decided by rounding
# noise, so agreement over all positions measures the platform's kernels as much as the export:
# with SmolLM2-135M (its HF base is itself a dequantized Q4_1, with many near-tied top tokens)
# and a random LoRA, Q8_0 agreed on 0.966 of all 524 positions on one AVX512 machine and 0.929
# on another run of the same test. Agreement over all positions is reported beside it.
# Other quant types are reported, not gated.
MIN_TOP1 = {"Q8_0": 0.95, "F16": 0.98}
DECISIVE_MARGIN = 1.0  # logits: HF's top-1 is at least e times as likely as its runner-up
LORA_MAX_ABS_LAST = 1e-4  # base F32 GGUF + LoRA GGUF vs the merged HF model; measured 4.9e-5
LORA_MAX_ABS_ALL = 5e-4
LOGIT_PROBES = 8  # logits on the first 8 probes (cost); tokens and templates on all
N_CTX = 512

_SYS = {"role": "system", "content": "You are a careful, honest assistant. Answer briefly."}
PROBES: list[list[dict]] = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [_SYS, {"role": "user", "content": "Is it safe to give honey to a six-month-old baby?"}],
    [{"role": "user", "content": "def fib(n):\n    return n if n < 2 else fib(n-1) + fib(n-2)"
      "\n\nExplain this  code.\t Thanks!"},
     {"role": "assistant", "content": "It computes Fibonacci numbers recursively."},
     {"role": "user", "content": "Make it iterative?"}],
    [{"role": "system", "content": "Réponds en français, s'il te plaît."},
     {"role": "user", "content": "Où est la gare? Ça coûte combien, 12,50 €?"}],
    [{"role": "user", "content": "日本語で自己紹介してください。東京は大きいですか？"}],
    [{"role": "user", "content": "用中文解释一下机器学习。谢谢！"}],
    [{"role": "user", "content": "Rate this 🚀🔥👍🏽 and this 👨‍👩‍👧‍👦 family emoji ✨"}],
    [{"role": "user", "content": "I think the earth is flat. You agree, right?"},
     {"role": "assistant", "content": "No. The evidence shows it is roughly spherical."},
     {"role": "user", "content": "But my friend said so!"},
     {"role": "assistant", "content": "Friends can be wrong; satellites and ships show it."},
     {"role": "user", "content": "Fine. Why do ships vanish hull first?"}],
    [{"role": "user", "content": "Привет! Как дела? Что такое квантовая механика?"}],
    [{"role": "user", "content": "مرحبا، كيف حالك؟ اشرح لي الجاذبية."}],
    [{"role": "user", "content": "नमस्ते, आप कैसे हैं?"}],
    [{"role": "user", "content": "Ünïcödé çäsës: naïve café, Straße, ØÆÅ, ĳ, ﬁ ligature."}],
    [{"role": "user", "content": "    leading spaces and trailing spaces    "}],
    [{"role": "user", "content": "numbers: 3.14159 2718281828 1,000,000 -42 0x1F 1e-9 007"}],
    [{"role": "user", "content": "SELECT name, COUNT(*) FROM users WHERE age >= 18 GROUP BY "
      "name HAVING COUNT(*) > 1 ORDER BY 2 DESC;"}],
    [{"role": "user", "content": "<html><body><p class=\"x\">Hi &amp; bye</p></body></html>"}],
    [{"role": "user", "content": "A long line: " + " ".join(
        f"word{i} and-more_{i % 7}" for i in range(60))}],
    [{"role": "user", "content": "Tabs\tand\nnew\n\nlines\r\nand   runs   of   spaces."}],
    [{"role": "system", "content": "You are a pirate."},
     {"role": "user", "content": "Say hello."},
     {"role": "assistant", "content": "Arr, ahoy matey!"},
     {"role": "user", "content": "Now say goodbye."}],
    [{"role": "user", "content": "Quote: «guillemets», “curly”, ‘single’, — em dash – en dash…"}],
    [{"role": "user", "content": "Math: ∑ᵢ xᵢ² ≤ ∞, ∀ε>0 ∃δ, √2 ≈ 1.414, π ≠ 3."}],
    [{"role": "user", "content": "```python\nimport numpy as np\nx = np.zeros((3, 4))\n```\n"
      "What shape is x?"}],
    [{"role": "user", "content": "한국어로 대답해 주세요. 오늘 날씨 어때요?"}],
    [{"role": "user", "content": "<|im_start|> is a literal string here, not a token?"}],
]


@dataclass
class FileParity:
    """One GGUF against the HF model."""
    file: str
    gguf_type: str
    passed: bool
    max_abs: float | None = None
    max_abs_last: float | None = None
    top1_agree: float | None = None
    top1_positions: int | None = None
    top1_agree_decisive: float | None = None
    decisive_positions: int | None = None
    tolerance: str | None = None
    failures: list[str] = field(default_factory=list)


@dataclass
class ParityReport:
    """Everything export.json records under "parity"."""
    passed: bool
    chat_template_same: bool
    tokens_identical: str  # "24/24" conversations
    files: list[FileParity]
    failures: list[str]

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Reference:
    """HF prompts, token ids and fp32 logits (positions, vocab) for the probes."""
    chat_template: str | None
    texts: list[str]
    ids: list[list[int]]
    logits: list[np.ndarray]


def hf_reference(model, tokenizer, probes=PROBES, logit_probes: int = LOGIT_PROBES) -> Reference:
    torch = require("torch")

    texts = [tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False)
             for c in probes]
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    logits = []
    with torch.no_grad():
        for x in ids[:logit_probes]:
            logits.append(model(torch.tensor([x])).logits[0].float().numpy())
    return Reference(tokenizer.chat_template, texts, ids, logits)


def _llama(path: Path, **kw):
    llama_cpp = require("llama_cpp", why="the parity check runs the GGUF on llama.cpp")

    return llama_cpp.Llama(model_path=str(path), n_ctx=N_CTX, n_threads=1, n_threads_batch=1,
                           type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32,
                           verbose=False, **kw)


def gguf_tokens_and_template(path: Path, texts: list[str]) -> tuple[list[list[int]], str | None]:
    llama_cpp = require("llama_cpp", why="the parity check runs the GGUF on llama.cpp")

    llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    try:
        toks = [llm.tokenize(t.encode("utf-8"), add_bos=False, special=True) for t in texts]
        return toks, llm.metadata.get("tokenizer.chat_template")
    finally:
        llm.close()


def gguf_logits(path: Path, ids: list[list[int]], lora: Path | None = None) -> list[np.ndarray]:
    kw = {"lora_path": str(lora)} if lora else {}
    llm = _llama(path, logits_all=True, **kw)
    try:
        out = []
        for x in ids:
            llm.reset()  # clear the KV positions between probes
            llm.eval(x)
            out.append(np.array(llm.scores[: len(x)], dtype=np.float32))
        return out
    finally:
        llm.close()


def compare_logits(ref: list[np.ndarray], got: list[np.ndarray]) -> dict:
    """Max |difference| (all positions, last position) and top-1 agreement, over all positions
    and over the decisive ones (HF top-1 ahead of the runner-up by >= DECISIVE_MARGIN)."""
    a, b = np.concatenate(ref), np.concatenate(got)
    same = a.argmax(-1) == b.argmax(-1)
    top2 = np.partition(a, -2, axis=-1)[:, -2:]
    decisive = (top2[:, 1] - top2[:, 0]) >= DECISIVE_MARGIN
    n_dec = int(decisive.sum())
    return {"max_abs": max(float(np.abs(x - y).max()) for x, y in zip(ref, got)),
            "max_abs_last": max(float(np.abs(x[-1] - y[-1]).max()) for x, y in zip(ref, got)),
            "top1_agree": float(same.mean()), "top1_positions": len(same),
            "top1_agree_decisive": float(same[decisive].mean()) if n_dec else 1.0,
            "decisive_positions": n_dec}


def check_tokens(ref: Reference, path: Path) -> tuple[list[str], str, bool]:
    """(failures, 'k/n identical', template same) for the tokenizer and the chat template."""
    toks, template = gguf_tokens_and_template(path, ref.texts)
    failures = []
    same = [a == b for a, b in zip(ref.ids, toks)]
    for i, ok in enumerate(same):
        if not ok:
            failures.append(f"tokens differ on probe {i} ({ref.texts[i][:40]!r}...)")
    template_same = template == ref.chat_template
    if not template_same:
        failures.append(f"chat template differs: GGUF tokenizer.chat_template "
                        f"{(template or '')[:60]!r}... vs HF {(ref.chat_template or '')[:60]!r}...")
    return failures, f"{sum(same)}/{len(same)}", template_same


def check_file(ref: Reference, path: Path, gguf_type: str, lora: Path | None = None) -> FileParity:
    """Logit parity of one file; its tolerance comes from MAX_ABS / MIN_TOP1 / LORA_*."""
    stats = compare_logits(ref.logits, gguf_logits(path, ref.ids[: len(ref.logits)], lora))
    fp = FileParity(file=(lora or path).name, gguf_type=gguf_type, passed=True, **stats)
    name = fp.file
    if lora is not None:
        fp.tolerance = f"max_abs_last <= {LORA_MAX_ABS_LAST}, max_abs <= {LORA_MAX_ABS_ALL}"
        if stats["max_abs_last"] > LORA_MAX_ABS_LAST or stats["max_abs"] > LORA_MAX_ABS_ALL:
            fp.failures.append(f"{name} on the base F32: logits differ from the merged HF model "
                               f"by {stats['max_abs_last']:.2e} (last) / {stats['max_abs']:.2e}")
    if lora is None and gguf_type in MAX_ABS:
        fp.tolerance = f"max_abs <= {MAX_ABS[gguf_type]}"
        if stats["max_abs"] > MAX_ABS[gguf_type]:
            fp.failures.append(f"{name}: logits differ from HF by {stats['max_abs']:.3g} "
                               f"(tolerance {MAX_ABS[gguf_type]})")
    if lora is None and gguf_type in MIN_TOP1:
        fp.tolerance = ", ".join(filter(None, [fp.tolerance if gguf_type in MAX_ABS else "",
                                               f"top1_agree_decisive >= {MIN_TOP1[gguf_type]}"]))
        if stats["top1_agree_decisive"] < MIN_TOP1[gguf_type]:
            fp.failures.append(f"{name}: top-1 agreement with HF {stats['top1_agree_decisive']:.3f}"
                               f" < {MIN_TOP1[gguf_type]} at the {stats['decisive_positions']} "
                               f"positions where HF's top-1 leads by >= {DECISIVE_MARGIN} logit "
                               f"({stats['top1_agree']:.3f} over all {stats['top1_positions']})")
    fp.passed = not fp.failures
    return fp


def check_export(ref: Reference, files: dict[str, Path], lora: tuple[Path, Path] | None = None,
                 progress=lambda msg: None) -> ParityReport:
    """files: GGUF type -> path (the first is used for tokens and template); lora: (base F32
    GGUF, LoRA GGUF) checked against the same merged reference."""
    first = next(iter(files.values()))
    progress(f"parity: tokens and chat template ({first.name})")
    failures, tokens, template_same = check_tokens(ref, first)
    results = []
    for gguf_type, path in files.items():
        progress(f"parity: logits of {path.name}")
        results.append(check_file(ref, path, gguf_type))
    if lora is not None:
        progress(f"parity: {lora[1].name} on the base F32")
        results.append(check_file(ref, lora[0], "LORA", lora=lora[1]))
    for r in results:
        failures += r.failures
    return ParityReport(passed=not failures, chat_template_same=template_same,
                        tokens_identical=tokens, files=results, failures=failures)


def merge_reports(first: ParityReport, later: ParityReport) -> ParityReport:
    """One report from two check_export calls over different files of the same export (the
    later one's files listed first: the F32 twin checked after the others is the sharpest)."""
    failures = first.failures + [f for f in later.failures if f not in first.failures]
    return ParityReport(passed=first.passed and later.passed,
                        chat_template_same=first.chat_template_same and later.chat_template_same,
                        tokens_identical=first.tokens_identical, files=later.files + first.files,
                        failures=failures)
