"""Rich rendering of the event stream: each cell as a highlighted panel, its output after it.

Terminal safety: every text that the project did not write itself (the model's text and tool calls,
the kernel's output, results, tracebacks and file names, error messages that quote them) goes
through `safe_text` before it reaches a renderable, so no control sequence of theirs reaches the
terminal: no OSC (window title, OSC 52 clipboard, OSC 8 links), no RIS, no private CSI, no DCS/APC/
PM/SOS strings, no 8-bit C1 controls, and no colours either (the kernel's SGR codes are shown, not
obeyed). The only escapes written are rich's own.

Carriage returns: a lone `\\r` lets a program overwrite a line, which hides what was there (say a
command, behind a harmless-looking line). Every panel that stays on screen shows it as `␍` and keeps
the text on both sides; only the transient live view of a running cell (`live_line`) follows it like
a terminal, so that progress bars animate. `\\r\\n` is a plain line end.
"""

from __future__ import annotations

import logging
import re
import time
from collections import deque

from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.markdown import Markdown
from rich.panel import Panel
from rich.segment import Segment
from rich.spinner import Spinner
from rich.syntax import Syntax
from rich.text import Text

from agent.core.events import (AnswerEvent, Event, NoticeEvent, TextEvent, ToolCallEvent, ToolOutputEvent,
                     ToolResultEvent, UsageEvent)
from tools.text import PYTHON_FENCE_OPENING

STATUS_STYLE = {"ok": "green", "error": "red", "timeout": "yellow", "died": "red", "rejected": "yellow",
                "invalid": "red"}


def _visible(code: int) -> str:
    if code < 0x20:
        return chr(0x2400 + code)  # the Unicode control pictures: ␀ … ␛ … ␟
    if code == 0x7F:
        return "␡"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


# C0 (but tab and newline), DEL, C1 (0x80-0x9f: 0x9b is a one-byte CSI, 0x9d a one-byte OSC), and the
# bidirectional embeddings, overrides and isolates (they reorder what a terminal with bidi shows).
_CONTROLS = [c for c in range(0x20) if c not in (0x09, 0x0A)] + list(range(0x7F, 0xA0)) + \
    list(range(0x202A, 0x202F)) + list(range(0x2066, 0x206A))
_TABLE = {c: _visible(c) for c in _CONTROLS}
_LINE_TABLE = {**_TABLE, 0x09: "␉", 0x0A: "␊"}
_CRLF = re.compile(r"\r+\n")


def safe_text(text: str) -> str:
    """`text` with every control character made visible, so the terminal obeys none: ESC becomes
    `␛`, other C0 controls their control pictures, C1 controls and bidi controls `\\x9b`-style
    escapes. Newlines and tabs stay; `\\r\\n` becomes `\\n`, a lone `\\r` becomes `␍`."""
    return _CRLF.sub("\n", text).translate(_TABLE)


def safe_line(text: str) -> str:
    """Like `safe_text`, for text that must stay on one line (file names, titles, ids): newlines
    and tabs are shown as `␊` and `␉` too."""
    return _CRLF.sub("\n", text).translate(_LINE_TABLE)


def live_line(text: str) -> str:
    """A line of a running cell's live view: what follows its last `\\r` (a progress bar redraws
    itself that way), made safe. Only for views that vanish: the result panel shows all of it."""
    return safe_line(text.rsplit("\r", 1)[-1])


class SafeLogHandler(logging.Handler):
    """Log records on stderr with their controls made visible: the sandbox's warnings quote names
    from the workspace and the task's folders (`skipped ... (a symbolic link)`), which Python's
    last-resort handler would write raw."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            Console(stderr=True).print(Text(safe_text(self.format(record)), style="yellow"), soft_wrap=True)
        except Exception:  # noqa: BLE001 - logging must never raise into the caller
            self.handleError(record)


class Sanitized:
    """A renderable whose text segments pass through `safe_text` after rendering: for renderables
    that make text of their own from the source (Markdown turns `&#x202e;` into the character)."""

    def __init__(self, renderable: RenderableType):
        self.renderable = renderable

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        for seg in console.render(self.renderable, options):
            yield seg if seg.control else Segment(safe_text(seg.text), seg.style)


def markdown(text: str) -> Sanitized:
    """The model's Markdown, safe: controls made visible, links shown as text and address (not OSC 8
    hyperlinks, whose target a model could make differ from the text)."""
    return Sanitized(Markdown(safe_text(text), hyperlinks=False))


def code_panel(code: str, title: str = "python", border_style: str = "blue") -> Panel:
    """A cell's code, highlighted; its control characters shown, not obeyed."""
    return Panel(Syntax(safe_text(code), "python", theme="ansi_dark", word_wrap=True),
                 title=title, title_align="left", border_style=border_style)


LIVE_LINES = 8  # lines of a running cell's output shown under its spinner


class RunningView:
    """The live view of a running cell: a spinner, the elapsed time, the last output lines."""

    def __init__(self, label: str):
        self.label, self.t0 = label, time.monotonic()
        self.lines: deque[str] = deque(maxlen=LIVE_LINES)
        self.partial = ""
        self.spinner = Spinner("dots", style="cyan")

    def feed(self, text: str) -> None:
        parts = (self.partial + text).split("\n")
        self.partial = parts.pop()
        self.lines.extend(parts)

    def __rich__(self) -> Group:
        self.spinner.text = Text(f"{self.label} · {time.monotonic() - self.t0:.1f} s", style="cyan")
        tail = [*self.lines, self.partial] if self.partial else list(self.lines)
        # live_line: the text after a line's last \r (progress bars animate), controls made visible
        return Group(self.spinner, *(Text("  " + live_line(line)[:200], style="dim") for line in tail))


