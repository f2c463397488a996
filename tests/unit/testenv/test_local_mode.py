"""``kubetune local`` without a cluster: its state paths, reading ``up``'s log, the results, and the detached
process it starts and stops (a stand-in for ``python -m kubetune_testenv up`` that prints the same lines)."""

from __future__ import annotations

import json
import os
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubetune_testenv import local
from kubetune_testenv.local import LocalError, LocalState, parse_up_log

# The lines up.py prints once the control plane and the real node run (stdout and stderr, as in the log).
UP_LOG = """\
[kubetune-testenv images] trainer: cached
kubetune_testenv: control plane up in 6.1s, kubeconfig /state/cluster/admin.kubeconfig
kubetune_testenv: real node kubetune-cpu-0 Ready in 4.2s
kubeconfig: /state/cluster/admin.kubeconfig
export KUBECONFIG=/state/cluster/admin.kubeconfig
kubectl:    /bin/kube kubectl --kubeconfig=/state/cluster/admin.kubeconfig get nodes
logs:       /state/cluster/logs
real node: kubetune-cpu-0 Ready (label and taint kubetune.io/node=cpu)
Ctrl-C stops the control plane and removes its files.
"""


def test_state_lives_under_the_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KUBETUNE_CACHE_DIR", str(tmp_path))
    state = LocalState.default()
    assert state.root == tmp_path / "local"
    assert state.kubeconfig == tmp_path / "local" / "cluster" / "admin.kubeconfig"
    paths = [state.pid_file, state.log_file, state.ready_marker, state.volumes, state.helm_home, state.lock_file]
    assert all(path.parent == state.root for path in paths) and len(set(paths)) == len(paths)


def test_up_is_ready_once_the_log_names_the_kubeconfig_and_the_ready_node() -> None:
    progress = parse_up_log(UP_LOG)
    assert progress.ready and progress.error is None
    assert (progress.node, progress.kubeconfig) == ("kubetune-cpu-0", Path("/state/cluster/admin.kubeconfig"))
    half = UP_LOG.split("kubeconfig: ")[0]
    assert not parse_up_log(half).ready
    assert parse_up_log(half).step == "real node kubetune-cpu-0 Ready in 4.2s"


def test_the_step_while_waiting_is_the_latest_build_or_start_line() -> None:
    assert parse_up_log("").step == "starting the control plane"
    log = "[kubetune-testenv images] operator: built in 28s\n[kubetune-testenv images] trainer: building\n"
    assert parse_up_log(log).step == "images: trainer: building"
    assert parse_up_log(log + "some tool output\n").step == "images: trainer: building"


def test_an_error_line_of_up_is_its_failure() -> None:
    progress = parse_up_log("error: the real node needs root (cgroups, mounts, network namespaces, iptables)\n")
    assert progress.error is not None and progress.error.startswith("the real node needs root")
    assert not progress.ready


def test_the_detached_command_is_up_with_the_real_node_and_images_in_the_state_dir(tmp_path: Path) -> None:
    state = LocalState(tmp_path)
    command = local.up_command(state)
    up = ["-m", "kubetune_testenv", "up", "--real-node", "--images", "--workdir", str(state.cluster_dir)]
    assert command == [sys.executable, *up]
    cmdline = b"\0".join(arg.encode() for arg in command) + b"\0"
    assert local.is_up_process(cmdline, state=state)
    assert not local.is_up_process(b"sleep\x00300\x00", state=state)
    assert not local.is_up_process(cmdline, state=LocalState(tmp_path / "other"))


