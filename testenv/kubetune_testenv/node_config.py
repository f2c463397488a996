"""Pure rendering of the real node's configuration files: containerd, CNI, kubelet, kube-proxy, CoreDNS.

Nothing here touches the machine; ``real_node`` writes these files and starts the processes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The real node carries this label and a NoSchedule taint with the same key and value, so only pods
# that select and tolerate it land there; the kwok GPU nodes and the operator's GPU scheduling are
# untouched. A FineTuneJob reaches it through spec.resources.nodeSelector and tolerations.
NODE_ROLE_KEY = "kubetune.io/node"
NODE_ROLE_VALUE = "cpu"
CLUSTER_DOMAIN = "cluster.local"
CNI_NETWORK_NAME = "kubetune-node"


@dataclass(frozen=True)
class NodeLayout:
    """Where one real node keeps its state, and the addresses it uses."""

    name: str
    node_ip: str  # the host's address: kubelet, CoreDNS, and the apiserver as pods see it
    workdir: Path  # per session: sockets, state, kubelet root, logs, configs
    containerd_root: Path  # content store and unpacked images; kept between sessions (imports cost minutes)
    pod_subnet: str
    bridge: str
    cgroup_root: str  # e.g. /kubetune-node: every pod's cgroup lives below it, in every hierarchy
    kubelet_port: int
    dns_port: int

    @property
    def containerd_state(self) -> Path:
        return self.workdir / "containerd-state"

    @property
    def containerd_socket(self) -> Path:
        return self.workdir / "containerd.sock"

    @property
    def cni_conf_dir(self) -> Path:
        return self.workdir / "cni" / "net.d"

    @property
    def cni_ipam_dir(self) -> Path:
        return self.workdir / "cni" / "ipam"

    @property
    def kubelet_root(self) -> Path:
        return self.workdir / "kubelet"

    @property
    def pod_logs(self) -> Path:
        return self.workdir / "pod-logs"

    @property
    def static_pods(self) -> Path:
        return self.workdir / "static-pods"

    def owned_paths(self) -> tuple[Path, ...]:
        """Directories under which every mount of this node lives (the teardown unmounts below them)."""
        return (self.workdir, self.containerd_root)


def containerd_config(layout: NodeLayout, *, pause_image: str, cni_bin_dir: Path) -> str:
    """containerd 1.6 configuration (format version 2) for the CRI plugin the kubelet talks to."""
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return "\n".join(
        [
            "version = 2",
            f"root = {json.dumps(str(layout.containerd_root))}",
            f"state = {json.dumps(str(layout.containerd_state))}",
            # Plugins that only log errors on this kind of host.
            'disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",'
            ' "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]',
            "",
            "[grpc]",
            f"  address = {json.dumps(str(layout.containerd_socket))}",
            "",
            f"[{cri}]",
            f"  sandbox_image = {json.dumps(pause_image)}",
            # The CRI asks for oom_score_adj -998 on sandboxes; a VM that forbids lowering it even for root
            # makes runc fail ("can't get final child's PID from pipe"). Never go below containerd's own.
            "  restrict_oom_score_adj = true",
            # Network namespaces under the state dir, not /var/run/netns: one place to unmount on teardown.
            "  netns_mounts_under_state_dir = true",
            "  enable_selinux = false",
            f"  [{cri}.containerd]",
            '    snapshotter = "overlayfs"',
            '    default_runtime_name = "runc"',
            f"    [{cri}.containerd.runtimes.runc]",
            '      runtime_type = "io.containerd.runc.v2"',
            f"      [{cri}.containerd.runtimes.runc.options]",
            "        SystemdCgroup = false",
            f"  [{cri}.cni]",
            f"    bin_dir = {json.dumps(str(cni_bin_dir))}",
            f"    conf_dir = {json.dumps(str(layout.cni_conf_dir))}",
            "    max_conf_num = 1",
            "",
        ]
    )


def cni_conflist(layout: NodeLayout) -> dict[str, Any]:
    """A bridge network: every pod gets a veth on ``layout.bridge`` and an address from the pod subnet.

    Pods reach each other across the bridge and the host (apiserver, CoreDNS) through the bridge's
    gateway address. No masquerading: pods need nothing beyond this host.
    """
    return {
        "cniVersion": "1.0.0",
        "name": CNI_NETWORK_NAME,
        "plugins": [
            {
                "type": "bridge",
                "bridge": layout.bridge,
                "isGateway": True,
                "ipMasq": False,
                # A pod that reaches itself through a Service address is sent back over its own port.
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": layout.pod_subnet}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(layout.cni_ipam_dir),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def kubelet_config(layout: NodeLayout, *, ca_cert: Path, serving_cert: Path, serving_key: Path) -> dict[str, Any]:
    """KubeletConfiguration for a node that runs next to a developer's processes, not on a dedicated host."""
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        # This host has cgroup v1; kubelet >= 1.35 refuses it unless told otherwise (KEP-5573).
        "failCgroupV1": False,
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": layout.cgroup_root,
        "containerRuntimeEndpoint": f"unix://{layout.containerd_socket}",
        "address": layout.node_ip,
        "port": layout.kubelet_port,
        "readOnlyPort": 0,
        "healthzPort": 0,
        "tlsCertFile": str(serving_cert),
        "tlsPrivateKeyFile": str(serving_key),
        # The apiserver authenticates with a client certificate from our CA; everything else is refused.
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(ca_cert)},
        },
        "authorization": {"mode": "Webhook"},
        "clusterDomain": CLUSTER_DOMAIN,
        "clusterDNS": [layout.node_ip],
        # No host search domains or nameservers leak into pods: cluster DNS only.
        "resolvConf": "",
        "staticPodPath": str(layout.static_pods),
        "podLogsDir": str(layout.pod_logs),
        "failSwapOn": False,
        # Shares the host with other work: no reservations enforced, no eviction of test pods because a
        # developer's disk is 90% full, no image garbage collection of the locally imported images.
        "enforceNodeAllocatable": [],
        "localStorageCapacityIsolation": False,
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "serializeImagePulls": False,
        "maxPods": 32,
        "registerWithTaints": [{"key": NODE_ROLE_KEY, "value": NODE_ROLE_VALUE, "effect": "NoSchedule"}],
        "rotateCertificates": False,
        "serverTLSBootstrap": False,
        "nodeStatusUpdateFrequency": "5s",
        "shutdownGracePeriod": "0s",
        "protectKernelDefaults": False,
    }


