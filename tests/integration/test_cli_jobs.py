"""The ``kubetune`` command against the real control plane and the operator (kwok plays the trainer pods).

Each call runs ``python -m kubetune`` in a subprocess with the admin kubeconfig, as a user would: the
entry point, the kubeconfig loading, the exit codes and stderr are the real ones.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from kube_objects import minimal_spec
from kubetune_testenv.cluster import Cluster

pytestmark = pytest.mark.cluster


class Kubetune:
    """``kubetune ARGS --kubeconfig <admin> -n <test namespace>``."""

    def __init__(self, *, cluster: Cluster, namespace: str, tmp_path: Path) -> None:
        self.kubeconfig = str(cluster.kubeconfig_path)
        self.namespace = namespace
        self.tmp_path = tmp_path

    def __call__(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "kubetune", *args, "--kubeconfig", self.kubeconfig, "-n", self.namespace]
        try:
            return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as err:
            raise AssertionError(
                f"kubetune {' '.join(args)} ran over {timeout}s; output:\n{err.output}\n{err.stderr}"
            ) from None

    def manifest(self, name: str, *, spec: dict[str, Any] | None = None, **annotations: str) -> str:
        document = {
            "apiVersion": "kubetune.io/v1alpha1",
            "kind": "FineTuneJob",
            "metadata": {"name": name, "annotations": annotations},
            "spec": spec if spec is not None else minimal_spec(),
        }
        path = self.tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(document), encoding="utf-8")
        return str(path)


@pytest.fixture
def kubetune(cluster: Cluster, ftjs: Any, tmp_path: Path) -> Kubetune:
    return Kubetune(cluster=cluster, namespace=ftjs.namespace, tmp_path=tmp_path)


def run_for(duration: str) -> dict[str, str]:
    return {"kubetune.test/run-for": duration}


def test_submit_watch_list_and_cancel_a_job(kubetune: Kubetune, ftjs: Any) -> None:
    submitted = kubetune("submit", "-f", kubetune.manifest("cli-happy", **{"kubetune.test/run-for": "6s"}))
    assert submitted.returncode == 0, submitted.stderr
    assert submitted.stdout == f"finetunejob.kubetune.io/cli-happy created in namespace {ftjs.namespace}\n"

    watched = kubetune("status", "cli-happy", "--watch", "--interval", "0.5")
    assert watched.returncode == 0, watched.stderr
    phases = [line.split()[1] for line in watched.stdout.splitlines()]
    assert phases[-1] == "Succeeded" and "Running" in phases

    listed = kubetune("list")
    assert listed.returncode == 0, listed.stderr
    header, row = listed.stdout.splitlines()
    assert header.split() == ["NAME", "PHASE", "PROGRESS", "LOSS", "AGE"] and row.split()[:2] == [
        "cli-happy",
        "Succeeded",
    ]
    everywhere = json.loads(kubetune("list", "-A", "-o", "json").stdout)
    assert ("cli-happy", ftjs.namespace) in [
        (item["metadata"]["name"], item["metadata"]["namespace"]) for item in everywhere["items"]
    ]

    cancelled = kubetune("cancel", "cli-happy")
    assert (cancelled.returncode, cancelled.stdout) == (0, "finetunejob.kubetune.io/cli-happy deleted\n")
    ftjs.wait("cli-happy", lambda obj: obj == {} and not ftjs.children("jobs", "cli-happy"), what="gone", timeout=90)
    gone = kubetune("status", "cli-happy")
    assert gone.returncode == 1
    assert gone.stderr == f"kubetune: error: FineTuneJob {ftjs.namespace}/cli-happy not found\n"


def test_an_invalid_spec_is_named_and_never_sent(kubetune: Kubetune, ftjs: Any) -> None:
    spec = minimal_spec() | {"method": {"type": "lora", "rank": 0}}
    result = kubetune("submit", "-f", kubetune.manifest("cli-bad", spec=spec))
    assert result.returncode == 3
    assert "document 0: spec.method.rank" in result.stderr and "Traceback" not in result.stderr
    assert ftjs.get("cli-bad") is None


def test_submit_twice_conflicts_and_apply_updates_the_spec(kubetune: Kubetune, ftjs: Any) -> None:
    path = kubetune.manifest("cli-apply", **run_for("10m"))
    assert kubetune("submit", "-f", path).returncode == 0
    again = kubetune("submit", "-f", path)
    assert again.returncode == 1
    assert again.stderr == (
        f"kubetune: error: FineTuneJob {ftjs.namespace}/cli-apply already exists (--apply updates it)\n"
    )
    immutable = kubetune.manifest("cli-apply", spec=minimal_spec() | {"hyperparameters": {"epochs": 3}})
    refused = kubetune("submit", "-f", immutable, "--apply")
    assert refused.returncode == 3 and "spec.hyperparameters is immutable" in refused.stderr
    changed = kubetune.manifest("cli-apply", spec=minimal_spec() | {"runPolicy": {"backoffLimit": 7}})
    applied = kubetune("submit", "-f", changed, "--apply", "-o", "yaml")
    assert applied.returncode == 0, applied.stderr
    obj = yaml.safe_load(applied.stdout)
    assert obj["spec"]["runPolicy"]["backoffLimit"] == 7
    # One field manager, one operation: submit's create was an apply too, so nothing conflicts.
    assert [entry["operation"] for entry in obj["metadata"]["managedFields"] if entry["manager"] == "kubetune"] == [
        "Apply"
    ]


def test_suspend_and_resume_a_running_job(kubetune: Kubetune, ftjs: Any) -> None:
    assert kubetune("submit", "-f", kubetune.manifest("cli-pause", **run_for("10m"))).returncode == 0
    ftjs.wait_phase("cli-pause", "Running")
    suspended = kubetune("suspend", "cli-pause")
    assert (suspended.returncode, suspended.stdout) == (0, "finetunejob.kubetune.io/cli-pause suspend requested\n")
    ftjs.wait_phase("cli-pause", "Suspended")
    shown = json.loads(kubetune("status", "cli-pause", "-o", "json").stdout)
    assert shown["spec"]["runPolicy"]["suspend"] is True and shown["status"]["phase"] == "Suspended"
    assert kubetune("resume", "cli-pause").returncode == 0
    ftjs.wait_phase("cli-pause", "Running")
    text = kubetune("status", "cli-pause")
    assert text.returncode == 0 and "Running" in text.stdout and "cli-pause-train" in text.stdout


def test_watching_a_job_that_fails_exits_4_and_names_the_failure(kubetune: Kubetune, ftjs: Any) -> None:
    annotations = {"kubetune.test/run-for": "1s", "kubetune.test/exit-code": "65"}
    annotations["kubetune.test/message"] = "row 3: no answer"
    assert kubetune("submit", "-f", kubetune.manifest("cli-bad-data", **annotations)).returncode == 0
    watched = kubetune("status", "cli-bad-data", "-w", "--interval", "0.5")
    assert watched.returncode == 4, watched.stderr
    assert "failure BadData" in watched.stdout.splitlines()[-1]
    shown = kubetune("status", "cli-bad-data")
    assert "BadData" in shown.stdout and "exit code 65" in shown.stdout
