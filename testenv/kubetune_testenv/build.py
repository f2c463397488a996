"""Build etcd, kube-apiserver/controller-manager/scheduler/kubectl and kwok from the Go module proxy.

Three wrapper modules under ``<cache>/build/<key>/`` are generated, tidied and built with the local Go
toolchain. Finished binaries are renamed into ``<cache>/k8s/<key>/`` only when complete, so an
interrupted build never leaves something that looks usable. A cold build takes minutes.
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
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from . import gomod
from .versions import PINNED, Binaries, Versions, binaries, cache_root

# Names under which the multi-call ``kube`` binary is linked (see ``gomod.KUBE_MAIN``).
PROGRAMS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "kubelet", "kube-proxy")


class BuildError(RuntimeError):
    """A build step failed; the message says which command and why."""


@dataclass
class StepStats:
    name: str
    seconds: float
    largest_process_mib: float
    peak_tree_rss_mib: float


@dataclass
class BuildReport:
    steps: list[StepStats] = field(default_factory=list)

    def as_json(self) -> str:
        return json.dumps({"steps": [vars(step) for step in self.steps]}, indent=2)


def _log(message: str) -> None:
    print(f"[kubetune-testenv build] {message}", file=sys.stderr, flush=True)


def go_env(cache: Path) -> dict[str, str]:
    """Environment for every go command: private caches, no workspace, no toolchain download."""
    env = dict(os.environ)
    gopath = cache / "go"
    env.update(
        GOPATH=str(gopath),
        GOMODCACHE=str(gopath / "pkg" / "mod"),
        GOCACHE=str(gopath / "build-cache"),
        GOWORK="off",
        GOTOOLCHAIN="local",
        GOFLAGS="-mod=mod",
        CGO_ENABLED="0",
    )
    return env


def _tree_rss_bytes(root_pid: int) -> tuple[int, int]:
    """Resident memory of ``root_pid`` and all its descendants: (sum, largest process). Linux /proc."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    page = os.sysconf("SC_PAGE_SIZE")
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(entry.name)
        children.setdefault(int(fields[1]), []).append(pid)  # fields[1] is the parent pid
        rss[pid] = int(fields[21]) * page  # resident pages
    total, largest, stack = 0, 0, [root_pid]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        largest = max(largest, rss.get(pid, 0))
        stack.extend(children.get(pid, []))
    return total, largest


class _TreeSampler(threading.Thread):
    def __init__(self, pid: int, label: str) -> None:
        super().__init__(daemon=True)
        self.pid, self.label, self.peak, self.largest = pid, label, 0, 0
        self.stopped = threading.Event()

    def run(self) -> None:
        started = last_note = time.monotonic()
        while not self.stopped.wait(0.5):
            current, largest = _tree_rss_bytes(self.pid)
            self.peak, self.largest = max(self.peak, current), max(self.largest, largest)
            if time.monotonic() - last_note >= 30:
                last_note = time.monotonic()
                _log(f"  ... {self.label}: {last_note - started:.0f}s, {current / 2**30:.1f} GiB in use")


def run_go(args: list[str], *, cwd: Path, env: dict[str, str], step: str, log: Path, report: BuildReport) -> str:
    """Run one go command, logging to ``log``; raise BuildError with the command and its error tail."""
    command = ["go", *args]
    _log(f"{step}: {' '.join(command)}")
    started = time.monotonic()
    with open(log, "ab") as sink:
        sink.write(f"\n$ (cd {cwd} && {' '.join(command)})\n".encode())
        sink.flush()
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        sampler = _TreeSampler(process.pid, step)
        sampler.start()
        assert process.stdout is not None
        output = process.stdout.read()
        code = process.wait()
        sampler.stopped.set()
        sampler.join()
        sink.write(output)
    seconds = time.monotonic() - started
    report.steps.append(
        StepStats(step, round(seconds, 1), round(sampler.largest / 2**20, 1), round(sampler.peak / 2**20, 1))
    )
    text = output.decode(errors="replace")
    if code != 0:
        tail = "\n".join(text.splitlines()[-40:])
        hint = ""
        if code == -signal.SIGKILL or "signal: killed" in text:
            hint = (
                "\nA process was killed by SIGKILL, most likely by the kernel's OOM killer. Free memory "
                "or build with fewer parallel jobs: KUBETUNE_GO_BUILD_JOBS=1."
            )
        raise BuildError(f"{step} failed (exit {code}): cd {cwd} && {' '.join(command)}\n{tail}{hint}\nfull log: {log}")
    _log(f"{step}: done in {seconds:.0f}s (peak {sampler.peak / 2**30:.2f} GiB across its processes)")
    return text


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def _install(built: Path, target: Path) -> None:
    built.chmod(0o755)
    os.replace(built, target)  # atomic: the target is complete or absent


def _build_jobs() -> list[str]:
    jobs = os.environ.get("KUBETUNE_GO_BUILD_JOBS")
    return ["-p", jobs] if jobs else []


def _build_wrapped(
    *,
    name: str,
    gomod_text: str,
    tools_go: str,
    package: str,
    target: Path,
    work: Path,
    env: dict[str, str],
    log: Path,
    report: BuildReport,
) -> None:
    """Build ``package`` from a generated wrapper module ``work/<name>`` into ``target`` (atomically)."""
    module = work / name
    _write(module / "go.mod", gomod_text)
    _write(module / "tools.go", tools_go)
    run_go(["mod", "tidy"], cwd=module, env=env, step=f"{name}: resolve modules", log=log, report=report)
    tmp = target.with_name(f".{name}.partial")
    run_go(
        ["build", *_build_jobs(), "-trimpath", "-ldflags=-s -w", "-o", str(tmp), package],
        cwd=module,
        env=env,
        step=f"{name}: build",
        log=log,
        report=report,
    )
    _install(tmp, target)


