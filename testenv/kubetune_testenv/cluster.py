"""A real Kubernetes control plane on loopback: etcd, kube-apiserver, controller-manager, scheduler, kwok.

Nodes are fake (kwok plays kubelet from ``stages.yaml``); everything else is the upstream code, so
RBAC, admission, CEL validation, the Job controller, garbage collection and scheduling are real.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import certs, hostnet, kubeconfig, processes, stages
from .mounts import unmount_all
from .nodes import DEFAULT_POOLS, KWOK_NODE_ANNOTATION, KWOK_NODE_ANNOTATION_VALUE, NodePool, all_node_manifests
from .versions import Binaries, binaries

if TYPE_CHECKING:  # the kubernetes client is imported lazily: `build` must work without it
    from kubernetes.client import ApiClient

# Service ClusterIPs; kube-proxy on a real node routes them. The first one is the kubernetes Service.
SERVICE_CIDR = "10.0.0.0/24"
KUBERNETES_SERVICE_IP = "10.0.0.1"
# Pod addresses kwok hands out on the fake nodes; nothing routes them, they only have to be valid.
POD_CIDR = "10.244.0.0/16"
# The fake nodes' InternalIP. The apiserver dials a node's InternalIP for pods/log; on loopback with no
# kubelet listening that fails at once (connection refused) instead of waiting out a TCP timeout.
FAKE_NODE_IP = "127.0.0.2"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
KUBECONFIG_ENV = "KUBETUNE_TEST_KUBECONFIG"
WORKDIR_PREFIX = "kubetune-testenv-"
OWNER_FILE = "owner.pid"  # pid of the session that owns a work dir, for cleaning up after SIGKILL


class BinariesMissingError(RuntimeError):
    pass


def new_api_client(kubeconfig_path: Path) -> ApiClient:
    """An ``ApiClient`` for the current context of ``kubeconfig_path``."""
    from kubernetes import client, config

    configuration = client.Configuration()
    config.load_kube_config(  # type: ignore[no-untyped-call]
        config_file=str(kubeconfig_path), client_configuration=configuration, persist_config=False
    )
    return client.ApiClient(configuration)


@dataclass(frozen=True)
class Settings:
    """Start-up settings of a local control plane."""

    pools: tuple[NodePool, ...] = DEFAULT_POOLS
    # Start-up takes 5-6 s on 2 cores; generous because CI machines are shared and noisy.
    startup_timeout_s: float = 120.0
    # How long a pod without kubetune.test/run-for runs before it exits.
    default_run_for_ms: int = stages.DEFAULT_RUN_FOR_MS
    # Keep the work dir (logs, etcd data) after stop, for debugging.
    keep_workdir: bool = False
    # More kube-apiserver flags, after ours (the last of a repeated flag wins); the operator benchmark
    # turns on an audit log with them.
    apiserver_args: tuple[str, ...] = ()


class Cluster:
    """What tests need from any cluster: a kubeconfig, API clients, ServiceAccount kubeconfigs."""

    def __init__(self, kubeconfig_path: Path, scratch_dir: Path) -> None:
        self.kubeconfig_path = kubeconfig_path
        self._scratch = scratch_dir

    def api_client(self) -> ApiClient:
        """A new ``kubernetes.client.ApiClient`` authenticated as the admin of the cluster."""
        return new_api_client(self.kubeconfig_path)

    def sa_kubeconfig(self, namespace: str, name: str, *, expiration_seconds: int = 3600) -> Path:
        """Kubeconfig authenticating as ServiceAccount ``namespace/name`` via a TokenRequest token."""
        from kubernetes import client

        request = client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=expiration_seconds)
        )
        with self.api_client() as api:
            response = client.CoreV1Api(api).create_namespaced_service_account_token(name, namespace, request)
        if response.status is None or not response.status.token:
            raise RuntimeError(f"TokenRequest for {namespace}/{name} returned no token")
        config = kubeconfig.token_kubeconfig(
            base=kubeconfig.read(self.kubeconfig_path),
            base_dir=self.kubeconfig_path.parent,
            user=f"system:serviceaccount:{namespace}:{name}",
            token=response.status.token,
        )
        return kubeconfig.write(config, self._scratch / "kubeconfigs" / f"sa-{namespace}-{name}.yaml")

    def sa_api_client(self, namespace: str, name: str) -> ApiClient:
        """A new ``ApiClient`` authenticated as ServiceAccount ``namespace/name``."""
        return new_api_client(self.sa_kubeconfig(namespace, name))


class ExistingCluster(Cluster):
    """A cluster someone else runs, reached through ``$KUBETUNE_TEST_KUBECONFIG``."""

    @classmethod
    def from_env(cls) -> ExistingCluster | None:
        path = os.environ.get(KUBECONFIG_ENV)
        if not path:
            return None
        scratch = Path(tempfile.mkdtemp(prefix=WORKDIR_PREFIX))
        processes.register_cleanup(lambda: shutil.rmtree(scratch, ignore_errors=True))
        return cls(Path(path), scratch)


def remove_stale_workdirs(parent: Path | None = None) -> list[Path]:
    """Delete work dirs left by sessions that were SIGKILLed (their owner pid no longer exists)."""
    removed = []
    for directory in Path(parent or tempfile.gettempdir()).glob(f"{WORKDIR_PREFIX}*"):
        try:
            owner = int((directory / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue
        if owner != os.getpid() and not Path(f"/proc/{owner}").exists():
            # A real node's pods leave mounts here (container root filesystems, volumes, network
            # namespaces); removing files through them would reach into what they mount.
            unmount_all((directory,))
            shutil.rmtree(directory, ignore_errors=True)
            removed.append(directory)
    return removed


class ControlPlane(Cluster):
    """Start with ``start()`` (or ``with ControlPlane() as cp``); ``stop()`` removes every process and file."""

    def __init__(
        self, *, settings: Settings | None = None, bins: Binaries | None = None, workdir: Path | None = None
    ) -> None:
        self.settings = settings or Settings()
        self.binaries = bins or binaries()
        self._own_workdir = workdir is None
        if workdir is None:
            remove_stale_workdirs()
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix=WORKDIR_PREFIX))
        (self.workdir / OWNER_FILE).write_text(str(os.getpid()))
        super().__init__(self.workdir / "admin.kubeconfig", self.workdir)
        self.server = ""
        # Pods on a real node reach the apiserver through this address (kube-proxy forwards the
        # kubernetes Service there); tests and host processes use loopback.
        self.host_ip = hostnet.primary_ipv4()
        self.pki: certs.Pki | None = None
        self._processes: list[processes.ManagedProcess] = []
        processes.register_cleanup(self._remove_workdir)

    # -- lifecycle -----------------------------------------------------------------------------------

    def start(self) -> ControlPlane:
        started = time.monotonic()
        try:
            missing = self.binaries.missing()
            if missing:
                raise BinariesMissingError(
                    "control plane binaries are missing: "
                    + ", ".join(str(path) for path in missing)
                    + "\nBuild them once (cold build takes minutes): testenv/build-binaries.sh "
                    "or python -m kubetune_testenv build"
                )
            pki = certs.create_pki(
                self.workdir / "pki", extra_sans=(f"IP:{KUBERNETES_SERVICE_IP}", f"IP:{self.host_ip}")
            )
            self.pki = pki
            etcd_url = self._start_etcd()
            self._start_apiserver(pki, etcd_url)
            kubeconfig.write(
                kubeconfig.admin_kubeconfig(
                    server=self.server, ca_cert=pki.ca_cert, client_cert=pki.admin_cert, client_key=pki.admin_key
                ),
                self.kubeconfig_path,
            )
            self._start_controllers(pki)
            self._create_nodes()
            self._wait_for_cluster()
        except BaseException:
            self.stop()
            raise
        print(
            f"kubetune_testenv: control plane up in {time.monotonic() - started:.1f}s, "
            f"kubeconfig {self.kubeconfig_path}",
            file=sys.stderr,
        )
        return self

    def stop(self) -> None:
        for process in reversed(self._processes):
            process.stop()
        self._processes.clear()
        self._remove_workdir()

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _remove_workdir(self) -> None:
        if self._own_workdir and not self.settings.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # -- components ----------------------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str]) -> processes.ManagedProcess:
        process = processes.ManagedProcess(name, argv, log_path=self.workdir / "logs" / f"{name}.log")
        self._processes.append(process)
        return process

    def _start_etcd(self) -> str:
        client_port, peer_port = processes.free_port(), processes.free_port()
        client_url, peer_url = f"http://127.0.0.1:{client_port}", f"http://127.0.0.1:{peer_port}"
        etcd = self._spawn(
            "etcd",
            [
                str(self.binaries.etcd),
                "--name=kubetune-test",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={client_url}",
                f"--advertise-client-urls={client_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=kubetune-test={peer_url}",
                "--unsafe-no-fsync=true",  # test data is thrown away; fsync only costs time
                "--log-level=warn",
            ],
        )

        def healthy() -> bool:
            with urllib.request.urlopen(f"{client_url}/health", timeout=2) as response:
                return bool(json.load(response).get("health") == "true")

        processes.wait_until(healthy, timeout=self.settings.startup_timeout_s, what="etcd /health", process=etcd)
        return client_url

    def _start_apiserver(self, pki: certs.Pki, etcd_url: str) -> None:
        port = processes.free_port()
        self.server = f"https://127.0.0.1:{port}"
        apiserver = self._spawn(
            "kube-apiserver",
            [
                str(self.binaries.kube),
                "apiserver",
                f"--etcd-servers={etcd_url}",
                # All addresses: loopback for tests, the host's address for pods on a real node.
                "--bind-address=0.0.0.0",
                f"--advertise-address={self.host_ip}",
                f"--secure-port={port}",
                f"--tls-cert-file={pki.serving_cert}",
                f"--tls-private-key-file={pki.serving_key}",
                f"--client-ca-file={pki.ca_cert}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                f"--service-account-key-file={pki.service_account_pub}",
                f"--service-account-signing-key-file={pki.service_account_key}",
                "--authorization-mode=Node,RBAC",
                "--allow-privileged=true",
                # The kubernetes Service's endpoint is the advertised address; loopback is not allowed
                # there, and without a routable host address no pod could reach the apiserver anyway.
                *(["--endpoint-reconciler-type=none"] if self.host_ip.startswith("127.") else []),
                # kubectl logs/exec: the apiserver dials the kubelet at its InternalIP (nodes have no DNS
                # name here), checks its serving certificate against our CA and presents this client cert.
                "--kubelet-preferred-address-types=InternalIP",
                f"--kubelet-certificate-authority={pki.ca_cert}",
                f"--kubelet-client-certificate={pki.kubelet_client_cert}",
                f"--kubelet-client-key={pki.kubelet_client_key}",
                "--profiling=false",
                *self.settings.apiserver_args,
            ],
        )
        self._wait_for_apiserver(apiserver)

    def _wait_for_apiserver(self, apiserver: processes.ManagedProcess) -> None:
        assert self.pki is not None
        context = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        context.load_cert_chain(str(self.pki.admin_cert), str(self.pki.admin_key))

        def ready() -> bool:
            with urllib.request.urlopen(f"{self.server}/readyz", timeout=5, context=context) as response:
                return bool(response.status == 200)

        processes.wait_until(
            ready,
            timeout=self.settings.startup_timeout_s,
            what="kube-apiserver /readyz",
            process=apiserver,
            interval=0.5,
        )

    def _start_controllers(self, pki: certs.Pki) -> None:
        admin = str(self.kubeconfig_path)
        self._spawn(
            "kube-controller-manager",
            [
                str(self.binaries.kube),
                "controller-manager",
                f"--kubeconfig={admin}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                "--secure-port=0",
                f"--service-account-private-key-file={pki.service_account_key}",
                f"--root-ca-file={pki.ca_cert}",
                "--use-service-account-credentials=false",
            ],
        )
        self._spawn(
            "kube-scheduler",
            [
                str(self.binaries.kube),
                "scheduler",
                f"--kubeconfig={admin}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                "--secure-port=0",
            ],
        )
        stage_file = stages.write_stages(
            self.workdir / "kwok-stages.yaml", default_run_for_ms=self.settings.default_run_for_ms
        )
        self._spawn(
            "kwok",
            [
                str(self.binaries.kwok),
                f"--kubeconfig={admin}",
                f"--config={stage_file}",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}={KWOK_NODE_ANNOTATION_VALUE}",
                f"--cidr={POD_CIDR}",
                f"--node-ip={FAKE_NODE_IP}",
                "--node-lease-duration-seconds=40",  # kwok renews each node's Lease, as a kubelet does
            ],
        )

    def _create_nodes(self) -> None:
        from kubernetes import client

        with self.api_client() as api:
            core = client.CoreV1Api(api)
            for manifest in all_node_manifests(self.settings.pools):
                core.create_node(client.V1Node.model_validate(manifest))

    def _wait_for_cluster(self) -> None:
        from kubernetes import client

        expected = {manifest["metadata"]["name"] for manifest in all_node_manifests(self.settings.pools)}
        with self.api_client() as api:
            core = client.CoreV1Api(api)

            def usable(node: client.V1Node) -> bool:
                conditions = node.status.conditions if node.status else None
                taints = node.spec.taints if node.spec else None
                return any(c.type == "Ready" and c.status == "True" for c in conditions or []) and not any(
                    t.key.startswith("node.kubernetes.io/") for t in taints or []
                )

            def nodes_ready() -> bool:
                ready = {node.metadata.name for node in core.list_node().items if node.metadata and usable(node)}
                return expected <= ready

            def default_service_account() -> bool:
                core.read_namespaced_service_account("default", "default")
                return True

            self._wait(nodes_ready, "fake nodes Ready and untainted (kwok, node lifecycle controller)")
            self._wait(default_service_account, "the default ServiceAccount (kube-controller-manager)")

    def _wait(self, check: Any, what: str) -> None:
        try:
            processes.wait_until(check, timeout=self.settings.startup_timeout_s, what=what, interval=0.5)
        except TimeoutError as error:
            dead = [p for p in self._processes if not p.alive()]
            details = "".join(f"\n{p.name} exited ({p.popen.returncode}):\n{p.log_tail()}" for p in dead)
            raise TimeoutError(f"{error}{details}\nlogs: {self.workdir / 'logs'}") from None

    # -- conveniences --------------------------------------------------------------------------------

    def kubectl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run the bundled kubectl against this cluster."""
        return subprocess.run(
            [str(self.binaries.kube), "kubectl", f"--kubeconfig={self.kubeconfig_path}", *args],
            capture_output=True,
            text=True,
            check=check,
        )

    def log_path(self, component: str) -> Path:
        return self.workdir / "logs" / f"{component}.log"

    def restart_apiserver(self, *, compact: bool = True) -> None:
        """Stop kube-apiserver (SIGTERM) and start it again on the same port: every client's watch breaks.

        With ``compact``, etcd's history is compacted meanwhile, so a watch resumed from any resourceVersion
        seen before the restart gets 410 Gone and must list again (what a long outage does in production).
        """
        (old,) = [p for p in self._processes if p.name == "kube-apiserver"]
        old.stop()
        self._processes.remove(old)
        if compact:
            (etcd_url,) = [a.split("=", 1)[1] for a in old.argv if a.startswith("--etcd-servers=")]
            self._compact_etcd(etcd_url)
        self._wait_for_apiserver(self._spawn("kube-apiserver", old.argv))

    @staticmethod
    def _compact_etcd(etcd_url: str) -> None:
        """Compact etcd to its current revision through its JSON gateway (no etcdctl needed)."""

        def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
            request = urllib.request.Request(
                f"{etcd_url}{path}", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(request, timeout=10) as response:
                answer: dict[str, Any] = json.load(response)
                return answer

        revision = int(post("/v3/kv/range", {"key": "AA=="})["header"]["revision"])  # any key: the header
        post("/v3/kv/compaction", {"revision": revision, "physical": True})

    def dead_components(self) -> list[str]:
        """Names of components whose process has exited (empty while the control plane is healthy)."""
        return [process.name for process in self._processes if not process.alive()]
