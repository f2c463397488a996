"""The data layer's values: what every record format parses to, what tokenization yields, its errors.

These names are the contract between the data layer and the training loop; everything else in
``kubetune_trainer.data`` is an implementation detail behind :func:`prepare_data`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, NamedTuple

from kubetune.api.exit_codes import ExitCode

Role = Literal["system", "user", "assistant"]
ROLES: tuple[Role, ...] = ("system", "user", "assistant")

# The label value PyTorch's cross-entropy (and every Hugging Face model) ignores.
IGNORE_INDEX = -100


@dataclass(frozen=True, kw_only=True)
class Message:
    role: Role
    content: str


@dataclass(frozen=True, kw_only=True)
class Example:
    """One training record in canonical form: exactly one of ``messages`` and ``text`` is set."""

    messages: tuple[Message, ...] | None
    text: str | None
    # Where it came from, "file.jsonl:17", for error messages and the report.
    source: str


@dataclass(frozen=True, kw_only=True)
class TokenizedExample:
    """Token ids and labels of the same length; labels are IGNORE_INDEX where no loss is taken."""

    input_ids: list[int]
    labels: list[int]

    @property
    def row_length(self) -> int:
        """What the example takes in an unpacked batch's row: its tokens."""
        return len(self.input_ids)


class DataIssue(NamedTuple):
    """One problem with one record (or file): where ("file.jsonl:17"), which field, what is wrong."""

    source: str
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.source}: {self.field}" if self.field else self.source
        return f"{where}: {self.message}"


@dataclass(frozen=True, kw_only=True)
class TokenStats:
    """Token counts over a split; all zero when the split is empty."""

    count: int = 0
    total: int = 0
    # Tokens that carry a label (the loss is taken on them).
    trained: int = 0
    min: int = 0
    mean: float = 0.0
    p50: int = 0
    p95: int = 0
    max: int = 0


@dataclass(kw_only=True)
class DataReport:
    """What the validation pass saw; written as ``data-report.json`` and shown to the user on failure.

    Mutable because the pipeline fills it stage by stage; :func:`prepare_data` hands out the finished one.
    """

    status: Literal["ok", "failed"] = "ok"
    # Per data file: {"uri", "role" (train/validation), "format", "fields", "records", "sha256"}.
    files: list[dict[str, object]] = field(default_factory=list)
    # How the format and field names were chosen, one line per file, e.g.
    # "prompt_completion (prompt='question', completion='answer'), auto-detected".
    detection: list[str] = field(default_factory=list)
    records: int = 0
    # Examples per source format, e.g. {"messages": 10, "alpaca": 3}.
    formats: dict[str, int] = field(default_factory=dict)
    train_examples: int = 0
    validation_examples: int = 0
    validation_source: Literal["none", "file", "split"] = "none"
    train_tokens: TokenStats = field(default_factory=TokenStats)
    validation_tokens: TokenStats = field(default_factory=TokenStats)
    max_seq_length: int = 0
    # Examples longer than max_seq_length, cut to it (their tail gets no loss).
    truncated: int = 0
    # Records left out because a prompt, answer or message is empty (each named in the warnings).
    skipped: int = 0
    duplicates: int = 0
    warnings: list[str] = field(default_factory=list)
    errors: list[DataIssue] = field(default_factory=list)
    # Errors seen in total; ``errors`` keeps only the first MAX_REPORTED_ERRORS.
    error_count: int = 0


class DataError(Exception):
    """The data is unusable (bad records, missing files...). The trainer exits with BAD_DATA.

    ``errors`` lists each problem as (source "file:line", field, message); ``report`` is what the validation pass
    had found when it stopped (its ``error_count`` counts the problems beyond those listed).
    """

    exit_code = ExitCode.BAD_DATA

    def __init__(
        self,
        summary: str,
        *,
        errors: list[DataIssue] | None = None,
        report: DataReport | None = None,
    ) -> None:
        self.summary = summary
        self.errors: list[DataIssue] = list(errors or [])
        self.report = report
        super().__init__(self._render())

    def _render(self) -> str:
        shown = self.errors[:20]
        lines = [self.summary, *(f"  {issue}" for issue in shown)]
        if len(self.errors) > len(shown):
            lines.append(f"  ... and {len(self.errors) - len(shown)} more")
        return "\n".join(lines)


class DataConfigError(Exception):
    """The data cannot be used with this configuration: the tokenizer has no chat template (or no EOS
    token), a chat template renders a conversation unstably, or s3:// support is not installed.
    Not the data's fault, so the trainer exits with BAD_CONFIG.
    """

    exit_code = ExitCode.BAD_CONFIG


@dataclass(frozen=True, kw_only=True)
class PreparedData:
    """Tokenized splits ready for :func:`plan_batches`, with the report and the dataset's content hash."""

    train: list[TokenizedExample]
    validation: list[TokenizedExample]
    report: DataReport
    # sha256 over the training files' stored bytes, in reading order (for the output manifest).
    dataset_sha256: str


@dataclass(frozen=True, kw_only=True)
class TokenizedPair:
    """Both answers tokenized after the same prompt tokens; labels are IGNORE_INDEX on the prompt."""

    chosen: TokenizedExample
    rejected: TokenizedExample
    # Whether an answer was cut to max_seq_length (a warning: the pair still trains).
    truncated: bool

    @property
    def length(self) -> int:
        """Tokens of the longer sequence (at most max_seq_length)."""
        return max(len(self.chosen.input_ids), len(self.rejected.input_ids))

    @property
    def shared(self) -> int:
        """Leading tokens both sequences have in common: the prompt, and any answer tokens that agree."""
        shared = 0
        for a, b in zip(self.chosen.input_ids, self.rejected.input_ids, strict=False):
            if a != b:
                break
            shared += 1
        return shared

    @property
    def row_length(self) -> int:
        """What the pair's row takes in a batch: the shared tokens once, then the rest of each sequence."""
        return len(self.chosen.input_ids) + len(self.rejected.input_ids) - self.shared


@dataclass(frozen=True, kw_only=True)
class PreparedPairs:
    """Tokenized preference pairs (method.objective dpo), with the report and the dataset's content hash."""

    train: list[TokenizedPair]
    validation: list[TokenizedPair]
    report: DataReport
    dataset_sha256: str
