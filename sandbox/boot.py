"""Runs inside the sandbox as the kernel's entry point (stdlib + ipykernel only).

    python boot.py CONNECTION_FILE OUTPUTS_DIR OUTPUT_CHARS

Starts an IPython kernel and caps each cell's stdout/stderr where it is produced:
past the limit the head and tail are kept, the rest goes to a file in the workspace,
so a cell printing gigabytes never crosses the wire.
"""

import collections
import os
import sys

MARKER = "\n[kernelchat: {cut:,} characters of {name} cut; full {name} in {path}]\n"


class StreamCap:
    """An OutStream hook: per cell, pass `head` chars, spill the rest, keep a `tail`."""

    def __init__(self, stream, outputs_dir, limit):
        self.stream, self.outputs_dir = stream, outputs_dir
        self.head, self.tail_limit = limit // 2, limit - limit // 2
        self.cell = None
        self.bypass = False
        self._reset(None)
        # Hooks are thread-local and flushes run on the IO thread: register on both.
        stream.register_hook(self)
        stream.pub_thread.schedule(lambda: stream.register_hook(self))

    def _reset(self, cell):
        self.cell, self.sent, self.cut, self.spill, self.path = cell, 0, 0, None, None
        self.tail, self.tail_len = collections.deque(), 0
        self.head_text = []  # what was sent, so the file holds the whole output

    def __call__(self, msg):
        if self.bypass:
            return msg
        cell = msg["parent_header"].get("msg_id")
        if cell != self.cell:
            self._reset(cell)
        text = msg["content"]["text"]
        room = self.head - self.sent
        if len(text) <= room and not self.cut:
            self.sent += len(text)
            self.head_text.append(text)
            return msg
        keep, rest = text[:max(room, 0)], text[max(room, 0):]
        self.sent += len(keep)
        self.head_text.append(keep)
        self._overflow(rest)
        if keep:
            msg["content"]["text"] = keep
            return msg
        return None

    def _overflow(self, text):
        if self.spill is None:
            os.makedirs(self.outputs_dir, exist_ok=True)
            n = len([f for f in os.listdir(self.outputs_dir) if f.startswith("output-")])
            self.path = os.path.join(self.outputs_dir, f"output-{n + 1:04d}-{self.stream.name}.txt")
            self.spill = open(self.path, "w", encoding="utf-8", errors="replace")
            self.spill.write("".join(self.head_text))
        self.spill.write(text)
        self.cut += len(text)
        self.tail.append(text)
        self.tail_len += len(text)
        while self.tail and self.tail_len - len(self.tail[0]) >= self.tail_limit:
            self.tail_len -= len(self.tail.popleft())

    def finish(self):
        """After the cell: send the marker and the tail, outside the cap."""
        self.stream.flush()  # the hook runs at flush time: only now is `cut` known
        if not self.cut:
            return
        tail = "".join(self.tail)[-self.tail_limit:]
        self.spill.close()
        cut = self.cut - len(tail)
        self.bypass = True
        try:
            self.stream.write(MARKER.format(cut=cut, name=self.stream.name, path=self.path) + tail)
            self.stream.flush()
        finally:
            self.bypass = False
            self._reset(None)


def main():
    connection_file, outputs_dir, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
    sys.argv = [sys.argv[0], "-f", connection_file]
    if sys.path and sys.path[0] == os.path.dirname(os.path.abspath(__file__)):
        sys.path.pop(0)  # the runtime dir holds no user modules
    os.makedirs(os.environ.get("HOME", "/tmp/home"), exist_ok=True)
    from ipykernel.kernelapp import IPKernelApp

    app = IPKernelApp.instance()
    app.initialize()
    caps = [StreamCap(s, outputs_dir, limit) for s in (sys.stdout, sys.stderr) if hasattr(s, "register_hook")]

    def post_run_cell(*_):
        for cap in caps:
            cap.finish()

    app.shell.events.register("post_run_cell", post_run_cell)
    app.start()


if __name__ == "__main__":
    main()
