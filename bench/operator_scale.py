"""Benchmark: the operator under N FineTuneJobs created at once, and idle afterwards (not a test).

For each N: a fresh test control plane (kubetune_testenv) with fake GPU nodes enough for every pod, and one
operator subprocess (``python -m kubetune_operator``) under a ServiceAccount with exactly its RBAC rules,
with the operator's defaults except the ones named in ``operator_env``. In that order:

1. plain: N batch/v1 Jobs, copies of the Job the operator built for a probe FineTuneJob, created directly by
   16 client threads; the time until every Job has a status (the Job controller's ``startTime``).
2. create: N FineTuneJobs created by 16 client threads; the time until each has its Job and a
   ``status.phase``. ``ratio`` is this time over the plain one.
3. running: until every FineTuneJob is Running (each pod runs for 24 h on a kwok node) and the operator has
   been quiet for ``--quiet-seconds`` (no successful write, no reconcile but its timer's); API requests,
   status writes and CPU are counted from the first create to its last activity.
4. idle (running): ``--idle-seconds`` with nothing changing; status writes must be 0.
5. finish: every pod told to exit 0 (kwok's ``kubetune.test/run-for``), until every FineTuneJob Succeeded.
6. idle (finished): ``--finished-idle-seconds`` (0 skips steps 5 and 6).

The operator's API requests come from the API server's audit log, which records only the operator's
ServiceAccount (verb, resource, subresource, code); each request counts once, in the window it started in.
CPU seconds and peak RSS are the operator process's own (/proc/<pid>/stat utime+stime, VmHWM). The API
server's ``apiserver_request_total`` (every client: controllers, kwok, this script) is recorded beside it,
and the operator's ``kubetune_operator_api_requests_total`` where it exports one.

    python bench/operator_scale.py               # N = 100, 300, 1000: roughly 40 minutes (N=1000 not yet run)
    python bench/operator_scale.py --sizes 100 --idle-seconds 60 --json operator-scale.json
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import math
import os
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import urllib3
import yaml
from kubernetes import client, config, watch
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException
from kubetune_operator.rbac import cluster_role
from kubetune_testenv.cluster import ControlPlane, Settings
from kubetune_testenv.nodes import DEFAULT_POOLS, NodePool
from kubetune_testenv.processes import free_port
from kubetune_testenv.stages import RUN_FOR
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.table import Table

from kubetune.api.resource import GROUP, KIND, PLURAL, VERSION

REPO = Path(__file__).resolve().parents[1]
CRD_FILE = REPO / "crds" / "finetunejobs.yaml"
PROFILE_CRD_FILE = REPO / "crds" / "finetuneprofiles.yaml"
OPERATOR_NAMESPACE = "kubetune-system"
OPERATOR_ACCOUNT = "kubetune-operator"
OPERATOR_USER = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_ACCOUNT}"
# The operator watches these namespaces only; the plain Jobs live outside them.
FTJ_NAMESPACE_PREFIX = "bench-ftj-"
CLIENT_THREADS = 16
# Long enough that no pod exits during a run; kwok's stages read Go durations.
RUN_FOR_RUNNING = "24h"
RUN_FOR_FINISH = "1s"
# Fake nodes for the benchmark's pods: 64 GPUs each keeps the node count (and kwok's heartbeats) low.
BENCH_NODE_GPUS = 64
# Labels the API server and the operator put on a Job and its pod template; a copy must not carry them.
GENERATED_LABEL_PREFIXES = ("batch.kubernetes.io/", "controller-uid", "job-name", "kubetune.io/")


def ftj_spec() -> dict[str, Any]:
    """The tests' minimal valid spec: one pod with one GPU."""
    return {
        "model": {"source": "hf://HuggingFaceTB/SmolLM2-135M-Instruct@main"},
        "dataset": {"train": ["s3://training-data/lamini_docs.jsonl"], "preflight": "skip"},
        "output": {"destination": "s3://outputs/run-1"},
    }


def ftj_manifest(name: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {"name": name, "annotations": {RUN_FOR: RUN_FOR_RUNNING}},
        "spec": ftj_spec(),
    }


