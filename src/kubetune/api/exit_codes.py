"""The trainer's exit codes: a contract the operator's Job ``podFailurePolicy`` relies on.

Codes follow sysexits(3) where one fits, so they read the same in ``kubectl describe`` as elsewhere.
Any code not listed here (a crash, a CUDA error, a lost node) is *retryable*: the Job retries the pod,
which resumes from the newest checkpoint, until ``runPolicy.backoffLimit`` is spent.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    # The input data is unusable (bad JSON, missing keys, no assistant turn...). Retrying cannot help.
    BAD_DATA = 65
    # The resolved config cannot run (unknown model files, no chat template, bad target modules...).
    BAD_CONFIG = 78
    # SIGTERM (preemption, suspend, node drain): a checkpoint was written. Never 0, because an indexed
    # Job counts an index that exits 0 as complete; the Job must not count this against backoffLimit.
    CHECKPOINTED_ON_SIGTERM = 75
    # Loss became NaN or infinite. Retrying from the last checkpoint would diverge again.
    DIVERGED = 79


# Exit codes that fail the whole Job at once.
FATAL_EXIT_CODES: tuple[ExitCode, ...] = (ExitCode.BAD_DATA, ExitCode.BAD_CONFIG, ExitCode.DIVERGED)
# Exit codes that do not count against backoffLimit.
IGNORED_EXIT_CODES: tuple[ExitCode, ...] = (ExitCode.CHECKPOINTED_ON_SIGTERM,)

REASONS: dict[int, str] = {
    ExitCode.BAD_DATA: "BadData",
    ExitCode.BAD_CONFIG: "BadConfig",
    ExitCode.CHECKPOINTED_ON_SIGTERM: "CheckpointedOnSigterm",
    ExitCode.DIVERGED: "TrainingDiverged",
}


def reason_for_exit_code(code: int) -> str:
    """A CamelCase reason for a trainer exit code, for conditions and events."""
    if code in REASONS:
        return REASONS[code]
    if code == 137:
        return "Killed"
    return "TrainerError"
