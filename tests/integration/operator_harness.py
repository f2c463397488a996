"""The session's operator as these tests drive it, and the objects it leaves labelled in a namespace.

The session's operator is the only one acting on the ``t-*`` namespaces; a second operator beside it would
race it on the same objects, so tests that need it down stop it, and always start it again.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kube_objects import wait_for
from kubetune_operator.builders.names import FINETUNEJOB_LABEL
from kubetune_operator.k8s import Kube, collection_path
from kubetune_testenv.processes import free_port
from prometheus_client.parser import text_string_to_metric_families

# The kinds a FineTuneJob owns (and its Job's pods), as (apiVersion, plural).
CHILD_KINDS = (("v1", "configmaps"), ("v1", "services"), ("batch/v1", "jobs"))
LABELLED_KINDS = (*CHILD_KINDS, ("v1", "pods"))


# Where the operator's own objects live (its ServiceAccount, the report endpoint's CA Secret).
OPERATOR_NAMESPACE = "kubetune-system"
REPORTS_CA = "kubetune-reports-ca"

# Short enough for tests to watch a pending timeout expire, long enough not to fire on normal starts.
PENDING_TIMEOUT_SECONDS = 8


class OperatorProcess:
    """``python -m kubetune_operator`` in a subprocess; its log is kept for failure reports."""

    def __init__(self, *, kubeconfig: Path, log_path: Path, extra_env: Mapping[str, str] | None = None) -> None:
        self.kubeconfig = kubeconfig
        self.log_path = log_path
        self.extra_env = dict(extra_env or {})
        self.metrics_port = free_port()
        self.health_port = free_port()
        self.reports_port = free_port()
        self._process: subprocess.Popen[bytes] | None = None

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KUBETUNE_")}
        env.update(
            KUBECONFIG=str(self.kubeconfig),
            KUBETUNE_TRAINER_IMAGE="kubetune/trainer:test",
            KUBETUNE_PENDING_TIMEOUT_SECONDS=str(PENDING_TIMEOUT_SECONDS),
            KUBETUNE_TERMINATION_GRACE_PERIOD_SECONDS="30",
            KUBETUNE_METRICS_PORT=str(self.metrics_port),
            KUBETUNE_HEALTH_PORT=str(self.health_port),
            # Trainers in these tests run on this machine (or nowhere: kwok pods run nothing).
            KUBETUNE_REPORTS_PORT=str(self.reports_port),
            KUBETUNE_REPORT_URL_BASE=self.report_url_base,
            # One CA for every operator of the session: a restarted one keeps what running trainers trust.
            KUBETUNE_REPORTS_CA_SECRET=f"{OPERATOR_NAMESPACE}/{REPORTS_CA}",
            KUBETUNE_LOG_LEVEL="info",
            # The kwok stages' test hook (docs/testing.md): off in the operator's defaults.
            KUBETUNE_POD_ANNOTATION_PREFIXES="kubetune.test/",
            # The test namespaces (the `namespace` fixture names them t-...): the e2e tests' namespace
            # belongs to the operator installed in the cluster, which must be the only one acting there.
            KUBETUNE_NAMESPACES="t-*",
        )
        env.update(self.extra_env)
        return env

    @property
    def report_url_base(self) -> str:
        return f"https://127.0.0.1:{self.reports_port}"

    def start(self) -> None:
        log = self.log_path.open("ab")
        self._process = subprocess.Popen(
            [sys.executable, "-m", "kubetune_operator"], env=self.env(), stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        wait_for(self._healthy, bool, what=f"the operator's /healthz (log: {self.log_path})", timeout=60)

    def _healthy(self) -> bool:
        if self._process is not None and self._process.poll() is not None:
            raise AssertionError(f"the operator exited with {self._process.returncode}:\n{self.log_tail()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, as when a node dies under the operator."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGKILL)
            self._process.wait(timeout=30)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as response:
            return str(response.read().decode())

    def log_tail(self, lines: int = 60) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@contextmanager
def operator_stopped(operator: OperatorProcess) -> Iterator[None]:
    """The operator stopped (SIGTERM) for the block, and started again (waiting for /healthz) after it."""
    operator.stop()
    try:
        yield
    finally:
        operator.start()


def labelled(
    kube: Kube, *, namespace: str, api_version: str, plural: str, name: str | None = None
) -> list[dict[str, Any]]:
    """Objects carrying the FineTuneJob label: of FineTuneJob ``name``, or of any FineTuneJob."""
    selector = FINETUNEJOB_LABEL if name is None else f"{FINETUNEJOB_LABEL}={name}"
    path = collection_path(api_version=api_version, plural=plural, namespace=namespace)
    return list(kube.request("GET", path, query=[("labelSelector", selector)])["items"])


def leftovers(kube: Kube, *, namespace: str, name: str | None = None) -> dict[str, list[str]]:
    """Names of the labelled objects still present, by plural (empty lists dropped)."""
    found = {
        plural: [
            o["metadata"]["name"] for o in labelled(kube, namespace=namespace, api_version=v, plural=plural, name=name)
        ]
        for v, plural in LABELLED_KINDS
    }
    return {plural: names for plural, names in found.items() if names}


def metric_sum(metrics_text: str, sample: str, **labels: str) -> float:
    """The sum of the samples named ``sample`` (e.g. ``..._total``) whose labels include ``labels``."""
    return sum(
        s.value
        for family in text_string_to_metric_families(metrics_text)
        for s in family.samples
        if s.name == sample and all(s.labels.get(key) == value for key, value in labels.items())
    )
