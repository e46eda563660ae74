"""Judges: a local GGUF through llama-cpp-python (grammar-constrained JSON), or any
OpenAI-compatible chat-completions server (llama-server, vLLM, Ollama) through plain HTTP.

Both return the judge's raw text; `parse_grade` decides whether it is a grade. Nothing here
guesses a score from free text. Both get the same schema in the same key order
(`schema_text`): the local judge as a grammar, the HTTP judge as response_format.

    from localpeer.judge.backends import make_judge, parse_grade
    judge = make_judge("models/gguf/judge.gguf")          # or "http://localhost:8080/v1#qwen"
    raw = judge.complete(messages, schema, seed=0, temperature=0.0)

Servers take concurrent requests: `as_done(fn, jobs, workers(judge, parallel))` runs them in a
thread pool and hands each result back to the calling thread as it completes, so one thread
writes the output. `ChatServer` retries 429, 5xx, timeouts and dropped connections with
exponential backoff and jitter (Retry-After honoured); any other 4xx, or the last retry, raises
`RequestFailed`; a server that was never reached raises WorkFailed at once. Test knobs:
LOCALPEER_HTTP_TIMEOUT_S, LOCALPEER_HTTP_RETRIES, LOCALPEER_HTTP_BACKOFF_S.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import logging
import os
import random
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from localpeer.deps import need, require
from localpeer.errors import InputError, WorkFailed

log = logging.getLogger(__name__)
SERVER_PARALLEL = 8  # --parallel default for servers; a local GGUF always runs 1 at a time


class BadGrade(ValueError):
    """The judge's output is not {"rationale": <str>, "score": <int in scale>}."""


class RequestFailed(Exception):
    """A server request that failed for good: a 4xx other than 429 (not retried), or the
    last retry of a 429, 5xx, timeout or dropped connection. A judge's grade becomes missing;
    a generation is not written (a rerun asks again)."""


def _env_float(name: str, default: float) -> float:
    text = os.environ.get(name)
    try:
        return float(text) if text else default
    except ValueError:
        raise InputError(f"{name}={text!r}: expected a number") from None


