"""Phase Validating for real: the data check's pod runs the trainer image on the real node, on a CPU.

Bad data fails the FineTuneJob from the check's termination message before any training pod exists;
good data fills status.dataset, hyperparameters and estimate, and the training pod then runs with
exactly the resolved values (its own started event says how many steps it planned).
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from e2e_env import JOBS_NAMESPACE, Volumes, cpu_spec, events_in, kubectl, phases_until
from kube_objects import FineTuneJobs, condition_of, status_of
from kubetune_operator.builders.names import PREFLIGHT_CONTAINER, child_names
from kubetune_testenv.cluster import Cluster

from kubetune.api.trainer_config import CONFIG_FILE_NAME

pytestmark = [pytest.mark.cluster, pytest.mark.real_node]


def checked_spec(*, output: str, data: str = "pvc://datasets/lamini-64.jsonl") -> dict[str, Any]:
    """A CPU job with its epochs, batch size and learning rate left to kubetune, and the check on."""
    spec = cpu_spec(output=output, data=data)
    spec["dataset"]["preflight"] = "warn"
    spec["hyperparameters"] = {"epochs": "auto", "perDeviceBatchSize": "auto"}
    return spec


def pods_by_job(ftjs: FineTuneJobs, name: str) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for pod in ftjs.children("pods", name):
        out.setdefault((pod["metadata"].get("labels") or {}).get("job-name", ""), []).append(pod)
    return out


def test_bad_data_fails_in_the_check_pod_and_no_training_pod_is_made(ftjs: FineTuneJobs) -> None:
    name = "checked-bad"
    spec = checked_spec(output=f"pvc://outputs/{name}", data="pvc://datasets/bad.jsonl")
    spec["dataset"].pop("validationSplit")
    ftjs.create(name, spec=spec)
    phases = phases_until(ftjs, name, "Failed")
    assert phases[0] == "Validating", phases

    status = status_of(ftjs.get(name) or {})
    assert status["failure"]["reason"] == "BadData" and status["failure"]["container"] == PREFLIGHT_CONTAINER
    assert "pvc://datasets/bad.jsonl:2" in status["failure"]["message"], status["failure"]["message"]
    assert [(p["line"], p["field"]) for p in status["dataset"]["errors"]] == [(2, "answer")]
    names = child_names(name=name)
    pods = pods_by_job(ftjs, name)
    assert list(pods) == [names.preflight_job], "only the check's pod ran"
    (container,) = pods[names.preflight_job][0]["status"]["containerStatuses"]
    assert container["state"]["terminated"]["exitCode"] == 65
    assert [j["metadata"]["name"] for j in ftjs.children("jobs", name)] == [names.preflight_job]


def test_good_data_is_checked_then_trained_with_the_resolved_values(
    cluster: Cluster, ftjs: FineTuneJobs, volumes: Volumes
) -> None:
    name = "checked-good"
    ftjs.create(name, spec=checked_spec(output=f"pvc://outputs/{name}"))
    phases = phases_until(ftjs, name, "Succeeded")
    assert phases[0] == "Validating" and "Running" in phases, phases

    final = ftjs.get(name) or {}
    status = status_of(final)
    dataset, hp, estimate = status["dataset"], status["hyperparameters"], status["estimate"]
    assert (dataset["trainExamples"], dataset["validationExamples"]) == (48, 16)
    assert dataset["format"] == "prompt_completion" and dataset["trainTokens"]["max"] <= 128
    # auto on a CPU job: 3 epochs for a small dataset, 8 rows per step.
    assert (hp["epochs"], hp["perDeviceBatchSize"], hp["worldSize"]) == (3, 8, 1)
    assert set(hp["chosen"]) >= {"epochs", "perDeviceBatchSize", "learningRate"}
    assert estimate["optimizerSteps"] == hp["totalSteps"] and estimate["duration"]
    assert "gpuHours" not in estimate  # a CPU job claims no GPU
    assert condition_of(final, "DataValidated")["status"] == "True"

    (config_map,) = ftjs.children("configmaps", name)
    resolved = yaml.safe_load(config_map["data"][CONFIG_FILE_NAME])["hyperparameters"]
    assert (resolved["epochs"], resolved["perDeviceBatchSize"]) == (hp["epochs"], hp["perDeviceBatchSize"])

    names = child_names(name=name)
    (train_pod,) = pods_by_job(ftjs, name)[names.job]
    log = kubectl(cluster, "logs", f"--namespace={JOBS_NAMESPACE}", train_pod["metadata"]["name"], "-c", "trainer")
    started = [e for e in events_in(log.stdout) if e.event == "started"]
    assert [(e.total_steps, e.epochs) for e in started] == [(hp["totalSteps"], hp["epochs"])]
    assert status["progress"]["step"] == hp["totalSteps"]
