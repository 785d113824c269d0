"""Holding a process to a fixed share of one core with a cgroup CPU quota (Linux, needs root or a
delegated cgroup).

bench.live uses it to measure how server processes scale on a machine too small to give each its
own core: every server gets the same share in the one-process and the two-process runs, so the
ratio shows what the servers do together, not how many cores were left over for them.
cgroup v2 (``cpu.max``) and v1 (``cpu.cfs_quota_us``) are both handled.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PERIOD_US = 20_000  # short periods keep the throttling pauses short (the kernel default is 100 ms)


class CapUnavailable(Exception):
    """This machine or user cannot set a CPU quota; the message says why."""


class CpuCap:
    """One cgroup whose processes together get at most ``share`` of one core."""

    def __init__(self, name: str, share: float, root: Path = CGROUP_ROOT) -> None:
        if share <= 0:
            raise ValueError("share must be positive")
        self.share = share
        quota = max(1000, round(share * PERIOD_US))
        if (root / "cgroup.controllers").is_file():  # cgroup v2, unified hierarchy
            self.parent = root
            if "cpu" not in (root / "cgroup.controllers").read_text().split():
                raise CapUnavailable(f"the cpu controller is not available in {root}")
            self.path = root / name
            settings = [("cpu.max", f"{quota} {PERIOD_US}")]
            enable: Path | None = root / "cgroup.subtree_control"
        elif (root / "cpu" / "cpu.cfs_quota_us").is_file():  # cgroup v1, cpu controller of its own
            self.parent = root / "cpu"
            self.path = self.parent / name
            settings = [("cpu.cfs_period_us", str(PERIOD_US)), ("cpu.cfs_quota_us", str(quota))]
            enable = None
        else:
            raise CapUnavailable(f"no cgroup CPU controller under {root}")
        try:
            if enable is not None and "cpu" not in enable.read_text().split():
                enable.write_text("+cpu")
            self.path.mkdir(exist_ok=True)
            for file, value in settings:
                (self.path / file).write_text(value)
        except OSError as error:
            self.remove()
            raise CapUnavailable(f"cannot set a CPU quota in {self.path}: {error.strerror or error}") from error

    def add(self, pid: int) -> None:
        try:
            (self.path / "cgroup.procs").write_text(str(pid))
        except OSError as error:
            raise CapUnavailable(f"cannot move process {pid} into {self.path}: {error.strerror or error}") from error

    def remove(self) -> None:
        """Hands the processes still inside back to the parent and deletes the cgroup."""
        with contextlib.suppress(OSError):
            for pid in (self.path / "cgroup.procs").read_text().split():
                with contextlib.suppress(OSError):
                    (self.parent / "cgroup.procs").write_text(pid)
        with contextlib.suppress(OSError):
            self.path.rmdir()


@contextlib.contextmanager
def capped(pids: Sequence[int], share: float, root: Path = CGROUP_ROOT) -> Iterator[list[CpuCap]]:
    """Each of ``pids`` held to ``share`` of a core, in a cgroup of its own, for the block.

    Raises CapUnavailable before the block when that cannot be done here.
    """
    caps: list[CpuCap] = []
    try:
        for pid in pids:
            caps.append(CpuCap(f"presence-bench-{os.getpid()}-{pid}", share, root))
            caps[-1].add(pid)
        yield caps
    finally:
        for cap in caps:
            cap.remove()