def test_question_is_the_user_turn_of_the_chat_prompt() -> None:
    prompt = (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nWhat does spec.method.rank set?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert local.question_of(prompt) == "What does spec.method.rank set?"
    assert local.question_of("  plain prompt ") == "plain prompt"


def test_results_read_the_adapter_metrics_and_before_after_samples(tmp_path: Path) -> None:
    out = tmp_path / "outputs" / "quickstart"
    (out / "adapter").mkdir(parents=True)
    (out / "manifest.json").write_text(json.dumps({"complete": True, "metrics": {"loss": 0.5, "evalLoss": 0.7}}))
    samples = [{"prompt": "<|im_start|>user\nQ?<|im_end|>\n", "reference": "R", "before": "B", "after": "A"}]
    (out / "generations.json").write_text(json.dumps(samples))
    results = local.read_results(out)
    assert results.complete and results.adapter == out / "adapter"
    assert results.metrics == {"loss": 0.5, "evalLoss": 0.7}
    assert [(s.question, s.reference, s.before, s.after) for s in results.samples] == [("Q?", "R", "B", "A")]


def test_results_of_a_job_that_wrote_nothing_say_so(tmp_path: Path) -> None:
    with pytest.raises(LocalError, match="does not exist: has the FineTuneJob succeeded"):
        local.read_results(tmp_path / "missing")


def test_claims_of_the_quickstart_namespace_live_in_the_state_dir(tmp_path: Path) -> None:
    claims = local.local_claims(LocalState(tmp_path))
    assert claims.namespace == "kubetune-quickstart" and claims.claims == ("models", "datasets", "outputs")
    assert claims.path("datasets") == tmp_path / "volumes" / "datasets"
    assert claims.pv_manifest("models")["metadata"]["name"] == "kubetune-quickstart-models"


def test_the_shipped_dataset_is_the_committed_quickstart_data() -> None:
    assert local.SHIPPED_DATASET.is_file()
    assert local.SHIPPED_DATASET.relative_to(local.REPO).as_posix() == "examples/quickstart/kubetune-api-qa.jsonl"


# -- the detached process ------------------------------------------------------------------------------

FAKE_UP = textwrap.dedent(
    """
    import pathlib, sys, time
    kubeconfig = pathlib.Path(sys.argv[3]) / "admin.kubeconfig"
    print("kubetune_testenv: control plane up in 0.1s", file=sys.stderr)
    kubeconfig.write_text("apiVersion: v1\\n")
    print(f"kubeconfig: {kubeconfig}")
    print("real node: kubetune-cpu-0 Ready (label and taint kubetune.io/node=cpu)")
    time.sleep(300)
    """
)


@pytest.fixture
def fake_up(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[LocalState]:
    """``local_up`` with the stand-in for ``up``, and no install (that needs the real node)."""
    state = LocalState(tmp_path / "local")
    monkeypatch.setattr(
        local, "up_command", lambda s: [sys.executable, "-c", FAKE_UP, "kubetune_testenv", "up", str(s.cluster_dir)]
    )
    monkeypatch.setattr(local, "_preflight", lambda dataset: tmp_path / "model.gguf")
    done: list[str] = []
    monkeypatch.setattr(local, "_install", lambda s: done.append("install"))
    monkeypatch.setattr(local, "_fill_claims", lambda s, model, dataset: done.append(f"fill {dataset.name}"))
    yield state
    pid = local.daemon_pid(state)
    if pid is not None:
        os.kill(pid, 9)


def test_local_up_leaves_up_running_in_its_own_session_and_a_second_call_finds_it(fake_up: LocalState) -> None:
    steps: list[str] = []
    info = local.local_up(data=None, state=fake_up, report=lambda step, elapsed: steps.append(step))
    pid = local.daemon_pid(fake_up)
    assert pid is not None and os.getsid(pid) == pid  # a session of its own: no terminal signal reaches it
    assert not info.already_running and info.kubeconfig == fake_up.kubeconfig
    assert fake_up.ready_marker.is_file()
    assert "minutes" in steps[0] and steps[-1] == "ready"
    again = local.local_up(data=None, state=fake_up, report=lambda step, elapsed: steps.append(step))
    assert again.already_running and local.daemon_pid(fake_up) == pid


def test_local_down_sigterms_up_waits_for_it_and_removes_the_state(fake_up: LocalState) -> None:
    local.local_up(data=None, state=fake_up, report=lambda step, elapsed: None)
    pid = local.daemon_pid(fake_up)
    assert pid is not None
    assert local.local_down(state=fake_up, timeout=30) is True
    assert local.daemon_pid(fake_up) is None and not fake_up.root.exists()
    assert local.local_down(state=fake_up) is False  # harmless when nothing runs


def test_an_up_that_exits_while_starting_fails_local_up_with_its_log(
    monkeypatch: pytest.MonkeyPatch, fake_up: LocalState
) -> None:
    script = "import sys; print('error: control plane binaries are missing'); sys.exit(1)"
    monkeypatch.setattr(local, "up_command", lambda s: [sys.executable, "-c", script])
    with pytest.raises(LocalError, match="control plane binaries are missing"):
        local.local_up(data=None, state=fake_up, report=lambda step, elapsed: None)


def test_a_stale_pid_file_is_not_a_running_cluster(tmp_path: Path) -> None:
    state = LocalState(tmp_path)
    state.pid_file.write_text(f"{os.getpid()}\n")  # this test process: alive, but not `up`
    assert local.daemon_pid(state) is None
    state.pid_file.write_text("not a pid\n")
    assert local.daemon_pid(state) is None
    start = time.monotonic()
    assert local.local_down(state=state) is False and time.monotonic() - start < 5
