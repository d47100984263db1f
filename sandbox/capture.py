"""Host-side capture of one cell's streams: bounded memory whatever the kernel sends."""

from __future__ import annotations

import collections
import re
from pathlib import Path

ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
KERNEL_MARKER = re.compile(r"\[kernelchat: [\d,]+ characters of (stdout|stderr) cut; full \1 in (.+?)\]")


def strip_ansi(text: str) -> str:
    return ANSI.sub("", text)


class CappedStream:
    """Keeps the head and tail of a stream; past `limit` the rest goes to a spill file.

    The kernel already caps its output (boot.py); this is the backstop for output
    that bypasses it, so the host never holds more than about `limit` characters."""

    def __init__(self, name: str, limit: int, spill_dir: Path):
        self.name, self.limit, self.spill_dir = name, limit, spill_dir
        self.head: list[str] = []
        self.head_len = 0
        self.tail: collections.deque[str] = collections.deque()
        self.tail_len = 0
        self.cut = 0
        self.spill = None
        self.spill_path: Path | None = None

    def write(self, text: str) -> None:
        room = self.limit // 2 - self.head_len
        if room > 0 and not self.cut and not self.tail:
            self.head.append(text[:room])
            self.head_len += min(len(text), room)
            text = text[room:]
            if not text:
                return
        self._to_tail(text)

    def _to_tail(self, text: str) -> None:
        if self.spill is not None:
            self.spill.write(text)
        self.tail.append(text)
        self.tail_len += len(text)
        keep = self.limit - self.limit // 2
        if self.tail_len <= keep:
            return
        if self.spill is None:  # first cut: from now on everything also goes to a file
            self.spill_dir.mkdir(parents=True, exist_ok=True)
            n = sum(1 for _ in self.spill_dir.glob("host-output-*.txt"))
            self.spill_path = self.spill_dir / f"host-output-{n + 1:04d}-{self.name}.txt"
            self.spill = open(self.spill_path, "w", encoding="utf-8", errors="replace")
            self.spill.write("".join(self.head) + "".join(self.tail))
        while self.tail and self.tail_len - len(self.tail[0]) >= keep:
            self.cut += len(self.tail[0])
            self.tail_len -= len(self.tail.popleft())
        excess = self.tail_len - keep
        if excess > 0:  # a big chunk: trim its front, so the tail is exactly `keep` (gateway kernels
            self.tail[0] = self.tail[0][excess:]  # send output in large batches, and rely on this cap)
            self.cut += excess
            self.tail_len = keep

    def value(self) -> tuple[str, str | None]:
        """The text to show, and the path of the full text when it was cut."""
        head = "".join(self.head)
        if self.spill is not None:
            self.spill.close()
        if not self.cut:
            text = head + "".join(self.tail)
        else:
            text = (head + f"\n[kernelchat: {self.cut:,} characters of {self.name} cut; "
                    f"full {self.name} in {self.spill_path}]\n" + "".join(self.tail))
        text = strip_ansi(text)
        found = KERNEL_MARKER.search(text)
        return text, (found.group(2) if found else None)