def kube_proxy_config(layout: NodeLayout, *, kubeconfig: Path, healthz_port: int, metrics_port: int) -> dict[str, Any]:
    """iptables-mode kube-proxy that changes no kernel tunables beyond its own chains."""
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": "iptables",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "hostnameOverride": layout.name,
        "clusterCIDR": layout.pod_subnet,
        "detectLocalMode": "ClusterCIDR",
        "bindAddress": layout.node_ip,
        "healthzBindAddress": f"127.0.0.1:{healthz_port}",
        "metricsBindAddress": f"127.0.0.1:{metrics_port}",
        # 0 leaves the host's conntrack table size and timeouts as they are.
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
        },
        # Lowering oom_score_adj is forbidden on this kind of VM; the default (-999) only logs an error.
        "oomScoreAdj": 0,
        "iptables": {"syncPeriod": "30s", "minSyncPeriod": "1s"},
        "nodePortAddresses": [f"{layout.node_ip}/32"],
    }


def corefile(layout: NodeLayout, *, kubeconfig: Path, health_port: int, ready_port: int) -> str:
    """Cluster DNS on the node's address: Service and pod names of ``cluster.local`` and nothing else."""
    return "\n".join(
        [
            f".:{layout.dns_port} {{",
            f"    bind {layout.node_ip}",
            "    errors",
            f"    health 127.0.0.1:{health_port}",
            f"    ready 127.0.0.1:{ready_port}",
            f"    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{",
            f"        kubeconfig {kubeconfig}",
            "        pods insecure",
            "        fallthrough in-addr.arpa ip6.arpa",
            "        ttl 5",
            "    }",
            "    cache 5",
            "}",
            "",
        ]
    )
