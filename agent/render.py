"""Rich rendering of the event stream: each cell as a highlighted panel, its output after it."""

from __future__ import annotations

from rich.console import Console
from rich.markdown import Markdown
from rich.panel import Panel
from rich.syntax import Syntax
from rich.text import Text

from .events import (AnswerEvent, Event, NoticeEvent, TextEvent, ToolCallEvent, ToolOutputEvent,
                     ToolResultEvent, UsageEvent)

STATUS_STYLE = {"ok": "green", "error": "red", "timeout": "yellow", "died": "red", "rejected": "yellow",
                "invalid": "red"}


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
            c.print(Text(ev.text, style="dim"), end="")
        elif isinstance(ev, ToolCallEvent):
            self._end_stream()
            if ev.code is not None:
                c.print(Panel(Syntax(ev.code, "python", theme="ansi_dark", word_wrap=True),
                              title="python", title_align="left", border_style="blue"))
            else:
                c.print(Text(f"→ {ev.name}({ev.arguments})", style="cyan"))
        elif isinstance(ev, ToolResultEvent):
            style = STATUS_STYLE.get(ev.status, "white")
            title = f"{ev.status}" + (f" · {ev.duration * 1000:.0f} ms" if ev.duration else "")
            c.print(Panel(Text(ev.output.rstrip() or "(no output)"), title=title, title_align="left",
                          border_style=style))
        elif isinstance(ev, NoticeEvent):
            self._end_stream()
            c.print(Text(f"[{ev.text}]", style="yellow"))
        elif isinstance(ev, UsageEvent) and self.show_usage:
            self._end_stream()
            u, t = ev.usage, ev.total
            c.print(Text(f"  {u.prompt_tokens:,} + {u.completion_tokens:,} tokens · {u.seconds:.1f} s · "
                         f"total {t.total_tokens:,} tokens ${t.cost_usd:.4f}", style="dim"))
        elif isinstance(ev, AnswerEvent):
            self._end_stream()
            c.print(Panel(Markdown(ev.text or "(no answer)"), title="answer", title_align="left",
                          border_style="bold green"))
        elif isinstance(ev, ToolOutputEvent):
            pass  # the result panel shows it; live output belongs to the terminal chat

    def _end_stream(self) -> None:
        if self._streamed:
            self.console.print()
            self._streamed = ""
