"""Managed processes: stopping one also stops what it started; nothing outlives the stop."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from kubetune_testenv import processes


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_stop_kills_the_whole_process_group_even_if_sigterm_is_ignored(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    script = f"trap '' TERM; sleep 300 & echo $! > {pid_file}; wait"
    process = processes.ManagedProcess("shell", ["bash", "-c", script], log_path=tmp_path / "log")
    processes.wait_until(pid_file.exists, timeout=10, what="the child's pid")
    time.sleep(0.1)
    child = int(pid_file.read_text())
    process.stop(grace=0.5)
    assert not process.alive()
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child)


def test_wait_until_reports_a_dead_process_with_its_log(tmp_path: Path) -> None:
    process = processes.ManagedProcess("failing", ["bash", "-c", "echo boom; exit 3"], log_path=tmp_path / "log")
    with pytest.raises(RuntimeError, match="boom"):
        processes.wait_until(lambda: False, timeout=10, what="never", process=process)
    process.stop()


def test_free_port_is_bindable() -> None:
    port = processes.free_port()
    assert 0 < port < 65536
