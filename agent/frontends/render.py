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

import re

from rich.console import Console, ConsoleOptions, RenderableType, RenderResult
from rich.markdown import Markdown
from rich.panel import Panel
from rich.segment import Segment
from rich.syntax import Syntax
from rich.text import Text

from agent.core.events import (AnswerEvent, Event, NoticeEvent, TextEvent, ToolCallEvent, ToolOutputEvent,
                     ToolResultEvent, UsageEvent)

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


class EventPrinter:
    """Prints events as they come. Text streams raw; the final answer is shown as Markdown."""

    def __init__(self, console: Console | None = None, show_usage: bool = True):
        self.console = console or Console()
        self.show_usage = show_usage
        self._streamed = ""

    def __call__(self, ev: Event) -> None:
        c = self.console
        if isinstance(ev, TextEvent):
            self._streamed += ev.text
            c.print(Text(safe_text(ev.text), style="dim"), end="")
        elif isinstance(ev, ToolCallEvent):
            self._end_stream()
            if ev.code is not None:
                c.print(code_panel(ev.code))
            else:
                c.print(Text(f"→ {safe_line(ev.name)}({safe_text(ev.arguments)})", style="cyan"))
        elif isinstance(ev, ToolResultEvent):
            style = STATUS_STYLE.get(ev.status, "white")
            title = f"{safe_line(ev.status)}" + (f" · {ev.duration * 1000:.0f} ms" if ev.duration else "")
            c.print(Panel(Text(safe_text(ev.output.rstrip()) or "(no output)"), title=Text(title),
                          title_align="left", border_style=style))
        elif isinstance(ev, NoticeEvent):
            self._end_stream()
            c.print(Text(f"[{safe_text(ev.text)}]", style="yellow"))
        elif isinstance(ev, UsageEvent) and self.show_usage:
            self._end_stream()
            u, t = ev.usage, ev.total
            c.print(Text(f"  {u.prompt_tokens:,} + {u.completion_tokens:,} tokens · {u.seconds:.1f} s · "
                         f"total {t.total_tokens:,} tokens ${t.cost_usd:.4f}", style="dim"))
        elif isinstance(ev, AnswerEvent):
            self._end_stream()
            c.print(Panel(markdown(ev.text or "(no answer)"), title="answer", title_align="left",
                          border_style="bold green"))
        elif isinstance(ev, ToolOutputEvent):
            pass  # the result panel shows it; live output belongs to the terminal chat

    def _end_stream(self) -> None:
        if self._streamed:
            self.console.print()
            self._streamed = ""
