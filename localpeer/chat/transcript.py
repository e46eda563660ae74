"""Transcripts as they are written: the ARCHITECTURE.md format, one conversation a line.

`localpeer chat` appends the whole conversation after every completed turn (one line, fsynced):
a crash loses at most the turn in flight, and readers take the last line of an id
(`formats.read_transcripts`). `localpeer generate` appends one finished conversation a line.

    from localpeer.chat.transcript import ChatLog
    log = ChatLog(Path("transcripts"), model="peer-Q8_0", meta={...})
    log.save(messages)
"""

from __future__ import annotations

import os
import secrets
from datetime import datetime, timezone
from pathlib import Path

from localpeer.formats import append_jsonl, atomic_write_text, read_transcripts


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_id(prefix: str = "chat") -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{prefix}-{stamp}-{secrets.token_hex(3)}"


def transcript_line(id: str, model: str, item: str, messages: list[dict], meta: dict) -> dict:
    return {"id": id, "model": model, "item": item,
            "messages": [{"role": m["role"], "content": m["content"]} for m in messages],
            "meta": meta}


class ChatLog:
    """The live transcript file of one chat session; /reset starts a new conversation id in
    the same file."""

    def __init__(self, folder: Path | None, model: str, meta: dict):
        self.folder, self.model, self.meta = folder, model, meta
        self.id = new_id()
        self.path = (Path(folder) / f"{self.id}.jsonl") if folder is not None else None
        if folder is not None:
            writable_or_raise(Path(folder))

    def new_conversation(self) -> None:
        self.id = new_id()

    def line(self, messages: list[dict]) -> dict:
        meta = dict(self.meta, updated=utc_now())
        return transcript_line(self.id, self.model, f"free-{self.id}", messages, meta)

    def save(self, messages: list[dict]) -> None:
        """Append the conversation so far (one line, fsynced); nothing before the first reply."""
        if self.path is not None and any(m["role"] == "assistant" for m in messages):
            append_jsonl(self.path, self.line(messages))

    def save_copy(self, messages: list[dict], path: Path) -> Path:
        """The conversation as a one-line transcript file at `path`, written atomically."""
        import json

        path = Path(os.path.expanduser(str(path)))
        atomic_write_text(path, json.dumps(self.line(messages), ensure_ascii=False) + "\n")
        return path


def writable_or_raise(folder: Path) -> None:
    """Before a chat starts: the transcripts folder must be writable (made if need be, a
    throwaway file created and removed in it), or every reply would be lost at its save.
    Raises OSError naming the folder."""
    import tempfile

    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=folder):
        pass


def load_conversation(path: Path) -> list[dict]:
    """The messages of the last conversation in a transcript file (for /load)."""
    from localpeer.errors import InputError

    path = Path(os.path.expanduser(str(path)))
    if not path.is_file():
        raise InputError("no such transcript file", path)
    transcripts = read_transcripts(path)
    if not transcripts:
        raise InputError("the file holds no conversation", path)
    messages = [dict(m) for m in transcripts[-1].messages]
    for k, m in enumerate(messages):
        if m.get("role") not in ("system", "user", "assistant") or not isinstance(
                m.get("content"), str):
            raise InputError(f"message {k + 1} of the last conversation is not "
                             '{"role": "system"|"user"|"assistant", "content": "<text>"}', path)
    return messages
