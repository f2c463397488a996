"""What the end-to-end tests and their fixtures share: names, the operator's log, a CPU spec.

How kubetune is installed on the real node (chart values, namespaces, hostPath claims) lives in
``kubetune_testenv.release`` and ``kubetune_testenv.volumes``, which ``kubetune local`` uses too.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from kube_objects import FineTuneJobs, status_of, wait_for
from kubetune_operator.errors import ApiError
from kubetune_operator.k8s import Kube, collection_path, object_path
from kubetune_testenv.cluster import Cluster, ControlPlane
from kubetune_testenv.host_state import cgroup_dirs, shim_pids
from kubetune_testenv.real_node import NodeSettings, sweep_dead_sessions
from kubetune_testenv.release import ON_CPU_NODE, OPERATOR_NAMESPACE
from kubetune_testenv.versions import binaries
from kubetune_testenv.volumes import HostPathClaims

from kubetune.api.progress import EVENT_LINE_PREFIX, parse_event

JOBS_NAMESPACE = "e2e-jobs"
RELEASE = "e2e"
# hostPath directories behind the ``models``, ``datasets`` and ``outputs`` claims of ``e2e-jobs``.
Volumes = HostPathClaims


def operator_log(admin: Kube) -> str:
    pods = admin.request("GET", collection_path(api_version="v1", plural="pods", namespace=OPERATOR_NAMESPACE))
    logs = []
    for pod in pods["items"]:
        path = object_path(api_version="v1", plural="pods", namespace=OPERATOR_NAMESPACE, name=pod["metadata"]["name"])
        try:
            logs.append(admin.request_text(f"{path}/log", query=[("tailLines", "80")]))
        except ApiError as err:
            logs.append(f"(no log: {err})")
    return "\n".join(logs)


def cpu_spec(*, output: str, data: str = "pvc://datasets/lamini-64.jsonl", **overrides: Any) -> dict[str, Any]:
    """A short LoRA run of the tiny model on one CPU pod of the real node."""
    spec: dict[str, Any] = {
        "model": {"source": "pvc://models/tiny"},
        "dataset": {
            "train": [data],
            "format": "prompt_completion",
            "fieldMapping": {"prompt": "question", "completion": "answer"},
            "validationSplit": 0.25,
            "maxSeqLength": 128,
            # The data check has its own tests (test_data_check.py); these test what follows it.
            "preflight": "skip",
        },
        "method": {"type": "lora", "rank": 4, "alpha": 8, "dropout": 0.0},
        "hyperparameters": {"maxSteps": 6, "perDeviceBatchSize": 4, "learningRate": 1e-3},
        "checkpointing": {"everySteps": 2, "keepLast": 2},
        "resources": {"gpusPerNode": 0, "cpu": "500m", "memory": "3Gi", **ON_CPU_NODE},
        "output": {"destination": output},
    }
    for key, value in overrides.items():
        spec[key] = {**spec.get(key, {}), **value} if isinstance(value, dict) else value
    return spec


def kubectl(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    assert isinstance(cluster, ControlPlane)
    return cluster.kubectl(*args, check=False)


NODE = NodeSettings()


def leftovers() -> dict[str, list[str]]:
    """What a real node could leave on this machine."""
    with open("/proc/self/mountinfo") as handle:
        mounts = [line.split()[4] for line in handle if "/kubetune-testenv-" in line.split()[4]]
    cgroups = [str(p) for p in cgroup_dirs(NODE.cgroup_root) if p.exists()]
    links = [name for name in os.listdir("/sys/class/net") if name == NODE.bridge or name.startswith("veth")]
    chains = [
        line
        for family in ("iptables-save", "ip6tables-save")
        for line in subprocess.run([family], capture_output=True, text=True, check=False).stdout.splitlines()
        if "KUBE-" in line
    ]
    programs = ("kubelet", "kube-proxy", "coredns", "containerd", "/pause")
    processes = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            text = b" ".join(argv).decode(errors="replace")
            if ("kubetune-testenv-" in text and any(p in text for p in programs)) or argv[0] == b"/pause":
                processes.append(f"{entry.name}: {text[:120]}")
    shims = [str(pid) for pid in shim_pids("kubetune-testenv-")]
    return {
        "mounts": mounts,
        "cgroups": cgroups,
        "links": links,
        "iptables": chains,
        "processes": processes,
        "shims": shims,
    }


def nothing_left() -> dict[str, list[str]]:
    return {key: [] for key in leftovers()}


def clean_machine() -> dict[str, list[str]]:
    """What is left on this machine once killed sessions' nodes are swept (as a node's start does).

    A test that asserts "nothing left" afterwards starts from here, so a session killed earlier on the same
    machine (a CI runner reused, a SIGKILLed pytest) does not fail it; a live node is left alone (NodeBusyError).
    """
    left = leftovers()
    if left != nothing_left():
        sweep_dead_sessions(binaries().kube, NODE)  # NodeBusyError if a live session holds the node
        left = leftovers()
    return left


# Container start, torch import and the tiny model's steps take ~30 s a run here; CI machines are slower.
RUN_TIMEOUT_S = 420


def events_in(log: str) -> list[Any]:
    return [
        parse_event(line[len(EVENT_LINE_PREFIX) :]) for line in log.splitlines() if line.startswith(EVENT_LINE_PREFIX)
    ]


def pod_log(cluster: Cluster, pod: str) -> str:
    """``kubectl logs``: the API server fetches it from the kubelet, as for a user."""
    result = kubectl(cluster, "logs", f"--namespace={JOBS_NAMESPACE}", pod, "--container=trainer")
    assert result.returncode == 0, result.stderr
    return result.stdout


def phases_until(ftjs: FineTuneJobs, name: str, final: str, *, timeout: float = RUN_TIMEOUT_S) -> list[str]:
    """Every phase seen (in order, without repeats) until ``final`` is reached."""
    seen: list[str] = []

    def record(obj: dict[str, Any]) -> bool:
        phase = status_of(obj).get("phase")
        if phase and (not seen or seen[-1] != phase):
            seen.append(phase)
        return phase == final or phase == "Failed"

    try:
        obj = wait_for(lambda: ftjs.get(name) or {}, record, what=f"{name} to reach {final}", timeout=timeout)
    except AssertionError:
        raise AssertionError(
            f"{name} did not reach {final} in {timeout}s (phases {seen})\n{ftjs.describe(name)}"
        ) from None
    assert seen[-1] == final, f"{name} ended {seen[-1]} (phases {seen}); status: {json.dumps(status_of(obj))}"
    return seen
