"""The real node's configuration files: what the kubelet, containerd, kube-proxy and CoreDNS are told."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from kubetune_testenv import node_config
from kubetune_testenv.node_config import NodeLayout


@pytest.fixture
def layout(tmp_path: Path) -> NodeLayout:
    return NodeLayout(
        name="cpu-0",
        node_ip="192.0.2.7",
        workdir=tmp_path / "node",
        containerd_root=tmp_path / "cache" / "containerd",
        pod_subnet="10.245.0.0/24",
        bridge="kt-test0",
        cgroup_root="/kt-test",
        kubelet_port=10999,
        dns_port=53,
    )


def test_containerd_keeps_every_path_under_the_layout(layout: NodeLayout) -> None:
    config = tomllib.loads(node_config.containerd_config(layout, pause_image="p:1", cni_bin_dir=Path("/cni")))
    assert config["root"] == str(layout.containerd_root)
    assert config["state"] == str(layout.containerd_state)
    assert config["grpc"]["address"] == str(layout.containerd_socket)
    cri = config["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["sandbox_image"] == "p:1"
    assert cri["cni"] == {"bin_dir": "/cni", "conf_dir": str(layout.cni_conf_dir), "max_conf_num": 1}
    # Netns mounts under the state dir: teardown finds them by unmounting below the work dir.
    assert cri["netns_mounts_under_state_dir"] is True
    assert layout.containerd_state.is_relative_to(layout.workdir)


def test_containerd_never_asks_runc_to_lower_oom_score_adj(layout: NodeLayout) -> None:
    config = tomllib.loads(node_config.containerd_config(layout, pause_image="p:1", cni_bin_dir=Path("/cni")))
    assert config["plugins"]["io.containerd.grpc.v1.cri"]["restrict_oom_score_adj"] is True


def test_cni_bridge_hands_out_the_pod_subnet_without_masquerading(layout: NodeLayout) -> None:
    conflist = node_config.cni_conflist(layout)
    bridge = conflist["plugins"][0]
    assert bridge["type"] == "bridge" and bridge["bridge"] == "kt-test0"
    assert bridge["ipMasq"] is False and bridge["isGateway"] is True
    assert bridge["ipam"]["ranges"] == [[{"subnet": "10.245.0.0/24"}]]
    assert Path(bridge["ipam"]["dataDir"]).is_relative_to(layout.workdir)


def test_kubelet_registers_tainted_and_resolves_through_cluster_dns(layout: NodeLayout, tmp_path: Path) -> None:
    config = node_config.kubelet_config(
        layout, ca_cert=tmp_path / "ca.crt", serving_cert=tmp_path / "s.crt", serving_key=tmp_path / "s.key"
    )
    assert config["registerWithTaints"] == [{"key": "kubetune.io/node", "value": "cpu", "effect": "NoSchedule"}]
    assert config["clusterDNS"] == ["192.0.2.7"]
    assert config["clusterDomain"] == "cluster.local"
    assert config["failCgroupV1"] is False
    assert config["cgroupRoot"] == "/kt-test"
    assert config["containerRuntimeEndpoint"] == f"unix://{layout.containerd_socket}"


def test_kubelet_refuses_anonymous_requests(layout: NodeLayout, tmp_path: Path) -> None:
    config = node_config.kubelet_config(
        layout, ca_cert=tmp_path / "ca.crt", serving_cert=tmp_path / "s.crt", serving_key=tmp_path / "s.key"
    )
    assert config["authentication"]["anonymous"] == {"enabled": False}
    assert config["authentication"]["x509"] == {"clientCAFile": str(tmp_path / "ca.crt")}
    assert config["authorization"] == {"mode": "Webhook"}
    assert config["readOnlyPort"] == 0


def test_kube_proxy_leaves_the_hosts_conntrack_settings_alone(layout: NodeLayout, tmp_path: Path) -> None:
    config = node_config.kube_proxy_config(layout, kubeconfig=tmp_path / "k", healthz_port=1, metrics_port=2)
    assert config["mode"] == "iptables"
    assert config["hostnameOverride"] == "cpu-0"
    assert config["conntrack"]["maxPerCore"] == 0
    assert config["conntrack"]["tcpEstablishedTimeout"] == "0s"
    assert config["healthzBindAddress"] == "127.0.0.1:1"


def test_corefile_serves_cluster_names_on_the_node_address(layout: NodeLayout, tmp_path: Path) -> None:
    text = node_config.corefile(layout, kubeconfig=tmp_path / "admin", health_port=3, ready_port=4)
    assert text.startswith(".:53 {")
    assert "    bind 192.0.2.7\n" in text
    assert f"        kubeconfig {tmp_path / 'admin'}\n" in text
    assert "kubernetes cluster.local in-addr.arpa ip6.arpa {" in text
    assert "forward" not in text  # nothing outside the cluster is resolved


def test_every_mount_lives_under_an_owned_path(layout: NodeLayout) -> None:
    owned = layout.owned_paths()
    for path in (layout.kubelet_root, layout.containerd_state, layout.containerd_root, layout.pod_logs):
        assert any(path.is_relative_to(root) for root in owned), path