def operator_env(*, kubeconfig: Path, metrics_port: int, health_port: int) -> dict[str, str]:
    """The operator's environment: its defaults, except what the benchmark needs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBETUNE_")}
    env.update(
        KUBECONFIG=str(kubeconfig),
        KUBETUNE_NAMESPACES=f"{FTJ_NAMESPACE_PREFIX}*",
        # The FineTuneJob's kubetune.test/run-for reaches the pods, where kwok reads it.
        KUBETUNE_POD_ANNOTATION_PREFIXES="kubetune.test/",
        # Every pod gets a node, but N pods take a while to be scheduled: no job may fail as Unschedulable.
        KUBETUNE_PENDING_TIMEOUT_SECONDS="86400",
        KUBETUNE_METRICS_PORT=str(metrics_port),
        KUBETUNE_HEALTH_PORT=str(health_port),
    )
    return env


def bench_pool(n: int) -> NodePool:
    """Nodes for 2N + 1 one-GPU pods (the plain Jobs' pods keep running beside the FineTuneJobs')."""
    return NodePool(
        name="bench-gpu",
        count=math.ceil((2 * n + 1) / BENCH_NODE_GPUS),
        gpus=BENCH_NODE_GPUS,
        gpu_product="NVIDIA-H100-80GB-HBM3",
        cpu="4096",
        memory="64Ti",
    )


def wait_until(check: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


# -- what is measured ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcSample:
    cpu_seconds: float
    peak_rss_mib: float


def proc_sample(pid: int) -> ProcSample:
    """utime + stime (fields 14 and 15 of /proc/<pid>/stat, after the command name) and VmHWM."""
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return ProcSample(
        cpu_seconds=(int(stat[11]) + int(stat[12])) / ticks, peak_rss_mib=int(status["VmHWM"].split()[0]) / 1024
    )


AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [{"level": "Metadata", "users": [OPERATOR_USER]}, {"level": "None"}],
}


class AuditLog:
    """The API server's audit log of the operator's requests, read forward from where the last read ended.

    Long-running requests (watches, logs) log a ResponseStarted and, when they end, a ResponseComplete
    event; others only ResponseComplete. A request counts once: under the first event seen of its auditID.
    """

    def __init__(self, directory: Path) -> None:
        self.path = directory / "audit.log"
        self.policy = directory / "audit-policy.yaml"
        self.policy.write_text(yaml.safe_dump(AUDIT_POLICY))
        self._position = 0
        self._seen: set[str] = set()

    def apiserver_args(self) -> tuple[str, ...]:
        # The default (blocking) mode writes each event before the response: a read sees every request
        # that completed before it.
        return (
            f"--audit-policy-file={self.policy}",
            f"--audit-log-path={self.path}",
            "--audit-log-format=json",
            "--audit-log-maxsize=0",
        )

    def read(self) -> Counter[str]:
        """Requests since the last read, keyed ``verb resource[/subresource] code``."""
        if not self.path.exists():
            return Counter()
        with self.path.open("rb") as log:
            log.seek(self._position)
            data = log.read()
        complete = data[: data.rfind(b"\n") + 1]
        self._position += len(complete)
        counts: Counter[str] = Counter()
        for line in complete.splitlines():
            event = json.loads(line)
            if event["auditID"] in self._seen or event["user"].get("username") != OPERATOR_USER:
                continue
            self._seen.add(event["auditID"])
            counts[request_key(event)] += 1
        return counts


def request_key(event: dict[str, Any]) -> str:
    ref = event.get("objectRef") or {}
    if ref.get("resource"):
        what = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
    else:
        what = event["requestURI"].split("?", 1)[0]
    return f"{event['verb']} {what} {(event.get('responseStatus') or {}).get('code', 0)}"


def status_writes(requests: Counter[str]) -> int:
    return sum(
        count
        for key, count in requests.items()
        if key.split()[0] in ("patch", "update") and key.split()[1] == f"{PLURAL}/status"
    )


def successful_writes(requests: Counter[str]) -> int:
    return sum(
        count
        for key, count in requests.items()
        if key.split()[0] in ("create", "update", "patch", "delete") and key.split()[2].startswith("2")
    )


def counter_total(text: str, family_name: str, *, unless: tuple[str, tuple[str, ...]] | None = None) -> float | None:
    """The sum of a Prometheus counter's samples (but those whose label ``unless[0]`` is one of ``unless[1]``);
    None if it is not there."""
    for family in text_string_to_metric_families(text):
        if family.name == family_name:
            return float(
                sum(
                    sample.value
                    for sample in family.samples
                    if sample.name.endswith("_total")
                    and (unless is None or sample.labels.get(unless[0]) not in unless[1])
                )
            )
    return None


@dataclass(frozen=True)
class Mark:
    at: float
    proc: ProcSample
    requests: Counter[str]  # the operator's, from the audit log, since the first mark
    operator_requests: float | None  # kubetune_operator_api_requests_total, where the operator has it
    triggered: float | None  # the operator's reconciles but its timer's, where it counts them
    apiserver: float | None  # apiserver_request_total (every client); only on a full mark


class Meter:
    """Marks the start of a window and measures it at its end."""

    def __init__(self, *, plane: ControlPlane, audit: AuditLog, operator: OperatorProcess) -> None:
        self.plane = plane
        self.audit = audit
        self.operator = operator
        assert plane.pki is not None
        self._tls = ssl.create_default_context(cafile=str(plane.pki.ca_cert))
        self._tls.load_cert_chain(str(plane.pki.admin_cert), str(plane.pki.admin_key))
        self._requests: Counter[str] = Counter()

    def mark(self, *, full: bool = True) -> Mark:
        """The operator's counts now; ``full`` adds the API server's (megabytes of /metrics to parse)."""
        apiserver = None
        if full:
            with urllib.request.urlopen(f"{self.plane.server}/metrics", context=self._tls, timeout=30) as response:
                apiserver = counter_total(response.read().decode(), "apiserver_request")
        self._requests += self.audit.read()
        metrics = self.operator.metrics()
        return Mark(
            at=time.monotonic(),
            proc=proc_sample(self.operator.pid),
            requests=Counter(self._requests),
            operator_requests=counter_total(metrics, "kubetune_operator_api_requests"),
            # Re-checks on a clock (the kopf timer of older operators, the scheduler's "scheduled" ones: progress
            # reads of running jobs) are not activity: quiet means nothing but those.
            triggered=counter_total(
                metrics, "kubetune_operator_reconciles", unless=("trigger", ("timer", "scheduled"))
            ),
            apiserver=apiserver,
        )

    def settle(self, *, quiet: float, timeout: float) -> Mark:
        """Wait until the operator has been quiet for ``quiet`` seconds: no successful write and, where it
        counts them, no reconcile but its timer's. Returns the mark just after its last activity."""
        last = self.mark(full=False)
        deadline = last.at + timeout
        while True:
            time.sleep(1.0)
            current = self.mark(full=False)
            if (successful_writes(current.requests), current.triggered) != (
                successful_writes(last.requests),
                last.triggered,
            ):
                last = current
            elif current.at - last.at >= quiet:
                return last
            if current.at > deadline:
                raise TimeoutError(f"the operator was not quiet for {quiet:.0f}s within {timeout:.0f}s")

    def measure(
        self, start: Mark, *, jobs: int, end: Mark | None = None, milestone: float | None = None
    ) -> dict[str, Any]:
        """From ``start`` to ``end`` (now by default); ``seconds`` ends at ``milestone`` (monotonic) if given.
        The API server's count of every client's requests always runs to now."""
        now = self.mark()
        end = end or now
        wall = end.at - start.at
        requests = end.requests - start.requests
        cpu = end.proc.cpu_seconds - start.proc.cpu_seconds
        total = sum(requests.values())
        reported = None
        if end.operator_requests is not None and start.operator_requests is not None:
            reported = int(end.operator_requests - start.operator_requests)
        return {
            "seconds": round((milestone or end.at) - start.at, 2),
            "measured_seconds": round(wall, 2),
            "operator_cpu_seconds": round(cpu, 2),
            "operator_cores": round(cpu / wall, 3),
            "operator_peak_rss_mib": round(end.proc.peak_rss_mib, 1),
            "operator_requests": total,
            "operator_requests_per_job": round(total / jobs, 2),
            "operator_requests_per_second": round(total / wall, 2),
            "status_writes": status_writes(requests),
            "status_writes_per_job": round(status_writes(requests) / jobs, 2),
            "operator_requests_by_kind": dict(requests.most_common()),
            "operator_reported_requests": reported,
            "apiserver_requests_all_clients": int((now.apiserver or 0) - (start.apiserver or 0)),
        }


