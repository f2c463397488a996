"""Pure builders: a parsed FineTuneJob and the operator settings in, Kubernetes manifests (dicts) out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kubetune.api.resource import FineTuneJob
from kubetune_operator.builders.config_map import build_config_map
from kubetune_operator.builders.job import build_job
from kubetune_operator.builders.service import build_service
from kubetune_operator.settings import OperatorSettings


@dataclass(frozen=True, kw_only=True)
class Children:
    """The objects a FineTuneJob owns, in creation order (the Job's pods mount the ConfigMap)."""

    config_map: dict[str, Any]
    service: dict[str, Any]
    job: dict[str, Any]

    def in_order(self) -> list[dict[str, Any]]:
        return [self.config_map, self.service, self.job]


def build_children(*, ftj: FineTuneJob, settings: OperatorSettings, report_ca: str | None = None) -> Children:
    """``report_ca``: the PEM CA of the operator's report endpoint, for the pods to trust (None: no reports)."""
    return Children(
        config_map=build_config_map(ftj=ftj, report_ca=report_ca),
        service=build_service(ftj=ftj, settings=settings),
        job=build_job(ftj=ftj, settings=settings),
    )
