"""Failures the trainer turns into documented exit codes (see :mod:`kubetune.api.exit_codes`).

Anything else that escapes is a crash: exit 1, which the Job retries from the newest checkpoint.
"""

from __future__ import annotations

from kubetune.api.exit_codes import ExitCode


class TrainerError(Exception):
    """A failure with a known exit code and a message meant for the user."""

    exit_code: ExitCode = ExitCode.BAD_CONFIG


class ConfigError(TrainerError):
    """The resolved config cannot run; the message names the field (``model.source``, ``method.type``...)."""

    exit_code = ExitCode.BAD_CONFIG


class DivergedError(TrainerError):
    """The loss (or the gradient norm) became NaN or infinite."""

    exit_code = ExitCode.DIVERGED


class StoppedOnSignal(Exception):
    """SIGTERM arrived; a checkpoint was written (``checkpoint_uri``, None when no step had run)."""

    exit_code = ExitCode.CHECKPOINTED_ON_SIGTERM

    def __init__(self, *, step: int, checkpoint_uri: str | None) -> None:
        self.step = step
        self.checkpoint_uri = checkpoint_uri
        super().__init__(f"stopped on SIGTERM at step {step}; checkpoint: {checkpoint_uri or 'none'}")
