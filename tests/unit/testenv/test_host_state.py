"""Undoing what a real node changed on the machine, the parts that need no root: iptables chains."""

from __future__ import annotations

from kubetune_testenv.host_state import kube_chain_removal

SAVED = """\
*filter
:INPUT ACCEPT [0:0]
:KUBE-FIREWALL - [0:0]
:KUBE-KUBELET-CANARY - [0:0]
:DOCKER-USER - [0:0]
-A INPUT -j KUBE-FIREWALL
-A INPUT -s 10.9.0.0/16 -j DOCKER-USER
-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment "block incoming localnet connections" -j DROP
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
COMMIT
"""


def test_jumps_go_first_then_flush_then_delete_and_nothing_else_is_touched() -> None:
    commands = kube_chain_removal(SAVED)
    assert commands == [
        ["-t", "filter", "-D", "INPUT", "-j", "KUBE-FIREWALL"],
        [
            "-t",
            "nat",
            "-D",
            "PREROUTING",
            "-m",
            "comment",
            "--comment",
            "kubernetes service portals",
            "-j",
            "KUBE-SERVICES",
        ],
        ["-t", "filter", "-F", "KUBE-FIREWALL"],
        ["-t", "filter", "-F", "KUBE-KUBELET-CANARY"],
        ["-t", "nat", "-F", "KUBE-SERVICES"],
        ["-t", "filter", "-X", "KUBE-FIREWALL"],
        ["-t", "filter", "-X", "KUBE-KUBELET-CANARY"],
        ["-t", "nat", "-X", "KUBE-SERVICES"],
    ]


def test_a_host_without_kube_chains_gets_no_commands() -> None:
    assert kube_chain_removal("*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j ACCEPT\nCOMMIT\n") == []
