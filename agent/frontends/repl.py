"""The terminal chat: `kernelchat` with no prompt. prompt_toolkit reads, rich shows.

Enter sends, Esc-Enter (Alt-Enter) inserts a new line; history persists across sessions; Ctrl-R
searches it; Tab completes slash commands, model names and paths. Ctrl-C stops the answer being
generated or interrupts the running cell (never the program); Ctrl-D leaves.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from prompt_toolkit import PromptSession
from prompt_toolkit import prompt as pt_prompt
from prompt_toolkit.completion import Completer, Completion, PathCompleter
from prompt_toolkit.document import Document
from prompt_toolkit.enums import DEFAULT_BUFFER
from prompt_toolkit.filters import has_focus
from prompt_toolkit.formatted_text import HTML
from prompt_toolkit.history import FileHistory
from prompt_toolkit.key_binding import KeyBindings
from rich.console import Console
from rich.live import Live
from rich.text import Text

from agent.frontends import commands
from agent.core.budget import BudgetExceeded
from agent.core.consent import FileCells
from agent.core.dirs import conversations_dir, data_dir
from agent.core.events import Event, NoticeEvent, TextEvent, ToolCallEvent, ToolOutputEvent, ToolResultEvent
from agent.frontends.conversations import find_conversation, resume_options, show_loaded
from agent.frontends.file_cells import ask_file_cells
from agent.frontends.options import chat_options, check_save_path, conversation_path, keep_alive
from agent.frontends.render import EventPrinter, RunningView, code_panel, safe_line, safe_text
from agent.frontends.warmup import EarlyKernel
from agent.frontends.workspaces import close_chat


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"


# -- output ----------------------------------------------------------------------------------------


class ReplPrinter(EventPrinter):
    """EventPrinter plus spinners: while the model thinks, and while a cell runs (with its live output)."""

    def __init__(self, console: Console, defer_cells: bool = False):
        super().__init__(console)
        self.defer_cells = defer_cells  # --confirm: the cell starts only once approved
        self._live: Live | None = None
        self._running: RunningView | None = None

    def _show(self, view: Any) -> None:
        self.stop_live()
        self._live = Live(view, console=self.console, refresh_per_second=8, transient=True)
        self._live.start()

    def stop_live(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live, self._running = None, None

    def waiting(self, label: str = "thinking") -> None:
        """A spinner until the next event (the model's first token)."""
        self._show(RunningView(f"{label} (Ctrl-C stops)"))

    def start_cell(self) -> None:
        self._running = RunningView("running (Ctrl-C interrupts)")
        self._show(self._running)

    def interrupting(self) -> None:
        if self._running is not None:
            self._running.label = "interrupting…"

    def __call__(self, ev: Event) -> None:
        if isinstance(ev, ToolOutputEvent) and ev.stream != "notice":
            if self._running is not None:
                self._running.feed(ev.text if ev.stream != "display" else f"[{ev.text}]\n")
            return
        if isinstance(ev, ToolOutputEvent):  # the cell is run again, revised: a line above its live view
            if self._running is not None:  # cleared first: printing redraws the live view below the line
                self._running.lines.clear()
                self._running.partial = ""
            super().__call__(ev)
            return
        if isinstance(ev, TextEvent):
            shown = self._fence.feed(ev.text)
            if shown or not self._fence.in_fence:
                self.stop_live()
            self._print_stream(shown)
            if self._fence.in_fence and self._live is None:  # a ```python block: its panel comes once it ends
                self._end_line()
                self.waiting("writing code")
            return
        self.stop_live()
        super().__call__(ev)
        if isinstance(ev, ToolCallEvent) and ev.code is not None and not self.defer_cells:
            self.start_cell()
        elif isinstance(ev, ToolResultEvent):
            self.waiting()  # the model is asked again unless the turn ends here

    def end(self) -> None:
        self.stop_live()
        self._end_stream()


# -- input -----------------------------------------------------------------------------------------


class ChatCompleter(Completer):
    """Slash commands and their arguments; elsewhere, files of the kernel's workspace."""

    def __init__(self, repl: "Repl"):
        self.repl = repl
        self.paths = PathCompleter(expanduser=True)

    def get_completions(self, document: Document, complete_event):
        text = document.text_before_cursor
        if text.startswith("/") and "\n" not in text:
            if " " not in text:
                for name, (usage, help_) in commands.COMMANDS.items():
                    if name.startswith(text[1:].lower()):
                        yield Completion("/" + name, start_position=-len(text), display_meta=help_)
                return
            name, _, rest = text.partition(" ")
            name = commands.ALIASES.get(name[1:].lower(), name[1:].lower())
            yield from self._argument(name, rest.lstrip(), complete_event)
            return
        word = document.get_word_before_cursor(WORD=True)
        if word:
            for f in self.repl.workspace_files():
                if f.startswith(word):
                    yield Completion(f, start_position=-len(word))

    def _argument(self, name: str, rest: str, event) -> Any:
        choices: list[str] = []
        if name == "model":
            choices = commands.model_names()
        elif name == "kernel":
            choices = ["restart", "reset"]
        elif name == "switch":
            choices = [b.id for b in self.repl.chat.branches()]
        elif name == "export" and " " not in rest:
            choices = ["md", "html", "ipynb"]
        elif name in ("save", "load", "upload", "export", "notebook"):
            arg = rest.split(" ", 1)[1] if name == "export" else rest
            yield from self.paths.get_completions(Document(arg), event)
            return
        for c in choices:
            if c.startswith(rest):
                yield Completion(c, start_position=-len(rest))


def _key_bindings() -> KeyBindings:
    kb = KeyBindings()
    editing = has_focus(DEFAULT_BUFFER)  # not while Ctrl-R searching: Enter then ends the search

    @kb.add("enter", filter=editing)
    def _send(event) -> None:
        event.current_buffer.validate_and_handle()

    @kb.add("escape", "enter", filter=editing)  # Alt-Enter sends Esc-Enter in most terminals
    def _newline(event) -> None:
        event.current_buffer.insert_text("\n")

    return kb


def _edit_in_editor(code: str) -> str:
    editor = os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(code)
    try:
        subprocess.call([*shlex.split(editor), f.name])
        return Path(f.name).read_text()
    finally:
        os.unlink(f.name)


def _ask_run() -> str:
    """One key: y/Enter runs, n skips, e edits. Ctrl-C or Ctrl-D skip."""
    kb = KeyBindings()
    for keys, result in ((("y",), "run"), (("enter",), "run"), (("n",), "skip"), (("s",), "skip"),
                         (("e",), "edit"), (("c-c",), "stop"), (("c-d",), "stop")):
        kb.add(*keys)(lambda event, r=result: event.app.exit(result=r))
    kb.add("<any>")(lambda event: None)  # other keys do nothing
    return pt_prompt(HTML("run this cell? <b>[Y]</b>es · <b>n</b>o, skip it · <b>e</b>dit it in $EDITOR "),
                     key_bindings=kb)


def confirm_cell(code: str) -> bool | str:
    """The --confirm callback of the one-shot CLI: run, skip, or the code as edited."""
    try:
        choice = _ask_run()
    except (KeyboardInterrupt, EOFError):
        return False
    return _edit_in_editor(code) if choice == "edit" else choice == "run"


# -- the chat --------------------------------------------------------------------------------------


class Repl:
    """One terminal chat session around a Chat."""

    def __init__(self, chat, console: Console, options: dict[str, Any], args: argparse.Namespace,
                 confirm: bool = False):
        self.chat, self.console, self.options, self.args = chat, console, options, args
        self.confirm = confirm
        self.printer = ReplPrinter(console, defer_cells=confirm)
        self.editing: int | None = None  # /edit N in progress
        self.prefill = ""
        self.done = False
        self.state = "idle"  # idle | model | cell: what Ctrl-C stops
        self.stop_after_cell = False
        chat.approve = self._approve  # also without --confirm: cells from a file are always asked about
        history = data_dir() / "history"
        history.parent.mkdir(parents=True, exist_ok=True)
        self.session: PromptSession = PromptSession(
            history=FileHistory(str(history)), multiline=True, key_bindings=_key_bindings(),
            completer=ChatCompleter(self), complete_while_typing=False, bottom_toolbar=self._toolbar,
            prompt_continuation=lambda width, line, soft: " " * max(width - 5, 0) + "...: ")

    # -- the loop ------------------------------------------------------------------------------

    def loop(self) -> None:
        while not self.done:
            try:
                text = self.session.prompt(self._message(), default=self.prefill)
            except KeyboardInterrupt:  # as in IPython: clears the line (and cancels an edit)
                if self.editing is not None:
                    self.notice("edit cancelled")
                self.editing, self.prefill = None, ""
                continue
            except EOFError:
                break
            self.prefill = ""
            editing, self.editing = self.editing, None
            if not text.strip():
                continue
            if commands.is_command(text):
                self.command(text)
            elif editing is not None:
                self.run_turn(self.chat.edit_events(editing - 1, text))
            else:
                if self.chat.path is None and not self.args.no_save:  # named after the first prompt
                    conversation_path(self.chat, None, text)
                self.run_turn(self.chat.run(text))

    def _message(self) -> HTML:
        if self.editing is not None:
            return HTML(f"<ansiyellow>Edit [{self.editing}]: </ansiyellow>")
        # "You [n]": the prompt's number; "In [k]" is the kernel's, on cells (tracebacks, exports)
        return HTML(f"<ansigreen>You [<b>{len(self.chat.tree.user_nodes()) + 1}</b>]: </ansigreen>")

    def _toolbar(self) -> HTML:
        chat = self.chat
        t = chat.tracker
        u, b = t.spent, t.budget
        tokens = f"{u.total_tokens:,} tok" + (f" ({max(b.max_tokens - u.total_tokens, 0):,} left)" if b.max_tokens else "")
        money = f"${u.cost_usd:.4f}" + (f" (${max(b.max_usd - u.cost_usd, 0):.4f} left)" if b.max_usd else "")
        status = f" {safe_line(chat.model)} · step {t.steps} · {tokens} · {money} · {_clock(t.elapsed)} "
        keys = (f"Enter regenerates from You [{self.editing}] on a new branch · Ctrl-C cancels"
                if self.editing is not None else "Enter send · Esc-Enter newline · /help · Ctrl-D quit")
        return HTML(f"<b>{_esc(status)}</b>│ {keys}")

    def command(self, text: str) -> None:
        try:
            commands.handle(self, commands.parse(text))
        except KeyboardInterrupt:
            self.notice("stopped")
            self.flush_notices()  # e.g. a stopped replay: the kernel is behind the branch
        except Exception as e:  # noqa: BLE001 - one line, and the conversation goes on
            self.error(str(e) or type(e).__name__)

    # -- a turn: events until the answer, Ctrl-C aware ----------------------------------------

    def run_turn(self, events: Iterator[Event]) -> None:
        """Show a turn's events. Ctrl-C while the model generates stops it (closing the generator
        cancels local generation); while a cell runs it interrupts the kernel, lets the cell's result
        land in the tree (so the conversation stays well formed), then ends the turn."""
        self.state, self.stop_after_cell = "model", False
        previous = signal.signal(signal.SIGINT, self._on_sigint)
        try:
            self.printer.waiting()
            for ev in events:
                self.printer(ev)
                if isinstance(ev, ToolCallEvent) and ev.code is not None:
                    self.state = "cell"
                elif isinstance(ev, ToolResultEvent):
                    self.state = "model"
                    if self.stop_after_cell:
                        self.printer.stop_live()
                        self.notice("interrupted: the cell was stopped; the turn ends here")
                        break
        except KeyboardInterrupt:
            self.printer.end()
            self.notice("stopped")
        except BudgetExceeded as e:
            self.printer.end()
            self.printer.stopped(str(e), "stopped: budget")  # the loop's notice of it is not shown: once
        except Exception as e:  # noqa: BLE001 - a failed turn is one line, the chat goes on
            self.printer.end()
            self.error(str(e) or type(e).__name__)
        finally:
            self.state = "idle"
            try:
                events.close()  # local generation stops here when the turn was cut short
            except BaseException:  # noqa: BLE001
                pass
            signal.signal(signal.SIGINT, previous)
            self.printer.end()

    def _on_sigint(self, signum, frame) -> None:
        if self.state != "cell":
            raise KeyboardInterrupt
        # Not raising: the cell's thread keeps going until the kernel answers the interrupt.
        self.printer.interrupting()
        if not self.stop_after_cell:
            self.stop_after_cell = True
            threading.Thread(target=self._interrupt_cell, daemon=True, name="kernelchat-interrupt").start()

    def _interrupt_cell(self) -> None:
        """Interrupt until the cell's result is in: the kernel may still be starting or replaying
        (no kernel yet, or an idle one that ignores the interrupt) when Ctrl-C comes."""
        deadline = time.monotonic() + 30
        while self.state == "cell" and time.monotonic() < deadline:
            kernel = self.chat.started_kernel
            if kernel is not None and kernel.alive:
                kernel.interrupt()
            time.sleep(0.5)

    def _approve(self, code: str) -> bool | str:
        if isinstance(code, FileCells):  # a loaded conversation's cells, before a replay runs them
            return self.consent(code)
        if not self.confirm:
            return True
        self.printer.stop_live()
        try:
            choice = _ask_run()
        except (KeyboardInterrupt, EOFError):
            choice = "stop"
        if choice == "edit":
            edited = _edit_in_editor(code)
            self.console.print(code_panel(edited, title="python (edited)", border_style="magenta"))
            self.printer.start_cell()
            return edited
        if choice == "run":
            self.printer.start_cell()
            return True
        if choice == "stop":
            self.stop_after_cell = True  # skipped, and the turn ends after the skip is recorded
        self.printer.waiting()
        return False

    def consent(self, cells: FileCells) -> bool:
        """Show the cells a file would run (numbered, as text, and where) and ask once for all."""
        self.printer.stop_live()
        kernel = self.chat.started_kernel
        yes = ask_file_cells(self.console, cells, temporary=kernel is not None and kernel.temporary_workspace)
        if self.state == "cell":  # asked while a cell of the model waits for the kernel
            self.printer.start_cell()
        return yes

    # -- what the commands use -----------------------------------------------------------------

    def notice(self, text: str) -> None:
        self.console.print(Text(safe_text(text), style="yellow"), soft_wrap=True)  # paths unbroken when piped

    def error(self, text: str) -> None:
        lines = text.split("\n")  # not splitlines(): that also splits at \x1c-\x1e, \x85, \u2028
        self.console.print(Text(safe_line(lines[0]) if text else "error", style="red"), soft_wrap=True)

    def flush_notices(self) -> None:
        while self.chat.notices:
            self.printer(NoticeEvent(text=self.chat.notices.pop(0)))

    def start_edit(self, n: int, text: str) -> None:
        self.editing, self.prefill = n, text

    def quit(self) -> None:
        self.done = True

    def workspace_files(self) -> list[str]:
        kernel = self.chat.started_kernel  # only a started kernel: completion must not start one
        if kernel is not None:
            return kernel.files()
        root = self.chat.workspace
        if root is not None and root.is_dir():
            from sandbox import walk_files  # no link followed: lists nothing about the host

            return walk_files(root)
        return []

    def switch_model(self, name: str) -> None:
        from agent.models import get_backend

        with self.console.status(Text(f"loading {safe_line(name)}…")):
            backend = get_backend(name, base_url=self.args.base_url, api_key=self.args.api_key,
                                  images=getattr(self.args, "images", None),
                                  engine=getattr(self.args, "engine", None) or "auto",
                                  keep_alive=keep_alive(self.args), workspace=self.chat.workspace)
        chat = self.chat
        before = chat.system
        chat.use_backend(backend)  # a default system prompt follows the model; yours stays
        note = "the system prompt is unchanged"
        if chat.system != before:
            note = "the default system prompt for this kind of model"
        if chat.path is not None and chat.tree.user_nodes():  # the new root is saved (no file for a conversation not begun)
            chat.save()
        self.notice(f"model: {chat.model} ({note}; /system shows it)")

    def set_system(self, text: str) -> None:
        """Replace the system prompt. It is the root of the tree, so every branch uses the new one
        from its next request on; answers already given stay as they were."""
        chat = self.chat
        chat.system = text
        if chat.path is not None and chat.tree.user_nodes():  # no file for a conversation not begun
            chat.save()

    def load(self, path: Path) -> None:
        from agent.chat import Chat

        options = {k: v for k, v in self.options.items() if k not in ("model", "system")}
        with self.console.status(Text(f"loading {safe_line(str(path))}…")):
            chat = Chat.load(path, **options)
        chat.approve = self._approve
        close_chat(self.chat, self.console)  # and say where its temporary workspace is, if it holds files
        self.chat = chat
        show_loaded(self.console, path, chat)


def _esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# -- entry point -----------------------------------------------------------------------------------


def main(args: argparse.Namespace, backend: Any = None, console: Console | None = None) -> int:
    """Open the terminal chat with the one-shot CLI's flags. `backend` is for tests (a scripted model)."""
    from agent.chat import Chat

    console = console or Console()
    if not sys.stdin.isatty():
        console.print("[red]kernelchat:[/red] no prompt given and stdin is not a terminal; "
                      "give a prompt, or `kernelchat -` to read it from stdin", highlight=False)
        return 2
    if args.save and not args.no_save:
        check_save_path(args.save)  # a bad path: one line now, not after the model has loaded
    options = chat_options(args)
    if backend is not None:
        options["backend"] = backend
    resume = find_conversation(args.resume or None) if getattr(args, "resume", None) is not None else None
    early = EarlyKernel(options["kernel"])  # comes up while the model loads; /load starts its own from the options
    try:
        with console.status(Text(f"loading {safe_line(str(resume or args.model or 'the model'))}…")):
            first = {**options, "kernel": early.kernel}
            chat = (Chat.load(resume, **resume_options(args, first)) if resume else Chat(**first))
    except BaseException:
        early.close()
        raise
    if args.no_save or args.save:  # a resumed conversation's file is left as it was
        chat.path = None if args.no_save else conversation_path(chat, args.save)  # written from the first prompt on
    repl = Repl(chat, console, options, args, confirm=getattr(args, "confirm", False))
    console.print(Text.assemble(("kernelchat", "bold"), f" · {safe_line(chat.model)} · ",
                                ("/help for commands · Enter sends · Esc-Enter new line · Ctrl-D leaves", "dim")))
    if chat.path or not args.no_save:  # without --save the file is named after the first prompt
        where = chat.path or conversations_dir()
        console.print(Text(f"saving to {safe_line(str(where))}", style="dim"), soft_wrap=True)
    if resume:
        show_loaded(console, resume, chat)
    try:
        if getattr(args, "notebook", None):  # its cells first, shown as a turn's are
            commands.handle(repl, commands.Command("notebook", arg=args.notebook))
        repl.loop()
    finally:
        close_chat(repl.chat, console)
    path = repl.chat.path
    if path is not None and path.exists():
        console.print(Text(f"saved: {safe_line(str(path))}", style="dim"), soft_wrap=True)  # one line when piped
    elif not args.no_save:
        console.print(Text("nothing to save: no prompt was sent", style="dim"))
    return 0
