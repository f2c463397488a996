"""The session's operator as these tests drive it, and the objects it leaves labelled in a namespace.

The session's operator is the only one acting on the ``t-*`` namespaces; a second operator beside it would
race it on the same objects, so tests that need it down stop it, and always start it again.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from kubetune_operator.builders.names import FINETUNEJOB_LABEL
from kubetune_operator.k8s import Kube, collection_path
from prometheus_client.parser import text_string_to_metric_families

# The kinds a FineTuneJob owns (and its Job's pods), as (apiVersion, plural).
CHILD_KINDS = (("v1", "configmaps"), ("v1", "services"), ("batch/v1", "jobs"))
LABELLED_KINDS = (*CHILD_KINDS, ("v1", "pods"))


class Operator(Protocol):
    """What these tests use of the ``operator`` fixture's ``OperatorProcess``."""

    log_path: Path

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def env(self) -> dict[str, str]: ...

    def metrics(self) -> str: ...


@contextmanager
def operator_stopped(operator: Operator) -> Iterator[None]:
    """The operator stopped (SIGTERM) for the block, and started again (waiting for /healthz) after it."""
    operator.stop()
    try:
        yield
    finally:
        operator.start()


def labelled(
    kube: Kube, *, namespace: str, api_version: str, plural: str, name: str | None = None
) -> list[dict[str, Any]]:
    """Objects carrying the FineTuneJob label: of FineTuneJob ``name``, or of any FineTuneJob."""
    selector = FINETUNEJOB_LABEL if name is None else f"{FINETUNEJOB_LABEL}={name}"
    path = collection_path(api_version=api_version, plural=plural, namespace=namespace)
    return list(kube.request("GET", path, query=[("labelSelector", selector)])["items"])


def leftovers(kube: Kube, *, namespace: str, name: str | None = None) -> dict[str, list[str]]:
    """Names of the labelled objects still present, by plural (empty lists dropped)."""
    found = {
        plural: [
            o["metadata"]["name"] for o in labelled(kube, namespace=namespace, api_version=v, plural=plural, name=name)
        ]
        for v, plural in LABELLED_KINDS
    }
    return {plural: names for plural, names in found.items() if names}


def metric_sum(metrics_text: str, sample: str, **labels: str) -> float:
    """The sum of the samples named ``sample`` (e.g. ``..._total``) whose labels include ``labels``."""
    return sum(
        s.value
        for family in text_string_to_metric_families(metrics_text)
        for s in family.samples
        if s.name == sample and all(s.labels.get(key) == value for key, value in labels.items())
    )
