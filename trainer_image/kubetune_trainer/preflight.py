"""The data check (phase Validating): the trainer's data pass on a CPU, before any GPU is claimed.

It reads every data file, tokenizes with the model's tokenizer (tokenizer and config files only, never
the weights), resolves every ``auto`` hyperparameter for the target hardware with the same function the
training uses, counts the base model's parameters from its config and estimates the cost. The result is a
:class:`~kubetune.api.preflight.PreflightResult`, bounded for a termination message.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

from fsspec import AbstractFileSystem

from kubetune.api.preflight import MAX_MESSAGE_CHARS, PreflightResult
from kubetune.api.status import (
    MAX_DATA_PROBLEMS,
    MAX_DATA_TEXT,
    MAX_DATA_WARNINGS,
    DataProblem,
    DatasetStatus,
    TokenCounts,
)
from kubetune.api.status import ResolvedHyperparameters as ResolvedStatus
from kubetune.api.trainer_config import TrainerConfig, Validated
from kubetune.api.uris import PVC_MOUNT_ROOT
from kubetune_trainer import modeling
from kubetune_trainer.data import (
    DataConfigError,
    DataError,
    DataIssue,
    DataReport,
    PreparedData,
    PreparedPairs,
    prepare_data,
    prepare_preference_data,
)
from kubetune_trainer.errors import ConfigError
from kubetune_trainer.estimate import estimate_training
from kubetune_trainer.settings import DeviceType, ResolvedHyperparameters, resolve_hyperparameters

log = logging.getLogger(__name__)

# DataProblem.field's bound in kubetune.api.status.
MAX_FIELD_CHARS = 128


# DPO's computed tokens (pairs' rows) are multiplied by this: one reference forward pass per training pass.
DPO_REFERENCE_COST = 4 / 3


def run_preflight(
    config: TrainerConfig,
    *,
    pvc_root: PurePosixPath = PVC_MOUNT_ROOT,
    cache_dir: Path,
    remote_fs: AbstractFileSystem | None = None,
) -> PreflightResult:
    """Check the data for ``config.resources``. Bad records → BadData, an unusable model source,
    tokenizer or config → BadConfig; anything else (a Hub timeout) raises, and the Job retries.

    ``remote_fs`` stands in for the s3 filesystem of the model and the data (tests).
    """
    try:
        source = modeling.resolve_model_source(
            config.model, pvc_root=pvc_root, cache_dir=cache_dir, tokenizer_only=True, remote_fs=remote_fs
        )
        tokenizer = modeling.load_tokenizer(source)
        parameters = modeling.count_base_parameters(source)
        prepare = prepare_preference_data if config.method.objective == "dpo" else prepare_data
        data = prepare(
            config.dataset,
            tokenizer=tokenizer,
            seed=config.hyperparameters.seed,
            pvc_root=pvc_root,
            remote_fs=remote_fs,
        )
    except DataError as err:
        return PreflightResult(outcome="BadData", message=_clip(err.summary), dataset=failed_dataset_status(err))
    except (ConfigError, DataConfigError) as err:
        return bad_config(str(err))
    resources = config.resources
    device: DeviceType = "cpu" if resources.gpus_per_node == 0 else "cuda"
    lengths = [item.row_length for item in data.train]
    hp = resolve_hyperparameters(
        config.hyperparameters,
        method=config.method.type,
        objective=config.method.objective,
        dataset=config.dataset,
        lengths=lengths,
        world_size=resources.world_size,
        device=device,
    )
    tokens = data.report.train_tokens.total
    if isinstance(data, PreparedPairs):
        # What the model computes: a pair's row (the prompt once, both answers), which the reference model
        # reads once more, forward only: about a third of a forward and backward pass.
        tokens = round(sum(lengths) * DPO_REFERENCE_COST)
    estimate = estimate_training(
        tokens_per_epoch=tokens,
        data_passes=hp.data_passes,
        optimizer_steps=hp.total_steps,
        parameters=parameters,
        method=config.method.type,
        resources=resources,
    )
    dataset = dataset_status(data)
    hardware = (
        f"{resources.nodes} CPU pod(s)"
        if resources.gpus_per_node == 0
        else f"{resources.world_size} x {resources.gpu_product or 'GPU'}"
    )
    message = (
        f"{dataset.train_examples} training examples, {hp.epochs} epoch(s), {hp.total_steps} optimizer steps; "
        f"about {estimate.duration} on {hardware} (estimate)"
    )
    return PreflightResult(
        outcome="Passed",
        message=_clip(message),
        dataset=dataset,
        hyperparameters=hyperparameters_status(hp),
        estimate=estimate,
    )


def bad_config(message: str) -> PreflightResult:
    """The result for a config the check cannot run with (unreadable, invalid)."""
    return PreflightResult(outcome="BadConfig", message=_clip(message))


def dataset_status(data: PreparedData | PreparedPairs) -> DatasetStatus:
    """What a dataset that passed looks like in status.dataset."""
    return _from_report(data.report, sha256=data.dataset_sha256, errors=[])


def failed_dataset_status(err: DataError) -> DatasetStatus:
    """What was found before the data failed: counts so far, the first problems, how many in all."""
    report = err.report or DataReport(error_count=len(err.errors))
    return _from_report(report, sha256=None, errors=err.errors)


def _from_report(report: DataReport, *, sha256: str | None, errors: list[DataIssue]) -> DatasetStatus:
    stats = report.train_tokens
    formats = sorted(report.formats, key=lambda name: -report.formats[name])
    return DatasetStatus(
        # The operator sets specHash: it digests the spec, which this pod need not see whole.
        spec_hash="",
        format=", ".join(formats)[:128] or None,
        train_examples=report.train_examples,
        validation_examples=report.validation_examples,
        train_tokens=TokenCounts(total=stats.total, trained=stats.trained, p50=stats.p50, p95=stats.p95, max=stats.max),
        truncated_examples=report.truncated,
        skipped_examples=report.skipped,
        duplicate_examples=report.duplicates,
        sha256=sha256,
        error_count=max(report.error_count, len(errors)),
        errors=[data_problem(issue) for issue in errors[:MAX_DATA_PROBLEMS]],
        warnings=[_clip(w, limit=MAX_DATA_TEXT) for w in report.warnings[:MAX_DATA_WARNINGS]],
        warning_count=len(report.warnings),
        checked_at=datetime.now(UTC),
    )


def data_problem(issue: DataIssue) -> DataProblem:
    """A data layer issue ("uri:17" or "uri:#3", field, message) as status.dataset.errors lists it."""
    file, line = issue.source, None
    where, _, tail = issue.source.rpartition(":")
    number = tail.removeprefix("#")
    if where and number.isdigit() and int(number) >= 1:
        file, line = where, int(number)
    if len(file) > MAX_DATA_TEXT:  # keep the file name, the informative end of a long URI
        file = "…" + file[-(MAX_DATA_TEXT - 1) :]
    return DataProblem(
        file=file,
        line=line,
        field=_clip(issue.field, limit=MAX_FIELD_CHARS),
        reason=_clip(issue.message, limit=MAX_DATA_TEXT),
    )


def hyperparameters_status(hp: ResolvedHyperparameters) -> ResolvedStatus:
    return ResolvedStatus(
        epochs=hp.epochs,
        total_steps=hp.total_steps,
        per_device_batch_size=hp.per_device_batch_size,
        gradient_accumulation_steps=hp.gradient_accumulation_steps,
        world_size=hp.world_size,
        learning_rate=hp.learning_rate,
        warmup_steps=hp.warmup_steps,
        chosen=list(hp.chosen),
    )


def differences_from_check(
    validated: Validated, *, train_examples: int, dataset_sha256: str, total_steps: int
) -> list[str]:
    """What the training read that differs from what the data check saw (empty: nothing changed)."""
    differences = []
    if validated.dataset_sha256 is not None and validated.dataset_sha256 != dataset_sha256:
        differences.append(f"dataset sha256 {dataset_sha256[:12]}, the check saw {validated.dataset_sha256[:12]}")
    if validated.train_examples != train_examples:
        differences.append(f"{train_examples} training examples, the check saw {validated.train_examples}")
    if validated.total_steps != total_steps:
        differences.append(f"{total_steps} optimizer steps planned, the check planned {validated.total_steps}")
    return differences


def _clip(text: str, *, limit: int = MAX_MESSAGE_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
