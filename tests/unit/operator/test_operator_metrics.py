"""Prometheus metrics: jobs by phase, per-job series that go when the job ends, names promtool accepts."""

from __future__ import annotations

import shutil
import subprocess
from datetime import UTC, datetime

from kubetune_operator.metrics import OperatorMetrics
from prometheus_client import generate_latest

from kubetune.api.progress import EvalEvent, PreferenceMetrics, StepEvent

T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def gauge(metrics: OperatorMetrics, phase: str) -> float | None:
    return metrics.registry.get_sample_value("kubetune_finetunejobs", {"phase": phase})


def step(n: int, *, loss: float) -> StepEvent:
    return StepEvent(
        time=T0, step=n, total_steps=50, epoch=0.1, loss=loss, learning_rate=1e-4, tokens_per_second=900.0,
        trained_tokens=n * 100,
    )  # fmt: skip


def per_job_series(metrics: OperatorMetrics) -> list[str]:
    return [
        line
        for line in generate_latest(metrics.registry).decode().splitlines()
        if line.startswith("kubetune_finetunejob_") and 'name="' in line and not line.startswith("#")
    ]


def test_each_finetunejob_counts_once_in_its_latest_phase() -> None:
    metrics = OperatorMetrics()
    metrics.observe_phase(uid="a", namespace="ns", name="a", phase="Pending")
    metrics.observe_phase(uid="b", namespace="ns", name="b", phase="Pending")
    metrics.observe_phase(uid="a", namespace="ns", name="a", phase="Running")
    assert gauge(metrics, "Pending") == 1 and gauge(metrics, "Running") == 1
    metrics.forget(uid="a", namespace="ns", name="a")
    assert gauge(metrics, "Running") == 0 and gauge(metrics, "Succeeded") == 0


def test_reconciles_are_counted_by_trigger_and_result() -> None:
    metrics = OperatorMetrics()
    metrics.reconciles.labels(trigger="pod", result="success").inc()
    metrics.reconciles.labels(trigger="pod", result="error").inc()
    metrics.reconcile_duration.observe(0.02)
    text = generate_latest(metrics.registry).decode()
    assert 'kubetune_operator_reconciles_total{result="success",trigger="pod"} 1.0' in text
    assert 'kubetune_operator_reconciles_total{result="error",trigger="pod"} 1.0' in text
    assert 'kubetune_operator_reconcile_duration_seconds_bucket{le="0.025"} 1.0' in text


def test_a_running_jobs_curves_are_exported_and_removed_when_it_finishes() -> None:
    now = [1000.0]
    metrics = OperatorMetrics(clock=lambda: now[0])
    metrics.observe_phase(uid="u", namespace="team-a", name="run", phase="Running")
    events = [step(3, loss=2.5), EvalEvent(time=T0, step=3, eval_loss=2.25, perplexity=9.5), step(4, loss=2.0)]
    metrics.observe_progress(namespace="team-a", name="run", events=events)
    value = metrics.registry.get_sample_value
    labels = {"namespace": "team-a", "name": "run"}
    assert value("kubetune_finetunejob_train_loss", labels) == 2.0
    assert value("kubetune_finetunejob_eval_loss", labels) == 2.25
    assert value("kubetune_finetunejob_step", labels) == 4 and value("kubetune_finetunejob_total_steps", labels) == 50
    assert value("kubetune_finetunejob_last_report_timestamp_seconds", labels) == 1000.0
    assert value("kubetune_finetunejob_phase", {**labels, "phase": "Running"}) == 1
    now[0] = 1010.0
    metrics.observe_phase(uid="u", namespace="team-a", name="run", phase="Succeeded")
    assert per_job_series(metrics) == []
    assert gauge(metrics, "Succeeded") == 1


def test_a_dpo_jobs_reward_metrics_are_exported_and_removed_with_the_job() -> None:
    metrics = OperatorMetrics()
    metrics.observe_phase(uid="d", namespace="team-a", name="dpo", phase="Running")
    train = PreferenceMetrics(reward_accuracy=0.75, reward_margin=0.3, chosen_reward=0.1, rejected_reward=-0.2)
    held_out = PreferenceMetrics(reward_accuracy=0.5, reward_margin=0.1, chosen_reward=0.0, rejected_reward=-0.1)
    events = [
        step(2, loss=0.6).model_copy(update={"preference": train}),
        EvalEvent(time=T0, step=2, eval_loss=0.65, perplexity=1.9, preference=held_out),
    ]
    metrics.observe_progress(namespace="team-a", name="dpo", events=events)
    value = metrics.registry.get_sample_value
    labels = {"namespace": "team-a", "name": "dpo"}
    assert value("kubetune_finetunejob_reward_accuracy", labels) == 0.75
    assert value("kubetune_finetunejob_reward_margin", labels) == 0.3
    assert value("kubetune_finetunejob_eval_reward_accuracy", labels) == 0.5
    assert value("kubetune_finetunejob_eval_reward_margin", labels) == 0.1
    # An SFT job gets no reward series at all.
    metrics.observe_progress(namespace="team-a", name="sft", events=[step(1, loss=1.0)])
    assert value("kubetune_finetunejob_reward_accuracy", {"namespace": "team-a", "name": "sft"}) is None
    metrics.observe_phase(uid="d", namespace="team-a", name="dpo", phase="Succeeded")
    assert not [line for line in per_job_series(metrics) if 'name="dpo"' in line]


