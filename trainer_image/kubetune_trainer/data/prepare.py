"""``prepare_data``: read → parse → validate → split → tokenize, failing with every problem at once.

Nothing trains until the whole dataset passed: each bad
record is reported with its "file:line" and field, the report is kept (``PreparedData.report``, or
``DataError.report``; the recipe writes it into the artifact as ``data-report.json``) and
:class:`DataError` stops the run (exit code BAD_DATA) instead of training on half a dataset.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from fsspec import AbstractFileSystem

from kubetune.api.spec import DatasetSpec
from kubetune.api.spec import Objective as ObjectiveName
from kubetune.api.uris import PVC_MOUNT_ROOT
from kubetune_trainer.data.formats import DetectionError, Rejected, detect_schema, parse_record
from kubetune_trainer.data.preference import (
    PreferencePair,
    detect_preference_schema,
    parse_preference_record,
    tokenize_pair,
)
from kubetune_trainer.data.report import MAX_REPORTED_ERRORS, token_stats
from kubetune_trainer.data.sources import (
    RawRecord,
    json_type,
    read_file_bytes,
    read_records,
    resolve_data_files,
    sha256_hex,
)
from kubetune_trainer.data.split import split_examples
from kubetune_trainer.data.tokenize import tokenize_examples
from kubetune_trainer.data.types import (
    DataConfigError,
    DataError,
    DataIssue,
    DataReport,
    Example,
    PreparedData,
    PreparedPairs,
    TokenizedExample,
    TokenizedPair,
)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

# Below this many training examples fine-tuning rarely generalizes; it is a warning, not an error.
MIN_RECOMMENDED_EXAMPLES = 100
# Skipped records named one by one in the warnings; the rest are only counted.
MAX_LISTED_SKIPS = 20


class _Schema(Protocol):
    @property
    def format(self) -> str: ...

    @property
    def columns(self) -> dict[str, str]: ...

    def describe(self) -> str: ...


Item = TypeVar("Item", Example, PreferencePair)


@dataclass(frozen=True, kw_only=True)
class _Reader(Generic[Item]):
    """How records become items: SFT examples or preference pairs (the rest of reading is shared)."""

    detect: Callable[[Mapping[str, object]], _Schema]
    parse: Callable[[object, str, Any], Item | Rejected]


def _sft_reader(dataset: DatasetSpec) -> _Reader[Example]:
    return _Reader(
        detect=lambda sample: detect_schema(sample, configured=dataset.format, mapping=dataset.field_mapping),
        parse=lambda value, source, schema: parse_record(value, source=source, schema=schema),
    )


def _preference_reader(dataset: DatasetSpec) -> _Reader[PreferencePair]:
    return _Reader(
        detect=lambda sample: detect_preference_schema(sample, mapping=dataset.field_mapping),
        parse=lambda value, source, schema: parse_preference_record(value, source=source, schema=schema),
    )


@dataclass(kw_only=True)
class _Collector:
    """The report under construction, plus the training files' running hash."""

    report: DataReport
    hasher: hashlib._Hash = field(default_factory=hashlib.sha256)

    def error(self, issue: DataIssue) -> None:
        self.report.error_count += 1
        if len(self.report.errors) < MAX_REPORTED_ERRORS:
            self.report.errors.append(issue)

    def skip(self, issue: DataIssue) -> None:
        self.report.skipped += 1
        if self.report.skipped <= MAX_LISTED_SKIPS:
            self.report.warnings.append(f"{issue}: record skipped")

    def tokenizer_failed(self, err: DataConfigError) -> None:
        """Not the data's fault, but the report is where users look first."""
        self.report.status = "failed"
        self.report.errors.append(DataIssue("", "tokenizer", str(err)))
        self.report.error_count += 1

    def fail_if_errors(self, stage: str) -> None:
        if not self.report.error_count:
            return
        self.report.status = "failed"
        count = self.report.error_count
        summary = f"{stage}: {count} problem{'s' if count != 1 else ''} in the dataset"
        raise DataError(summary, errors=self.report.errors, report=self.report)


def prepare_data(
    dataset: DatasetSpec,
    *,
    tokenizer: PreTrainedTokenizerBase,
    seed: int,
    pvc_root: PurePosixPath = PVC_MOUNT_ROOT,
    remote_fs: AbstractFileSystem | None = None,
) -> PreparedData:
    """Validate and tokenize a dataset. Raises :class:`DataError` (bad data; its ``report`` says what was
    found) or :class:`DataConfigError` (the tokenizer cannot format it).

    ``remote_fs`` stands in for the s3 filesystem (tests, or a store configured by the caller).
    """
    collector = _Collector(report=DataReport(max_seq_length=dataset.max_seq_length))
    train, validation = _read(_sft_reader(dataset), dataset, seed=seed, out=collector, pvc_root=pvc_root, fs=remote_fs)
    report = collector.report
    try:
        train_tokens = _tokenize(train, tokenizer=tokenizer, dataset=dataset, out=collector)
        validation_tokens = _tokenize(validation, tokenizer=tokenizer, dataset=dataset, out=collector)
    except DataConfigError as err:
        collector.tokenizer_failed(err)
        raise
    collector.fail_if_errors("tokenization failed")

    report.train_examples, report.validation_examples = len(train_tokens), len(validation_tokens)
    report.train_tokens = token_stats(train_tokens)
    report.validation_tokens = token_stats(validation_tokens)
    _warn(report, train=train, validation=validation)
    stats = report.train_tokens
    log.info(
        "data ready: %d train / %d validation examples; train tokens %d (%d trained), length p50 %d, p95 %d, max %d",
        report.train_examples,
        report.validation_examples,
        stats.total,
        stats.trained,
        stats.p50,
        stats.p95,
        stats.max,
    )
    for warning in report.warnings:
        log.warning("data: %s", warning)
    return PreparedData(
        train=train_tokens, validation=validation_tokens, report=report, dataset_sha256=collector.hasher.hexdigest()
    )


