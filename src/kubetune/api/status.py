"""``FineTuneJob.status``: what the operator observed, recomputed from the cluster on every change."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field

from kubetune.api.base import ApiModel
from kubetune.api.profile import ProfileDefaults
from kubetune.api.progress import PreferenceMetrics

Phase = Literal["Pending", "Validating", "Running", "Succeeded", "Failed", "Suspended"]
ConditionStatus = Literal["True", "False", "Unknown"]

# Condition types, per the Kubernetes API conventions: each one is a yes/no observation.
VALIDATED = "Validated"
DATA_VALIDATED = "DataValidated"
RUNNING = "Running"
SUSPENDED = "Suspended"
SUCCEEDED = "Succeeded"
FAILED = "Failed"
CONDITION_TYPES = (VALIDATED, DATA_VALIDATED, RUNNING, SUSPENDED, SUCCEEDED, FAILED)
# Bounds of status.dataset: a dataset with 100,000 bad lines still gives a status of a few KiB.
MAX_DATA_PROBLEMS = 10
MAX_DATA_WARNINGS = 10
MAX_DATA_TEXT = 300


class Condition(ApiModel):
    """A metav1.Condition."""

    type: str = Field(max_length=316, description="Condition type, e.g. Validated, Running, Succeeded.")
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(
        max_length=1024, pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$", description="CamelCase reason."
    )
    message: str = Field(default="", max_length=32768, description="Human-readable details.")
    last_transition_time: datetime = Field(description="When status last changed.")
    observed_generation: int | None = Field(default=None, ge=0, description="spec generation observed.")


class Failure(ApiModel):
    """Why the job failed, down to the pod and container when one is to blame."""

    reason: str = Field(description="CamelCase reason, e.g. BadData, OOMKilled, BackoffLimitExceeded.")
    message: str = Field(default="", description="Details, e.g. the scheduler's or the trainer's message.")
    pod: str | None = Field(default=None, description="The pod that failed.")
    container: str | None = Field(default=None, description="The container that failed.")
    exit_code: int | None = Field(default=None, description="The container's exit code.")


class Progress(ApiModel):
    """Training progress, as reported by the trainer."""

    step: int = Field(default=0, ge=0, description="Optimizer steps done.")
    total_steps: int | None = Field(default=None, ge=0, description="Optimizer steps planned.")
    epoch: float | None = Field(default=None, ge=0, description="Fractional epoch.")
    percent: str | None = Field(default=None, description="step/totalSteps as a percentage, e.g. 42%.")
    eta_seconds: int | None = Field(default=None, ge=0, description="Estimated seconds to finish.")
    eta: str | None = Field(default=None, description="etaSeconds for people, e.g. 1h02m or 4m10s.")
    updated_at: datetime | None = Field(default=None, description="When the trainer last reported.")


class Metrics(ApiModel):
    """The latest training metrics."""

    loss: float | None = Field(default=None, description="Training loss (mean over the last step).")
    eval_loss: float | None = Field(default=None, description="Validation loss at the last evaluation.")
    perplexity: float | None = Field(default=None, description="exp(evalLoss).")
    learning_rate: float | None = Field(default=None, description="Current learning rate.")
    tokens_per_second: float | None = Field(default=None, description="Trained tokens per second.")
    trained_tokens: int | None = Field(default=None, ge=0, description="Tokens trained on so far.")
    preference: PreferenceMetrics | None = Field(
        default=None, description="DPO only: reward metrics of the last step (loss is then the DPO loss)."
    )
    eval_preference: PreferenceMetrics | None = Field(
        default=None, description="DPO only: reward metrics on the held-out pairs at the last evaluation."
    )


class CheckpointStatus(ApiModel):
    """One checkpoint the trainer wrote (the newest few are kept in status.checkpoints)."""

    step: int = Field(ge=0, description="Optimizer steps done when it was written.")
    uri: str = Field(description="Where the checkpoint is.")
    time: datetime = Field(description="When the trainer reported it.")
    train_loss: float | None = Field(default=None, description="Training loss of the last step before it.")
    eval_loss: float | None = Field(default=None, description="Validation loss of the last evaluation before it.")


class OutputStatus(ApiModel):
    """The recorded output artifact."""

    uri: str = Field(description="Where the artifact is.")
    manifest_sha256: str | None = Field(default=None, description="sha256 of the output manifest.")
    merged: bool = Field(default=False, description="Whether a merged model was written.")


class DataProblem(ApiModel):
    """One bad record (or file): where it is and what is wrong."""

    file: str = Field(max_length=MAX_DATA_TEXT, description="The data file's URI.")
    line: int | None = Field(default=None, ge=1, description="Line (JSONL), row (CSV, Parquet) or record number.")
    field: str = Field(default="", max_length=128, description="The field at fault, when one is.")
    reason: str = Field(max_length=MAX_DATA_TEXT, description="What is wrong.")


class TokenCounts(ApiModel):
    """Token counts of the training examples, as the model's tokenizer counts them."""

    total: int = Field(default=0, ge=0, description="Tokens in all training examples (after truncation).")
    trained: int = Field(default=0, ge=0, description="Tokens the loss is taken on (the answers).")
    p50: int = Field(default=0, ge=0, description="Median tokens per example.")
    p95: int = Field(default=0, ge=0, description="95th percentile of tokens per example.")
    max: int = Field(default=0, ge=0, description="Tokens in the longest example.")


