"""A disk quota for a workspace (`disk_mb`): measured by walking the folder (safefs, no link
followed), while a cell runs and after it, at a cost kept to a few per cent of the time.

It stops runaway code (a loop filling the disk), not code set on hiding data from the walk:
entries past the first 100,000, or in folders deeper than 128 levels, are not counted. A hard
limit needs the file system's own quotas; `max_file_mb` still caps every single file."""

from __future__ import annotations

import os
import time
from pathlib import Path

from . import safefs

SHARE_OF_FREE = 0.25  # the default quota: what the workspace holds + this share of the free space,
MAX_DEFAULT_GROWTH_MB = 50 * 1024  # at most this much on top
MIN_INTERVAL_S = 1.0
MAX_COST_SHARE = 0.05  # checks may take at most this share of the wall time
CHEAP_S = 0.005  # a walk this quick also runs after every cell


def default_growth_mb(folder: Path) -> int:
    """What the default quota adds to a workspace in `folder` (made or not yet): a quarter of its
    filesystem's free space, at most 50 GiB."""
    p = Path(folder).absolute()
    while not p.exists() and p != p.parent:  # a folder made later: the filesystem it will be on
        p = p.parent
    st = os.statvfs(p)
    return min(int(st.f_bavail * st.f_frsize // 2**20 * SHARE_OF_FREE), MAX_DEFAULT_GROWTH_MB)


def default_disk_mb(workspace: Path) -> int:
    """What the workspace holds now, plus the default growth."""
    return max(safefs.tree_bytes(workspace) // 2**20 + default_growth_mb(workspace), 1)


class DiskQuota:
    """Checks `root` against `limit_mb`. A walk costs about 4 us per entry (measured: 5 ms for
    1,000 entries, 37 ms for 10,000, 0.39 s at the cap of `safefs.MAX_ENTRIES` = 100,000, beyond
    which only what was seen counts); checks are spaced so their cost stays under MAX_COST_SHARE
    of the time (every 1 s up to ~12,000 entries, every 8 s at the cap), and run after each cell
    while a walk is cheaper than CHEAP_S."""

    def __init__(self, root: Path, limit_mb: int):
        self.root, self.limit = root, limit_mb * 2**20
        self.limit_mb = limit_mb
        self.last = time.monotonic()
        self.cost = 0.0
        self.used = 0
        self.in_cell = False
        self.extra: list[Path] = []  # other folders the sandbox can write, counted too (its runtime dir)

    def start_cell(self) -> None:
        """Restart the interval (the next check comes MIN_INTERVAL_S or more from now)."""
        self.last = time.monotonic()

    def interval(self) -> float:
        return max(MIN_INTERVAL_S, self.cost / MAX_COST_SHARE)

    def due(self, after_cell: bool = False) -> bool:
        """Whether to check now. The first call of a cell starts the interval: a cell that frees
        space first is not stopped before it ran."""
        if after_cell:
            self.in_cell = False
            return self.cost <= CHEAP_S or time.monotonic() - self.last >= self.interval()
        if not self.in_cell:
            self.in_cell = True
            self.start_cell()
            return False
        return time.monotonic() - self.last >= self.interval()

    def check(self) -> str | None:
        """None while within the quota, else what to tell the user."""
        t0 = time.monotonic()
        try:
            self.used = safefs.tree_bytes(self.root)
        except OSError:
            return None
        for folder in self.extra:
            try:
                self.used += safefs.tree_bytes(folder)
            except OSError:  # removed (a restart): nothing to count
                pass
        self.last = time.monotonic()
        self.cost = self.last - t0
        if self.used <= self.limit:
            return None
        return (f"The workspace holds {self.used / 2**20:,.0f} MB, over its disk quota of {self.limit_mb:,} MB "
                "(disk_mb); the cell was stopped. Delete files in the workspace to make room; "
                "the kernel's state is kept.")