def check_data(
    dataset: DatasetSpec,
    *,
    seed: int,
    objective: ObjectiveName = "sft",
    pvc_root: PurePosixPath = PVC_MOUNT_ROOT,
    remote_fs: AbstractFileSystem | None = None,
) -> DataReport:
    """The validation pass of :func:`prepare_data` without a tokenizer: read, parse, validate and split.

    Raises :class:`DataError` on the same problems, naming the same records; the report has no token
    statistics. ``kubetune validate-data`` runs this when it is given no tokenizer.
    """
    collector = _Collector(report=DataReport(max_seq_length=dataset.max_seq_length))
    train: Sequence[Example | PreferencePair]
    validation: Sequence[Example | PreferencePair]
    if objective == "dpo":
        train, validation = _read(
            _preference_reader(dataset), dataset, seed=seed, out=collector, pvc_root=pvc_root, fs=remote_fs
        )
    else:
        train, validation = _read(
            _sft_reader(dataset), dataset, seed=seed, out=collector, pvc_root=pvc_root, fs=remote_fs
        )
    report = collector.report
    report.train_examples, report.validation_examples = len(train), len(validation)
    _warn(report, train=train, validation=validation)
    return report


def _read(
    reader: _Reader[Item],
    dataset: DatasetSpec,
    *,
    seed: int,
    out: _Collector,
    pvc_root: PurePosixPath,
    fs: AbstractFileSystem | None,
) -> tuple[list[Item], list[Item]]:
    """Every file read and parsed, then the validation split made: (train, validation) items."""
    train = _load(reader, dataset.train, role="train", out=out, pvc_root=pvc_root, fs=fs)
    validation: list[Item] = []
    if dataset.validation is not None:
        validation = _load(reader, [dataset.validation], role="validation", out=out, pvc_root=pvc_root, fs=fs)
    if not train and not out.report.error_count:
        out.error(DataIssue(", ".join(dataset.train), "train", "no training records"))
    out.fail_if_errors("data validation failed")

    report = out.report
    report.records = len(train) + len(validation)
    if dataset.validation is not None:
        report.validation_source = "file"
    elif dataset.validation_split is not None:
        report.validation_source = "split"
        try:
            train, validation = split_examples(train, fraction=dataset.validation_split, seed=seed)
        except ValueError as err:
            out.error(DataIssue(", ".join(dataset.train), "validationSplit", str(err)))
            out.fail_if_errors("data validation failed")
    log.info("read %d records (%d skipped) from %d files", report.records, report.skipped, len(report.files))
    return train, validation


def _load(
    reader: _Reader[Item],
    uris: list[str],
    *,
    role: str,
    out: _Collector,
    pvc_root: PurePosixPath,
    fs: AbstractFileSystem | None,
) -> list[Item]:
    examples: list[Item] = []
    for position, uri in enumerate(uris):
        where = f"train[{position}]" if role == "train" else "validation"
        try:
            resolved = resolve_data_files(uri, pvc_root=pvc_root, remote_fs=fs)
        except (LookupError, OSError) as err:  # OSError: permissions, an unreachable store
            out.error(DataIssue(uri, where, str(err)))
            continue
        out.report.warnings += [f"{skipped}: skipped, not a data file" for skipped in resolved.skipped]
        for data_file in resolved.files:
            try:
                content = read_file_bytes(data_file)
            except OSError as err:
                out.error(DataIssue(data_file.uri, where, f"cannot read: {err}"))
                continue
            if role == "train":
                out.hasher.update(content)
            errors_before = out.report.error_count
            schema, parsed = _parse_file(reader, read_records(data_file, content), out=out)
            examples += parsed
            out.report.files.append(
                {
                    "uri": data_file.uri,
                    "role": role,
                    "format": schema.format if schema else None,
                    "columns": schema.columns if schema else None,
                    "records": len(parsed),
                    "sha256": sha256_hex(content),
                }
            )
            if schema is not None:
                out.report.detection.append(f"{data_file.uri}: {schema.describe()}")
                out.report.formats[schema.format] = out.report.formats.get(schema.format, 0) + len(parsed)
            elif out.report.error_count == errors_before:
                out.report.warnings.append(f"{data_file.uri}: empty, no records")
    return examples


