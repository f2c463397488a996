"""``FineTuneJob.status``: what the operator observed, recomputed from the cluster on every change."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from kubetune.api.base import ApiModel

Phase = Literal["Pending", "Running", "Succeeded", "Failed", "Suspended"]
ConditionStatus = Literal["True", "False", "Unknown"]

# Condition types, per the Kubernetes API conventions: each one is a yes/no observation.
VALIDATED = "Validated"
RUNNING = "Running"
SUSPENDED = "Suspended"
SUCCEEDED = "Succeeded"
FAILED = "Failed"
CONDITION_TYPES = (VALIDATED, RUNNING, SUSPENDED, SUCCEEDED, FAILED)


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


class FineTuneJobStatus(ApiModel):
    """Observed state."""

    phase: Phase | None = Field(default=None, description="Pending, Running, Succeeded, Failed or Suspended.")
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
