"""A GGUF chat model on llama-cpp-python: load, fit a conversation into the context, stream.

The prompt is the GGUF's own chat template rendered in a sandbox (chat/template.py) and
tokenized by llama.cpp; generation streams text as tokens arrive and stops at an end-of-
generation token or `max_tokens`. When a conversation outgrows the context, the oldest
exchanges (after the system message) are left out of the prompt, and the caller is told how
many; the transcript keeps them.

    from localpeer.chat.session import Engine, Sampler, load_engine
    engine = load_engine(Path("models/gguf/peer/peer-Q8_0.gguf"), ctx=0)
    tokens, dropped = engine.fit(messages, engine.sampler.max_tokens)
    for piece in engine.stream(tokens, seed=1):
        print(piece, end="")
"""

from __future__ import annotations

import codecs
import json
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from localpeer.chat.template import ChatTemplate
from localpeer.deps import require
from localpeer.errors import InputError

log = logging.getLogger(__name__)
GGUF_RUNS = "a local GGUF runs on llama.cpp"  # what needs llama-cpp-python, for its hint
DEFAULT_CTX_CAP = 8192  # a 128k-context GGUF would otherwise allocate a KV cache of many GB
MIN_REPLY_TOKENS = 16  # below this room for the reply, a turn does not fit at all


@dataclass(frozen=True)
class Sampler:
    """llama.cpp sampling settings; every transcript records them in meta.sampler."""

    temperature: float = 0.7
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    max_tokens: int = 512
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    tokens: int = 0
    seconds: float = 0.0  # first sampled token to the last (prompt processing excluded)
    finish: str = ""  # stop | length | interrupted

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


class ContextFull(Exception):
    """Not even the system message and the last user message fit the context."""


def gguf_sha256(path: Path) -> str:
    """sha256 of a GGUF: from the export.json beside it when size and mtime allow, else from a
    memo in ~/.cache/localpeer, else computed (and memoised)."""
    path = Path(path).resolve()
    st = path.stat()
    export = path.parent / "export.json"
    if export.is_file() and export.stat().st_mtime >= st.st_mtime:
        try:
            for entry in json.loads(export.read_text())["files"]:
                if entry["file"] == path.name and entry["size"] == st.st_size:
                    return entry["sha256"]
        except (ValueError, KeyError, TypeError):
            pass
    memo_path = Path(os.environ.get("LOCALPEER_CACHE", Path.home() / ".cache" / "localpeer"))
    memo_path = memo_path / "gguf-sha256.json"
    key = f"{path}|{st.st_size}|{st.st_mtime_ns}"
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    if key in memo:
        return memo[key]
    from localpeer.formats import sha256_file

    memo[key] = sha256_file(path)
    try:
        memo_path.parent.mkdir(parents=True, exist_ok=True)
        from localpeer.formats import atomic_write_text

        atomic_write_text(memo_path, json.dumps(memo))
    except OSError:
        pass
    return memo[key]


