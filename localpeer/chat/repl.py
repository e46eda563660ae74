"""`localpeer chat MODEL.gguf`: a terminal chat that streams replies and keeps the transcript.

    localpeer chat models/gguf/peer-smollm2-135m/peer-smollm2-135m-Q8_0.gguf
    localpeer chat MODEL.gguf -p "Is it safe to give honey to a baby?"

Ctrl-C stops the reply being written (the partial reply is kept; /retry redoes it); at the
prompt, Ctrl-D or /quit leaves. `\"\"\"` on a line of its own starts and ends multi-line input.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from localpeer.chat.session import ContextFull, Engine, Sampler, gguf_sha256, load_engine
from localpeer.chat.transcript import ChatLog, load_conversation, utc_now
from localpeer.errors import InputError

HELP = """commands:
  /help            this list
  /system TEXT     set the system message (/system alone shows it; /system - removes it)
  /reset           start a new conversation (the system message stays)
  /retry           write the last reply again (a new seed)
  /undo            remove the last exchange (your message and the reply)
  /save [FILE]     write the conversation to FILE as a transcript (default: say where the
                   live transcript is)
  /load FILE       continue the last conversation in a transcript file
  /quit            leave (Ctrl-D too)
  \"\"\"              on its own line: start/end multi-line input
Ctrl-C stops a reply that is being written."""


@dataclass
class Chat:
    engine: Engine
    log: ChatLog
    console: object  # rich Console
    messages: list[dict] = field(default_factory=list)
    generations: int = 0  # seeds advance per generation, so /retry differs
    plain: bool = False  # -p: the reply alone on stdout, notes on stderr

    def set_system(self, text: str | None) -> None:
        if self.messages and self.messages[0]["role"] == "system":
            self.messages.pop(0)
        if text:
            self.messages.insert(0, {"role": "system", "content": text})

    def system(self) -> str | None:
        if self.messages and self.messages[0]["role"] == "system":
            return self.messages[0]["content"]
        return None

    def reply(self) -> None:
        """Generate the assistant turn for the conversation (ending with a user message),
        stream it, append it and save the transcript line."""
        out = sys.stdout if self.plain else self.console.file
        try:
            prompt, dropped, room = self.engine.fit(self.messages, self.engine.sampler.max_tokens)
        except ContextFull as e:
            if self.plain:  # -p: the one message does not fit; say so and exit 2
                raise InputError(f"the message does not fit the context ({e}); shorten it or "
                                 f"raise --ctx (this model was trained on "
                                 f"{self.engine.n_ctx_train} tokens)") from None
            self.console.print(f"[red]this turn does not fit:[/] {e}")
            self.messages.pop()
            return
        if dropped:
            self.console.print(f"[yellow]context: {dropped} earlier message(s) left out of the "
                               f"prompt to fit {self.engine.n_ctx} tokens (the transcript keeps "
                               "them)[/]")
        seed = self.engine.sampler.seed + self.generations
        self.generations += 1
        pieces: list[str] = []
        if not self.plain:
            self.console.print("[bold green]peer[/] › ", end="")
        try:
            for piece in self.engine.stream(prompt, seed=seed, max_tokens=room):
                pieces.append(piece)
                out.write(piece)
                out.flush()
        except KeyboardInterrupt:
            self.engine.stats.finish = "interrupted"
            self.engine.llm.reset()  # the KV cache may hold a half-evaluated step
        stats = self.engine.stats
        notes = {"interrupted": " \\[interrupted]", "length": " \\[max tokens]"}
        note = notes.get(stats.finish, "")
        out.write("\n")
        self.console.print(f"[dim]{stats.tokens} tokens, {stats.tokens_per_s:.1f} tokens/s"
                           f"{note}[/]")
        self.messages.append({"role": "assistant", "content": "".join(pieces)})
        self.log.save(self.messages)

    def command(self, line: str) -> bool:
        """Run a /command; False means quit."""
        name, _, arg = line.partition(" ")
        arg = arg.strip()
        c = self.console
        if name in ("/quit", "/exit", "/q"):
            return False
        if name == "/help":
            c.print(HELP, markup=False, highlight=False)
        elif name == "/system":
            if not arg:
                c.print(f"system: {self.system()!r}" if self.system() else "no system message")
            else:
                self.set_system(None if arg == "-" else arg)
                c.print("system message removed" if arg == "-" else "system message set")
        elif name == "/reset":
            self.messages = self.messages[:1] if self.system() else []
            self.log.new_conversation()
            c.print("new conversation")
        elif name == "/retry":
            if not self.messages or self.messages[-1]["role"] != "assistant":
                c.print("nothing to retry yet")
            else:
                self.messages.pop()
                self.reply()
        elif name == "/undo":
            while self.messages and self.messages[-1]["role"] == "assistant":
                self.messages.pop()
            if self.messages and self.messages[-1]["role"] == "user":
                self.messages.pop()
                self.log.save(self.messages)
                c.print("removed the last exchange")
            else:
                c.print("nothing to undo")
        elif name == "/save":
            if arg:
                try:
                    path = self.log.save_copy(self.messages, Path(arg))
                except OSError as e:  # the session goes on; nothing was written
                    c.print(f"[red]cannot save to {arg}: {e.strerror or e}[/]")
                else:
                    c.print(f"saved to {path}")
            else:
                where = self.log.path or "nowhere (--no-save)"
                c.print(f"every turn is saved as it completes, to {where}")
        elif name == "/load":
            if not arg:
                c.print("usage: /load FILE")
            else:
                try:
                    self.messages = load_conversation(Path(arg))
                except InputError as e:
                    c.print(f"[red]{e}[/]")
                except OSError as e:
                    c.print(f"[red]cannot read {arg}: {e.strerror or e}[/]")
                else:
                    self.log.new_conversation()
                    c.print(f"loaded {len(self.messages)} messages from {arg}")
        else:
            c.print(f"unknown command {name}; /help lists them")
        return True


def read_message(console) -> str:
    """One message: a line, or the lines between two lines of \"\"\"."""
    line = console.input("[bold cyan]you[/] › ")
    if line.strip() != '"""':
        return line
    lines = []
    while True:
        more = console.input("[dim]...[/] ")
        if more.strip() == '"""':
            return "\n".join(lines)
        lines.append(more)


