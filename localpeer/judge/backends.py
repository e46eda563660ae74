"""Judges: a local GGUF through llama-cpp-python (grammar-constrained JSON), or any
OpenAI-compatible chat-completions server (llama-server, vLLM, Ollama) through plain HTTP.

Both return the judge's raw text; `parse_grade` decides whether it is a grade. Nothing here
guesses a score from free text. Both get the same schema in the same key order
(`schema_text`): the local judge as a grammar, the HTTP judge as response_format.

    from localpeer.judge.backends import make_judge, parse_grade
    judge = make_judge("models/gguf/judge.gguf")          # or "http://localhost:8080/v1#qwen"
    raw = judge.complete(messages, schema, seed=0, temperature=0.0)
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from localpeer.errors import InputError, WorkFailed


class BadGrade(ValueError):
    """The judge's output is not {"rationale": <str>, "score": <int in scale>}."""


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
        import llama_cpp

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
    """An OpenAI-compatible server: POST {base}/chat/completions, JSON-schema response format."""

    base_url: str
    model: str
    name: str
    timeout_s: float = 120.0
    max_tokens: int = 160
    api_key: str | None = None

    def complete(self, messages: list[dict], schema: dict, seed: int,
                 temperature: float) -> str:
        body = {"model": self.model, "messages": messages, "temperature": temperature,
                "max_tokens": self.max_tokens, "seed": seed,
                "response_format": {"type": "json_schema",
                                    "json_schema": {"name": "grade", "schema": schema,
                                                    "strict": True}}}
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.base_url.rstrip("/") + "/chat/completions",
                                         data=json.dumps(body).encode(), headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                reply = json.loads(response.read())
        except urllib.error.HTTPError as e:
            raise BadGrade(f"HTTP {e.code} from the judge server") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
            raise WorkFailed(f"judge {self.name}: cannot reach {self.base_url} ({e}); start "
                             "the server (e.g. llama-server -m MODEL.gguf --port 8080) or fix "
                             "the URL") from None
        try:
            return reply["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise BadGrade("the server's reply has no choices[0].message.content") from None


def make_judge(spec: str, ctx: int = 4096, threads: int | None = None):
    """`[NAME=]MODEL.gguf` or `[NAME=]http(s)://host:port/v1#MODEL` -> a judge."""
    import os

    name = None
    head, sep, rest = spec.partition("=")
    if sep and "/" not in head and "://" not in head and head:
        name, spec = head, rest
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
