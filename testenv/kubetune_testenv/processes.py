"""Child processes that never outlive the test session.

Each child runs in its own session (process group), so stopping it also stops anything it started.
Three safety nets cover abnormal exits: an ``atexit`` hook, SIGTERM/SIGHUP handlers that turn the
signal into ``SystemExit`` (so ``finally`` blocks and fixtures' teardown run), and on Linux
``PR_SET_PDEATHSIG`` so the kernel kills a child whose parent died without cleaning up (SIGKILL).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import types
from collections.abc import Callable, Sequence
from pathlib import Path

_PR_SET_PDEATHSIG = 1
# How long a process gets between SIGTERM and SIGKILL.
STOP_GRACE_SECONDS = 5.0

_live: list[ManagedProcess] = []
_live_lock = threading.Lock()
_cleanups: list[Callable[[], None]] = []
_installed = False


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class ManagedProcess:
    """One long-running binary, its log file and its process group."""

    def __init__(self, name: str, argv: Sequence[str], *, log_path: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        _install_handlers()
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            # PR_SET_PDEATHSIG fires when the *thread* that forked exits; start from long-lived threads.
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        with _live_lock:
            _live.append(self)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """SIGTERM the process group, SIGKILL it after ``grace`` seconds; idempotent."""
        with _live_lock:
            if self in _live:
                _live.remove(self)
        if self.popen.returncode is None:
            _signal_group(self.popen.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=grace)
        # The leader may be gone while children in its group remain.
        _signal_group(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=grace)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def register_cleanup(callback: Callable[[], None]) -> None:
    """Run ``callback`` at interpreter exit after all processes stopped (e.g. remove a temp dir)."""
    _install_handlers()
    _cleanups.append(callback)


def unregister_cleanup(callback: Callable[[], None]) -> None:
    if callback in _cleanups:
        _cleanups.remove(callback)


def stop_all() -> None:
    with _live_lock:
        processes = list(reversed(_live))
    for process in processes:
        process.stop()
    while _cleanups:
        callback = _cleanups.pop()
        try:
            callback()
        except Exception as error:  # best effort at exit: report, keep cleaning
            print(f"kubetune_testenv: cleanup failed: {error}", file=sys.stderr)


def _exit_on_signal(signum: int, frame: types.FrameType | None) -> None:
    raise SystemExit(128 + signum)


def _install_handlers() -> None:
    global _installed
    if _installed:
        return
    _installed = True
    atexit.register(stop_all)
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(sig) in (signal.SIG_DFL, None):
                signal.signal(sig, _exit_on_signal)


# Ports handed out by free_port: below Linux's ephemeral range (32768-60999), so the kernel never gives
# one to an outgoing connection as its source port between our probe and the server's bind, and below
# the NodePort range (30000-32767). A port picked from the ephemeral range was taken that way once, by
# one of the many connections a loaded test machine makes ("bind: address already in use").
PORT_RANGE = (20000, 29999)
_handed_out: set[int] = set()
_port_lock = threading.Lock()


def free_port() -> int:
    """A TCP port that is free on every address now and that this process has not handed out before.

    Probed on all addresses (servers here bind loopback or 0.0.0.0), at a random point of ``PORT_RANGE``:
    another process choosing the same way rarely lands on the same port.
    """
    low, high = PORT_RANGE
    with _port_lock:
        for _ in range(200):
            port = random.randint(low, high)
            if port in _handed_out:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                try:
                    sock.bind(("0.0.0.0", port))
                except OSError:
                    continue
            _handed_out.add(port)
            return port
    raise RuntimeError(f"no free TCP port in {low}-{high} after 200 tries")


def wait_until(
    check: Callable[[], bool],
    *,
    timeout: float,
    interval: float = 0.2,
    what: str,
    process: ManagedProcess | None = None,
) -> None:
    """Poll ``check`` until it is true; fail early if ``process`` died, with its log tail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and not process.alive():
            raise RuntimeError(
                f"{process.name} exited with code {process.popen.returncode} while waiting "
                f"for {what}; log {process.log_path}:\n{process.log_tail()}"
            )
        try:
            if check():
                return
        except Exception:  # not up yet: connection refused, TLS not ready, 5xx ...
            pass
        time.sleep(interval)
    tail = f"; log {process.log_path}:\n{process.log_tail()}" if process is not None else ""
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}{tail}")