class DatasetStatus(ApiModel):
    """What the data check found (phase Validating). Bounded: the first problems and warnings only."""

    spec_hash: str = Field(max_length=64, description="Digest of the spec fields the data was checked for.")
    format: str | None = Field(
        default=None, max_length=128, description="Detected record format(s), e.g. prompt_completion."
    )
    train_examples: int = Field(default=0, ge=0, description="Training examples.")
    validation_examples: int = Field(default=0, ge=0, description="Held-out examples (file or split).")
    train_tokens: TokenCounts = Field(default_factory=TokenCounts, description="Training token counts.")
    truncated_examples: int = Field(default=0, ge=0, description="Examples cut to dataset.maxSeqLength.")
    skipped_examples: int = Field(default=0, ge=0, description="Records left out for an empty prompt or answer.")
    duplicate_examples: int = Field(default=0, ge=0, description="Training examples repeating an earlier one.")
    sha256: str | None = Field(default=None, max_length=64, description="sha256 of the training files' bytes.")
    error_count: int = Field(default=0, ge=0, description="Problems found in all (errors lists the first ones).")
    errors: list[DataProblem] = Field(
        default_factory=list, max_length=MAX_DATA_PROBLEMS, description="The first problems, with file and line."
    )
    warnings: list[Annotated[str, Field(max_length=MAX_DATA_TEXT)]] = Field(
        default_factory=list, max_length=MAX_DATA_WARNINGS, description="The first warnings."
    )
    warning_count: int = Field(default=0, ge=0, description="Warnings in all.")
    checked_at: datetime | None = Field(default=None, description="When the check finished.")


class ResolvedHyperparameters(ApiModel):
    """The values the training pods run with: every auto or omitted hyperparameter made concrete."""

    epochs: int = Field(ge=1, description="Passes over the training data.")
    total_steps: int = Field(ge=1, description="Optimizer steps in all.")
    per_device_batch_size: int = Field(ge=1, description="Examples (or packed rows) per process per micro-step.")
    gradient_accumulation_steps: int = Field(ge=1, description="Micro-steps per optimizer step.")
    world_size: int = Field(ge=1, description="Training processes (nodes x max(gpusPerNode, 1)).")
    learning_rate: float = Field(gt=0, description="Peak learning rate.")
    warmup_steps: int = Field(ge=0, description="Linear warmup steps.")
    chosen: list[Annotated[str, Field(max_length=64)]] = Field(
        default_factory=list, max_length=16, description="The fields kubetune chose (auto or omitted in the spec)."
    )


