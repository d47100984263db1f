"""What the host does with files in a kernel's workspace: rich outputs, spilled streams, upload,
download, listing, the disk quota. A mixin of `Kernel` (so of both kinds).

The sandboxed code controls every name in the workspace, so all of it goes through `safefs`:
no link is followed, nothing but a regular file is opened, nothing blocks."""

from __future__ import annotations

import os
from pathlib import Path

from . import safefs
from .safecopy import copy_in, copy_out
from .capture import CappedStream
from .limits import Limits
from .quota import DiskQuota
from .result import ExecResult, RichOutput
from .rich import OUTPUTS, save_rich

MAX_NOTES = 10  # notes on figures per cell (each kind once)


class WorkspaceFiles:
    """Needs `workspace`, `outputs_dir`, `limits`, `interrupt()`; `_uid` when the kernel runs
    as a uid of its own (files the host makes are given to it)."""

    _uid: int | None = None

    workspace: Path
    outputs_dir: Path
    limits: Limits
    _quota: DiskQuota | None
    _cell_notes: list[str]
    _over_quota: bool

    @property
    def _owner(self) -> safefs.Owner | None:
        uid = self._uid
        return (uid, uid) if uid is not None else None

    @property
    def _max_file_bytes(self) -> int | None:
        return self.limits.max_file_mb * 2**20 if self.limits.max_file_mb else None

    def _make_outputs(self) -> None:
        """Make `outputs/` if missing; a planted link or file there is left alone (figures are then
        kept in the results only, and each result says so)."""
        try:
            os.close(safefs.open_dir(self.workspace, OUTPUTS, create=True, owner=self._owner))
        except (ValueError, OSError):
            pass

    def _streams(self, limit: int, kernel_dir: str) -> dict[str, CappedStream]:
        return {n: CappedStream(n, limit, self.workspace, kernel_dir=kernel_dir, owner=self._owner,
                                max_bytes=self._max_file_bytes) for n in ("stdout", "stderr")}

    def _save_rich(self, data: dict) -> list[RichOutput]:
        outs, notes = save_rich(data, self.workspace, max_bytes=self._max_file_bytes,
                                text_chars=self.limits.output_chars, owner=self._owner)
        for note in notes:  # one per kind: a cell can make millions of unusable displays
            if note not in self._cell_notes and len(self._cell_notes) < MAX_NOTES:
                self._cell_notes.append(note)
        return outs

    # -- disk quota ------------------------------------------------------------------------------

    def _poll_quota(self, after_cell: bool = False) -> None:
        """While a cell runs (and once after it): over the quota, interrupt the cell (again at each
        later check while it runs) and say so in the result."""
        q = self._quota
        if q is None or not q.due(after_cell):
            return
        if self._over_quota:
            if not after_cell:
                q.start_cell()  # re-arms the interval without walking again
                self.interrupt()  # type: ignore[attr-defined]
            return
        note = q.check()
        if note:
            self._over_quota = True
            self._cell_notes.append(note)
            if not after_cell:
                self.interrupt()  # type: ignore[attr-defined]

    def _fold_notes(self, res: ExecResult) -> None:
        """After a cell: the quota's last check, then the cell's notes into `res.message`."""
        self._poll_quota(after_cell=True)
        notes, self._cell_notes = self._cell_notes, []
        if self._over_quota and res.status == "ok":
            res.status = "error"
        self._over_quota = False
        if notes:
            res.message = " ".join(x for x in (res.message, *notes) if x)

    # -- files -----------------------------------------------------------------------------------

    def _inside(self, relpath: str | os.PathLike) -> str:
        """`relpath` relative to the workspace, checked as written (resolving would follow links
        that code in the sandbox planted); safefs then opens it one component at a time."""
        return safefs.relative(self.workspace, relpath)

    def upload(self, src: str | os.PathLike, dest: str | os.PathLike | None = None) -> Path:
        """Copy a host file or folder into the workspace; returns its path there. Links and
        special files inside a folder are skipped; nothing planted in the workspace is followed."""
        src = Path(src).expanduser()
        copied = copy_in(src, self.workspace, self._inside(dest if dest is not None else src.name),
                                owner=self._owner)
        return self.workspace / copied.path

    def download(self, relpath: str | os.PathLike, dest: str | os.PathLike) -> Path:
        """Copy a file or folder out of the workspace to `dest` on the host (regular files and
        folders only: links, FIFOs and other special files are not followed, read or copied)."""
        return copy_out(self.workspace, self._inside(relpath), Path(dest))

    def files(self) -> list[str]:
        """Workspace files (regular files only, no link followed), relative paths."""
        return sorted(safefs.walk_files(self.workspace))

    def read_file(self, relpath: str | os.PathLike, max_bytes: int) -> bytes:
        """The bytes of a regular file in the (local) workspace: no link followed at any component,
        nothing but a regular file opened, at most `max_bytes`. ValueError (UnsafePath, NotFound,
        FileTooLarge) with one sentence."""
        return safefs.read_regular(self.workspace, self._inside(relpath), max_bytes=max_bytes)

    def write_file(self, relpath: str | os.PathLike, data: bytes) -> str:
        """Write `data` at `relpath` in the (local) workspace, folders made as needed (none followed),
        replacing whatever is at the name (a link is replaced, never written through), within
        `max_file_mb` and the disk quota; returns the relative path. ValueError with one sentence."""
        rel = self._inside(relpath)
        most = self._max_file_bytes
        if most is not None and len(data) > most:
            raise safefs.FileTooLarge(f"{len(data):,} bytes is over the largest file the kernel may write "
                                      f"({most:,} bytes, max_file_mb)")
        quota = self.limits.disk_mb
        if quota and safefs.tree_bytes(self.workspace) + len(data) > quota * 2**20:
            raise safefs.FileTooLarge(f"{len(data):,} more bytes would take the workspace past its disk quota "
                                      f"of {quota:,} MB (disk_mb); delete files first")
        return safefs.replace_file(self.workspace, rel, [data], owner=self._owner)
