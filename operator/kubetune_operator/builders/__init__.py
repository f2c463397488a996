"""Pure builders: a parsed FineTuneJob and the operator settings in, Kubernetes manifests (dicts) out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kubetune.api.preflight import preflight_spec_hash
from kubetune.api.resource import FineTuneJob
from kubetune.api.status import DatasetStatus, ResolvedHyperparameters
from kubetune_operator.builders.config_map import build_config_map
from kubetune_operator.builders.job import build_job, build_preflight_job
from kubetune_operator.builders.service import build_service
from kubetune_operator.settings import OperatorSettings


@dataclass(frozen=True, kw_only=True)
class Children:
    """The objects a FineTuneJob owns, in creation order (the Jobs' pods mount the ConfigMap).

    ``preflight_job`` (the CPU-only data check) runs before ``job``; None when spec.dataset.preflight is skip.
    """

    config_map: dict[str, Any]
    service: dict[str, Any]
    job: dict[str, Any]
    preflight_job: dict[str, Any] | None = None

    def in_order(self) -> list[dict[str, Any]]:
        first = [self.preflight_job] if self.preflight_job is not None else []
        return [self.config_map, self.service, *first, self.job]


def build_children(
    *,
    ftj: FineTuneJob,
    settings: OperatorSettings,
    report_ca: str | None = None,
    checked: tuple[ResolvedHyperparameters, DatasetStatus] | None = None,
) -> Children:
    """``report_ca``: the PEM CA of the operator's report endpoint, for the pods to trust (None: no reports).
    ``checked``: the data check's result once it passed (the training pods' config carries it)."""
    preflight = None
    if ftj.spec.dataset.preflight != "skip":
        preflight = build_preflight_job(ftj=ftj, settings=settings, spec_hash=preflight_spec_hash(ftj.spec))
    return Children(
        config_map=build_config_map(ftj=ftj, report_ca=report_ca, checked=checked),
        service=build_service(ftj=ftj, settings=settings),
        job=build_job(ftj=ftj, settings=settings),
        preflight_job=preflight,
    )