def _retry_after_s(headers) -> float | None:
    """Retry-After as seconds (delta-seconds or an HTTP date), None when absent or unreadable."""
    text = (headers.get("Retry-After") or "").strip() if headers is not None else ""
    if not text:
        return None
    if text.isdigit():
        return float(text)
    try:
        return max(0.0, email.utils.parsedate_to_datetime(text).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


@dataclass
class ChatServer:
    """POST {base_url}/chat/completions with a per-request timeout and retries. Thread-safe:
    every call opens its own connection; `reached` only ever goes from False to True."""

    base_url: str
    api_key: str | None = None
    timeout_s: float = 120.0
    retries: int = 4  # after the first try
    backoff_s: float = 0.5  # the first wait; doubled each retry, times a jitter in [0.5, 1.5)
    max_wait_s: float = 60.0
    reached: bool = False  # a reply (any status) came back once: refusals are retried after
    _rng: random.Random = field(default_factory=random.Random, repr=False)

    @classmethod
    def from_env(cls, base_url: str, api_key: str | None, timeout_s: float) -> ChatServer:
        return cls(base_url, api_key,
                   timeout_s=_env_float("LOCALPEER_HTTP_TIMEOUT_S", timeout_s),
                   retries=int(_env_float("LOCALPEER_HTTP_RETRIES", 4)),
                   backoff_s=_env_float("LOCALPEER_HTTP_BACKOFF_S", 0.5))

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/") + "/chat/completions"

    def _wait_s(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.max_wait_s)
        return min(self.backoff_s * 2 ** attempt, self.max_wait_s) * self._rng.uniform(0.5, 1.5)

    def post(self, body: dict, who: str) -> dict:
        """The server's JSON reply to `body`; `who` names the caller in messages."""
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = json.dumps(body).encode()
        problem = ""
        for attempt in range(self.retries + 1):
            retry_after = None
            request = urllib.request.Request(self.url, data=data, headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    self.reached = True
                    payload = response.read()
                try:
                    return json.loads(payload)
                except json.JSONDecodeError:
                    raise RequestFailed(f"{who}: {self.url} replied with no JSON") from None
            except urllib.error.HTTPError as e:
                self.reached = True
                if e.code != 429 and e.code < 500:
                    raise RequestFailed(f"{who}: HTTP {e.code} from {self.url} (not retried): "
                                        f"{_error_text(e)}") from None
                problem, retry_after = f"HTTP {e.code}", _retry_after_s(e.headers)
            except TimeoutError:
                problem = f"no reply within {self.timeout_s:g} s"
            except urllib.error.URLError as e:
                if isinstance(e.reason, TimeoutError):
                    problem = f"no connection within {self.timeout_s:g} s"
                elif not self.reached:
                    raise self.unreachable(who, e.reason) from None
                else:
                    problem = f"connection failed ({e.reason})"
            except (ConnectionError, http.client.HTTPException) as e:
                problem = f"connection dropped ({e.__class__.__name__})"
            if attempt < self.retries:
                pause = self._wait_s(attempt, retry_after)
                log.info("%s: %s from %s; retry %d/%d in %.2f s", who, problem, self.url,
                         attempt + 1, self.retries, pause)
                time.sleep(pause)
        if problem.startswith("connection failed"):
            raise self.unreachable(who, problem)
        raise RequestFailed(f"{who}: {problem} from {self.url}, {self.retries + 1} tries")

    def unreachable(self, who: str, reason) -> WorkFailed:
        return WorkFailed(f"{who}: cannot reach {self.base_url} ({reason}); start the server "
                          "(e.g. llama-server -m MODEL.gguf --port 8080) or fix the URL")


def _error_text(e: urllib.error.HTTPError) -> str:
    try:
        return e.read(300).decode("utf-8", "replace").strip() or e.reason
    except Exception:  # the body is only a hint in the message
        return str(e.reason)


def workers(backend, parallel: int | None) -> int:
    """Requests at once for a backend: `parallel` (default 8) for a server, always 1 for
    anything else (llama.cpp's context is not thread-safe)."""
    if not getattr(backend, "concurrent", False):
        return 1
    return max(1, SERVER_PARALLEL if parallel is None else parallel)


def as_done(fn: Callable, jobs: Iterable, n_workers: int) -> Iterator[tuple[object, object]]:
    """(job, fn(job)) in the calling thread as each call completes, `n_workers` at a time (1:
    in order, no threads). A call's exception is raised here; closing the iterator early
    cancels what has not started and drops what is in flight."""
    if n_workers <= 1:
        for job in jobs:
            yield job, fn(job)
        return
    queue = iter(jobs)
    pool = ThreadPoolExecutor(n_workers, thread_name_prefix="localpeer-http")
    pending = {}
    try:
        for job in queue:  # at most 2 x n_workers queued: a million jobs stay lazy
            pending[pool.submit(fn, job)] = job
            if len(pending) >= 2 * n_workers:
                break
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                job = pending.pop(future)
                yield job, future.result()
                for nxt in queue:
                    pending[pool.submit(fn, nxt)] = nxt
                    break
    finally:
        # on an error or Ctrl-C, return at once: queued calls are cancelled, the ones in
        # flight finish in their threads and their results are dropped
        pool.shutdown(wait=False, cancel_futures=True)


def split_server_spec(spec: str) -> tuple[str | None, str]:
    """`[NAME=]REST` -> (NAME or None, REST); a URL's own '=' (in a query) is left alone."""
    head, sep, rest = spec.partition("=")
    if sep and head and "/" not in head and "://" not in head:
        return head, rest
    return None, spec


def need_llama_cpp(specs: Iterable, why: str) -> None:
    """Before any work: a model spec that is not an http(s) URL is a GGUF, which runs on
    llama.cpp; fail now if llama-cpp-python is missing."""
    urls = ("http://", "https://")
    if any(not split_server_spec(str(s))[1].startswith(urls) for s in specs if s is not None):
        need("llama_cpp", why=why)


def schema_text(schema: dict) -> str:
    """The schema as JSON text with its keys in their given order. The local grammar is built
    from this text and the grammar writes the properties in this order, which is the order
    HTTP judges receive (never sort_keys: that would put "rationale" and "score" in
    alphabetical order by accident, not by design)."""
    return json.dumps(schema)


def parse_grade(raw: str, scale: tuple[int, int]) -> tuple[int, str]:
    try:
        # strict=False: llama.cpp's string grammar lets raw newlines into the rationale
        obj = json.loads(raw, strict=False)
    except (json.JSONDecodeError, TypeError) as e:
        raise BadGrade(f"not JSON ({e})") from None
    if not isinstance(obj, dict):
        raise BadGrade("not a JSON object")
    score = obj.get("score")
    if isinstance(score, bool) or not isinstance(score, int):
        raise BadGrade(f"score is not an integer: {score!r}")
    if not scale[0] <= score <= scale[1]:
        raise BadGrade(f"score {score} outside {scale[0]}-{scale[1]}")
    rationale = obj.get("rationale", "")
    if not isinstance(rationale, str):
        raise BadGrade("rationale is not a string")
    return score, rationale.strip()


@dataclass
class LocalJudge:
    """A GGUF judge; the output is constrained by a JSON-schema grammar, the prompt rendered
    with the GGUF's own chat template in the sandbox (localpeer.chat)."""

    path: Path
    name: str
    ctx: int = 4096
    threads: int | None = None
    max_tokens: int = 160

    def __post_init__(self):
        from localpeer.chat.session import Sampler, load_engine

        self.engine = load_engine(self.path, ctx=self.ctx, threads=self.threads,
                                  sampler=Sampler(max_tokens=self.max_tokens, top_k=40,
                                                  top_p=1.0, min_p=0.0))
        self._grammars: dict[str, object] = {}

    def grammar(self, schema: dict):
        llama_cpp = require("llama_cpp")

        key = schema_text(schema)
        if key not in self._grammars:
            self._grammars[key] = llama_cpp.LlamaGrammar.from_json_schema(key, verbose=False)
        return self._grammars[key]

    def complete(self, messages: list[dict], schema: dict, seed: int,
                 temperature: float) -> str:
        from localpeer.chat.session import ContextFull

        try:
            prompt, _, room = self.engine.fit(messages, self.max_tokens)
        except ContextFull as e:
            raise BadGrade(f"the judge prompt does not fit: {e}") from None
        if len(prompt) + room > self.engine.n_ctx or room < self.max_tokens:
            raise BadGrade("the transcript is too long for the judge's context")
        return "".join(self.engine.stream(prompt, seed=seed, max_tokens=room,
                                          grammar=self.grammar(schema),
                                          temperature=temperature))


@dataclass
class HttpJudge:
    """An OpenAI-compatible server: POST {base}/chat/completions, JSON-schema response format.
    Safe to call from several threads at once (`concurrent`)."""

    base_url: str
    model: str
    name: str
    timeout_s: float = 120.0
    max_tokens: int = 160
    api_key: str | None = None
    concurrent = True  # a class attribute, not a field: see `workers`

    def __post_init__(self):
        self.server = ChatServer.from_env(self.base_url, self.api_key, self.timeout_s)

    def complete(self, messages: list[dict], schema: dict, seed: int,
                 temperature: float) -> str:
        body = {"model": self.model, "messages": messages, "temperature": temperature,
                "max_tokens": self.max_tokens, "seed": seed,
                "response_format": {"type": "json_schema",
                                    "json_schema": {"name": "grade", "schema": schema,
                                                    "strict": True}}}
        reply = self.server.post(body, f"judge {self.name}")
        try:
            return reply["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise BadGrade("the server's reply has no choices[0].message.content") from None


def make_judge(spec: str, ctx: int = 4096, threads: int | None = None):
    """`[NAME=]MODEL.gguf` or `[NAME=]http(s)://host:port/v1#MODEL` -> a judge."""
    name, spec = split_server_spec(spec)
    if spec.startswith(("http://", "https://")):
        url, _, model = spec.partition("#")
        if not model:
            raise InputError(f"--judge {spec}: name the server's model after '#', e.g. "
                             "http://localhost:8080/v1#qwen2.5-7b-instruct")
        return HttpJudge(url, model, name or model, api_key=os.environ.get("LOCALPEER_JUDGE_KEY"))
    path = Path(spec)
    if path.suffix != ".gguf":
        raise InputError(f"--judge {spec}: pass a .gguf file or an http(s):// URL#model")
    return LocalJudge(path, name or path.stem, ctx=ctx, threads=threads)
