"""bench/cpucap.py against directories laid out like the two cgroup hierarchies.

The bench judges the two-process figure on capped runs when the machine is small, so what it writes
where decides that verdict. A real quota needs root and is exercised by running the bench.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import cpucap


def v2_root(tmp_path: Path, controllers: str = "cpuset cpu io memory pids", enabled: str = "") -> Path:
    (tmp_path / "cgroup.controllers").write_text(controllers + "\n")
    (tmp_path / "cgroup.subtree_control").write_text(enabled)
    (tmp_path / "cgroup.procs").write_text("")
    return tmp_path


def test_v2_quota_is_written_as_cpu_max_and_the_controller_enabled(tmp_path: Path) -> None:
    root = v2_root(tmp_path)
    cap = cpucap.CpuCap("one", 0.5, root)
    cap.add(4242)
    assert (root / "cgroup.subtree_control").read_text() == "+cpu"
    assert (root / "one" / "cpu.max").read_text() == f"{cpucap.PERIOD_US // 2} {cpucap.PERIOD_US}"
    assert (root / "one" / "cgroup.procs").read_text() == "4242"


def test_v1_quota_is_written_as_cfs_period_and_quota(tmp_path: Path) -> None:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1")
    cap = cpucap.CpuCap("one", 0.25, tmp_path)
    assert (tmp_path / "cpu" / "one" / "cpu.cfs_period_us").read_text() == str(cpucap.PERIOD_US)
    assert (tmp_path / "cpu" / "one" / "cpu.cfs_quota_us").read_text() == str(cpucap.PERIOD_US // 4)
    assert cap.parent == tmp_path / "cpu"


def test_remove_hands_processes_back_to_the_parent(tmp_path: Path) -> None:
    root = v2_root(tmp_path)
    cap = cpucap.CpuCap("one", 1.0, root)
    cap.add(7)
    cap.remove()
    assert (root / "cgroup.procs").read_text() == "7"


@pytest.mark.parametrize("layout", ["nothing", "v2 without cpu"])
def test_no_cpu_controller_is_reported_not_ignored(tmp_path: Path, layout: str) -> None:
    if layout == "v2 without cpu":
        v2_root(tmp_path, controllers="memory pids")
    with pytest.raises(cpucap.CapUnavailable), cpucap.capped([1], 0.5, tmp_path):
        pytest.fail("the block ran without a cap")


def test_a_quota_that_cannot_be_written_is_reported(tmp_path: Path) -> None:
    root = v2_root(tmp_path)
    (root / "one").mkdir()
    (root / "one" / "cpu.max").mkdir()  # writing to it fails, as a read-only cgroup file would
    with pytest.raises(cpucap.CapUnavailable, match="cannot set a CPU quota"):
        cpucap.CpuCap("one", 0.5, root)


def test_shares_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        cpucap.CpuCap("one", 0, v2_root(tmp_path))
