"""The batch/v1 Indexed Job that runs one trainer pod per node, and its podFailurePolicy."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from kubetune.api.exit_codes import FATAL_EXIT_CODES, IGNORED_EXIT_CODES
from kubetune.api.resource import FineTuneJob
from kubetune_operator.builders.names import (
    JOB_SPEC_HASH_ANNOTATION,
    KUEUE_QUEUE_LABEL,
    PREFLIGHT_CONTAINER,
    PREFLIGHT_SPEC_HASH_ANNOTATION,
    TRAINER_CONTAINER,
    child_metadata,
    child_names,
)
from kubetune_operator.builders.pod import build_pod_template, build_preflight_pod_template
from kubetune_operator.settings import OperatorSettings


def pod_failure_policy() -> dict[str, Any]:
    """Rules are evaluated in order; the first match decides. See kubetune.api.exit_codes for the codes."""
    return {
        "rules": [
            # Bad data, bad config, divergence: a retry would fail the same way.
            {
                "action": "FailJob",
                "onExitCodes": {
                    "containerName": TRAINER_CONTAINER,
                    "operator": "In",
                    "values": sorted(int(code) for code in FATAL_EXIT_CODES),
                },
            },
            # The trainer checkpointed on SIGTERM (suspend, drain): not the trainer's fault.
            {
                "action": "Ignore",
                "onExitCodes": {
                    "containerName": TRAINER_CONTAINER,
                    "operator": "In",
                    "values": sorted(int(code) for code in IGNORED_EXIT_CODES),
                },
            },
            # Preemption, eviction, node shutdown: the pod is replaced without spending backoffLimit.
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        ]
    }


def build_job(*, ftj: FineTuneJob, settings: OperatorSettings) -> dict[str, Any]:
    spec = ftj.spec
    metadata = child_metadata(ftj=ftj, name=child_names(name=ftj.metadata.name).job)
    if spec.run_policy.queue_name is not None:
        metadata["labels"][KUEUE_QUEUE_LABEL] = spec.run_policy.queue_name
    job_spec: dict[str, Any] = {
        "completionMode": "Indexed",
        "completions": spec.resources.nodes,
        "parallelism": spec.resources.nodes,
        "backoffLimit": spec.run_policy.backoff_limit,
        "suspend": spec.run_policy.suspend,
        "podFailurePolicy": pod_failure_policy(),
        # With a podFailurePolicy only "Failed" is allowed; it also keeps a replacement pod from taking
        # the hostname of a still-terminating one during the rendezvous.
        "podReplacementPolicy": "Failed",
        "template": build_pod_template(ftj=ftj, settings=settings),
    }
    if spec.run_policy.active_deadline_seconds is not None:
        job_spec["activeDeadlineSeconds"] = spec.run_policy.active_deadline_seconds
    metadata["annotations"] = {JOB_SPEC_HASH_ANNOTATION: job_spec_hash(job_spec)}
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": job_spec}


def job_spec_hash(job_spec: dict[str, Any]) -> str:
    """A digest of what the operator asked for, minus suspend (which it changes in place).

    Compared with the desired one to notice a spec change the existing Job cannot take (its pod template
    is immutable). The live Job is not hashed: Kueue and the API server's defaults change it.
    """
    wanted = {key: value for key, value in job_spec.items() if key != "suspend"}
    return hashlib.sha256(json.dumps(wanted, sort_keys=True).encode()).hexdigest()[:16]


def build_preflight_job(*, ftj: FineTuneJob, settings: OperatorSettings, spec_hash: str) -> dict[str, Any]:
    """The CPU-only data check (phase Validating): one pod, at most one retry, a deadline.

    It carries no Kueue queue label unless the settings name a CPU queue: the spec's queue holds GPU quota,
    and a check waiting for (or holding) GPU quota would defeat its purpose.
    """
    metadata = child_metadata(ftj=ftj, name=child_names(name=ftj.metadata.name).preflight_job)
    if settings.preflight_queue_name is not None:
        metadata["labels"][KUEUE_QUEUE_LABEL] = settings.preflight_queue_name
    metadata["annotations"] = {PREFLIGHT_SPEC_HASH_ANNOTATION: spec_hash}
    job_spec: dict[str, Any] = {
        "completions": 1,
        "parallelism": 1,
        # One retry for a crash or a lost node; bad data and bad config fail at once.
        "backoffLimit": 1,
        "activeDeadlineSeconds": settings.preflight_deadline_seconds,
        "suspend": ftj.spec.run_policy.suspend,
        "podFailurePolicy": {
            "rules": [
                {
                    "action": "FailJob",
                    "onExitCodes": {
                        "containerName": PREFLIGHT_CONTAINER,
                        "operator": "In",
                        "values": sorted(int(code) for code in FATAL_EXIT_CODES),
                    },
                },
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            ]
        },
        "podReplacementPolicy": "Failed",
        "template": build_preflight_pod_template(ftj=ftj, settings=settings),
    }
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": job_spec}
