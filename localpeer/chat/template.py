"""The chat template of a GGUF, rendered in a sandboxed Jinja environment.

A GGUF carries its Jinja chat template in the metadata (`tokenizer.chat_template`). A template is
code from a file someone downloaded, so it is rendered by jinja2's ImmutableSandboxedEnvironment:
attribute access to Python internals (`__class__`, `__globals__`, ...) and mutation of the
messages raise instead of running. A template that is refused, or that does not render a
sample conversation, is an input error (exit 2) before any chat starts.

    from localpeer.chat.template import ChatTemplate
    template = ChatTemplate.from_metadata(llm.metadata, path)
    text = template.render(messages, add_generation_prompt=True)
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from localpeer.deps import require
from localpeer.errors import InputError

# what llama.cpp itself falls back to when a GGUF has no template
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + "
          "message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
_PROBE = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
          {"role": "assistant", "content": "a"}, {"role": "user", "content": "v"}]


# a template runs for every turn: localpeer defines these bounds on one rendering, far above
# what any real chat template needs (a 128k-token conversation is about 0.5 MB of text)
RENDER_SECONDS = 2.0
RENDER_CHARS = 4_000_000
RANGE_TOTAL = 1_000_000  # elements all range() calls of one rendering may produce


class _TemplateRaised(Exception):
    """The template called raise_exception(...) (e.g. 'roles must alternate')."""


class _TooCostly(Exception):
    """The rendering went past RENDER_SECONDS, RENDER_CHARS or RANGE_TOTAL."""


def _bounded_range(budget: list[int]):
    def bounded(*args):
        r = range(*args)
        budget[0] += len(r)
        if budget[0] > RANGE_TOTAL:
            raise _TooCostly(f"its loops asked for more than {RANGE_TOTAL:,} range() elements")
        return r
    return bounded


def _raise_exception(message: str):
    raise _TemplateRaised(message)


@dataclass
class ChatTemplate:
    source: str  # the Jinja text
    bos_token: str
    eos_token: str
    origin: str  # "gguf" or "chatml fallback"
    path: str = ""

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.source.encode("utf-8")).hexdigest()

    @classmethod
    def from_metadata(cls, metadata: dict, path: str | Path, bos: str = "",
                      eos: str = "") -> ChatTemplate:
        """The GGUF's template, compiled and tried on a sample conversation."""
        source = metadata.get("tokenizer.chat_template")
        template = cls(source or CHATML, bos, eos, "gguf" if source else "chatml fallback",
                       str(path))
        template.render(_PROBE, add_generation_prompt=True)  # refuse a bad template up front
        return template

    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        jinja2 = require("jinja2", why="a chat template is Jinja")
        sandbox = require("jinja2.sandbox")
        env = sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                    extensions=["jinja2.ext.loopcontrols"])
        env.globals.update(raise_exception=_raise_exception, range=_bounded_range([0]),
                           strftime_now=lambda fmt: datetime.now().strftime(fmt))
        where = f"the chat template in {self.path}" if self.path else "the chat template"
        try:
            return _bounded_render(env.from_string(self.source), dict(
                messages=messages, add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token, eos_token=self.eos_token))
        except _TooCostly as e:
            why = f"{where} was stopped and refused: {e}"
            raise InputError(why + "; a chat template renders one conversation as text, use a "
                             "GGUF with an ordinary template") from None
        except jinja2.exceptions.SecurityError as e:
            raise InputError(f"{where} tried to reach Python internals and was refused, not run "
                             f"({e}); use a GGUF whose tokenizer.chat_template is plain Jinja, or "
                             "re-export the model") from None
        except _TemplateRaised as e:
            raise InputError(f"{where} rejected the conversation: {e}") from None
        except jinja2.TemplateError as e:
            raise InputError(f"{where} does not render ({type(e).__name__}: {e}); fix "
                             "tokenizer.chat_template in the GGUF") from None


def _bounded_render(template, context: dict) -> str:
    """Render chunk by chunk, stopping past RENDER_SECONDS or RENDER_CHARS."""
    start, size, out = time.monotonic(), 0, []
    for chunk in template.generate(**context):
        out.append(chunk)
        size += len(chunk)
        if size > RENDER_CHARS:
            raise _TooCostly(f"its output passed {RENDER_CHARS:,} characters")
        if time.monotonic() - start > RENDER_SECONDS:
            raise _TooCostly(f"rendering took more than {RENDER_SECONDS:g} s")
    return "".join(out)