# -- the operator and the cluster ---------------------------------------------------------------------------


class OperatorProcess:
    """``python -m kubetune_operator`` as the integration tests run it; its log goes to a file."""

    def __init__(self, *, kubeconfig: Path, log_path: Path) -> None:
        self.log_path = log_path
        self.metrics_port = free_port()
        self.health_port = free_port()
        self.env = operator_env(kubeconfig=kubeconfig, metrics_port=self.metrics_port, health_port=self.health_port)
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "kubetune_operator"], env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        wait_until(self._healthy, timeout=60, what=f"the operator's /healthz (log: {self.log_path})")

    def _healthy(self) -> bool:
        if self._process is not None and self._process.poll() is not None:
            raise RuntimeError(f"the operator exited with {self._process.returncode}:\n{self.log_tail()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=30)

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as response:
            return str(response.read().decode())

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def api_client(kubeconfig: Path) -> ApiClient:
    """An admin client with a connection for each creating thread and each watch."""
    configuration = client.Configuration()
    config.load_kube_config(  # type: ignore[no-untyped-call]
        config_file=str(kubeconfig), client_configuration=configuration, persist_config=False
    )
    configuration.connection_pool_maxsize = CLIENT_THREADS + 8
    return ApiClient(configuration)


def install_crd(api: ApiClient) -> None:
    """Both CRDs (the operator also watches FineTuneProfiles); the benchmark waits for FineTuneJobs'."""
    manifest = yaml.safe_load(CRD_FILE.read_text(encoding="utf-8"))
    extensions = client.ApiextensionsV1Api(api)
    extensions.create_custom_resource_definition(yaml.safe_load(PROFILE_CRD_FILE.read_text(encoding="utf-8")))
    extensions.create_custom_resource_definition(manifest)

    def established() -> bool:
        crd = extensions.read_custom_resource_definition(manifest["metadata"]["name"])
        conditions = (crd.status.conditions if crd.status else None) or []
        return any(c.type == "Established" and c.status == "True" for c in conditions)

    wait_until(established, timeout=30, what="the CRD to be Established")
    custom = client.CustomObjectsApi(api)

    def served() -> bool:  # Established comes before the storage: lists answer 429 for a moment
        try:
            custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)
        except ApiException as err:
            if err.status != 429:
                raise
            return False
        return True

    wait_until(served, timeout=30, what="the API server to serve FineTuneJobs")