class Estimate(ApiModel):
    """What the training will cost: from the data check, and once running from measured step times."""

    train_tokens: int | None = Field(default=None, ge=0, description="Tokens to train on: tokens x epochs.")
    optimizer_steps: int | None = Field(default=None, ge=0, description="Optimizer steps (hyperparameters).")
    parameters: int | None = Field(default=None, ge=0, description="The base model's parameter count.")
    tokens_per_second: float | None = Field(default=None, ge=0, description="Assumed throughput of the whole job.")
    duration_seconds: int | None = Field(default=None, ge=0, description="Estimated training time.")
    duration: str | None = Field(default=None, max_length=32, description="durationSeconds for people, e.g. 1h02m.")
    gpu_hours: float | None = Field(default=None, ge=0, description="GPUs x estimated hours.")
    basis: str | None = Field(
        default=None, max_length=MAX_DATA_TEXT, description="The throughput table row used, and whether measured."
    )
    estimated_finish_time: datetime | None = Field(
        default=None, description="Once running: when the trainer's measured step times say it will finish."
    )


class AppliedProfile(ApiModel):
    """The FineTuneProfile this job runs under, recorded when the operator first saw the job: later edits of
    the profile change new jobs, never this one."""

    name: str = Field(max_length=253, description="The FineTuneProfile's name.")
    chosen_by: Literal["namespace", "spec", "default"] = Field(
        description="namespace (its kubetune.io/profile label), spec (spec.profile) or default (spec.default)."
    )
    uid: str | None = Field(default=None, max_length=64, description="The profile's uid.")
    resource_version: str | None = Field(default=None, max_length=64, description="Its resourceVersion then.")
    generation: int | None = Field(default=None, ge=0, description="Its generation then.")
    defaults: ProfileDefaults = Field(
        default_factory=ProfileDefaults, description="Its defaults then: what the children are built with."
    )
    max_active_deadline_seconds: int | None = Field(
        default=None, ge=1, description="Its limits.maxActiveDeadlineSeconds then (the deadline of a job without one)."
    )
    applied: list[Annotated[str, Field(max_length=MAX_DATA_TEXT)]] = Field(
        default_factory=list, max_length=32, description="What the profile filled in, e.g. spec.trainer.image: ..."
    )
    missing: bool | None = Field(
        default=None, description="True once the profile was deleted (or replaced): the job goes on with this record."
    )


class FineTuneJobStatus(ApiModel):
    """Observed state."""

    phase: Phase | None = Field(
        default=None, description="Pending, Validating, Running, Succeeded, Failed or Suspended."
    )
    conditions: list[Condition] = Field(default_factory=list, description="Latest observations.")
    observed_generation: int | None = Field(default=None, ge=0, description="Last spec generation seen.")
    job_name: str | None = Field(default=None, description="The batch/v1 Job running the trainer.")
    start_time: datetime | None = Field(default=None, description="When the trainer first ran.")
    completion_time: datetime | None = Field(default=None, description="When the job succeeded or failed.")
    progress: Progress | None = Field(default=None, description="Training progress.")
    metrics: Metrics | None = Field(default=None, description="Latest metrics.")
    failure: Failure | None = Field(default=None, description="Why the job failed.")
    output: OutputStatus | None = Field(default=None, description="The output artifact, once written.")
    checkpoints: list[CheckpointStatus] = Field(
        default_factory=list, max_length=5, description="The newest checkpoints, oldest first (at most 5)."
    )
    trained_tokens: int | None = Field(default=None, ge=0, description="Non-padding tokens trained on so far.")
    gpu_seconds: float | None = Field(
        default=None,
        ge=0,
        description="GPUs times seconds the trainer pods have run (for billing), as of gpuSecondsUpdatedAt.",
    )
    gpu_seconds_updated_at: datetime | None = Field(default=None, description="When gpuSeconds was last added to.")
    dataset: DatasetStatus | None = Field(default=None, description="What the data check found.")
    hyperparameters: ResolvedHyperparameters | None = Field(
        default=None, description="The resolved hyperparameters the training pods run with."
    )
    estimate: Estimate | None = Field(default=None, description="Estimated tokens, steps, duration and GPU-hours.")
    profile: AppliedProfile | None = Field(default=None, description="The FineTuneProfile the job runs under.")
