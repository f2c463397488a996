"""A real node beside the kwok GPU nodes: containerd + runc, a CNI bridge, kubelet, kube-proxy, CoreDNS.

Pods scheduled here run for real: images are imported into containerd, containers start under runc,
logs reach ``kubectl logs``, SIGTERM reaches the process, pods resolve each other through cluster DNS
and reach the apiserver through the ``kubernetes`` Service. It needs root on a Linux host (cgroups,
mounts, network namespaces, iptables), so it is started only when a test asks for it.

One real node per machine (a lock under the cache dir): its bridge, cgroup root, iptables chains and
DNS port are machine-wide. Teardown leaves no container, mount, network namespace, cgroup, iptables
chain or process behind, also after a crash: the next start sweeps what a killed session left.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

import yaml

from . import certs, images, kubeconfig, node_config, processes
from .host_state import (
    CGROUP_MOUNT,
    SYSCTLS,
    create_cgroups,
    delete_link,
    kill_cgroup_processes,
    kube_proxy_cleanup,
    read_sysctls,
    remove_cgroups,
    run,
    shim_pids,
    sweep,
    write_sysctls,
)
from .mounts import unmount_all
from .node_config import NodeLayout
from .versions import cache_root

if TYPE_CHECKING:
    from .cluster import ControlPlane

CNI_BIN_DIR = Path("/usr/lib/cni")  # Debian's containernetworking-plugins
REQUIRED_COMMANDS = {
    "containerd": "containerd",
    "containerd-shim-runc-v2": "containerd",
    "ctr": "containerd",
    "runc": "runc",
    "iptables": "iptables",
    "ip": "iproute2",
}
CONTAINERD_NAMESPACE = "k8s.io"  # the CRI plugin's namespace: what the kubelet sees


class NodeUnavailableError(RuntimeError):
    """The host cannot run a real node (not root, a package missing); the message says what to install."""


class NodeBusyError(RuntimeError):
    """Another session on this machine runs the real node."""


@dataclass(frozen=True)
class NodeSettings:
    name: str = "kubetune-cpu-0"
    # Distinct from kwok's fake pod range (10.244.0.0/16), so an address says which kind of node it is.
    pod_subnet: str = "10.245.0.0/24"
    bridge: str = "kt-cni0"
    cgroup_root: str = "/kubetune-node"
    dns_port: int = 53  # the kubelet's clusterDNS has no port field: resolv.conf means port 53
    # kubelet registration, containerd and CNI start-up: ~10 s here; CI machines are noisy.
    startup_timeout_s: float = 180.0


def preflight() -> None:
    """Raise NodeUnavailableError naming what is missing."""
    if os.geteuid() != 0:
        raise NodeUnavailableError("the real node needs root (cgroups, mounts, network namespaces, iptables)")
    missing = sorted({package for command, package in REQUIRED_COMMANDS.items() if shutil.which(command) is None})
    if not (CNI_BIN_DIR / "bridge").exists():
        missing.append("containernetworking-plugins")
    if missing:
        raise NodeUnavailableError(f"the real node needs Debian packages: apt-get install {' '.join(missing)}")
    if not (CGROUP_MOUNT / "memory").is_dir() and not (CGROUP_MOUNT / "cgroup.controllers").exists():
        raise NodeUnavailableError(f"no cgroup hierarchy mounted at {CGROUP_MOUNT}")


def node_state_dir() -> Path:
    """Machine-wide state of the real node: the lock and containerd's content store (kept for reuse)."""
    return cache_root() / "node"


def take_node_lock() -> IO[str]:
    """The machine's real-node lock, held until the returned handle is closed; NodeBusyError if taken."""
    lock_path = node_state_dir() / "node.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(lock_path, "a+")  # noqa: SIM115 - held by the caller, closed when it lets go of the node
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise NodeBusyError(f"another session (pid {holder}) runs the real node on this machine") from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def sweep_dead_sessions(kube: Path, settings: NodeSettings | None = None) -> None:
    """Sweep what killed sessions' nodes left on this machine, as the next start would; NodeBusyError if a
    live session holds the node."""
    settings = settings or NodeSettings()
    with take_node_lock():
        sweep(
            cgroup_root=settings.cgroup_root,
            bridge=settings.bridge,
            containerd_root=node_state_dir() / "containerd",
            kube=kube,
        )