def create_namespace(api: ApiClient, name: str) -> None:
    """A namespace, returned once its default ServiceAccount exists (pods are refused before that)."""
    core = client.CoreV1Api(api)
    core.create_namespace(client.V1Namespace.model_validate({"metadata": {"name": name}}))

    def has_default_account() -> bool:
        try:
            core.read_namespaced_service_account("default", name)
        except ApiException as err:
            if err.status != 404:
                raise
            return False
        return True

    wait_until(has_default_account, timeout=60, what=f"the default ServiceAccount of {name}")


def operator_kubeconfig(plane: ControlPlane, api: ApiClient) -> Path:
    """A ServiceAccount bound to a ClusterRole with exactly the operator's rules."""
    create_namespace(api, OPERATOR_NAMESPACE)
    account = client.V1ServiceAccount.model_validate({"metadata": {"name": OPERATOR_ACCOUNT}})
    client.CoreV1Api(api).create_namespaced_service_account(OPERATOR_NAMESPACE, account)
    rbac = client.RbacAuthorizationV1Api(api)
    rbac.create_cluster_role(client.V1ClusterRole.model_validate(cluster_role(name=OPERATOR_ACCOUNT)))
    binding = client.V1ClusterRoleBinding.model_validate(
        {
            "metadata": {"name": OPERATOR_ACCOUNT},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": OPERATOR_ACCOUNT},
            "subjects": [{"kind": "ServiceAccount", "name": OPERATOR_ACCOUNT, "namespace": OPERATOR_NAMESPACE}],
        }
    )
    rbac.create_cluster_role_binding(binding)
    return plane.sa_kubeconfig(OPERATOR_NAMESPACE, OPERATOR_ACCOUNT, expiration_seconds=6 * 3600)


