"""Host-side capture of one cell's streams: bounded memory whatever the kernel sends."""

from __future__ import annotations

import collections
import os
import re
from pathlib import Path

from . import safefs

ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
OUTPUTS = "outputs"
KERNEL_MARKER = re.compile(r"\[kernelchat: [\d,]+ characters of (stdout|stderr) cut; full \1 in (.+?)\]")


def strip_ansi(text: str) -> str:
    return ANSI.sub("", text)


class CappedStream:
    """Keeps the head and tail of a stream; past `limit` the rest goes to a spill file.

    The kernel already caps its output (boot.py); this is the backstop for output
    that bypasses it, so the host never holds more than about `limit` characters.
    The spill file is a NEW file `outputs/host-output-NNNN-<name>.txt` under `workspace`, made
    with safefs (a planted link, FIFO or file at that name is never opened); when `outputs/` is
    unusable, or the file reaches `max_bytes`, only the head and tail are kept and the text says so.
    `kernel_dir` is where the kernel writes its own spill files (as the kernel sees it): a path
    in the kernel's marker is reported only when it names such a file."""

    def __init__(self, name: str, limit: int, workspace: Path, *, kernel_dir: str | None = None,
                 owner: safefs.Owner | None = None, max_bytes: int | None = None):
        self.name, self.limit, self.workspace = name, limit, workspace
        self.kernel_dir, self.owner, self.max_bytes = kernel_dir, owner, max_bytes
        self.head: list[str] = []
        self.head_len = 0
        self.tail: collections.deque[str] = collections.deque()
        self.tail_len = 0
        self.cut = 0
        self.spill: int | None = None  # the spill file's descriptor
        self.spill_path: Path | None = None
        self.spill_bytes = 0
        self.spill_note: str | None = None  # why the full text is not (all) in a file

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
        self._spill(text)
        self.tail.append(text)
        self.tail_len += len(text)
        keep = self.limit - self.limit // 2
        if self.tail_len <= keep:
            return
        if self.spill is None and self.spill_note is None:  # first cut: from now on everything also goes to a file
            self._open_spill()
        while self.tail and self.tail_len - len(self.tail[0]) >= keep:
            self.cut += len(self.tail[0])
            self.tail_len -= len(self.tail.popleft())
        excess = self.tail_len - keep
        if excess > 0:  # a big chunk: trim its front, so the tail is exactly `keep` (gateway kernels
            self.tail[0] = self.tail[0][excess:]  # send output in large batches, and rely on this cap)
            self.cut += excess
            self.tail_len = keep

    def _open_spill(self) -> None:
        n = sum(1 for f in safefs.list_names(self.workspace, OUTPUTS) if f.startswith("host-output-")) + 1
        try:
            self.spill, rel = safefs.create_new(self.workspace, f"{OUTPUTS}/host-output-{n:04d}-{self.name}.txt",
                                                owner=self.owner)
        except (ValueError, OSError) as e:
            self.spill_note = f"the full {self.name} could not be saved: {e}"
            return
        self.spill_path = self.workspace / rel
        self._spill("".join(self.head) + "".join(self.tail))

    def _spill(self, text: str) -> None:
        if self.spill is None:
            return
        data = text.encode("utf-8", "replace")
        if self.max_bytes is not None and self.spill_bytes + len(data) > self.max_bytes:
            data = data[: max(self.max_bytes - self.spill_bytes, 0)]
            self.spill_note = f"the file holds only its first {self.max_bytes / 2**20:,.0f} MB (max_file_mb)"
        try:
            safefs.write_all(self.spill, data)
            self.spill_bytes += len(data)
        except OSError as e:
            self.spill_note = f"writing the file failed ({e.strerror or e})"
        if self.spill_note is not None:
            self._close()

    def _close(self) -> None:
        if self.spill is not None:
            os.close(self.spill)
            self.spill = None

    def value(self) -> tuple[str, str | None]:
        """The text to show, and the path of the full text when it was cut."""
        head = "".join(self.head)
        self._close()
        if not self.cut:
            text = head + "".join(self.tail)
        else:
            where = f"full {self.name} in {self.spill_path}" if self.spill_path else ""
            note = "; ".join(x for x in (where, self.spill_note) if x)
            text = (head + f"\n[kernelchat: {self.cut:,} characters of {self.name} cut; {note}]\n"
                    + "".join(self.tail))
        text = strip_ansi(text)
        if self.spill_path is not None:
            return text, str(self.spill_path)
        return text, self._kernel_file(text)

    def _kernel_file(self, text: str) -> str | None:
        """The kernel's own spill file named in its marker; None unless it is a file the kernel
        writes (outputs/output-NNNN-<name>.txt): printed text can fake the marker."""
        found = KERNEL_MARKER.search(text)
        if not found or found.group(1) != self.name or self.kernel_dir is None:
            return None
        path = found.group(2)
        folder, _, base = path.rpartition("/")
        if folder != self.kernel_dir.rstrip("/") or not re.fullmatch(rf"output-\d+-{self.name}\.txt", base):
            return None
        return path