class RealNode:
    """A kubelet node of ``plane``; ``start()``, ``import_image()``, ``stop()``."""

    def __init__(
        self,
        plane: ControlPlane,
        *,
        pause_image: str,
        image_archives: tuple[Path, ...] = (),
        settings: NodeSettings | None = None,
    ) -> None:
        self.plane = plane
        self.image_archives = image_archives
        self.settings = settings or NodeSettings()
        self.pause_image = pause_image
        workdir = plane.workdir / "node"
        self.layout = NodeLayout(
            name=self.settings.name,
            node_ip=plane.host_ip,
            workdir=workdir,
            containerd_root=node_state_dir() / "containerd",
            pod_subnet=self.settings.pod_subnet,
            bridge=self.settings.bridge,
            cgroup_root=self.settings.cgroup_root,
            kubelet_port=processes.free_port(),
            dns_port=self.settings.dns_port,
        )
        self._processes: list[processes.ManagedProcess] = []
        self._lock: IO[str] | None = None
        self._saved_sysctls: dict[str, str] = {}
        self._proxy_config: Path | None = None
        self._node_pki_cache: certs.NodePki | None = None

    @property
    def name(self) -> str:
        return self.layout.name

    @property
    def socket(self) -> Path:
        return self.layout.containerd_socket

    # -- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> RealNode:
        started = time.monotonic()
        preflight()
        if self.plane.pki is None or self.plane.host_ip.startswith("127."):
            raise NodeUnavailableError("the real node needs a control plane reachable on a non-loopback address")
        self._acquire_lock()
        processes.register_cleanup(self.stop)
        try:
            sweep(
                cgroup_root=self.layout.cgroup_root,
                bridge=self.layout.bridge,
                containerd_root=self.layout.containerd_root,
                kube=self.plane.binaries.kube,
            )
            self._saved_sysctls = read_sysctls(SYSCTLS)
            write_sysctls(SYSCTLS)
            create_cgroups(self.layout.cgroup_root)
            self._start_containerd()
            self._start_coredns()
            self._start_kubelet()
            self._wait_ready()
            # kube-proxy reads its node's addresses from the Node object: start it once the kubelet registered.
            self._start_kube_proxy()
        except BaseException:
            self.stop()
            raise
        print(f"kubetune_testenv: real node {self.name} Ready in {time.monotonic() - started:.1f}s", file=sys.stderr)
        return self

    def stop(self) -> None:
        """Stop everything and remove every trace; idempotent, safe after a partial start."""
        processes.unregister_cleanup(self.stop)
        kubelet = [p for p in self._processes if p.name == "kubelet"]
        for process in kubelet:  # first, so it restarts nothing while containers are removed
            process.stop()
        with contextlib.suppress(Exception):
            kill_cgroup_processes(self.layout.cgroup_root)
        for process in reversed(self._processes):
            process.stop()
        self._processes.clear()
        for pid in shim_pids(str(self.layout.workdir)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self._proxy_config is not None:
            kube_proxy_cleanup(self.plane.binaries.kube)
        unmount_all(self.layout.owned_paths())
        delete_link(self.layout.bridge)
        remove_cgroups(self.layout.cgroup_root)
        if self._saved_sysctls:
            write_sysctls(self._saved_sysctls)
            self._saved_sysctls = {}
        shutil.rmtree(self.layout.workdir, ignore_errors=True)
        self._release_lock()

    def __enter__(self) -> RealNode:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- images ----------------------------------------------------------------------------------------

    def ctr(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return run(["ctr", "--address", str(self.socket), "--namespace", CONTAINERD_NAMESPACE, *args], timeout=timeout)

    def image_names(self) -> set[str]:
        return set(self.ctr("images", "list", "--quiet").stdout.split())

    def image_digests(self) -> dict[str, str]:
        """Image name -> manifest digest, as containerd lists them."""
        digests = {}
        for line in self.ctr("images", "list").stdout.splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 3:
                digests[fields[0]] = fields[2]
        return digests

    def remove_superseded_images(self, current: dict[str, str]) -> list[str]:
        """Remove the earlier builds of the images in ``current`` (name -> digest), so they do not pile up.

        containerd's store is kept between sessions and an image rebuilt after a source change takes
        gigabytes; the CRI also keeps an alias by image ID (``sha256:...``) for each, which holds the old
        content until it is removed too. ``--sync`` waits for the garbage collector to free it.
        """
        stale = superseded_images(self.image_digests(), current=current)
        if stale:
            self.ctr("images", "remove", "--sync", *stale)
        return stale

    def import_image(self, archive: Path) -> bool:
        """Import an OCI archive unless containerd already has its image; True when it imported.

        The kubelet then finds the image without a registry (pods use imagePullPolicy IfNotPresent or
        Never). containerd's store is kept between sessions, so an unchanged image costs nothing.
        """
        refs = images.archive_manifests(archive)
        have = self.image_digests()
        if refs and all(have.get(name) == digest for name, digest in refs.items()):
            return False
        images.import_image(archive, containerd_address=self.socket, namespace=CONTAINERD_NAMESPACE)
        return True

    # -- components ------------------------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str]) -> processes.ManagedProcess:
        process = processes.ManagedProcess(name, argv, log_path=self.log_path(name))
        self._processes.append(process)
        return process

    def log_path(self, component: str) -> Path:
        return self.layout.workdir / "logs" / f"{component}.log"

    def dead_components(self) -> list[str]:
        """Names of the node's processes that have exited (empty while the node is healthy)."""
        return [process.name for process in self._processes if not process.alive()]

    def _acquire_lock(self) -> None:
        self._lock = take_node_lock()

    def _release_lock(self) -> None:
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    def _start_containerd(self) -> None:
        layout = self.layout
        for directory in (layout.workdir / "logs", layout.cni_conf_dir, layout.containerd_root, layout.pod_logs):
            directory.mkdir(parents=True, exist_ok=True)
        (layout.cni_conf_dir / "10-kubetune.conflist").write_text(json.dumps(node_config.cni_conflist(layout)))
        config = layout.workdir / "containerd.toml"
        config.write_text(node_config.containerd_config(layout, pause_image=self.pause_image, cni_bin_dir=CNI_BIN_DIR))
        process = self._spawn("containerd", ["containerd", "--config", str(config), "--log-level", "warn"])
        processes.wait_until(
            lambda: layout.containerd_socket.exists(),
            timeout=self.settings.startup_timeout_s,
            what="containerd's socket",
            process=process,
        )
        self._remove_leftover_containers()
        wanted: dict[str, str] = {}
        for archive in self.image_archives:
            self.import_image(archive)
            wanted.update(images.archive_manifests(archive))
        self.remove_superseded_images(wanted)
        if self.pause_image not in self.image_names():
            raise NodeUnavailableError(
                f"the pause image {self.pause_image} is not in the node's containerd; import it first "
                "(python -m kubetune_testenv images builds it)"
            )

    def _remove_leftover_containers(self) -> None:
        """Containers recorded in the kept content store by a session that was killed."""
        for task in self.ctr("tasks", "list", "--quiet").stdout.split():
            self.ctr("tasks", "kill", "--signal", "SIGKILL", task)
        for container in self.ctr("containers", "list", "--quiet").stdout.split():
            with contextlib.suppress(RuntimeError):
                self.ctr("tasks", "delete", "--force", container)
            self.ctr("containers", "delete", container)

    def _admin_kubeconfig_for(self, name: str, *, cert: Path, key: Path) -> Path:
        assert self.plane.pki is not None
        config = kubeconfig.admin_kubeconfig(
            server=self.plane.server, ca_cert=self.plane.pki.ca_cert, client_cert=cert, client_key=key
        )
        return kubeconfig.write(config, self.layout.workdir / f"{name}.kubeconfig")

    def _start_coredns(self) -> None:
        health, ready = processes.free_port(), processes.free_port()
        corefile = self.layout.workdir / "Corefile"
        corefile.write_text(
            node_config.corefile(
                self.layout, kubeconfig=self.plane.kubeconfig_path, health_port=health, ready_port=ready
            )
        )
        process = self._spawn("coredns", [str(self.plane.binaries.coredns), "-conf", str(corefile)])

        def is_ready() -> bool:
            with urllib.request.urlopen(f"http://127.0.0.1:{ready}/ready", timeout=2) as response:
                return bool(response.status == 200)

        processes.wait_until(
            is_ready, timeout=self.settings.startup_timeout_s, what="CoreDNS /ready", process=process, interval=0.5
        )

    def _start_kube_proxy(self) -> None:
        assert self.plane.pki is not None
        node_pki = self._node_pki()
        proxy_kubeconfig = self._admin_kubeconfig_for("kube-proxy", cert=node_pki.proxy_cert, key=node_pki.proxy_key)
        healthz = processes.free_port()
        config = self.layout.workdir / "kube-proxy.yaml"
        config.write_text(
            yaml.safe_dump(
                node_config.kube_proxy_config(
                    self.layout, kubeconfig=proxy_kubeconfig, healthz_port=healthz, metrics_port=processes.free_port()
                )
            )
        )
        self._proxy_config = config
        process = self._spawn("kube-proxy", [str(self.plane.binaries.kube), "proxy", f"--config={config}"])

        def healthy() -> bool:
            with urllib.request.urlopen(f"http://127.0.0.1:{healthz}/healthz", timeout=2) as response:
                return bool(response.status == 200)

        processes.wait_until(
            healthy, timeout=self.settings.startup_timeout_s, what="kube-proxy /healthz", process=process, interval=0.5
        )

    def _node_pki(self) -> certs.NodePki:
        if self._node_pki_cache is None:
            assert self.plane.pki is not None
            self._node_pki_cache = certs.create_node_pki(
                self.plane.pki.ca_cert.parent, node_name=self.name, node_ip=self.layout.node_ip
            )
        return self._node_pki_cache

    def _start_kubelet(self) -> None:
        assert self.plane.pki is not None
        node_pki = self._node_pki()
        layout = self.layout
        for directory in (layout.kubelet_root, layout.static_pods):
            directory.mkdir(parents=True, exist_ok=True)
        kubelet_kubeconfig = self._admin_kubeconfig_for(
            "kubelet", cert=node_pki.kubelet_client_cert, key=node_pki.kubelet_client_key
        )
        config = layout.workdir / "kubelet.yaml"
        config.write_text(
            yaml.safe_dump(
                node_config.kubelet_config(
                    layout,
                    ca_cert=self.plane.pki.ca_cert,
                    serving_cert=node_pki.kubelet_serving_cert,
                    serving_key=node_pki.kubelet_serving_key,
                )
            )
        )
        self._spawn(
            "kubelet",
            [
                str(self.plane.binaries.kube),
                "kubelet",
                f"--config={config}",
                f"--kubeconfig={kubelet_kubeconfig}",
                f"--root-dir={layout.kubelet_root}",
                f"--cert-dir={layout.workdir / 'kubelet-pki'}",
                f"--hostname-override={layout.name}",
                f"--node-ip={layout.node_ip}",
                f"--node-labels={node_config.NODE_ROLE_KEY}={node_config.NODE_ROLE_VALUE}",
                "--v=1",
            ],
        )

    def _wait_ready(self) -> None:
        from kubernetes import client

        kubelet = next(p for p in self._processes if p.name == "kubelet")
        with self.plane.api_client() as api:
            core = client.CoreV1Api(api)

            def ready() -> bool:
                node = core.read_node(self.name)
                conditions = (node.status.conditions if node.status else None) or []
                taints = (node.spec.taints if node.spec else None) or []
                return any(c.type == "Ready" and c.status == "True" for c in conditions) and not any(
                    t.key.startswith("node.kubernetes.io/") for t in taints
                )

            processes.wait_until(
                ready,
                timeout=self.settings.startup_timeout_s,
                what=f"node {self.name} Ready (kubelet, containerd, CNI)",
                process=kubelet,
                interval=0.5,
            )


def superseded_images(listed: dict[str, str], *, current: dict[str, str]) -> list[str]:
    """Images to remove from ``listed`` (name -> digest): other digests of a name in ``current``, and the
    CRI's ``sha256:`` aliases of digests no named image keeps."""
    named = {name: digest for name, digest in listed.items() if not name.startswith("sha256:")}
    stale = [name for name, digest in named.items() if name in current and digest != current[name]]
    kept_digests = {digest for name, digest in named.items() if name not in stale}
    aliases = [name for name, digest in listed.items() if name.startswith("sha256:") and digest not in kept_digests]
    return sorted(stale + aliases)
