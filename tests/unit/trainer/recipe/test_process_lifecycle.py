"""The trainer as the pod runs it: a separate process that gets SIGTERM or SIGKILL, and torchrun ranks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kubetune_testenv.processes import free_port

from kubetune.api.exit_codes import ExitCode
from kubetune.api.progress import parse_event

REPO = Path(__file__).resolve().parents[4]
START_TIMEOUT_S = 180


def _trainer(config: dict[str, Any], tmp_path: Path, name: str) -> tuple[subprocess.Popen[str], Path]:
    config_path = tmp_path / f"{name}.json"
    config_path.write_text(json.dumps(config), encoding="utf-8")
    events = tmp_path / f"{name}-events.jsonl"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "KUBETUNE_CACHE_DIR": str(tmp_path / "cache")}
    command = [
        sys.executable,
        "-m",
        "kubetune_trainer",
        "train",
        "--config",
        str(config_path),
        "--events-file",
        str(events),
        "--no-stdout-events",
        "--threads",
        "1",
    ]
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return proc, events


def _read_events(path: Path) -> list[Any]:
    if not path.exists():
        return []
    return [parse_event(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _wait_for_step(proc: subprocess.Popen[str], events: Path, step: int) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if any(e.event == "step" and e.step >= step for e in _read_events(events)):
            return
        if proc.poll() is not None:
            pytest.fail(
                f"trainer exited {proc.returncode} before step {step}:\n{proc.stdout.read() if proc.stdout else ''}"
            )
        time.sleep(0.1)
    proc.kill()
    pytest.fail(f"no step {step} within {START_TIMEOUT_S}s")


def test_sigterm_checkpoints_exits_75_and_the_restart_resumes_from_that_checkpoint(
    tiny_model_dir: Path,
    lamini_subset: Callable[[int], Path],
    tmp_path: Path,
    config_factory: Callable[..., dict[str, Any]],
) -> None:
    out = tmp_path / "out"
    config = config_factory(
        model_dir=tiny_model_dir,
        data=lamini_subset(64),
        output=out,
        hyperparameters={"maxSteps": 400, "perDeviceBatchSize": 2},
        checkpointing={"everySteps": 1000},
    )
    proc, events = _trainer(config, tmp_path, "first")
    _wait_for_step(proc, events, 2)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)

    assert proc.returncode == ExitCode.CHECKPOINTED_ON_SIGTERM == 75, output
    history = _read_events(events)
    stopped = [e for e in history if e.event == "stopped"]
    assert len(stopped) == 1 and stopped[0].exit_code == 75
    saved = [e for e in history if e.event == "checkpoint"]
    assert [e.reason for e in saved] == ["sigterm"]
    step = saved[0].step
    assert 2 <= step < 400 and stopped[0].step == step
    assert (out / "checkpoints" / f"step-{step:08d}" / "checkpoint.json").is_file()
    assert not (out / "manifest.json").exists()

    config["hyperparameters"]["maxSteps"] = step + 3
    proc, events = _trainer(config, tmp_path, "second")
    output, _ = proc.communicate(timeout=START_TIMEOUT_S)

    assert proc.returncode == ExitCode.OK, output
    history = _read_events(events)
    assert [e.resumed_from_step for e in history if e.event == "started"] == [step]
    assert [e.step for e in history if e.event == "step"] == [step + 1, step + 2, step + 3]
    assert (out / "manifest.json").is_file()


def test_sigkill_mid_training_leaves_checkpoints_but_no_manifest(
    tiny_model_dir: Path,
    lamini_subset: Callable[[int], Path],
    tmp_path: Path,
    config_factory: Callable[..., dict[str, Any]],
) -> None:
    out = tmp_path / "out"
    config = config_factory(
        model_dir=tiny_model_dir,
        data=lamini_subset(64),
        output=out,
        hyperparameters={"maxSteps": 400, "perDeviceBatchSize": 2},
        checkpointing={"everySteps": 2},
    )
    proc, events = _trainer(config, tmp_path, "killed")
    _wait_for_step(proc, events, 5)
    proc.kill()
    proc.communicate(timeout=60)

    assert proc.returncode == -signal.SIGKILL
    assert not (out / "manifest.json").exists()
    complete = [p for p in (out / "checkpoints").iterdir() if (p / "checkpoint.json").is_file()]
    assert complete, "periodic checkpoints before the kill are complete"


def test_torchrun_two_cpu_ranks_train_in_step_and_match_the_single_process_loss(
    tiny_model_dir: Path,
    lamini_subset: Callable[[int], Path],
    tmp_path: Path,
    config_factory: Callable[..., dict[str, Any]],
    run_in_process: Callable[..., tuple[int, list[Any]]],
) -> None:
    """2 ranks x 1 micro-batch of 2 rows == 1 process x 2 accumulated micro-batches of 2 rows."""
    common: dict[str, Any] = {
        "data": lamini_subset(40),
        "dataset": {"validationSplit": 0.1},
        "checkpointing": {"everySteps": 2},
    }
    single = config_factory(
        model_dir=tiny_model_dir,
        output=tmp_path / "single",
        hyperparameters={"maxSteps": 4, "perDeviceBatchSize": 2, "gradientAccumulationSteps": 2},
        **common,
    )
    code, single_events = run_in_process(single, samples=0)
    assert code == ExitCode.OK

    out = tmp_path / "dist"
    config = config_factory(
        model_dir=tiny_model_dir, output=out, hyperparameters={"maxSteps": 4, "perDeviceBatchSize": 2}, **common
    )
    config_path = tmp_path / "dist.json"
    config_path.write_text(json.dumps(config), encoding="utf-8")
    events_path = tmp_path / "dist-events.jsonl"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "1",
        "--nproc-per-node",
        "2",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(free_port()),
        "-m",
        "kubetune_trainer",
        "train",
        "--config",
        str(config_path),
        "--events-file",
        str(events_path),
        "--no-stdout-events",
        "--threads",
        "1",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "KUBETUNE_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=400, check=False)
    logs = proc.stdout + proc.stderr
    assert proc.returncode == 0, logs[-5000:]

    events = _read_events(events_path)
    started = [e for e in events if e.event == "started"]
    assert len(started) == 1 and started[0].world_size == 2  # one reporter, two ranks
    assert "rank 0 of 2: trained to step 4" in logs and "rank 1 of 2: trained to step 4" in logs
    assert [e.step for e in events if e.event == "checkpoint"] == [2, 4]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000002", "step-00000004"]
    assert {p.name for p in (out / "checkpoints" / "step-00000004").glob("rng-rank*.pt")} == {
        "rng-rank00000.pt",
        "rng-rank00001.pt",
    }
    assert len([e for e in events if e.event == "finished"]) == 1 and (out / "manifest.json").is_file()
    dist_steps = [e for e in events if e.event == "step"]
    single_steps = [e for e in single_events if e.event == "step"]
    assert [e.trained_tokens for e in dist_steps] == [e.trained_tokens for e in single_steps]
    for a, b in zip(single_steps, dist_steps, strict=True):
        assert b.loss == pytest.approx(a.loss, rel=1e-4), a.step
    dist_eval = [e.eval_loss for e in events if e.event == "eval"]
    single_eval = [e.eval_loss for e in single_events if e.event == "eval"]
    assert dist_eval == pytest.approx(single_eval, rel=1e-4)


def test_launch_gives_the_pod_exit_75_when_torchrun_workers_checkpoint_on_sigterm(
    tiny_model_dir: Path,
    lamini_subset: Callable[[int], Path],
    tmp_path: Path,
    config_factory: Callable[..., dict[str, Any]],
) -> None:
    """torchrun alone exits 1 on SIGTERM; ``launch`` reports the workers' 75."""
    out = tmp_path / "out"
    config = config_factory(
        model_dir=tiny_model_dir,
        data=lamini_subset(64),
        output=out,
        hyperparameters={"maxSteps": 400, "perDeviceBatchSize": 2},
        checkpointing={"everySteps": 1000},
    )
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(config), encoding="utf-8")
    events = tmp_path / "events.jsonl"
    command = [
        sys.executable,
        "-m",
        "kubetune_trainer",
        "launch",
        "--nnodes",
        "1",
        "--nproc-per-node",
        "2",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(free_port()),
        "--",
        "train",
        "--config",
        str(config_path),
        "--events-file",
        str(events),
        "--no-stdout-events",
        "--threads",
        "1",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "KUBETUNE_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _wait_for_step(proc, events, 2)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)

    assert proc.returncode == ExitCode.CHECKPOINTED_ON_SIGTERM, output[-3000:]
    step = next(e.step for e in _read_events(events) if e.event == "stopped")
    assert (out / "checkpoints" / f"step-{step:08d}" / "rng-rank00001.pt").is_file()
