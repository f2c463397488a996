"""The trainer's progress events: a typed stream from the trainer to whoever watches it.

The trainer writes one event per line as JSON (camelCase, like every kubetune API object) to stdout
and/or an events file; the operator parses the lines back with :func:`parse_event` to update
``status.progress`` / ``status.metrics``. Every event carries ``event`` (the discriminator), ``time`` and
the optimizer ``step`` it refers to, so a consumer can drop stale or repeated events after a restart.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import Field, TypeAdapter

from kubetune.api.base import ApiModel

# Lines start with this prefix on stdout, so a consumer can pick events out of mixed log output.
EVENT_LINE_PREFIX = "KUBETUNE_EVENT "


def _now() -> datetime:
    return datetime.now(UTC)


class _Event(ApiModel):
    time: datetime = Field(default_factory=_now, description="When the trainer emitted the event (UTC).")
    step: int = Field(default=0, ge=0, description="Optimizer steps done when the event was emitted.")


class StartedEvent(_Event):
    """Training is about to run its first (or, after a restart, its next) step."""

    event: Literal["started"] = "started"
    total_steps: int = Field(ge=0, description="Optimizer steps planned for the whole run.")
    epochs: int = Field(ge=1, description="Passes over the training data.")
    world_size: int = Field(ge=1, description="Training processes (ranks).")
    train_examples: int = Field(ge=0, description="Training examples after validation and the split.")
    validation_examples: int = Field(ge=0, description="Held-out examples.")
    resumed_from_step: int | None = Field(default=None, ge=0, description="Checkpoint step resumed from.")


class PreferenceMetrics(ApiModel):
    """Preference-tuning (DPO) metrics over a set of pairs. A reward is beta x (log-probability of the answer
    under the tuned model - under the reference model), summed over the answer's tokens."""

    reward_accuracy: float = Field(ge=0, le=1, description="Fraction of pairs whose chosen reward is the higher.")
    reward_margin: float = Field(description="Mean of chosen reward - rejected reward.")
    chosen_reward: float = Field(description="Mean reward of the preferred answers.")
    rejected_reward: float = Field(description="Mean reward of the answers not preferred.")


class StepEvent(_Event):
    """One optimizer step finished."""

    event: Literal["step"] = "step"
    total_steps: int = Field(ge=0, description="Optimizer steps planned.")
    epoch: float = Field(ge=0, description="Fractional epoch reached.")
    loss: float = Field(description="Mean loss per label token over the step (all ranks, all micro-batches).")
    learning_rate: float = Field(description="Learning rate used for this step.")
    grad_norm: float | None = Field(default=None, description="Gradient norm before clipping.")
    tokens_per_second: float = Field(ge=0, description="Non-padding tokens per second over the step, all ranks.")
    trained_tokens: int = Field(ge=0, description="Non-padding tokens processed so far, all ranks.")
    preference: PreferenceMetrics | None = Field(
        default=None, description="DPO only: the step's reward metrics (loss is then the DPO loss per pair)."
    )


class EvalEvent(_Event):
    """An evaluation on the held-out data finished."""

    event: Literal["eval"] = "eval"
    eval_loss: float = Field(description="Mean loss per label token on the validation data.")
    perplexity: float = Field(description="exp(evalLoss).")
    preference: PreferenceMetrics | None = Field(
        default=None, description="DPO only: reward metrics on the held-out pairs (evalLoss is the DPO loss)."
    )


class CheckpointSavedEvent(_Event):
    """A complete checkpoint was written."""

    event: Literal["checkpoint"] = "checkpoint"
    uri: str = Field(description="Where the checkpoint is.")
    reason: Literal["periodic", "sigterm", "final"] = Field(description="Why it was written.")


class FinishedEvent(_Event):
    """The run succeeded; the output manifest is written."""

    event: Literal["finished"] = "finished"
    output_uri: str = Field(description="The output location.")
    manifest_sha256: str = Field(description="sha256 of manifest.json.")
    loss: float | None = Field(default=None, description="Training loss of the last step.")
    eval_loss: float | None = Field(default=None, description="Final validation loss.")
    trained_tokens: int = Field(ge=0, description="Non-padding tokens processed in total.")
    merged: bool = Field(default=False, description="Whether a merged model was written.")


class FailedEvent(_Event):
    """The run stopped without an output: the reason matches the exit code's reason."""

    event: Literal["failed"] = "failed"
    reason: str = Field(description="CamelCase reason, e.g. BadData, BadConfig, TrainingDiverged.")
    message: str = Field(description="What went wrong, naming the field, file or step.")
    exit_code: int = Field(description="The trainer's exit code.")


class StoppedEvent(_Event):
    """The run stopped on SIGTERM after writing a checkpoint; it resumes from there when restarted."""

    event: Literal["stopped"] = "stopped"
    reason: Literal["CheckpointedOnSigterm"] = "CheckpointedOnSigterm"
    checkpoint_uri: str | None = Field(default=None, description="The checkpoint written, if any step ran.")
    exit_code: int = Field(default=75, description="The trainer's exit code.")


ProgressEvent = Annotated[
    StartedEvent | StepEvent | EvalEvent | CheckpointSavedEvent | FinishedEvent | FailedEvent | StoppedEvent,
    Field(discriminator="event"),
]

_ADAPTER: TypeAdapter[ProgressEvent] = TypeAdapter(ProgressEvent)


def event_to_json(event: ProgressEvent) -> str:
    """One line of JSON (no newline), camelCase, without unset optional fields."""
    return event.model_dump_json(by_alias=True, exclude_none=True)


def parse_event(line: str) -> ProgressEvent:
    """Parse one event line, with or without :data:`EVENT_LINE_PREFIX`."""
    return _ADAPTER.validate_json(line.removeprefix(EVENT_LINE_PREFIX))