def test_per_job_series_stay_bounded_by_the_live_jobs_over_many_jobs() -> None:
    metrics = OperatorMetrics()
    for i in range(300):
        name = f"job-{i}"
        metrics.observe_phase(uid=name, namespace="ns", name=name, phase="Pending")
        metrics.observe_phase(uid=name, namespace="ns", name=name, phase="Running")
        metrics.observe_progress(namespace="ns", name=name, events=[step(1, loss=1.0)])
        if i >= 5:  # all but five finish (half of them deleted)
            metrics.observe_phase(uid=name, namespace="ns", name=name, phase="Failed" if i % 2 else "Succeeded")
            if i % 3 == 0:
                metrics.forget(uid=name, namespace="ns", name=name)
    names = {line.split('name="')[1].split('"')[0] for line in per_job_series(metrics)}
    assert names == {f"job-{i}" for i in range(5)}
    # 7 per-job series (train loss, step, total steps, tokens/s, learning rate, last report, phase since) and one
    # phase series each; no eval loss was reported.
    assert len(per_job_series(metrics)) == 5 * 8


def test_a_phase_change_moves_the_phase_series_and_its_start_time() -> None:
    now = [50.0]
    metrics = OperatorMetrics(clock=lambda: now[0])
    metrics.observe_phase(uid="u", namespace="ns", name="j", phase="Pending")
    now[0] = 80.0
    metrics.observe_phase(uid="u", namespace="ns", name="j", phase="Pending")  # no change: the start stays
    assert (
        metrics.registry.get_sample_value(
            "kubetune_finetunejob_phase_since_timestamp_seconds", {"namespace": "ns", "name": "j"}
        )
        == 50.0
    )
    metrics.observe_phase(uid="u", namespace="ns", name="j", phase="Running")
    phases = [line for line in per_job_series(metrics) if line.startswith("kubetune_finetunejob_phase{")]
    assert phases == ['kubetune_finetunejob_phase{name="j",namespace="ns",phase="Running"} 1.0']


def test_finished_jobs_gpu_seconds_and_reports_are_counted() -> None:
    metrics = OperatorMetrics()
    metrics.finished_job(namespace="ns", phase="Failed", seconds=600.0)
    metrics.add_gpu_seconds(namespace="ns", seconds=7200.0)
    metrics.add_gpu_seconds(namespace="ns", seconds=0.0)
    metrics.report("rejected", "wrong_job")
    value = metrics.registry.get_sample_value
    assert value("kubetune_finetunejobs_finished_total", {"namespace": "ns", "phase": "Failed"}) == 1
    assert value("kubetune_finetunejob_duration_seconds_count", {"phase": "Failed"}) == 1
    assert value("kubetune_gpu_seconds_total", {"namespace": "ns"}) == 7200.0
    assert value("kubetune_progress_reports_total", {"result": "rejected", "reason": "wrong_job"}) == 1


def test_promtool_accepts_every_metric_name_type_and_help() -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: install Debian's prometheus package (.ci/install.sh does)"
    metrics = OperatorMetrics()
    metrics.observe_phase(uid="u", namespace="ns", name="j", phase="Running")
    metrics.observe_progress(namespace="ns", name="j", events=[step(1, loss=1.0)])
    metrics.finished_job(namespace="ns", phase="Succeeded", seconds=60.0)
    metrics.add_gpu_seconds(namespace="ns", seconds=1.0)
    metrics.report("accepted", "ok")
    metrics.reconciles.labels(trigger="pod", result="success").inc()
    metrics.api_response("GET", "pods", 200)
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=generate_latest(metrics.registry), capture_output=True, check=False
    )
    assert checked.returncode == 0, checked.stdout.decode() + checked.stderr.decode()
    assert checked.stdout.decode().strip() == "" and checked.stderr.decode().strip() == ""
