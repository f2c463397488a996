"""``kubetune validate-data``: the trainer's data validation pass, run here before a job is submitted.

The checks are the trainer's own (:func:`kubetune_trainer.data.check_data`, or
:func:`~kubetune_trainer.data.prepare_data` with a tokenizer), so a file that passes here passes in the
pod. The trainer is imported only when this command runs: the other commands need no torch.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console

from kubetune.api.spec import DatasetFormat, DatasetSpec
from kubetune.cli.errors import CliError, CliExit
from kubetune.cli.options import OutputOption
from kubetune.cli.render import OutputFormat, count, dump

if TYPE_CHECKING:
    from kubetune_trainer.data import DataReport

# The DatasetSpec field each option sets, to name the option when the spec rejects a value.
OPTION_OF_FIELD = {
    "train": "FILE",
    "validation": "--validation",
    "validationSplit": "--validation-split",
    "maxSeqLength": "--max-seq-length",
    "format": "--format",
}
# The trainer's seed default (hyperparameters.seed), which decides the validation split.
DEFAULT_SEED = 42


def file_uri(argument: str) -> str:
    """A local path as a file:// URI; a URI (file://, s3://, pvc://) as it is."""
    if "://" in argument:
        return argument
    return Path(argument).expanduser().resolve().as_uri()


def dataset_spec(
    files: Sequence[str],
    *,
    format_: DatasetFormat,
    validation: str | None,
    validation_split: float | None,
    max_seq_length: int,
) -> DatasetSpec:
    """The ``spec.dataset`` a FineTuneJob reading these files would have; bad values name their option."""
    try:
        return DatasetSpec.model_validate(
            {
                "train": [file_uri(f) for f in files],
                "validation": file_uri(validation) if validation else None,
                "validationSplit": validation_split,
                "maxSeqLength": max_seq_length,
                "format": format_,
            }
        )
    except ValidationError as err:
        first = err.errors()[0]
        option = OPTION_OF_FIELD.get(str(first["loc"][0]), str(first["loc"][0]))
        raise CliError(f"{option}: {first['msg'].removeprefix('Value error, ')}", code=CliExit.USAGE) from None


def shorten(text: str, *, names: Mapping[str, str]) -> str:
    """Messages name files by the URI the trainer read; show the path the user typed instead."""
    for uri, typed in names.items():
        text = text.replace(uri, typed)
    return text


def report_lines(report: DataReport, *, names: Mapping[str, str], tokenized: bool) -> list[str]:
    """The report of a dataset that passed: how each file was read, counts, token statistics."""
    rows: list[tuple[str, str]] = []
    for line in report.detection:
        file, _, how = shorten(line, names=names).rpartition(": ")
        rows.append((file, how))
    skipped = f" ({report.skipped} skipped)" if report.skipped else ""
    rows.append(("records", f"{report.records}{skipped}"))
    split = f" ({report.validation_source})" if report.validation_source != "none" else ""
    rows.append(("examples", f"{report.train_examples} train / {report.validation_examples} validation{split}"))
    if tokenized:
        stats = report.train_tokens
        rows.append(
            (
                "train tokens",
                f"{count(stats.total)} ({count(stats.trained)} trained); length p50 {stats.p50}, "
                f"p95 {stats.p95}, max {stats.max}",
            )
        )
        if report.validation_examples:
            rows.append(("validation tokens", count(report.validation_tokens.total)))
        rows.append(("truncated", f"{report.truncated} (maxSeqLength {report.max_seq_length})"))
    width = max(len(label) for label, _ in rows)
    return [f"{label.ljust(width)}  {value}" for label, value in rows]


def warning_lines(report: DataReport, *, names: Mapping[str, str]) -> list[str]:
    return [f"warning: {shorten(warning, names=names)}" for warning in report.warnings]


def quiet_trainer_logs() -> None:
    # The trainer logs its progress and warnings for the pod's log; here the report says it all.
    logger = logging.getLogger("kubetune_trainer")
    if not logger.handlers:
        logger.addHandler(logging.NullHandler())
    logger.propagate = False