# -- following objects --------------------------------------------------------------------------------------

# The key under which an object has reached a milestone (its own name, or its owner's), or None.
Milestone = Callable[[dict[str, Any]], str | None]


class Watched:
    """One kind in one namespace, followed by a watch in a daemon thread.

    For each named milestone, the first time (monotonic, when the event arrived) each object reached it.
    """

    def __init__(
        self, api: ApiClient, *, namespace: str, group: str, version: str, plural: str, milestones: dict[str, Milestone]
    ) -> None:
        self._custom = client.CustomObjectsApi(api)
        self._args = (group, version, namespace, plural)
        self._milestones = milestones
        self._reached: dict[str, dict[str, float]] = {name: {} for name in milestones}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._follow, daemon=True, name=f"watch-{plural}")
        self._thread.start()

    def reached(self, milestone: str) -> dict[str, float]:
        with self._lock:
            return dict(self._reached[milestone])

    def stop(self) -> None:
        self._stopping.set()

    def _observe(self, obj: dict[str, Any]) -> None:
        now = time.monotonic()
        with self._lock:
            for name, milestone in self._milestones.items():
                key = milestone(obj)
                if key is not None:
                    self._reached[name].setdefault(key, now)

    def _follow(self) -> None:
        version: str | None = None
        while not self._stopping.is_set():
            try:
                if version is None:
                    listing: Any = self._custom.list_namespaced_custom_object(*self._args)
                    for obj in listing["items"]:
                        self._observe(obj)
                    version = listing["metadata"]["resourceVersion"]
                stream = watch.Watch().stream(  # type: ignore[no-untyped-call]
                    self._custom.list_namespaced_custom_object,
                    *self._args,
                    resource_version=version,
                    allow_watch_bookmarks=True,
                    timeout_seconds=30,
                )
                for event in stream:
                    obj = event["object"]
                    if event["type"] == "ERROR":  # 410 Gone: the version is too old; list again
                        version = None
                        break
                    version = obj["metadata"]["resourceVersion"]
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self._observe(obj)
            except ApiException as err:
                if err.status != 410:
                    self._retry_after(err)
                version = None
            except (OSError, urllib3.exceptions.HTTPError) as err:  # the API server is going away, or restarted
                self._retry_after(err)
                version = None

    def _retry_after(self, err: Exception) -> None:
        if not self._stopping.is_set():
            print(f"watch {'/'.join(self._args)}: {err}; retrying", file=sys.stderr)
            time.sleep(1)


def has_phase(obj: dict[str, Any]) -> str | None:
    return obj["metadata"]["name"] if (obj.get("status") or {}).get("phase") else None


def phase_is(phase: str) -> Milestone:
    def reached(obj: dict[str, Any]) -> str | None:
        return obj["metadata"]["name"] if (obj.get("status") or {}).get("phase") == phase else None

    return reached


def owning_ftj(obj: dict[str, Any]) -> str | None:
    refs = obj["metadata"].get("ownerReferences") or []
    return next((ref["name"] for ref in refs if ref.get("kind") == KIND), None)


def job_started(obj: dict[str, Any]) -> str | None:
    return obj["metadata"]["name"] if (obj.get("status") or {}).get("startTime") else None


def create_all(create: Callable[[str], object], names: Iterable[str]) -> dict[str, float]:
    """Create every object from CLIENT_THREADS threads; when (monotonic) each request was sent."""
    sent: dict[str, float] = {}

    def one(name: str) -> None:
        sent[name] = time.monotonic()
        create(name)

    with ThreadPoolExecutor(max_workers=CLIENT_THREADS) as pool:
        list(pool.map(one, names))
    return sent


def latencies(sent: dict[str, float], ready: dict[str, float]) -> dict[str, float]:
    values = sorted(ready[name] - sent[name] for name in sent)
    return {
        "p50": round(statistics.median(values), 2),
        "p95": round(values[max(0, math.ceil(0.95 * len(values)) - 1)], 2),
        "max": round(values[-1], 2),
    }


# -- one size -------------------------------------------------------------------------------------------------


