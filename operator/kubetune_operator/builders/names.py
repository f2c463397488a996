"""Deterministic names and labels of a FineTuneJob's children.

Names derive from the FineTuneJob's name only, so a restarted operator finds (and never duplicates) the
children it created before. ``kubetune.api.resource.MAX_NAME_LENGTH`` (50) keeps every derived name valid:
the Job's pods get the hostname ``<job>-<index>``, a DNS label of at most 63 characters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kubetune.api.resource import API_VERSION, KIND, FineTuneJob

# Every child (and every trainer pod) carries this label; its value is the FineTuneJob's name.
FINETUNEJOB_LABEL = "kubetune.io/finetunejob"
MANAGED_BY = "kubetune-operator"
TRAINER_CONTAINER = "trainer"
# Set by the Job controller on each pod of an Indexed Job.
COMPLETION_INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
# On the Job: a digest of the Job spec the operator built it from (see builders.job.job_spec_hash).
JOB_SPEC_HASH_ANNOTATION = "kubetune.io/job-spec-hash"
# The report endpoint's CA, a key of the trainer's ConfigMap (so a file in the mounted config directory).
REPORT_CA_FILE_NAME = "report-ca.crt"


# On the data-check Job: the digest of the spec fields it checks (kubetune.api.preflight.preflight_spec_hash).
PREFLIGHT_SPEC_HASH_ANNOTATION = "kubetune.io/preflight-spec-hash"
PREFLIGHT_CONTAINER = "preflight"


@dataclass(frozen=True, kw_only=True)
class ChildNames:
    config_map: str
    service: str
    job: str
    # The CPU-only data-check Job (phase Validating).
    preflight_job: str


def child_names(*, name: str) -> ChildNames:
    return ChildNames(
        config_map=f"{name}-config", service=f"{name}-workers", job=f"{name}-train", preflight_job=f"{name}-check"
    )


def child_labels(*, name: str) -> dict[str, str]:
    """Labels on every child and trainer pod; the operator's watches select on the first one."""
    return {
        FINETUNEJOB_LABEL: name,
        "app.kubernetes.io/name": "kubetune-trainer",
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/managed-by": MANAGED_BY,
    }


def owner_reference(*, ftj: FineTuneJob) -> dict[str, Any]:
    """The controller reference that makes garbage collection delete the children with their owner."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": ftj.metadata.name,
        "uid": ftj.metadata.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def child_metadata(*, ftj: FineTuneJob, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": ftj.metadata.namespace,
        "labels": child_labels(name=ftj.metadata.name),
        "ownerReferences": [owner_reference(ftj=ftj)],
    }


def name_problems(*, name: str) -> list[str]:
    """What the CRD cannot check about a name the children's names derive from."""
    # A Service name is a DNS-1035 label: it must start with a letter and holds no dots, where a
    # FineTuneJob's name (a DNS subdomain) may do both.
    problems = []
    if name and not name[0].isalpha():
        problems.append("metadata.name: must start with a letter (the rendezvous Service name derives from it)")
    if "." in name:
        problems.append("metadata.name: must not contain dots (the rendezvous Service name derives from it)")
    return problems
