"""A real trainer process given what a pod of a FineTuneJob gets: its config, report address, CA and token.

kwok pods run nothing, so the trainer runs here as a process. Everything it is given comes from the
cluster as the operator built it: the ConfigMap (trainer config, report CA), the Job's pod template (the
report address, the token's audience) and a token the API server issues for the pod's ServiceAccount,
bound to the pod, as the kubelet would project it.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from kube_objects import FineTuneJobs, wait_for
from kubernetes.client import ApiClient
from kubetune_operator.builders.names import REPORT_CA_FILE_NAME
from kubetune_operator.k8s import Kube, collection_path
from kubetune_testenv.processes import free_port
from kubetune_testenv.volumes import BIND_TIMEOUT_S, HostPathClaims, create_claims, wait_bound

from kubetune.api.progress import EVENT_LINE_PREFIX, ProgressEvent, StepEvent, parse_event
from kubetune.api.reports import REPORT_CA_FILE_ENV, REPORT_TOKEN_FILE_ENV, REPORT_URL_ENV, TRAINER_METRICS_PORT_ENV
from kubetune.api.trainer_config import CONFIG_FILE_NAME


@dataclass(frozen=True, kw_only=True)
class PodInputs:
    namespace: str
    pod_name: str
    pod_uid: str
    service_account: str
    config_text: str
    ca_pem: str
    report_url: str
    audience: str


def running_rank0_pod(ftjs: FineTuneJobs, name: str, *, timeout: float = 60) -> dict[str, Any]:
    pods = wait_for(
        lambda: [p for p in ftjs.children("pods", name) if (p.get("status") or {}).get("phase") == "Running"],
        bool,
        what=f"a running pod of {name}",
        timeout=timeout,
    )
    return pods[0]


def pod_inputs(ftjs: FineTuneJobs, name: str) -> PodInputs:
    pod = running_rank0_pod(ftjs, name)
    (config_map,) = ftjs.children("configmaps", name)
    (job,) = ftjs.children("jobs", name)
    template = job["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in template["containers"][0]["env"]}
    (token_source,) = [
        source["serviceAccountToken"]
        for volume in template["volumes"]
        for source in (volume.get("projected") or {}).get("sources", [])
        if "serviceAccountToken" in source
    ]
    return PodInputs(
        namespace=ftjs.namespace,
        pod_name=pod["metadata"]["name"],
        pod_uid=pod["metadata"]["uid"],
        service_account=pod["spec"].get("serviceAccountName") or "default",
        config_text=config_map["data"][CONFIG_FILE_NAME],
        ca_pem=config_map["data"][REPORT_CA_FILE_NAME],
        report_url=str(env[REPORT_URL_ENV]),
        audience=token_source["audience"],
    )


def request_token(kube: Kube, pod: PodInputs, *, audience: str | None = None, seconds: int = 600) -> str:
    """A token for the pod's ServiceAccount, bound to the pod, with the audience of the pod's projected token
    (or ``audience``): the one the kubelet projects into the pod."""
    path = collection_path(api_version="v1", plural="serviceaccounts", namespace=pod.namespace)
    body = {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {
            "audiences": [audience or pod.audience],
            "expirationSeconds": seconds,
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": pod.pod_name, "uid": pod.pod_uid},
        },
    }
    answer = kube.request("POST", f"{path}/{pod.service_account}/token", body=body)
    return str(answer["status"]["token"])


def bound_claims(api: ApiClient, *, namespace: str, root: Path) -> Path:
    """Claims models, datasets and outputs of ``namespace``, bound to PVs over ``root/<claim>``: the pods
    schedule (kwok runs them, nothing mounts them), and the local trainer reads the same directories."""
    claims = HostPathClaims(root=root, namespace=namespace, pv_prefix=f"{namespace}-", storage_class="t-hostpath")
    create_claims(api, claims)
    wait_bound(api, namespace=namespace, names=claims.claims, timeout=BIND_TIMEOUT_S)
    return root


def lay_out_claims(root: Path, *, model_dir: Path, dataset: Path) -> Path:
    """The claims as a pod mounts them: <root>/<claim>/<path> for pvc://models/tiny, datasets/lamini.jsonl."""
    if not (root / "models" / "tiny").exists():
        shutil.copytree(model_dir, root / "models" / "tiny", dirs_exist_ok=True)
    (root / "datasets").mkdir(parents=True, exist_ok=True)
    shutil.copy(dataset, root / "datasets" / "lamini.jsonl")
    return root


class TrainerProcess:
    """``python -m kubetune_trainer train`` with the pod's inputs; its event lines are parsed as they come."""

    def __init__(self, *, inputs: PodInputs, token: str, pvc_root: Path, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        config = workdir / CONFIG_FILE_NAME
        config.write_text(inputs.config_text, encoding="utf-8")
        self.ca_file = workdir / REPORT_CA_FILE_NAME
        self.ca_file.write_text(inputs.ca_pem, encoding="ascii")
        self.token_file = workdir / "token"
        self.token_file.write_text(token, encoding="ascii")
        self.metrics_port = free_port()
        self.log_path = workdir / "trainer.log"
        env = {
            **os.environ,
            REPORT_URL_ENV: inputs.report_url,
            REPORT_TOKEN_FILE_ENV: str(self.token_file),
            REPORT_CA_FILE_ENV: str(self.ca_file),
            TRAINER_METRICS_PORT_ENV: str(self.metrics_port),
            "CUDA_VISIBLE_DEVICES": "",
            "OMP_NUM_THREADS": "1",
        }
        self.events: list[tuple[float, ProgressEvent]] = []  # (monotonic time seen, event)
        self._lines: list[str] = []
        self._process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kubetune_trainer",
                "train",
                "--config",
                str(config),
                "--pvc-root",
                str(PurePosixPath(pvc_root)),
                "--threads",
                "1",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._process.stdout is not None
        with self.log_path.open("w", encoding="utf-8") as log:
            for line in self._process.stdout:
                log.write(line)
                log.flush()
                self._lines.append(line)
                if line.startswith(EVENT_LINE_PREFIX):
                    self.events.append((time.monotonic(), parse_event(line[len(EVENT_LINE_PREFIX) :].strip())))

    def steps(self) -> list[StepEvent]:
        return [e for _, e in self.events if isinstance(e, StepEvent)]

    def cpu_seconds(self) -> float:
        """CPU time the trainer process (all its threads) has used so far (Linux /proc, user + system)."""
        fields = Path(f"/proc/{self._process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        utime, stime = int(fields[11]), int(fields[12])
        return (utime + stime) / os.sysconf("SC_CLK_TCK")

    def wait_for_step(self, step: int, *, timeout: float = 300) -> None:
        def reached() -> bool:
            if self._process.poll() is not None and not any(s.step >= step for s in self.steps()):
                raise AssertionError(f"the trainer exited {self._process.returncode}:\n{self.tail()}")
            return any(s.step >= step for s in self.steps())

        wait_for(reached, bool, what=f"the trainer's step {step}", timeout=timeout)

    def wait(self, *, timeout: float = 600) -> int:
        code = self._process.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return code

    def tail(self, lines: int = 40) -> str:
        return "".join(self._lines[-lines:])

    def kill(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait(timeout=30)


def post_report(url: str, *, token: str | None, body: bytes, ca_pem: str) -> tuple[int, dict[str, Any]]:
    """One report request as a trainer sends it; the status and the operator's JSON answer."""
    context = ssl.create_default_context(cadata=ca_pem)
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")