def build_etcd(
    *, versions: Versions, work: Path, env: dict[str, str], out: Binaries, log: Path, report: BuildReport
) -> None:
    _build_wrapped(
        name="etcd",
        gomod_text=gomod.etcd_gomod(versions),
        tools_go=gomod.ETCD_TOOLS_GO,
        package="go.etcd.io/etcd/server/v3",
        target=out.etcd,
        work=work,
        env=env,
        log=log,
        report=report,
    )


def build_kwok(
    *, versions: Versions, work: Path, env: dict[str, str], out: Binaries, log: Path, report: BuildReport
) -> None:
    _build_wrapped(
        name="kwok",
        gomod_text=gomod.kwok_gomod(versions),
        tools_go=gomod.KWOK_TOOLS_GO,
        package="sigs.k8s.io/kwok/cmd/kwok",
        target=out.kwok,
        work=work,
        env=env,
        log=log,
        report=report,
    )


def build_coredns(
    *, versions: Versions, work: Path, env: dict[str, str], out: Binaries, log: Path, report: BuildReport
) -> None:
    module = work / "coredns"
    _write(module / "go.mod", gomod.coredns_gomod(versions))
    _write(module / "main.go", gomod.COREDNS_MAIN)
    run_go(["mod", "tidy"], cwd=module, env=env, step="coredns: resolve modules", log=log, report=report)
    tmp = out.directory / ".coredns.partial"
    run_go(
        ["build", *_build_jobs(), "-trimpath", "-ldflags=-s -w", "-o", str(tmp), "."],
        cwd=module,
        env=env,
        step="coredns: build",
        log=log,
        report=report,
    )
    _install(tmp, out.coredns)


def build_kube(
    *, versions: Versions, work: Path, env: dict[str, str], out: Binaries, log: Path, report: BuildReport
) -> None:
    module = work / "kube"
    module.mkdir(parents=True, exist_ok=True)
    info = json.loads(
        run_go(
            ["mod", "download", "-json", f"k8s.io/kubernetes@{versions.kubernetes}"],
            cwd=module,
            env=env,
            step="kube: download k8s.io/kubernetes",
            log=log,
            report=report,
        )
    )
    staging = gomod.staging_modules(Path(info["GoMod"]).read_text())
    _log(f"kube: replacing {len(staging)} staging modules with {versions.staging}")
    _write(module / "go.mod", gomod.kube_gomod(versions=versions, staging=staging))
    _write(module / "main.go", gomod.KUBE_MAIN)
    run_go(["mod", "tidy"], cwd=module, env=env, step="kube: resolve modules", log=log, report=report)
    tmp = out.directory / ".kube.partial"
    run_go(
        [
            "build",
            *_build_jobs(),
            "-trimpath",
            "-tags",
            "selinux,notest",
            f"-ldflags={gomod.kube_ldflags(versions)}",
            "-o",
            str(tmp),
            ".",
        ],
        cwd=module,
        env=env,
        step="kube: build (apiserver+controller-manager+scheduler+kubectl+kubelet+proxy)",
        log=log,
        report=report,
    )
    _install(tmp, out.kube)
    link_programs(out)


def link_programs(out: Binaries) -> None:
    """Symlinks kube-apiserver, kube-controller-manager, ... -> kube (argv[0] dispatch)."""
    for name in PROGRAMS:
        link = out.directory / name
        if not link.is_symlink():
            link.unlink(missing_ok=True)
            with contextlib.suppress(FileExistsError):  # a concurrent build made it first
                link.symlink_to(out.kube.name)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _check_go() -> None:
    if shutil.which("go") is None:
        raise BuildError("the Go toolchain ('go') is not on PATH; install Go >= 1.26 to build the test control plane")


def build(*, versions: Versions = PINNED, force: bool = False) -> Binaries:
    """Build whatever binaries of ``versions`` are missing; return their paths."""
    out = binaries(versions)
    if not force and not out.missing():
        link_programs(out)
        _log(f"binaries up to date in {out.directory}")
        return out
    _check_go()
    cache = cache_root()
    with _locked(cache / "k8s" / f"{versions.key}.lock"):
        out.directory.mkdir(parents=True, exist_ok=True)
        work = cache / "build" / versions.key
        work.mkdir(parents=True, exist_ok=True)
        log = work / "build.log"
        env = go_env(cache)
        report = BuildReport()
        _log(f"building {versions.key} into {out.directory} (cold build takes minutes; log: {log})")
        started = time.monotonic()
        steps = ((out.etcd, build_etcd), (out.kwok, build_kwok), (out.kube, build_kube), (out.coredns, build_coredns))
        for target, step in steps:
            if force or not os.access(target, os.X_OK):
                step(versions=versions, work=work, env=env, out=out, log=log, report=report)
        total = time.monotonic() - started
        _log(f"all binaries built in {total:.0f}s")
        (work / "build-stats.json").write_text(report.as_json())
        for stats in report.steps:
            _log(
                f"  {stats.name}: {stats.seconds}s, largest process {stats.largest_process_mib} MiB, "
                f"peak sum {stats.peak_tree_rss_mib} MiB"
            )
    return out


def prune_go_caches() -> None:
    """Delete the private module and build caches (~5 GiB); the finished binaries stay."""
    cache = cache_root()
    for directory in (cache / "go", cache / "build"):
        if directory.exists():
            # The module cache is read-only on purpose; make it writable so it can be removed.
            subprocess.run(["chmod", "-R", "u+w", str(directory)], check=False)
            shutil.rmtree(directory, ignore_errors=True)
            _log(f"removed {directory}")
