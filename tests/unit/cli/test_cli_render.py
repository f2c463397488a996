"""Status, list and watch output are pure functions of the FineTuneJob object and the time."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime

import pytest
import yaml
from cli_fixtures import FAILED_STATUS, RUNNING_STATUS, SUCCEEDED_STATUS, ftj
from rich.console import Console

from kubetune.cli.errors import CliError
from kubetune.cli.render import (
    JobView,
    OutputFormat,
    condition_rows,
    dump,
    list_headers,
    list_rows,
    object_ref,
    short_duration,
    status_fields,
    status_renderable,
    watch_line,
)

NOW = datetime(2026, 1, 1, 10, 11, 0, tzinfo=UTC)


def text_of(renderable: object, *, width: int = 120) -> str:
    console = Console(file=io.StringIO(), width=width, color_system=None)
    console.print(renderable)
    return console.file.getvalue()  # type: ignore[attr-defined,no-any-return]


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (0, "0s"),
        (59, "59s"),
        (119, "119s"),
        (125, "2m5s"),
        (600, "10m"),
        (750, "12m"),
        (3 * 3600 + 60, "3h1m"),
        (10 * 3600, "10h"),
        (50 * 3600, "2d2h"),
        (9 * 86400, "9d"),
    ],
)
def test_durations_read_like_kubectl_ages(seconds: int, shown: str) -> None:
    assert short_duration(seconds) == shown


def test_running_status_shows_progress_loss_throughput_and_eta() -> None:
    fields = dict(status_fields(JobView.from_object(ftj("demo", status=RUNNING_STATUS)), now=NOW))
    assert fields["Phase"] == "Running"
    assert fields["Progress"] == "120/400 (30%)"
    assert fields["Epoch"] == "0.60"
    assert (fields["Loss"], fields["Eval loss"]) == ("1.183", "1.252")
    assert (fields["Tokens/s"], fields["Trained tokens"]) == ("5,322", "1,234,567")
    assert fields["ETA"] == "12m"
    assert fields["Started"] == "10m ago"
    assert fields["Job"] == "demo-train"
    assert "Failure" not in fields and "Output" not in fields


def test_a_dpo_job_shows_its_reward_metrics_and_an_sft_job_none() -> None:
    preference = {"rewardAccuracy": 0.8125, "rewardMargin": 0.4213, "chosenReward": 0.12, "rejectedReward": -0.3013}
    status = {**RUNNING_STATUS, "metrics": {**RUNNING_STATUS["metrics"], "evalPreference": preference}}
    fields = dict(status_fields(JobView.from_object(ftj("demo", status=status)), now=NOW))
    assert fields["Eval rewards"] == "accuracy 81%, margin 0.421 (chosen 0.12, rejected -0.301)"
    assert "Rewards" not in fields
    sft = dict(status_fields(JobView.from_object(ftj("demo", status=RUNNING_STATUS)), now=NOW))
    assert "Eval rewards" not in sft


def test_failed_status_names_the_reason_pod_container_exit_code_and_message() -> None:
    view = JobView.from_object(ftj("demo", status=FAILED_STATUS))
    fields = dict(status_fields(view, now=NOW))
    assert fields["Failure"] == "BadData"
    assert fields["Failed pod"] == "demo-train-0-abcde (container trainer, exit code 65)"
    assert fields["Message"] == "train.jsonl:17: messages[0].role: role is 'robot'"
    assert "ETA" not in fields and "Loss" not in fields
    assert watch_line(view) == (
        "Failed  step 3/400 (0%)  failure BadData: train.jsonl:17: messages[0].role: role is 'robot'"
    )


def test_succeeded_status_shows_the_output_and_no_eta() -> None:
    view = JobView.from_object(ftj("demo", status=SUCCEEDED_STATUS))
    fields = dict(status_fields(view, now=NOW))
    assert fields["Output"] == "pvc://out/demo, merged model"
    assert "ETA" not in fields
    assert watch_line(view) == "Succeeded  step 400/400 (100%)  loss 0.91  eval 1.02  output pvc://out/demo"


def test_a_new_job_without_status_is_pending() -> None:
    view = JobView.from_object(ftj("demo"))
    assert dict(status_fields(view, now=NOW)) == {"Name": "demo", "Namespace": "team", "Phase": "Pending"}
    assert watch_line(view) == "Pending"


def test_a_suspend_in_flight_is_shown_next_to_the_phase() -> None:
    assert watch_line(JobView.from_object(ftj("a", status={"phase": "Running"}, suspend=True))) == (
        "Running (suspending)"
    )
    assert watch_line(JobView.from_object(ftj("a", status={"phase": "Suspended"}))) == "Suspended (resuming)"
    assert watch_line(JobView.from_object(ftj("a", status={"phase": "Suspended"}, suspend=True))) == "Suspended"


def test_status_view_has_fields_a_progress_bar_and_conditions() -> None:
    text = text_of(status_renderable(JobView.from_object(ftj("demo", status=RUNNING_STATUS)), now=NOW))
    assert "Progress" in text and "120/400 (30%)" in text and "━" in text
    assert "TYPE" in text and "TrainerRunning" in text and "1/1 pods running" in text


def test_condition_rows_carry_type_status_reason_age_message() -> None:
    view = JobView.from_object(ftj("demo", status=RUNNING_STATUS))
    assert condition_rows(view.status, now=NOW)[1] == ("Running", "True", "TrainerRunning", "11m", "1/1 pods running")


def test_list_rows_are_name_phase_progress_loss_age() -> None:
    views = [JobView.from_object(ftj("a", status=RUNNING_STATUS)), JobView.from_object(ftj("b"))]
    assert list_headers(all_namespaces=False) == ("NAME", "PHASE", "PROGRESS", "LOSS", "AGE")
    assert list_rows(views, now=NOW, all_namespaces=False) == [
        ("a", "Running", "30%", "1.183", "11m"),
        ("b", "Pending", "-", "-", "11m"),
    ]
    assert list_rows(views, now=NOW, all_namespaces=True)[0][:2] == ("team", "a")


def test_percent_is_computed_when_the_trainer_gave_none() -> None:
    view = JobView.from_object(ftj("a", status={"phase": "Running", "progress": {"step": 50, "totalSteps": 200}}))
    assert list_rows([view], now=NOW, all_namespaces=False)[0][2] == "25%"


def test_a_status_this_version_cannot_read_is_one_error_naming_the_field() -> None:
    with pytest.raises(CliError) as err:
        JobView.from_object(ftj("a", status={"phase": "Running", "progress": {"step": -1}}))
    assert err.value.message.startswith("FineTuneJob team/a: status.progress.step:")


def test_json_and_yaml_dumps_round_trip_the_object() -> None:
    obj = ftj("demo", status=RUNNING_STATUS)
    assert json.loads(dump(obj, output=OutputFormat.json)) == obj
    assert yaml.safe_load(dump(obj, output=OutputFormat.yaml)) == obj
    assert object_ref("demo") == "finetunejob.kubetune.io/demo"


def test_status_shows_what_the_data_check_found() -> None:
    status = {
        "phase": "Running",
        "dataset": {
            "specHash": "h",
            "trainExamples": 1260,
            "validationExamples": 140,
            "trainTokens": {"total": 241930, "p95": 390, "max": 1800},
            "warningCount": 1,
            "warnings": ["only 40 training examples"],
        },
        "hyperparameters": {
            "epochs": 3,
            "totalSteps": 474,
            "perDeviceBatchSize": 8,
            "gradientAccumulationSteps": 1,
            "worldSize": 1,
            "learningRate": 0.0002,
            "warmupSteps": 15,
            "chosen": ["epochs", "learningRate"],
        },
        "estimate": {"duration": "12m", "gpuHours": 0.2, "basis": "NVIDIA-H100, lora (estimate)"},
        "profile": {"name": "small", "chosenBy": "namespace", "missing": True},
    }
    fields = dict(status_fields(JobView.from_object(ftj("demo", status=status)), now=NOW))
    assert fields["Data"].startswith("1,260 train / 140 validation examples")
    assert "p95 390" in fields["Data"]
    assert fields["Data warnings"] == "only 40 training examples"
    assert fields["Plan"] == (
        "3 epoch(s), 474 steps of 8 x 1, learning rate 0.0002 (kubetune chose epochs, learningRate)"
    )
    assert fields["Estimate"] == "12m, 0.2 GPU-hours (NVIDIA-H100, lora (estimate))"
    assert fields["Profile"] == "small (by namespace, deleted since)"