def _load_tokenizer(directory: Path) -> Any:
    from kubetune_trainer.errors import ConfigError
    from kubetune_trainer.modeling import ModelSource, load_tokenizer

    if not directory.is_dir():
        raise CliError(f"--tokenizer: {directory} is not a directory", code=CliExit.USAGE)
    source = ModelSource(
        name_or_path=str(directory), revision=None, gguf_file=None, trust_remote_code=False, uri=str(directory)
    )
    try:
        return load_tokenizer(source)
    except ConfigError as err:
        raise CliError(f"--tokenizer: {str(err).removeprefix('model.source: ')}") from None


def validate_data(
    files: Annotated[
        list[str],
        typer.Argument(metavar="FILE", help="Data files, directories or URIs (JSONL, JSON, Parquet, CSV; .gz too)."),
    ],
    format_: Annotated[
        DatasetFormat, typer.Option("--format", help="Record format; auto detects it from the first record.")
    ] = "auto",
    tokenizer: Annotated[
        Path | None,
        typer.Option("--tokenizer", help="A tokenizer directory (the model's): count tokens, check the template."),
    ] = None,
    max_seq_length: Annotated[
        int, typer.Option("--max-seq-length", help="Tokens per example (spec.dataset.maxSeqLength).")
    ] = DatasetSpec.model_fields["max_seq_length"].default,
    validation: Annotated[str | None, typer.Option("--validation", help="A held-out validation file.")] = None,
    validation_split: Annotated[
        float | None, typer.Option("--validation-split", help="Fraction held out for validation.")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="The split's seed (hyperparameters.seed).")] = DEFAULT_SEED,
    output: OutputOption = OutputFormat.text,
) -> int:
    """Run the trainer's data validation on local files: every bad record named by file and line."""
    spec = dataset_spec(
        files,
        format_=format_,
        validation=validation,
        validation_split=validation_split,
        max_seq_length=max_seq_length,
    )
    names = {file_uri(f): f for f in [*files, *([validation] if validation else [])]}
    try:
        from kubetune_trainer.data import (
            DataConfigError,
            DataError,
            check_data,
            prepare_data,
            prepare_preference_data,
        )
        from kubetune_trainer.data.report import report_to_dict
    except ImportError as err:
        raise CliError(f"validate-data runs the trainer, whose dependencies are missing: {err}") from None
    quiet_trainer_logs()
    try:
        # --format preference: DPO pairs (method.objective dpo), the only objective that reads them.
        pairs = format_ == "preference"
        if tokenizer is None:
            report = check_data(spec, seed=seed, objective="dpo" if pairs else "sft")
        elif pairs:
            report = prepare_preference_data(spec, tokenizer=_load_tokenizer(tokenizer), seed=seed).report
        else:
            report = prepare_data(spec, tokenizer=_load_tokenizer(tokenizer), seed=seed).report
    except DataError as err:
        problems = [shorten(str(issue), names=names) for issue in err.errors]
        if output is not OutputFormat.text:
            failed = {"status": "failed", "errors": [issue._asdict() for issue in err.errors]}
            sys.stdout.write(_data_dump(failed, output))
        raise CliError(shorten(err.summary, names=names), code=CliExit.INVALID, details=problems) from None
    except DataConfigError as err:
        raise CliError(shorten(str(err), names=names), code=CliExit.INVALID) from None
    if output is not OutputFormat.text:
        sys.stdout.write(_data_dump(report_to_dict(report), output))
    else:
        console = Console(highlight=False, soft_wrap=True)
        for line in report_lines(report, names=names, tokenized=tokenizer is not None):
            console.print(line, markup=False)
        for line in warning_lines(report, names=names):
            console.print(line, style="yellow", markup=False)
        console.print(f"valid: {report.train_examples} training examples", markup=False)
    return CliExit.OK


def _data_dump(data: Mapping[str, Any], output: OutputFormat) -> str:
    # DataIssue tuples and nested dataclasses are plain JSON after a round trip.
    return dump(json.loads(json.dumps(data)), output=output)
