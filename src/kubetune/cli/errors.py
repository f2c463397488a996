"""The command line's exit codes and its one error type.

Exit codes are a contract for scripts (``docs/cli.md``): they tell an unusable spec apart from an API
failure, and ``kubetune status -w`` ending in ``Failed`` apart from both.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import IntEnum


class CliExit(IntEnum):
    OK = 0
    # The API server refused or could not be reached, the object does not exist, a file cannot be read.
    ERROR = 1
    # Bad arguments or options (what argparse and click use).
    USAGE = 2
    # The FineTuneJob manifest or the dataset is invalid: nothing was sent or trained.
    INVALID = 3
    # ``kubetune status --watch`` saw the FineTuneJob end in phase Failed.
    JOB_FAILED = 4
    # Ctrl-C (128 + SIGINT, what shells report).
    INTERRUPTED = 130


class CliError(Exception):
    """A failure the user can act on: ``message`` is one line naming the field, file or object;
    ``details`` are printed above it, one problem a line (each bad field of a manifest, each bad record)."""

    def __init__(self, message: str, *, code: CliExit = CliExit.ERROR, details: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.details = tuple(details)


class NotFoundError(CliError):
    """The object (or its namespace) does not exist."""
