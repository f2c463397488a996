"""The ConfigMap holding the trainer's config files, and the CA of the operator's report endpoint."""

from __future__ import annotations

from typing import Any

from kubetune.api.resource import FineTuneJob
from kubetune.api.status import DatasetStatus, ResolvedHyperparameters
from kubetune.api.trainer_config import CONFIG_FILE_NAME, PREFLIGHT_CONFIG_FILE_NAME, RunIdentity, TrainerConfig
from kubetune_operator.builders.names import REPORT_CA_FILE_NAME, child_metadata, child_names


def trainer_config(*, ftj: FineTuneJob) -> TrainerConfig:
    run = RunIdentity(name=ftj.metadata.name, namespace=ftj.metadata.namespace, uid=ftj.metadata.uid)
    return TrainerConfig.from_spec(ftj.spec, run=run)


def build_config_map(
    *,
    ftj: FineTuneJob,
    report_ca: str | None = None,
    checked: tuple[ResolvedHyperparameters, DatasetStatus] | None = None,
) -> dict[str, Any]:
    """``checked``: the data check's resolved hyperparameters and dataset, once it passed. The training
    pods' config then carries them, so the pods run with exactly what status.hyperparameters says; the
    check itself reads the spec-only config (a re-check after a spec change starts from the spec)."""
    config = trainer_config(ftj=ftj)
    training = config if checked is None else config.with_resolved(checked[0], dataset=checked[1])
    data = {CONFIG_FILE_NAME: training.to_yaml()}
    if ftj.spec.dataset.preflight != "skip":
        data[PREFLIGHT_CONFIG_FILE_NAME] = config.to_yaml()
    if report_ca is not None:
        # Mounted as a directory (not subPath), so a new CA reaches running pods within the kubelet's sync.
        data[REPORT_CA_FILE_NAME] = report_ca
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": child_metadata(ftj=ftj, name=child_names(name=ftj.metadata.name).config_map),
        "data": data,
    }