# What may still become a ```python opening: a run of backticks and a word, no newline yet.
_MAYBE_OPENING = re.compile(r"`{1,3}[ \t]*[A-Za-z0-9]*[ \t]*$")
_CLOSING = re.compile(r"\n[ \t]*```[ \t]*\n?")
# Budget refusals are notices of the loop and also end the turn (an exception, or an outcome): the
# front end reports the stop once, from the latter.
BUDGET_NOTICE = "budget exceeded:"


class FenceFilter:
    """Streamed text minus its ```python blocks: a model without tool calls writes its code in them,
    and each becomes a call shown as a code panel, so the raw fence is not shown first. Text that may
    be the start of an opening is held back until the next delta tells."""

    def __init__(self) -> None:
        self.buf, self.in_fence = "", False

    def feed(self, text: str) -> str:
        """The part of the stream so far that is to be shown now."""
        self.buf += text
        shown = ""
        while True:
            if self.in_fence:
                m = _CLOSING.search(self.buf)
                if m is None:
                    self.buf = self.buf[self.buf.rfind("\n"):] if "\n" in self.buf else self.buf
                    return shown
                self.buf, self.in_fence = self.buf[m.end():], False
                continue
            m = PYTHON_FENCE_OPENING.search(self.buf)
            if m is not None:
                shown += self.buf[:m.start()]
                self.buf, self.in_fence = self.buf[m.end():], True
                continue
            hold = _MAYBE_OPENING.search(self.buf)
            cut = hold.start() if hold else len(self.buf)
            shown, self.buf = shown + self.buf[:cut], self.buf[cut:]
            return shown

    def flush(self) -> str:
        """What is left to show at the end of a reply (an unclosed fence at the end is a call too)."""
        rest = "" if self.in_fence else self.buf
        self.buf, self.in_fence = "", False
        return rest


OUTCOME_TITLE = {"stopped": "stopped", "max_steps": "stopped: step limit",
                 "budget": "stopped: budget", "interrupted": "stopped: interrupted", "failed": "stopped: failed"}


class EventPrinter:
    """Prints events as they come. Text streams dim (less its ```python blocks, which show as the
    code panel of their call); the final answer is shown as Markdown, a turn that ended otherwise
    (AnswerEvent.outcome) in yellow, once."""

    def __init__(self, console: Console | None = None, show_usage: bool = True):
        self.console = console or Console()
        self.show_usage = show_usage
        self._streamed = ""
        self._fence = FenceFilter()

    def __call__(self, ev: Event) -> None:
        c = self.console
        if isinstance(ev, TextEvent):
            self._print_stream(self._fence.feed(ev.text))
        elif isinstance(ev, ToolCallEvent):
            self._end_stream()
            if ev.code is not None:
                c.print(code_panel(ev.code))
            else:
                c.print(Text(f"→ {safe_line(ev.name)}({safe_text(ev.arguments)})", style="cyan"))
        elif isinstance(ev, ToolResultEvent):
            style = STATUS_STYLE.get(ev.status, "white")
            # the kernel's count, as tracebacks say `Cell In[k]` and the exports `In [k]`
            count = ev.execution_count
            title = (f"Out [{count}] · " if count else "") + safe_line(ev.status) + \
                (f" · {ev.duration * 1000:.0f} ms" if ev.duration else "")
            c.print(Panel(Text(safe_text(ev.output.rstrip()) or "(no output)"), title=Text(title),
                          title_align="left", border_style=style))
        elif isinstance(ev, NoticeEvent):
            self._end_stream()
            if not ev.text.startswith(BUDGET_NOTICE):  # shown as the turn's stop (see BUDGET_NOTICE)
                c.print(Text(f"[{safe_text(ev.text)}]", style="yellow"))
        elif isinstance(ev, UsageEvent) and self.show_usage:
            self._end_stream()
            u, t = ev.usage, ev.total
            c.print(Text(f"  {u.prompt_tokens:,} + {u.completion_tokens:,} tokens · {u.seconds:.1f} s · "
                         f"total {t.total_tokens:,} tokens ${t.cost_usd:.4f}", style="dim"))
        elif isinstance(ev, AnswerEvent):
            self._end_stream()
            if ev.outcome == "answered":
                c.print(Panel(markdown(ev.text or "(no answer)"), title="answer", title_align="left",
                              border_style="bold green"))
            else:
                self.stopped(ev.text, OUTCOME_TITLE.get(ev.outcome, f"stopped: {ev.outcome}"))
        elif isinstance(ev, ToolOutputEvent) and ev.stream == "notice":
            # a line of its own (e.g. "added `import time` and ran it again"), never glued to output
            c.print(Text(f"[{safe_text(ev.text.strip())}]", style="yellow"))
        # other ToolOutputEvents: the result panel shows them; live output belongs to the terminal chat

    def stopped(self, text: str, title: str = "stopped") -> None:
        """A turn that ended without an answer: its text in yellow, under what stopped it."""
        self._end_stream()
        self.console.print(Panel(markdown(text or title), title=Text(title), title_align="left",
                                 border_style="yellow"))

    def _print_stream(self, text: str) -> None:
        if text:
            self._streamed += text
            self.console.print(Text(safe_text(text), style="dim"), end="")

    def _end_stream(self) -> None:
        self._print_stream(self._fence.flush())
        self._end_line()

    def _end_line(self) -> None:
        if self._streamed:
            self.console.print()
            self._streamed = ""