class SizeRun:
    """The windows of one N on one control plane with one operator."""

    def __init__(self, *, n: int, api: ApiClient, meter: Meter, args: argparse.Namespace) -> None:
        self.n = n
        self.api = api
        self.custom = client.CustomObjectsApi(api)
        self.meter = meter
        self.args = args
        self.timeout = max(300.0, 2.0 * n)
        self.ftj_namespace = f"{FTJ_NAMESPACE_PREFIX}{n}"
        self.plain_namespace = f"bench-plain-{n}"
        self.names = [f"ftj-{i:05d}" for i in range(n)]

    def run(self) -> dict[str, Any]:
        template = self.probe_job()
        result: dict[str, Any] = {"n": self.n, "plain": self.plain(template)}
        ftjs = Watched(
            self.api,
            namespace=self.ftj_namespace,
            group=GROUP,
            version=VERSION,
            plural=PLURAL,
            milestones={"phase": has_phase, "running": phase_is("Running"), "succeeded": phase_is("Succeeded")},
        )
        jobs = Watched(
            self.api,
            namespace=self.ftj_namespace,
            group="batch",
            version="v1",
            plural="jobs",
            milestones={"owned": owning_ftj},
        )
        try:
            result.update(self.create_and_run(ftjs, jobs))
            result["ratio"] = round(result["create"]["seconds"] / result["plain"]["seconds"], 2)
            result["idle_running"] = self.idle(self.args.idle_seconds)
            if self.args.finished_idle_seconds > 0:
                result["finish"] = self.finish(ftjs)
                result["idle_finished"] = self.idle(self.args.finished_idle_seconds)
        finally:
            ftjs.stop()
            jobs.stop()
        return result

    def probe_job(self) -> dict[str, Any]:
        """The Job the operator builds for one FineTuneJob; the probe is deleted again before measuring."""
        namespace = f"{FTJ_NAMESPACE_PREFIX}probe"
        create_namespace(self.api, namespace)
        self.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, ftj_manifest("probe"))
        found: list[dict[str, Any]] = []

        def job_exists() -> bool:
            found[:] = self.custom.list_namespaced_custom_object("batch", "v1", namespace, "jobs")["items"]  # type: ignore[index]
            return bool(found)

        wait_until(job_exists, timeout=120, what="the probe FineTuneJob's Job")
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "probe")
        core = client.CoreV1Api(self.api)

        def probe_gone() -> bool:
            pods = core.list_namespaced_pod(namespace).items
            ftj_left = self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]  # type: ignore[index]
            return not pods and not ftj_left

        wait_until(probe_gone, timeout=120, what="the probe FineTuneJob and its pods to be gone")
        return found[0]

    def plain(self, template: dict[str, Any]) -> dict[str, Any]:
        create_namespace(self.api, self.plain_namespace)
        jobs = Watched(
            self.api,
            namespace=self.plain_namespace,
            group="batch",
            version="v1",
            plural="jobs",
            milestones={"started": job_started},
        )
        names = [f"plain-{i:05d}" for i in range(self.n)]
        try:
            start = self.meter.mark()
            sent = create_all(
                lambda name: self.custom.create_namespaced_custom_object(
                    "batch", "v1", self.plain_namespace, "jobs", plain_job(template, name)
                ),
                names,
            )
            wait_until(lambda: len(jobs.reached("started")) >= self.n, timeout=self.timeout, what="the plain Jobs")
            started = jobs.reached("started")
            window = self.meter.measure(start, jobs=self.n, milestone=max(started.values()))
        finally:
            jobs.stop()
        return {**window, "latency": latencies(sent, started)}

    def create_and_run(self, ftjs: Watched, jobs: Watched) -> dict[str, Any]:
        create_namespace(self.api, self.ftj_namespace)
        start = self.meter.mark()
        sent = create_all(
            lambda name: self.custom.create_namespaced_custom_object(
                GROUP, VERSION, self.ftj_namespace, PLURAL, ftj_manifest(name)
            ),
            self.names,
        )

        def ready() -> dict[str, float]:
            phases, owned = ftjs.reached("phase"), jobs.reached("owned")
            return {name: max(phases[name], owned[name]) for name in self.names if name in phases and name in owned}

        wait_until(lambda: len(ready()) >= self.n, timeout=self.timeout, what="every FineTuneJob's Job and phase")
        created = ready()
        create = self.meter.measure(start, jobs=self.n, milestone=max(created.values()))
        wait_until(
            lambda: len(ftjs.reached("running")) >= self.n, timeout=self.timeout, what="every FineTuneJob Running"
        )
        settled = self.meter.settle(quiet=self.args.quiet_seconds, timeout=self.timeout)
        running = self.meter.measure(start, jobs=self.n, end=settled, milestone=max(ftjs.reached("running").values()))
        return {"create": {**create, "latency": latencies(sent, created)}, "running": running}

    def idle(self, seconds: float) -> dict[str, Any]:
        start = self.meter.mark()
        time.sleep(seconds)
        return self.meter.measure(start, jobs=self.n)

    def finish(self, ftjs: Watched) -> dict[str, Any]:
        """Every trainer pod exits 0 a second later (kwok re-reads run-for when the pod changes)."""
        core = client.CoreV1Api(self.api)
        pods = [
            p.metadata.name
            for p in core.list_namespaced_pod(self.ftj_namespace).items
            if p.metadata and p.metadata.name
        ]
        start = self.meter.mark()
        patch = {"metadata": {"annotations": {RUN_FOR: RUN_FOR_FINISH}}}
        create_all(lambda pod: core.patch_namespaced_pod(pod, self.ftj_namespace, patch), pods)
        wait_until(
            lambda: len(ftjs.reached("succeeded")) >= self.n, timeout=self.timeout, what="every FineTuneJob Succeeded"
        )
        settled = self.meter.settle(quiet=self.args.quiet_seconds, timeout=self.timeout)
        return self.meter.measure(start, jobs=self.n, end=settled, milestone=max(ftjs.reached("succeeded").values()))