def check_gguf(path: Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise InputError("no such GGUF file; pass a .gguf written by `localpeer export` (under "
                         "models/gguf/) or any llama.cpp model", path)
    with path.open("rb") as fh:
        if fh.read(4) != b"GGUF":
            raise InputError("not a GGUF file (its first bytes are not 'GGUF'); convert the "
                             "model with `localpeer export` or llama.cpp's converter", path)
    return path


@dataclass
class Engine:
    llm: object  # llama_cpp.Llama
    template: ChatTemplate
    sampler: Sampler
    path: Path
    n_ctx: int
    n_ctx_train: int
    add_bos: bool
    stats: GenerationStats = field(default_factory=GenerationStats)

    @property
    def name(self) -> str:
        return self.path.stem

    def tokens(self, messages: list[dict]) -> list[int]:
        text = self.template.render(messages, add_generation_prompt=True)
        bos = self.template.bos_token
        add_bos = self.add_bos and not (bos and text.startswith(bos))
        return self.llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)

    def fit(self, messages: list[dict], reply_tokens: int) -> tuple[list[int], int, int]:
        """(prompt tokens, messages left out, room for the reply) for the conversation.

        Leaves out the oldest messages after the system message (a user turn with the
        assistant reply that follows it) until the prompt and `reply_tokens` fit; if even the
        last user message alone leaves less than `reply_tokens`, the reply gets what is left,
        and with less than MIN_REPLY_TOKENS the turn does not fit (ContextFull)."""
        head = [m for m in messages[:1] if m["role"] == "system"]
        body = messages[len(head):]
        dropped = 0
        while True:
            ids = self.tokens(head + body)
            room = self.n_ctx - len(ids)
            if room >= reply_tokens or len(body) <= 1:
                break
            cut = 1
            while cut < len(body) - 1 and body[cut]["role"] != "user":
                cut += 1  # drop up to the next user message, so roles still alternate
            body = body[cut:]
            dropped += cut
        if room < MIN_REPLY_TOKENS:
            raise ContextFull(f"the prompt needs {len(ids)} tokens and the context holds "
                              f"{self.n_ctx}; shorten the message or raise --ctx "
                              f"(this model was trained on {self.n_ctx_train})")
        return ids, dropped, min(room, reply_tokens)

    def stream(self, prompt: list[int], seed: int, max_tokens: int | None = None,
               grammar=None, temperature: float | None = None) -> Iterator[str]:
        """Text pieces of the reply as tokens arrive (UTF-8 split across tokens is held back
        until complete); self.stats describes the last generation."""
        llama_cpp = require("llama_cpp")

        s = self.sampler
        limit = max_tokens or s.max_tokens
        self.stats = stats = GenerationStats(prompt_tokens=len(prompt), finish="length")
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.llm.set_seed(seed)
        vocab = self.llm._model.vocab
        start = None
        temp = s.temperature if temperature is None else temperature
        tokens = self.llm.generate(prompt, top_k=s.top_k, top_p=s.top_p, min_p=s.min_p,
                                   temp=temp, repeat_penalty=s.repeat_penalty, grammar=grammar)
        try:
            for token in tokens:
                if start is None:
                    start = time.perf_counter()
                if llama_cpp.llama_vocab_is_eog(vocab, token):
                    stats.finish = "stop"
                    break
                stats.tokens += 1
                piece = decoder.decode(self.llm.detokenize([token]))
                if piece:
                    yield piece
                if stats.tokens >= limit:
                    break
            tail = decoder.decode(b"", final=True)
            if tail:
                yield tail
        finally:
            tokens.close()
            stats.seconds = time.perf_counter() - start if start is not None else 0.0


def load_engine(path: Path, ctx: int = 0, sampler: Sampler | None = None,
                threads: int | None = None) -> Engine:
    """The GGUF on llama.cpp with a context of `ctx` tokens (0: the model's trained context,
    capped at DEFAULT_CTX_CAP) and its chat template checked."""
    llama_cpp = require("llama_cpp", why=GGUF_RUNS)
    path = check_gguf(path)
    with _quiet_stderr():  # llama.cpp prints a context warning for the vocab-only probe
        probe = _open_llama(llama_cpp, path, n_ctx=64, vocab_only=True)
    n_train = int(probe._model.n_ctx_train()) or DEFAULT_CTX_CAP
    template = ChatTemplate.from_metadata(
        probe.metadata, path, bos=_piece(probe, probe.token_bos()),
        eos=_piece(probe, probe.token_eos()))
    add_bos = probe.metadata.get("tokenizer.ggml.add_bos_token", "false") == "true"
    probe.close()
    if ctx < 0:
        raise InputError(f"--ctx must be a positive number of tokens, got {ctx}")
    n_ctx = ctx or min(n_train, DEFAULT_CTX_CAP)
    if n_ctx > n_train:
        log.warning("--ctx %d is more than the %d tokens %s was trained on; replies past that "
                    "may degrade", n_ctx, n_train, path.name)
    llm = _open_llama(llama_cpp, path, n_ctx=n_ctx, n_batch=min(n_ctx, 512), n_threads=threads)
    return Engine(llm, template, sampler or Sampler(), path, n_ctx, n_train, add_bos)


def _open_llama(llama_cpp, path: Path, **kw):
    """llama_cpp.Llama, with its failures on a bad file turned into input errors: a truncated
    or header-only GGUF (llama.cpp cannot load it) and a chat template that is not valid Jinja
    (llama-cpp-python compiles it while loading, before localpeer's sandboxed check)."""
    jinja2 = require("jinja2")
    try:
        return llama_cpp.Llama(model_path=str(path), verbose=False, **kw)
    except jinja2.TemplateError as e:
        raise InputError(f"the chat template in this GGUF is not valid Jinja ({type(e).__name__}"
                         f": {e}); fix tokenizer.chat_template in the GGUF", path) from None
    except ValueError as e:
        raise InputError(f"llama.cpp cannot load this GGUF ({e}): a truncated download or a "
                         "header-only file? copy or export it again", path) from None


@contextmanager
def _quiet_stderr():
    """Silence fds 1 and 2 (llama.cpp's C logging, and llama-cpp-python's log callback)."""
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)


def _piece(llm, token: int) -> str:
    if token < 0:
        return ""
    return llm.detokenize([token], special=True).decode("utf-8", errors="replace")
