"""The batch/v1 Indexed Job that runs one trainer pod per node, and its podFailurePolicy."""

from __future__ import annotations

from typing import Any

from kubetune.api.exit_codes import FATAL_EXIT_CODES, IGNORED_EXIT_CODES
from kubetune.api.resource import FineTuneJob
from kubetune_operator.builders.names import KUEUE_QUEUE_LABEL, TRAINER_CONTAINER, child_metadata, child_names
from kubetune_operator.builders.pod import build_pod_template
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
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": job_spec}