def plain_job(template: dict[str, Any], name: str) -> dict[str, Any]:
    """A copy of the operator's Job, owned by nobody and unknown to the operator."""
    spec = copy.deepcopy(template["spec"])
    spec.pop("selector", None)
    pod_meta = spec["template"].setdefault("metadata", {})
    pod_meta["labels"] = {
        key: value
        for key, value in (pod_meta.get("labels") or {}).items()
        if not key.startswith(GENERATED_LABEL_PREFIXES)
    }
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name}, "spec": spec}


def run_size(n: int, *, args: argparse.Namespace, console: Console) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="kubetune-bench-"))
    audit = AuditLog(workdir)
    (workdir / "plane").mkdir()
    settings = Settings(pools=(*DEFAULT_POOLS, bench_pool(n)), apiserver_args=audit.apiserver_args())
    plane = ControlPlane(settings=settings, workdir=workdir / "plane")
    operator: OperatorProcess | None = None
    try:
        plane.start()
        with api_client(plane.kubeconfig_path) as api:
            install_crd(api)
            operator = OperatorProcess(kubeconfig=operator_kubeconfig(plane, api), log_path=workdir / "operator.log")
            operator.start()
            meter = Meter(plane=plane, audit=audit, operator=operator)
            console.print(f"N={n}: control plane and operator up; running (work dir {workdir})")
            return SizeRun(n=n, api=api, meter=meter, args=args).run()
    except BaseException:
        if operator is not None:
            console.print(f"[red]operator log (tail):[/red]\n{operator.log_tail()}")
        args.keep = True
        raise
    finally:
        if operator is not None:
            operator.stop()
        plane.stop()
        if args.keep:
            console.print(f"kept {workdir} (operator.log, audit.log, plane/logs)")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


# -- report ---------------------------------------------------------------------------------------------------


