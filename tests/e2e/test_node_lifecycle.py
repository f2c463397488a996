"""The real node leaves nothing behind: not after Ctrl-C, and not after SIGKILL once the next start swept.

Each test runs ``python -m kubetune_testenv up --real-node`` as a separate process with a running pod, then
stops it the way a developer or a crash would, and looks at the machine: processes, mounts, network links,
cgroups, iptables chains. The session's own real node must not be up yet (one real node per machine), so
this file runs before the other e2e tests (pytest runs files in name order).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_env import clean_machine, leftovers, nothing_left
from kubetune_testenv import images
from kubetune_testenv.versions import binaries

pytestmark = [pytest.mark.cluster, pytest.mark.real_node]

UP_TIMEOUT_S = 240


class Up:
    """``python -m kubetune_testenv up --real-node`` in its own session, its output in a file."""

    def __init__(self, log: Path) -> None:
        self.log = log
        with open(log, "wb") as sink:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "kubetune_testenv", "up", "--real-node"],
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.kubeconfig = self._wait_for_kubeconfig()

    def _wait_for_kubeconfig(self) -> Path:
        deadline = time.monotonic() + UP_TIMEOUT_S
        while time.monotonic() < deadline:
            text = self.log.read_text(errors="replace")
            match = re.search(r"^real node: (\S+) Ready", text, re.MULTILINE)
            kubeconfig = re.search(r"^kubeconfig: (\S+)$", text, re.MULTILINE)
            if match and kubeconfig:
                return Path(kubeconfig.group(1))
            if self.process.poll() is not None:
                pytest.fail(f"`up --real-node` exited {self.process.returncode}:\n{text[-4000:]}", pytrace=False)
            time.sleep(0.5)
        self.process.kill()
        pytest.fail(f"`up --real-node` not Ready in {UP_TIMEOUT_S}s:\n{self.log.read_text()[-4000:]}", pytrace=False)

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        result = subprocess.run(
            [str(binaries().kube), "kubectl", f"--kubeconfig={self.kubeconfig}", *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    def run_pod(self) -> None:
        """A pod whose container is the pause image's /pause: a process that sleeps until killed."""
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "sleeper", "namespace": "default"},
            "spec": {
                "nodeSelector": {"kubetune.io/node": "cpu"},
                "tolerations": [{"key": "kubetune.io/node", "operator": "Exists", "effect": "NoSchedule"}],
                "containers": [{"name": "sleep", "image": images.PAUSE_IMAGE, "imagePullPolicy": "Never"}],
            },
        }
        self.kubectl("apply", "-f", "-", stdin=json.dumps(pod))
        self.kubectl("wait", "--for=condition=Ready", "pod/sleeper", "--timeout=120s")


@pytest.fixture
def up(tmp_path: Path) -> Iterator[Up]:
    left = clean_machine()
    if left != nothing_left():
        pytest.fail(f"the machine is not clean before the test: {left}", pytrace=False)
    started = Up(tmp_path / "up.log")
    try:
        yield started
    finally:
        if started.process.poll() is None:
            os.killpg(started.process.pid, signal.SIGKILL)
            started.process.wait(timeout=30)


def test_ctrl_c_stops_the_node_and_leaves_nothing_behind(up: Up) -> None:
    up.run_pod()
    assert leftovers()["processes"], "the pod's container and the node's processes run before Ctrl-C"
    os.killpg(up.process.pid, signal.SIGINT)
    assert up.process.wait(timeout=120) == 0, up.log.read_text()[-3000:]
    assert leftovers() == nothing_left()


def test_after_sigkill_the_next_start_sweeps_what_the_dead_session_left(up: Up, tmp_path: Path) -> None:
    up.run_pod()
    os.killpg(up.process.pid, signal.SIGKILL)  # no teardown ran: the container lives on under its shim
    up.process.wait(timeout=30)
    left = leftovers()
    assert left["shims"] and left["mounts"], f"SIGKILL should leave the pod running: {left}"

    again = Up(tmp_path / "again.log")
    os.killpg(again.process.pid, signal.SIGINT)
    assert again.process.wait(timeout=120) == 0, again.log.read_text()[-3000:]
    assert leftovers() == nothing_left()
