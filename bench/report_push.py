"""Benchmark: N running FineTuneJobs whose trainers each report every second, on one operator (not a test).

One fresh test control plane (kubetune_testenv, kwok nodes) with N FineTuneJobs whose pods "run" for a
day, then, in this order:

1. log path: the last operator that read progress from rank 0's log (``--log-path-commit``, checked out in
   a git worktree) runs alone for ``--seconds``; its API requests per second (its own
   ``kubetune_operator_api_requests_total``) are what reading progress cost for these N jobs.
2. push: today's operator, with its report endpoint; for ``--seconds`` each job's "trainer" (a client
   thread holding a real token the API server issued for the job's pod, bound to it) POSTs one step
   event a second over a kept-alive HTTPS connection. Measured: reports/s accepted, report latency (client
   side, p50/p99), status writes/s, API requests/s, the operator's CPU (cores) and peak RSS.

Both operators run with the tests' RBAC (the log path's with the admin's, since pods/log is no longer in
the rules). The client threads run on the same machine and share its cores with the operator.

    python bench/report_push.py --jobs 200 --seconds 60 --json report-push.json
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

from kubernetes import client
from kubetune_testenv.cluster import ControlPlane, Settings
from kubetune_testenv.nodes import DEFAULT_POOLS
from kubetune_testenv.processes import free_port
from operator_scale import (
    FTJ_NAMESPACE_PREFIX,
    OperatorProcess,
    api_client,
    bench_pool,
    counter_total,
    create_namespace,
    ftj_manifest,
    install_crd,
    operator_kubeconfig,
    proc_sample,
    wait_until,
)
from rich.console import Console
from rich.table import Table

from kubetune.api.progress import StepEvent, event_to_json
from kubetune.api.reports import audience, report_path
from kubetune.api.resource import GROUP, PLURAL, VERSION

REPO = Path(__file__).resolve().parents[1]
NAMESPACE = f"{FTJ_NAMESPACE_PREFIX}push"
# The last commit whose operator read progress from the pods' logs (every progress_poll_seconds, 30 s).
LOG_PATH_COMMIT = "befd2ed"


@dataclass
class LogPathResult:
    seconds: float
    api_requests_per_second: float
    log_reads_per_second: float
    cpu_cores: float


@dataclass
class PushResult:
    seconds: float
    reports_sent: int
    reports_per_second: float
    accepted_per_second: float
    failed: int
    latency_p50_ms: float
    latency_p99_ms: float
    # After the first WARM_UP_SECONDS: every trainer's TLS handshake and first token review are behind.
    steady_latency_p99_ms: float
    status_writes_per_second: float
    api_requests_per_second: float
    cpu_cores: float
    peak_rss_mib: float


def log_path_worktree(commit: str, workdir: Path) -> Path:
    tree = workdir / "log-path"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), commit], check=True)
    return tree


def requests_total(text: str, *, resource: str | None = None) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith("kubetune_operator_api_requests_total{") and (
            resource is None or f'resource="{resource}"' in line
        ):
            total += float(line.rsplit(" ", 1)[1])
    return total


def run_log_path(*, kubeconfig: Path, tree: Path, workdir: Path, seconds: float) -> LogPathResult:
    old = OperatorProcess(kubeconfig=kubeconfig, log_path=workdir / "log-path-operator.log")
    old.env["PYTHONPATH"] = os.pathsep.join([str(tree / "operator"), str(tree / "src")])
    old.start()
    try:
        time.sleep(min(seconds, 40))  # the start-up's reads and the first poll settle
        before, cpu_before, t0 = old.metrics(), proc_sample(old.pid).cpu_seconds, time.monotonic()
        time.sleep(seconds)
        after, cpu_after, elapsed = old.metrics(), proc_sample(old.pid).cpu_seconds, time.monotonic() - t0
    finally:
        old.stop()
    return LogPathResult(
        seconds=elapsed,
        api_requests_per_second=(requests_total(after) - requests_total(before)) / elapsed,
        log_reads_per_second=(requests_total(after, resource="pods/log") - requests_total(before, resource="pods/log"))
        / elapsed,
        cpu_cores=(cpu_after - cpu_before) / elapsed,
    )


@dataclass(frozen=True)
class Reporter:
    url: str
    token: str


def reporters(api: client.ApiClient, *, base: str, names: list[str]) -> list[Reporter]:
    """One per job: its report address and a token bound to its pod, as the kubelet projects it."""
    core = client.CoreV1Api(api)
    pods = {
        p.metadata.labels["kubetune.io/finetunejob"]: p
        for p in core.list_namespaced_pod(NAMESPACE, label_selector="kubetune.io/finetunejob").items
    }
    out = []
    for name in names:
        pod = pods[name]
        request = client.AuthenticationV1TokenRequest.model_validate(
            {
                "spec": {
                    "audiences": [audience(namespace=NAMESPACE, name=name)],
                    "expirationSeconds": 3600,
                    "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": pod.metadata.name,
                                       "uid": pod.metadata.uid},
                }
            }
        )  # fmt: skip
        token = core.create_namespaced_service_account_token(pod.spec.service_account_name, NAMESPACE, request)
        out.append(Reporter(url=base + report_path(namespace=NAMESPACE, name=name), token=token.status.token))
    return out


# The first seconds of the push window: 200 connections' TLS handshakes and first TokenReviews at once.
WARM_UP_SECONDS = 10.0


def report_loop(
    reporter: Reporter, *, context: ssl.SSLContext, until: float, latencies: list[tuple[float, float]]
) -> int:
    """One step event a second on one kept-alive connection; returns the failed requests."""
    parts = urlsplit(reporter.url)
    connection = http.client.HTTPSConnection(parts.hostname or "", parts.port, context=context, timeout=30)
    failed, step = 0, 0
    next_at = time.monotonic()
    while next_at < until:
        step += 1
        event = StepEvent(
            step=step, total_steps=1_000_000, epoch=0.0, loss=2.0 / step, learning_rate=1e-4,
            tokens_per_second=1000.0, trained_tokens=step * 1000,
        )  # fmt: skip
        body = json.dumps({"events": [json.loads(event_to_json(event))]}).encode()
        headers = {"Authorization": f"Bearer {reporter.token}", "Content-Type": "application/json"}
        started = time.monotonic()
        try:
            connection.request("POST", parts.path, body=body, headers=headers)
            response = connection.getresponse()
            response.read()
            if response.status != 202:
                failed += 1
        except (OSError, http.client.HTTPException):
            failed += 1
            connection.close()
        latencies.append((started, time.monotonic() - started))
        next_at += 1.0
        time.sleep(max(0.0, next_at - time.monotonic()))
    connection.close()
    return failed


def run_push(*, api: client.ApiClient, kubeconfig: Path, workdir: Path, names: list[str], seconds: float) -> PushResult:
    operator = OperatorProcess(kubeconfig=kubeconfig, log_path=workdir / "push-operator.log")
    port = free_port()
    base = f"https://127.0.0.1:{port}"
    operator.env.update(KUBETUNE_REPORTS_PORT=str(port), KUBETUNE_REPORT_URL_BASE=base)
    operator.start()
    try:
        core = client.CoreV1Api(api)
        # The CA is in each job's ConfigMap once the operator has reconciled it.
        wait_until(
            lambda: all(
                "report-ca.crt" in (cm.data or {})
                for cm in core.list_namespaced_config_map(NAMESPACE, label_selector="kubetune.io/finetunejob").items
            ),
            timeout=300,
            what="every ConfigMap to carry the report CA",
        )
        ca = core.read_namespaced_config_map(f"{names[0]}-config", NAMESPACE).data["report-ca.crt"]
        context = ssl.create_default_context(cadata=ca)
        senders = reporters(api, base=base, names=names)
        time.sleep(5)
        before, cpu_before, t0 = operator.metrics(), proc_sample(operator.pid).cpu_seconds, time.monotonic()
        until = t0 + seconds
        latencies: list[tuple[float, float]] = []
        with ThreadPoolExecutor(max_workers=len(senders)) as pool:
            failures = list(
                pool.map(lambda r: report_loop(r, context=context, until=until, latencies=latencies), senders)
            )
        after, sample, elapsed = operator.metrics(), proc_sample(operator.pid), time.monotonic() - t0
    finally:
        operator.stop()
    every = sorted(latency for _, latency in latencies)
    steady = sorted(latency for at, latency in latencies if at >= t0 + WARM_UP_SECONDS)
    only_accepted = ("result", ("rejected",))
    accepted = (counter_total(after, "kubetune_progress_reports", unless=only_accepted) or 0) - (
        counter_total(before, "kubetune_progress_reports", unless=only_accepted) or 0
    )
    writes = (counter_total(after, "kubetune_operator_status_writes") or 0) - (
        counter_total(before, "kubetune_operator_status_writes") or 0
    )
    return PushResult(
        seconds=elapsed,
        reports_sent=len(latencies),
        reports_per_second=len(latencies) / elapsed,
        accepted_per_second=accepted / elapsed,
        failed=sum(failures),
        latency_p50_ms=1000 * statistics.median(every),
        latency_p99_ms=1000 * every[int(0.99 * (len(every) - 1))],
        steady_latency_p99_ms=1000 * steady[int(0.99 * (len(steady) - 1))],
        status_writes_per_second=writes / elapsed,
        api_requests_per_second=(requests_total(after) - requests_total(before)) / elapsed,
        cpu_cores=(sample.cpu_seconds - cpu_before) / elapsed,
        peak_rss_mib=sample.peak_rss_mib,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=60.0, help="each measured window")
    parser.add_argument("--log-path-commit", default=LOG_PATH_COMMIT)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    console = Console()
    workdir = Path(tempfile.mkdtemp(prefix="kubetune-bench-push-"))
    tree = log_path_worktree(args.log_path_commit, workdir)
    (workdir / "plane").mkdir()
    plane = ControlPlane(settings=Settings(pools=(*DEFAULT_POOLS, bench_pool(args.jobs))), workdir=workdir / "plane")
    try:
        plane.start()
        with api_client(plane.kubeconfig_path) as api:
            install_crd(api)
            kubeconfig = operator_kubeconfig(plane, api)
            create_namespace(api, NAMESPACE)
            names = [f"job-{i:04d}" for i in range(args.jobs)]
            custom = client.CustomObjectsApi(api)
            # The log-path operator creates the children and brings every job to Running first.
            old = OperatorProcess(kubeconfig=plane.kubeconfig_path, log_path=workdir / "log-path-start.log")
            old.env["PYTHONPATH"] = os.pathsep.join([str(tree / "operator"), str(tree / "src")])
            old.start()
            with ThreadPoolExecutor(max_workers=16) as pool:
                list(pool.map(lambda n: custom.create_namespaced_custom_object(
                    GROUP, VERSION, NAMESPACE, PLURAL, ftj_manifest(n)), names))  # fmt: skip

            def all_running() -> bool:
                items = custom.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL)["items"]
                return sum(1 for i in items if (i.get("status") or {}).get("phase") == "Running") == len(names)

            wait_until(all_running, timeout=900, what="every FineTuneJob Running", interval=2)
            old.stop()
            console.print(f"{args.jobs} FineTuneJobs Running; measuring the log path for {args.seconds:.0f}s")
            log_path = run_log_path(kubeconfig=plane.kubeconfig_path, tree=tree, workdir=workdir, seconds=args.seconds)
            console.print(f"measuring pushed reports for {args.seconds:.0f}s")
            push = run_push(api=api, kubeconfig=kubeconfig, workdir=workdir, names=names, seconds=args.seconds)
    finally:
        plane.stop()
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=False)
        shutil.rmtree(workdir, ignore_errors=True)
    table = Table(title=f"{args.jobs} running FineTuneJobs, {args.seconds:.0f} s windows")
    table.add_column("")
    table.add_column("log path (poll every 30 s)", justify="right")
    table.add_column("push (a report a second)", justify="right")
    table.add_row("progress updates per job per minute", "2", f"{60 * push.accepted_per_second / args.jobs:.1f}")
    table.add_row("reports accepted per second", "", f"{push.accepted_per_second:.1f}")
    table.add_row("report latency p50 / p99", "", f"{push.latency_p50_ms:.1f} / {push.latency_p99_ms:.1f} ms")
    table.add_row(f"report latency p99 after {WARM_UP_SECONDS:.0f} s", "", f"{push.steady_latency_p99_ms:.1f} ms")
    table.add_row("failed reports", "", str(push.failed))
    table.add_row(
        "operator API requests per second",
        f"{log_path.api_requests_per_second:.2f} ({log_path.log_reads_per_second:.2f} pods/log)",
        f"{push.api_requests_per_second:.2f}",
    )
    table.add_row("status writes per second", "", f"{push.status_writes_per_second:.2f}")
    table.add_row("operator CPU (cores)", f"{log_path.cpu_cores:.3f}", f"{push.cpu_cores:.3f}")
    table.add_row("operator peak RSS", "", f"{push.peak_rss_mib:.1f} MiB")
    console.print(table)
    if push.api_requests_per_second > 0:
        ratio = log_path.api_requests_per_second / push.api_requests_per_second
        console.print(f"API requests per second, log path / push: {ratio:.2f}x")
    if args.json is not None:
        args.json.write_text(
            json.dumps({"jobs": args.jobs, "log_path": asdict(log_path), "push": asdict(push)}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
