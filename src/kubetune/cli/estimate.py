"""``kubetune estimate -f FILE``: the data check a FineTuneJob gets in phase Validating, run here first.

The check is the trainer's own (:func:`kubetune_trainer.preflight.run_preflight`): every data file read
and tokenized with the model's tokenizer (no weights), every ``auto`` hyperparameter resolved for the
job's hardware, the cost estimated. The trainer is imported only when this command runs.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path, PurePosixPath
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from kubetune.api.preflight import PreflightResult
from kubetune.api.resource import KIND, FineTuneJob
from kubetune.api.trainer_config import RunIdentity, TrainerConfig
from kubetune.api.uris import PVC_MOUNT_ROOT
from kubetune.cli.data import quiet_trainer_logs
from kubetune.cli.errors import CliError, CliExit
from kubetune.cli.manifests import read_finetunejobs
from kubetune.cli.options import OutputOption
from kubetune.cli.render import NONE, OutputFormat, as_list, count, dump, number

Fields = list[tuple[str, str]]


def dataset_fields(result: PreflightResult) -> Fields:
    dataset = result.dataset
    if dataset is None:
        return []
    tokens = dataset.train_tokens
    fields = [
        ("Format", dataset.format or NONE),
        ("Examples", f"{dataset.train_examples} train / {dataset.validation_examples} validation"),
    ]
    if result.outcome == "Passed":
        fields += [
            (
                "Train tokens",
                f"{count(tokens.total)} ({count(tokens.trained)} trained); length p50 {tokens.p50}, "
                f"p95 {tokens.p95}, max {tokens.max}",
            ),
            ("Truncated", str(dataset.truncated_examples)),
            ("Skipped", str(dataset.skipped_examples)),
            ("Duplicates", str(dataset.duplicate_examples)),
        ]
    if dataset.error_count:
        fields.append(("Problems", str(dataset.error_count)))
    return fields


def hyperparameter_fields(result: PreflightResult) -> Fields:
    hp = result.hyperparameters
    if hp is None:
        return []

    def chosen(value: object, name: str) -> str:
        return f"{value} (auto)" if name in hp.chosen else str(value)

    return [
        ("Epochs", chosen(hp.epochs, "epochs")),
        ("Optimizer steps", str(hp.total_steps)),
        ("Batch per device", chosen(hp.per_device_batch_size, "perDeviceBatchSize")),
        ("Accumulation", str(hp.gradient_accumulation_steps)),
        ("World size", str(hp.world_size)),
        ("Learning rate", chosen(number(hp.learning_rate), "learningRate")),
        ("Warmup steps", chosen(hp.warmup_steps, "warmupSteps")),
    ]


def estimate_fields(result: PreflightResult) -> Fields:
    estimate = result.estimate
    if estimate is None:
        return []
    return [
        ("Train tokens", count(estimate.train_tokens)),
        ("Parameters", count(estimate.parameters)),
        ("Tokens/s", count(estimate.tokens_per_second)),
        ("Duration", estimate.duration or NONE),
        ("GPU-hours", NONE if estimate.gpu_hours is None else f"{estimate.gpu_hours:.2f}"),
        ("Basis", estimate.basis or NONE),
    ]


def problem_lines(result: PreflightResult) -> list[str]:
    """The problems the check lists, one a line, ``file:line: field: reason``."""
    dataset = result.dataset
    if dataset is None:
        return []
    lines = []
    for problem in dataset.errors:
        where = problem.file if problem.line is None else f"{problem.file}:{problem.line}"
        lines.append(f"{where}: {problem.field + ': ' if problem.field else ''}{problem.reason}")
    if dataset.error_count > len(dataset.errors):
        lines.append(f"... {dataset.error_count - len(dataset.errors)} more")
    return lines


def result_table(name: str, result: PreflightResult) -> Table:
    """Sections of label/value rows: the outcome, the dataset, the hyperparameters, the estimate."""
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    table.add_row(KIND, name)
    table.add_row("Outcome", f"{result.outcome}: {result.message}")
    sections = (
        ("Dataset", dataset_fields(result)),
        ("Hyperparameters", hyperparameter_fields(result)),
        ("Estimate", estimate_fields(result)),
    )
    for title, fields in sections:
        if fields:
            table.add_row("", "")
            table.add_row(title, "", style="underline")
            for label, value in fields:
                table.add_row(f"  {label}", value)
    return table


def _check(document: dict[str, Any], *, pvc_root: PurePosixPath) -> tuple[str, PreflightResult]:
    try:
        from kubetune_trainer.preflight import run_preflight
    except ImportError as err:
        raise CliError(f"estimate runs the trainer, whose dependencies are missing: {err}") from None
    job = FineTuneJob.from_object(document)
    name = job.metadata.name or "-"
    run = RunIdentity(name=name, namespace=job.metadata.namespace or "default")
    config = TrainerConfig.from_spec(job.spec, run=run)
    with tempfile.TemporaryDirectory(prefix="kubetune-estimate-") as cache_dir:
        return name, run_preflight(config, pvc_root=pvc_root, cache_dir=Path(cache_dir))


def estimate(
    file: Annotated[Path, typer.Option("-f", "--file", help="FineTuneJob manifest (YAML, one or more documents).")],
    pvc_root: Annotated[
        Path,
        typer.Option("--pvc-root", help="Where pvc://CLAIM/PATH is found here: DIR/CLAIM/PATH."),
    ] = Path(PVC_MOUNT_ROOT),
    output: OutputOption = OutputFormat.text,
) -> int:
    """Run a FineTuneJob's data check here: the dataset, the resolved hyperparameters and the cost."""
    documents = read_finetunejobs(file)
    quiet_trainer_logs()
    checked = [_check(document, pvc_root=PurePosixPath(pvc_root)) for document in documents]
    if output is not OutputFormat.text:
        wire = [result.to_wire() for _, result in checked]
        sys.stdout.write(dump(wire[0] if len(wire) == 1 else as_list(wire), output=output))
    else:
        console = Console(highlight=False, soft_wrap=True)
        for index, (name, result) in enumerate(checked):
            if index:
                console.print()
            console.print(result_table(name, result))
            for warning in result.dataset.warnings if result.dataset else []:
                console.print(f"warning: {warning}", style="yellow", markup=False)
    failed = [(name, result) for name, result in checked if result.outcome != "Passed"]
    if failed:
        prefix = len(checked) > 1
        details = [f"{name}: {line}" if prefix else line for name, result in failed for line in problem_lines(result)]
        summary = "; ".join(f"{name}: {result.outcome}: {result.message}" for name, result in failed)
        raise CliError(summary, code=CliExit.INVALID, details=details)
    return CliExit.OK
