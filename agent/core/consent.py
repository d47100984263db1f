"""Consent for code that came from a file rather than from this session's model.

A loaded conversation (`Chat.load`, `--resume`, `/load`) holds cells that the kernel replays to
rebuild its state. Whoever wrote the file wrote that code, so it runs only once the user has agreed:
the `approve` callback is called once per replay with a `FileCells` (all the file's cells that
replay would run), and a refusal leaves them out. Without a callback a replay is refused, unless the
caller trusted the file (`Chat.load(path, trust_cells=True)`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable


class FileCells(str):
    """What `approve` is called with before cells from a file run: the cells as one Python text,
    each under a `# cell i of n` line (a str, so a callback written for the model's cells can read
    it as code). `cells` holds each cell's code, `source` the file, `workspace` where they run
    (None: a temporary folder not made yet)."""

    cells: tuple[str, ...]
    source: str
    workspace: Path | None

    def __new__(cls, cells: list[str], source: str | Path, workspace: Path | None) -> "FileCells":
        n = len(cells)
        text = "\n\n".join(f"# cell {i} of {n}\n{code}" for i, code in enumerate(cells, 1))
        self = super().__new__(cls, text)
        self.cells, self.source, self.workspace = tuple(cells), str(source), workspace
        return self


def allowed(approve: Callable[[str], "bool | str | None"] | None, cells: FileCells) -> bool:
    """Whether `approve` lets the file's cells run. No callback: no. A string back counts only when
    it is the text offered (a replay cannot be edited: its cells rebuild the state one by one)."""
    if approve is None:
        return False
    decision = approve(cells)
    if decision is False or decision is None:
        return False
    return not isinstance(decision, str) or decision == str(cells)


def refusal_notice(n: int, asked: bool) -> str:
    """The notice for cells from the file that did not run: what is missing, and how to allow it."""
    how = ("a kernel restart with replay (/kernel restart, chat.restart_kernel()) asks again" if asked else
           "no approve= callback was given: load it with trust_cells=True, or give approve=, to allow them")
    return (f"kernel state from the conversation file not rebuilt: its {n} cell(s) did not run, as they were "
            f"not allowed ({how}); the conversation itself is unchanged")


__all__ = ["FileCells", "allowed", "refusal_notice"]
