"""What a real node changes on this machine, and undoing it: cgroups, shims, links, sysctls, iptables.

Every function works from what is on the machine now, not from what a session remembers, so the same
code tears a node down and sweeps what a SIGKILLed session left behind.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

from .mounts import mount_points, unmount_all

CGROUP_MOUNT = Path("/sys/fs/cgroup")
# Sysctls the node needs; their previous values are restored on teardown.
SYSCTLS = {
    # Pod-to-Service traffic that kube-proxy DNATs back onto the same bridge must pass iptables.
    "net/bridge/bridge-nf-call-iptables": "1",
    "net/ipv4/ip_forward": "1",
}


def run(argv: list[str], *, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
    return result


# -- teardown helpers: each works from what is on the machine, so it also cleans after a crash ----------


def cgroup_dirs(cgroup_root: str) -> list[Path]:
    """``cgroup_root`` in every mounted hierarchy (v1: one per controller; v2: one)."""
    relative = cgroup_root.strip("/")
    if (CGROUP_MOUNT / "cgroup.controllers").exists():
        return [CGROUP_MOUNT / relative]
    # v1 (hybrid): the per-controller hierarchies and the named/unified ones; the kubelet uses them all.
    hierarchies = sorted(h for h in CGROUP_MOUNT.iterdir() if (h / "cgroup.procs").exists())
    return [hierarchy / relative for hierarchy in hierarchies]


def kill_cgroup_processes(cgroup_root: str, *, timeout: float = 20) -> int:
    """SIGKILL every process in the subtree (container processes of every pod); returns how many."""
    killed: set[int] = set()
    deadline = time.monotonic() + timeout
    while True:
        pids: set[int] = set()
        for top in cgroup_dirs(cgroup_root):
            for procs in top.rglob("cgroup.procs") if top.exists() else ():
                with contextlib.suppress(OSError):
                    pids.update(int(pid) for pid in procs.read_text().split())
        if not pids:
            return len(killed)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        killed |= pids
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes in {cgroup_root} survived SIGKILL: {sorted(pids)}")
        time.sleep(0.1)


def remove_cgroups(cgroup_root: str) -> None:
    """rmdir the subtree bottom-up (cgroup directories are removed with rmdir, not rm)."""
    for top in cgroup_dirs(cgroup_root):
        if not top.exists():
            continue
        for directory in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            with contextlib.suppress(OSError):
                directory.rmdir()
        with contextlib.suppress(OSError):
            top.rmdir()


def create_cgroups(cgroup_root: str) -> None:
    """The kubelet wants its --cgroup-root to exist in every hierarchy."""
    for top in cgroup_dirs(cgroup_root):
        top.mkdir(exist_ok=True)
        if top.parent.name == "cpuset":  # a v1 cpuset group takes no tasks until cpus and mems are set
            for name in ("cpuset.cpus", "cpuset.mems"):
                (top / name).write_text((top.parent / name).read_text())


def shim_pids(socket_marker: str) -> list[int]:
    """containerd shims whose ``-address`` contains ``socket_marker`` (shims outlive containerd)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"containerd-shim-runc-v2") and any(socket_marker.encode() in a for a in argv):
            found.append(int(entry.name))
    return found


def delete_link(name: str) -> None:
    if Path(f"/sys/class/net/{name}").exists():
        run(["ip", "link", "delete", name], check=False)


def read_sysctls(names: dict[str, str]) -> dict[str, str]:
    values = {}
    for name in names:
        with contextlib.suppress(OSError):
            values[name] = (Path("/proc/sys") / name).read_text().strip()
    return values


def write_sysctls(values: dict[str, str]) -> None:
    for name, value in values.items():
        with contextlib.suppress(OSError):
            (Path("/proc/sys") / name).write_text(value)


def kube_proxy_cleanup(kube: Path) -> None:
    """Remove kube-proxy's iptables chains, as ``kube-proxy --cleanup`` does, then the kubelet's own.

    The kubelet adds KUBE-FIREWALL (drops non-local packets to 127.0.0.0/8), KUBE-KUBELET-CANARY and
    KUBE-IPTABLES-HINT to the host's tables and never removes them; nothing else here uses ``KUBE-``.
    """
    if kube.exists():
        run([str(kube), "proxy", "--cleanup"], check=False)
    for family in ("iptables", "ip6tables"):
        if shutil.which(f"{family}-save") is not None:
            remove_kube_chains(family)


def remove_kube_chains(family: str) -> None:
    """Delete every jump to a ``KUBE-`` chain from other chains, then flush and delete those chains."""
    saved = run([f"{family}-save"], check=False).stdout
    for command in kube_chain_removal(saved):
        run([family, "-w", *command], check=False)


def kube_chain_removal(saved: str) -> list[list[str]]:
    """Arguments for iptables that undo every ``KUBE-`` chain in ``saved`` (iptables-save output)."""
    table = ""
    chains: dict[str, list[str]] = {}
    jumps: list[list[str]] = []
    for line in saved.splitlines():
        if line.startswith("*"):
            table = line[1:]
        elif line.startswith(":KUBE-"):
            chains.setdefault(table, []).append(line[1:].split()[0])
        elif line.startswith("-A ") and " KUBE-" in line and not line.startswith("-A KUBE-"):
            jumps.append(["-t", table, "-D", *shlex.split(line)[1:]])
    flushes = [["-t", table, "-F", name] for table, names in chains.items() for name in names]
    deletes = [["-t", table, "-X", name] for table, names in chains.items() for name in names]
    return jumps + flushes + deletes


def sweep(*, cgroup_root: str, bridge: str, containerd_root: Path, kube: Path) -> None:
    """Remove what a killed session's node left: container processes, shims, mounts, links, cgroups, chains.

    Sessions' work dirs are named kubetune-testenv-*; only one real node runs per machine (a lock), so
    whatever of a node is found under such a dir belongs to a dead session.
    """
    kill_cgroup_processes(cgroup_root)
    for pid in shim_pids("kubetune-testenv-"):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    stale = [Path(point) for point in mount_points() if "/kubetune-testenv-" in point and "/node/" in point]
    if stale:
        unmount_all(tuple(stale))
    unmount_all((containerd_root,))
    delete_link(bridge)
    remove_cgroups(cgroup_root)
    kube_proxy_cleanup(kube)