def print_report(results: dict[int, dict[str, Any]], console: Console) -> None:
    table = Table(title="kubetune operator at scale (one operator process)")
    table.add_column("")
    for n in results:
        table.add_column(f"N={n}", justify="right")
    rows: list[tuple[str, Callable[[dict[str, Any]], Any]]] = [
        ("plain Jobs: all with status, s", lambda r: r["plain"]["seconds"]),
        ("FineTuneJobs: all with Job + phase, s", lambda r: r["create"]["seconds"]),
        ("ratio FineTuneJobs / plain", lambda r: f"{r['ratio']:.2f}x"),
        ("per job p50 / p95, s", lambda r: f"{r['create']['latency']['p50']} / {r['create']['latency']['p95']}"),
        ("API requests per job (to Job + phase)", lambda r: r["create"]["operator_requests_per_job"]),
        ("all Running, s", lambda r: r["running"]["seconds"]),
        ("operator quiet again after, s", lambda r: r["running"]["measured_seconds"]),
        ("API requests per job (to Running)", lambda r: r["running"]["operator_requests_per_job"]),
        ("  as the operator counts them", lambda r: _per_job(r["running"]["operator_reported_requests"], r["n"])),
        ("status writes per job (to Running)", lambda r: r["running"]["status_writes_per_job"]),
        ("operator CPU s (to Running)", lambda r: r["running"]["operator_cpu_seconds"]),
        ("operator cores (to Running)", lambda r: r["running"]["operator_cores"]),
        ("operator peak RSS MiB", lambda r: _last(r)["operator_peak_rss_mib"]),
        ("idle Running: status writes", lambda r: r["idle_running"]["status_writes"]),
        ("idle Running: API requests/s", lambda r: r["idle_running"]["operator_requests_per_second"]),
        ("idle Running: operator cores", lambda r: r["idle_running"]["operator_cores"]),
        ("finish: status writes per job", lambda r: r["finish"]["status_writes_per_job"]),
        ("idle Succeeded: status writes", lambda r: r["idle_finished"]["status_writes"]),
        ("idle Succeeded: API requests/s", lambda r: r["idle_finished"]["operator_requests_per_second"]),
        ("idle Succeeded: operator cores", lambda r: r["idle_finished"]["operator_cores"]),
    ]
    for label, value in rows:
        table.add_row(label, *(_cell(value, r) for r in results.values()))
    console.print(table)
    for n, result in results.items():
        kinds = Table(title=f"N={n}: the operator's API requests (audit log)")
        kinds.add_column("verb resource code")
        windows = [w for w in ("running", "idle_running", "idle_finished") if w in result]
        for window in windows:
            kinds.add_column(window, justify="right")
        keys = sorted({k for w in windows for k in result[w]["operator_requests_by_kind"]})
        for key in keys:
            kinds.add_row(key, *(str(result[w]["operator_requests_by_kind"].get(key, 0)) for w in windows))
        console.print(kinds)


def _per_job(count: int | None, n: int) -> str:
    return "-" if count is None else f"{count / n:.2f}"


def _last(result: dict[str, Any]) -> dict[str, Any]:
    return result.get("idle_finished") or result["idle_running"]  # type: ignore[no-any-return]


def _cell(value: Callable[[dict[str, Any]], Any], result: dict[str, Any]) -> str:
    try:
        return str(value(result))
    except KeyError:
        return "-"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 300, 1000], help="numbers of FineTuneJobs")
    parser.add_argument("--idle-seconds", type=float, default=300, help="idle window with every job Running")
    parser.add_argument(
        "--finished-idle-seconds", type=float, default=60, help="idle window with every job Succeeded; 0 skips it"
    )
    parser.add_argument(
        "--quiet-seconds",
        type=float,
        default=10,
        help="after every job is Running (Succeeded): how long the operator must have been quiet before idling",
    )
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--keep", action="store_true", help="keep each size's work dir (logs, audit log)")
    args = parser.parse_args()
    console = Console(stderr=True)
    results: dict[int, dict[str, Any]] = {}
    for n in args.sizes:  # reported after each size: a long run that is stopped keeps what it measured
        results[n] = run_size(n, args=args, console=console)
        print_report(results, Console())
        if args.json:
            write_json(args, results)
    return 0


def write_json(args: argparse.Namespace, results: dict[int, dict[str, Any]]) -> None:
    env = operator_env(kubeconfig=Path("-"), metrics_port=0, health_port=0)
    document = {
        "date": datetime.date.today().isoformat(),
        "cpus": os.cpu_count(),
        "idle_seconds": args.idle_seconds,
        "finished_idle_seconds": args.finished_idle_seconds,
        "operator_env": {k: v for k, v in env.items() if k.startswith("KUBETUNE_") and not k.endswith("_PORT")},
        "results": results,
    }
    args.json.write_text(json.dumps(document, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
