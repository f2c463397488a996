"""The cluster commands against a fake API server: what is sent, what is printed, which exit code."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from cli_fixtures import FAILED_STATUS, FTJ_PATH, RUNNING_STATUS, SPEC, SUCCEEDED_STATUS, FakeKube, ftj
from kubetune_operator.errors import ApiError, api_error

from kubetune.cli import main
from kubetune.cli.errors import CliExit

GOOD = {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "demo"}, "spec": SPEC}


def manifest(tmp_path: Path, *documents: dict[str, Any]) -> str:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump_all(documents), encoding="utf-8")
    return str(path)


def stderr_lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return capsys.readouterr().err.splitlines()


# -- submit ----------------------------------------------------------------------------------------------


def test_submit_with_a_bad_field_names_it_exits_invalid_and_sends_nothing(
    tmp_path: Path, fake_api: FakeKube, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = {**GOOD, "spec": {**SPEC, "method": {"type": "lora", "rank": 0}}}
    assert main(["submit", "-f", manifest(tmp_path, bad)]) == CliExit.INVALID == 3
    err = stderr_lines(capsys)
    assert any("document 0: spec.method.rank" in line for line in err)
    assert err[-1].endswith("1 problem; nothing was submitted") and "Traceback" not in "\n".join(err)
    assert fake_api.requests == []


def test_submit_creates_the_job_in_the_context_namespace_by_server_side_apply(
    tmp_path: Path, fake_api: FakeKube, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_api.answers[("PATCH", f"{FTJ_PATH}/demo")] = ftj("demo")
    assert main(["submit", "-f", manifest(tmp_path, GOOD)]) == 0
    looked, sent = fake_api.requests
    assert (looked["method"], looked["path"]) == ("GET", f"{FTJ_PATH}/demo")
    assert sent["content_type"] == "application/apply-patch+yaml"
    assert sent["body"]["metadata"] == {"name": "demo", "namespace": "team"}
    assert sent["query"] == [("fieldManager", "kubetune"), ("force", "false")]
    assert capsys.readouterr().out == "finetunejob.kubetune.io/demo created in namespace team\n"


def test_submit_apply_is_a_server_side_apply_with_our_field_manager(
    tmp_path: Path, fake_api: FakeKube, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_api.answers[("PATCH", f"{FTJ_PATH}/demo")] = ftj("demo")
    assert main(["submit", "-f", manifest(tmp_path, GOOD), "--apply", "-o", "json"]) == 0
    (sent,) = fake_api.requests
    assert sent["content_type"] == "application/apply-patch+yaml"
    assert ("fieldManager", "kubetune") in sent["query"] and ("force", "false") in sent["query"]
    assert json.loads(capsys.readouterr().out)["metadata"]["name"] == "demo"


def test_submit_of_an_existing_job_says_so_in_one_line(
    tmp_path: Path, fake_api: FakeKube, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_api.answers[("GET", f"{FTJ_PATH}/demo")] = ftj("demo")
    assert main(["submit", "-f", manifest(tmp_path, GOOD)]) == CliExit.ERROR
    assert stderr_lines(capsys) == ["kubetune: error: FineTuneJob team/demo already exists (--apply updates it)"]


def test_submit_rejected_by_the_api_server_schema_is_an_invalid_spec(
    tmp_path: Path, fake_api: FakeKube, capsys: pytest.CaptureFixture[str]
) -> None:
    message = 'FineTuneJob.kubetune.io "demo" is invalid: spec.hyperparameters.epochs: Invalid value: 0'
    fake_api.answers[("PATCH", f"{FTJ_PATH}/demo")] = api_error(status=422, reason="Invalid", message=message)
    assert main(["submit", "-f", manifest(tmp_path, GOOD)]) == CliExit.INVALID
    assert "spec.hyperparameters.epochs" in stderr_lines(capsys)[-1]


def test_submit_refuses_a_namespace_that_contradicts_the_document(
    tmp_path: Path, fake_api: FakeKube, capsys: pytest.CaptureFixture[str]
) -> None:
    placed = {**GOOD, "metadata": {"name": "demo", "namespace": "elsewhere"}}
    assert main(["submit", "-f", manifest(tmp_path, placed), "-n", "team"]) == CliExit.USAGE
    assert "metadata.namespace is 'elsewhere' but --namespace is 'team'" in stderr_lines(capsys)[-1]
    assert fake_api.requests == []


def test_submit_of_a_missing_file_is_one_line(fake_api: FakeKube, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["submit", "-f", "nope.yaml"]) == CliExit.ERROR
    assert stderr_lines(capsys) == ["kubetune: error: nope.yaml: no such file"]


def test_submit_without_file_is_a_usage_error(fake_api: FakeKube, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["submit"]) == CliExit.USAGE
    (line,) = stderr_lines(capsys)
    assert line.startswith("kubetune submit: error: Missing option '-f'") and "--help" in line


# -- status ----------------------------------------------------------------------------------------------


def test_status_prints_the_status_view(fake_api: FakeKube, capsys: pytest.CaptureFixture[str]) -> None:
    fake_api.answers[("GET", f"{FTJ_PATH}/demo")] = ftj("demo", status=RUNNING_STATUS)
    assert main(["status", "demo"]) == 0
    out = capsys.readouterr().out
    assert "Running" in out and "120/400 (30%)" in out and "1.183" in out and "TrainerRunning" in out


@pytest.mark.parametrize("output", ["json", "yaml"])
def test_status_output_formats_are_the_api_object(
    output: str, fake_api: FakeKube, capsys: pytest.CaptureFixture[str]
) -> None:
    obj = ftj("demo", status=RUNNING_STATUS)
    fake_api.answers[("GET", f"{FTJ_PATH}/demo")] = obj
    assert main(["status", "demo", "-o", output]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == obj


def test_status_of_a_missing_job_is_one_line_naming_it(fake_api: FakeKube, capsys: pytest.CaptureFixture[str]) -> None:
    fake_api.answers[("GET", f"{FTJ_PATH}/ghost")] = api_error(status=404, reason="NotFound", message="not found")
    assert main(["status", "ghost"]) == CliExit.ERROR
    assert stderr_lines(capsys) == ["kubetune: error: FineTuneJob team/ghost not found"]


def sequence(*objects: dict[str, Any]) -> Any:
    remaining = list(objects)
    return lambda: remaining.pop(0) if len(remaining) > 1 else remaining[0]


def test_status_watch_prints_a_line_per_change_and_exits_4_when_the_job_fails(
    fake_api: FakeKube, capsys: pytest.CaptureFixture[str]
) -> None:
    running = ftj("demo", status=RUNNING_STATUS)
    fake_api.answers[("GET", f"{FTJ_PATH}/demo")] = sequence(
        ftj("demo"), running, running, ftj("demo", status=FAILED_STATUS)
    )
    assert main(["status", "demo", "-w"]) == CliExit.JOB_FAILED == 4
    lines = [line.split("  ", 1)[1] for line in capsys.readouterr().out.splitlines()]
    assert lines[0] == "Pending"
    assert lines[1].startswith("Running  step 120/400 (30%)  loss 1.183") and lines[1].endswith("ETA 12m")
    assert lines[2].startswith("Failed") and "failure BadData" in lines[2]
    assert len(lines) == 3


def test_status_watch_exits_0_on_success_and_streams_json_lines(
    fake_api: FakeKube, capsys: pytest.CaptureFixture[str]
) -> None:
    done = ftj("demo", status=SUCCEEDED_STATUS)
    done["metadata"]["resourceVersion"] = "2"
    fake_api.answers[("GET", f"{FTJ_PATH}/demo")] = sequence(ftj("demo", status=RUNNING_STATUS), done)
    assert main(["status", "demo", "--watch", "-o", "json"]) == 0
    phases = [json.loads(line)["status"]["phase"] for line in capsys.readouterr().out.splitlines()]
    assert phases == ["Running", "Succeeded"]


def test_status_watch_rides_out_a_few_failed_reads(fake_api: FakeKube) -> None:
    blip = api_error(status=0, reason="MaxRetryError", message="Connection refused")
    reads = iter([ftj("demo", status=RUNNING_STATUS), blip, blip, ftj("demo", status=SUCCEEDED_STATUS)])

    def read() -> Any:
        answer = next(reads)
        if isinstance(answer, ApiError):
            raise answer
        return answer

    fake_api.answers[("GET", f"{FTJ_PATH}/demo")] = read
    assert main(["status", "demo", "-w"]) == 0


# -- list ------------------------------------------------------------------------------------------------


def test_list_prints_a_table(fake_api: FakeKube, capsys: pytest.CaptureFixture[str]) -> None:
    fake_api.answers[("GET", FTJ_PATH)] = {"items": [ftj("b"), ftj("a", status=RUNNING_STATUS)]}
    assert main(["list"]) == 0
    header, first, second = capsys.readouterr().out.splitlines()
    assert header.split() == ["NAME", "PHASE", "PROGRESS", "LOSS", "AGE"]
    assert first.split()[:4] == ["a", "Running", "30%", "1.183"]
    assert second.split()[:4] == ["b", "Pending", "-", "-"]


def test_list_all_namespaces_adds_the_namespace_column(fake_api: FakeKube, capsys: pytest.CaptureFixture[str]) -> None:
    fake_api.answers[("GET", "/apis/kubetune.io/v1alpha1/finetunejobs")] = {"items": [ftj("a")]}
    assert main(["list", "-A"]) == 0
    header, row = capsys.readouterr().out.splitlines()
    assert header.split()[:2] == ["NAMESPACE", "NAME"] and row.split()[:2] == ["team", "a"]


def test_list_as_yaml_is_a_kubernetes_list(fake_api: FakeKube, capsys: pytest.CaptureFixture[str]) -> None:
    fake_api.answers[("GET", FTJ_PATH)] = {"items": [ftj("a")]}
    assert main(["list", "-o", "yaml"]) == 0
    listed = yaml.safe_load(capsys.readouterr().out)
    assert listed["kind"] == "List" and [o["metadata"]["name"] for o in listed["items"]] == ["a"]


def test_list_of_nothing_says_so_on_stderr(fake_api: FakeKube, capsys: pytest.CaptureFixture[str]) -> None:
    fake_api.answers[("GET", FTJ_PATH)] = {"items": []}
    assert main(["list"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == "No FineTuneJobs in namespace team.\n"


def test_list_all_namespaces_overrides_namespace_as_in_kubectl(fake_api: FakeKube) -> None:
    fake_api.answers[("GET", "/apis/kubetune.io/v1alpha1/finetunejobs")] = {"items": []}
    assert main(["list", "-n", "x", "-A"]) == 0
    assert [r["path"] for r in fake_api.requests] == ["/apis/kubetune.io/v1alpha1/finetunejobs"]


def test_list_without_the_crd_says_kubetune_is_missing(fake_api: FakeKube, capsys: pytest.CaptureFixture[str]) -> None:
    message = "the server could not find the requested resource"
    fake_api.answers[("GET", FTJ_PATH)] = api_error(status=404, reason="NotFound", message=message)
    assert main(["list"]) == CliExit.ERROR
    assert stderr_lines(capsys) == [
        "kubetune: error: https://api.example:6443 serves no FineTuneJob API (kubetune.io/v1alpha1): "
        "is kubetune's CRD installed?"
    ]


def test_an_unreachable_api_server_is_one_line(fake_api: FakeKube, capsys: pytest.CaptureFixture[str]) -> None:
    message = (
        "HTTPSConnectionPool(host='api.example', port=6443): Max retries exceeded with url: /apis (Caused by "
        "NewConnectionError(\"HTTPSConnection(host='api.example', port=6443): Failed to establish a new "
        'connection: [Errno 111] Connection refused"))'
    )
    fake_api.answers[("GET", FTJ_PATH)] = api_error(status=0, reason="MaxRetryError", message=message)
    assert main(["list"]) == CliExit.ERROR
    assert stderr_lines(capsys) == [
        "kubetune: error: cannot reach the API server at https://api.example:6443: [Errno 111] Connection refused"
    ]


def test_forbidden_passes_on_the_api_servers_reason(fake_api: FakeKube, capsys: pytest.CaptureFixture[str]) -> None:
    message = 'finetunejobs.kubetune.io is forbidden: User "ann" cannot list resource "finetunejobs"'
    fake_api.answers[("GET", FTJ_PATH)] = api_error(status=403, reason="Forbidden", message=message)
    assert main(["list"]) == CliExit.ERROR
    assert stderr_lines(capsys) == [f"kubetune: error: forbidden: {message}"]


# -- cancel, suspend, resume -----------------------------------------------------------------------------


def test_cancel_deletes_in_the_background(fake_api: FakeKube, capsys: pytest.CaptureFixture[str]) -> None:
    fake_api.answers[("DELETE", f"{FTJ_PATH}/demo")] = {}
    assert main(["cancel", "demo"]) == 0
    (sent,) = fake_api.requests
    assert sent["body"] == {"propagationPolicy": "Background"}
    assert capsys.readouterr().out == "finetunejob.kubetune.io/demo deleted\n"


@pytest.mark.parametrize(("command", "suspend"), [("suspend", True), ("resume", False)])
def test_suspend_and_resume_merge_patch_the_run_policy(
    command: str, suspend: bool, fake_api: FakeKube, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_api.answers[("PATCH", "/apis/kubetune.io/v1alpha1/namespaces/ns/finetunejobs/demo")] = ftj("demo")
    assert main([command, "demo", "-n", "ns"]) == 0
    (sent,) = fake_api.requests
    assert sent["content_type"] == "application/merge-patch+json"
    assert sent["body"] == {"spec": {"runPolicy": {"suspend": suspend}}}
    assert capsys.readouterr().out == f"finetunejob.kubetune.io/demo {command} requested\n"


def test_cancel_of_a_missing_job_fails(fake_api: FakeKube, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cancel", "ghost"]) == CliExit.ERROR
    assert stderr_lines(capsys) == ["kubetune: error: FineTuneJob team/ghost not found"]


# -- logs ------------------------------------------------------------------------------------------------


def pod(name: str, *, index: str, created: str, job: str = "demo-train") -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "creationTimestamp": created,
            "labels": {"batch.kubernetes.io/job-name": job},
            "annotations": {"batch.kubernetes.io/job-completion-index": index},
        }
    }


def test_logs_reads_the_newest_rank0_pods_trainer_container(
    fake_api: FakeKube, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_api.answers[("GET", f"{FTJ_PATH}/demo")] = ftj("demo", status=RUNNING_STATUS)
    fake_api.answers[("GET", "/api/v1/namespaces/team/pods")] = {
        "items": [
            pod("demo-train-0-new", index="0", created="2026-01-01T10:05:00Z"),
            pod("demo-train-0-old", index="0", created="2026-01-01T10:01:00Z"),
            pod("demo-train-1-abc", index="1", created="2026-01-01T10:06:00Z"),
            pod("other-0", index="0", created="2026-01-01T10:07:00Z", job="older-train"),
        ]
    }
    fake_api.answers[("GET", "/api/v1/namespaces/team/pods/demo-train-0-new/log")] = "step 1\nstep 2\n"
    assert main(["logs", "demo", "--tail", "2"]) == 0
    assert capsys.readouterr().out == "step 1\nstep 2\n"
    log_request = fake_api.requests[-1]
    assert ("container", "trainer") in log_request["query"] and ("tailLines", "2") in log_request["query"]


def test_logs_before_any_pod_names_the_phase(fake_api: FakeKube, capsys: pytest.CaptureFixture[str]) -> None:
    fake_api.answers[("GET", f"{FTJ_PATH}/demo")] = ftj("demo", status={"phase": "Pending"})
    fake_api.answers[("GET", "/api/v1/namespaces/team/pods")] = {"items": []}
    assert main(["logs", "demo"]) == CliExit.ERROR
    assert stderr_lines(capsys) == ["kubetune: error: FineTuneJob team/demo has no rank-0 trainer pod (phase: Pending)"]


def test_list_never_cuts_a_long_name(fake_api: FakeKube, capsys: pytest.CaptureFixture[str]) -> None:
    name = "a-finetunejob-name-of-the-longest-allowed-length-x"
    fake_api.answers[("GET", "/apis/kubetune.io/v1alpha1/finetunejobs")] = {
        "items": [ftj(name, status={"phase": "Running"}, suspend=True)]
    }
    assert main(["list", "-A"]) == 0
    row = capsys.readouterr().out.splitlines()[1]
    assert row.split()[:4] == ["team", name, "Running", "(suspending)"]


def test_submit_refuses_other_kinds_in_the_file(
    tmp_path: Path, fake_api: FakeKube, capsys: pytest.CaptureFixture[str]
) -> None:
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}
    assert main(["submit", "-f", manifest(tmp_path, GOOD, config_map)]) == CliExit.INVALID
    assert "document 1: kind: expected FineTuneJob, got 'ConfigMap'" in capsys.readouterr().err
    assert fake_api.requests == []


def test_submit_of_several_documents_prints_a_list(
    tmp_path: Path, fake_api: FakeKube, capsys: pytest.CaptureFixture[str]
) -> None:
    second = {**GOOD, "metadata": {"name": "two"}}
    fake_api.answers[("PATCH", f"{FTJ_PATH}/demo")] = ftj("demo")
    fake_api.answers[("PATCH", f"{FTJ_PATH}/two")] = ftj("two")
    assert main(["submit", "-f", manifest(tmp_path, GOOD, second), "-o", "yaml"]) == 0
    listed = yaml.safe_load(capsys.readouterr().out)
    assert [item["metadata"]["name"] for item in listed["items"]] == ["demo", "two"]
