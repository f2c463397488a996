"""Managed processes: stopping one also stops what it started; nothing outlives the stop."""

from __future__ import annotations

import contextlib
import os
import socket
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


def test_free_port_hands_out_distinct_bindable_ports_outside_the_ephemeral_range() -> None:
    ports = [processes.free_port() for _ in range(20)]
    low, high = processes.PORT_RANGE
    assert len(set(ports)) == len(ports)
    assert all(low <= port <= high for port in ports)
    ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    assert high < ephemeral_low
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("0.0.0.0", port))


def test_free_port_skips_a_port_in_use_and_says_when_none_is_left(monkeypatch: pytest.MonkeyPatch) -> None:
    with contextlib.ExitStack() as stack:
        # A listening port whose next port is free: the range (busy, busy + 1) has one free port.
        while True:
            taken = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            busy = int(taken.getsockname()[1])
            if busy < 65535 and _bindable(busy + 1):
                break
        monkeypatch.setattr(processes, "PORT_RANGE", (busy, busy + 1))
        monkeypatch.setattr(processes, "_handed_out", set())
        assert processes.free_port() == busy + 1
        with pytest.raises(RuntimeError, match="no free TCP port"):
            processes.free_port()


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True