def _parse_file(
    reader: _Reader[Item], records: Iterable[RawRecord], *, out: _Collector
) -> tuple[_Schema | None, list[Item]]:
    """Parse one file's records; the first JSON object decides the schema for the whole file."""
    schema: _Schema | None = None
    examples: list[Item] = []
    for record in records:
        if record.error is not None:
            out.error(DataIssue(record.source, "", record.error))
            continue
        if schema is None and isinstance(record.value, dict):
            try:
                schema = reader.detect(record.value)
            except DetectionError as err:
                out.error(DataIssue(record.source, "format", str(err)))
                break
        if schema is None:
            out.error(DataIssue(record.source, "", f"expected a JSON object, got {json_type(record.value)}"))
            continue
        parsed = reader.parse(record.value, record.source, schema)
        if not isinstance(parsed, Rejected):
            examples.append(parsed)
            continue
        for issue in parsed.errors:
            out.error(issue)
        if not parsed.errors:
            out.skip(parsed.blanks[0])
    return schema, examples


def _tokenize(
    examples: list[Example], *, tokenizer: PreTrainedTokenizerBase, dataset: DatasetSpec, out: _Collector
) -> list[TokenizedExample]:
    outcome = tokenize_examples(examples, tokenizer=tokenizer, max_seq_length=dataset.max_seq_length)
    for issue in outcome.issues:
        out.error(issue)
    out.report.truncated += outcome.truncated
    return [e for e in outcome.examples if e is not None]


def _content_key(item: Example | PreferencePair) -> object:
    if isinstance(item, PreferencePair):
        return (item.prompt, item.chosen, item.rejected)
    return (item.messages, item.text)


def _warn(
    report: DataReport, *, train: Sequence[Example | PreferencePair], validation: Sequence[Example | PreferencePair]
) -> None:
    if report.truncated:
        report.warnings.append(
            f"{report.truncated} example(s) longer than maxSeqLength={report.max_seq_length} tokens were "
            "truncated; their ends get no loss"
        )
    if len(train) < MIN_RECOMMENDED_EXAMPLES:
        report.warnings.append(
            f"only {len(train)} training examples; fine-tuning usually needs at least "
            f"{MIN_RECOMMENDED_EXAMPLES} to generalize"
        )
    counts = Counter(_content_key(e) for e in train)
    report.duplicates = sum(n - 1 for n in counts.values())
    if report.duplicates:
        report.warnings.append(f"{report.duplicates} training example(s) duplicate an earlier one")
    leaked = sum(1 for e in validation if _content_key(e) in counts)
    if leaked:
        report.warnings.append(f"{leaked} validation example(s) also appear in the training data")


def prepare_preference_data(
    dataset: DatasetSpec,
    *,
    tokenizer: PreTrainedTokenizerBase,
    seed: int,
    pvc_root: PurePosixPath = PVC_MOUNT_ROOT,
    remote_fs: AbstractFileSystem | None = None,
) -> PreparedPairs:
    """:func:`prepare_data` for preference pairs (method.objective dpo): the same reading, validation, split
    and report, each pair tokenized as two sequences after one prompt. The report's token statistics count
    both answers' sequences."""
    collector = _Collector(report=DataReport(max_seq_length=dataset.max_seq_length))
    train, validation = _read(
        _preference_reader(dataset), dataset, seed=seed, out=collector, pvc_root=pvc_root, fs=remote_fs
    )
    report = collector.report
    try:
        train_pairs = _tokenize_pairs(train, tokenizer=tokenizer, dataset=dataset, out=collector)
        validation_pairs = _tokenize_pairs(validation, tokenizer=tokenizer, dataset=dataset, out=collector)
    except DataConfigError as err:
        collector.tokenizer_failed(err)
        raise
    collector.fail_if_errors("tokenization failed")
    report.train_examples, report.validation_examples = len(train_pairs), len(validation_pairs)
    report.train_tokens = token_stats([side for p in train_pairs for side in (p.chosen, p.rejected)])
    report.validation_tokens = token_stats([side for p in validation_pairs for side in (p.chosen, p.rejected)])
    _warn(report, train=train, validation=validation)
    log.info(
        "preference data ready: %d train / %d validation pairs; longest pair %d tokens",
        report.train_examples,
        report.validation_examples,
        max((p.length for p in train_pairs), default=0),
    )
    for warning in report.warnings:
        log.warning("data: %s", warning)
    return PreparedPairs(
        train=train_pairs, validation=validation_pairs, report=report, dataset_sha256=collector.hasher.hexdigest()
    )


def _tokenize_pairs(
    pairs: list[PreferencePair], *, tokenizer: PreTrainedTokenizerBase, dataset: DatasetSpec, out: _Collector
) -> list[TokenizedPair]:
    tokenized: list[TokenizedPair] = []
    for pair in pairs:
        result = tokenize_pair(pair, tokenizer=tokenizer, max_seq_length=dataset.max_seq_length)
        if isinstance(result, DataIssue):
            out.error(result)
            continue
        out.report.truncated += int(result.truncated)
        tokenized.append(result)
    return tokenized