def repl(chat: Chat) -> None:
    c = chat.console
    while True:
        try:
            line = read_message(c)
        except EOFError:
            c.print()
            return
        except KeyboardInterrupt:
            c.print("\n(Ctrl-C stops a reply; /quit or Ctrl-D leaves)")
            continue
        if not line.strip():
            continue
        if line.startswith("/") and not line.startswith("//"):
            if not chat.command(line.strip()):
                return
            continue
        chat.messages.append({"role": "user", "content": line})
        chat.reply()


def run_chat(args) -> int:
    from rich.console import Console

    from localpeer.deps import need

    need("llama_cpp", why="chat runs the GGUF on llama.cpp")

    console = Console(highlight=False)
    sampler = Sampler(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                      repeat_penalty=args.repeat_penalty, max_tokens=args.max_tokens,
                      seed=args.seed)
    if args.temperature < 0 or not 0 < args.top_p <= 1 or args.max_tokens < 1:
        raise InputError("--temperature must be >= 0, --top-p in (0, 1], --max-tokens >= 1")
    with console.status(f"loading {args.model}"):
        engine = load_engine(args.model, ctx=args.ctx, sampler=sampler, threads=args.threads)
        meta = {"gguf": engine.path.name, "gguf_sha256": gguf_sha256(engine.path),
                "sampler": sampler.to_dict(), "template_sha256": engine.template.sha256,
                "template": engine.template.origin, "n_ctx": engine.n_ctx,
                "created": utc_now()}
    folder = None if args.no_save else args.transcripts
    chat = Chat(engine, ChatLog(folder, args.name or engine.name, meta), console)
    chat.set_system(args.system)
    if args.prompt is not None:
        chat.plain = True
        chat.console = Console(stderr=True, highlight=False)
        chat.messages.append({"role": "user", "content": args.prompt})
        chat.reply()
        return 0
    if not sys.stdin.isatty():
        console.print("[dim](stdin is not a terminal: reading messages line by line)[/]")
    console.print(f"[bold]{engine.name}[/]  context {engine.n_ctx} tokens (trained "
                  f"{engine.n_ctx_train}), template: {engine.template.origin}; "
                  f"transcript: {chat.log.path or 'not saved'}")
    console.print("[dim]/help for commands, Ctrl-C stops a reply, /quit or Ctrl-D leaves[/]")
    repl(chat)
    return 0
