"""FineTuneJobs as people and scripts read them: pure functions from API objects to rows, lines and tables.

Nothing here talks to the cluster or writes to a terminal; ``now`` is always passed in, so every output is
a function of its inputs and is tested from status fixtures.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import yaml
from pydantic import ValidationError
from rich.console import Console, Group, RenderableType
from rich.measure import Measurement
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from kubetune.api.progress import PreferenceMetrics
from kubetune.api.resource import GROUP, KIND
from kubetune.api.status import FineTuneJobStatus, Metrics, Progress
from kubetune.api.validation import field_path
from kubetune.cli.errors import CliError

TERMINAL_PHASES = ("Succeeded", "Failed")
LIST_HEADERS = ("NAME", "PHASE", "PROGRESS", "LOSS", "AGE")
CONDITION_HEADERS = ("TYPE", "STATUS", "REASON", "AGE", "MESSAGE")
# What an unknown value prints as, in tables and lines alike.
NONE = "-"


class OutputFormat(StrEnum):
    """``-o``: ``text`` for people (a table, a status view), ``json``/``yaml`` for scripts (the API objects)."""

    text = "text"
    json = "json"
    yaml = "yaml"


@dataclass(frozen=True, kw_only=True)
class JobView:
    """What the commands show of a FineTuneJob: its identity, whether suspend is asked for, its status."""

    name: str
    namespace: str
    created: datetime | None
    suspend: bool
    status: FineTuneJobStatus

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> JobView:
        meta = obj.get("metadata") or {}
        name, namespace = str(meta.get("name", "")), str(meta.get("namespace", ""))
        try:
            status = FineTuneJobStatus.model_validate(obj.get("status") or {})
        except ValidationError as err:
            first = err.errors()[0]
            where = field_path(tuple(first["loc"]), prefix="status")
            raise CliError(f"{KIND} {namespace}/{name}: {where}: {first['msg']}") from None
        created = meta.get("creationTimestamp")
        run_policy = (obj.get("spec") or {}).get("runPolicy") or {}
        return cls(
            name=name,
            namespace=namespace,
            created=datetime.fromisoformat(created) if isinstance(created, str) else None,
            suspend=bool(run_policy.get("suspend")),
            status=status,
        )

    @property
    def phase(self) -> str:
        return self.status.phase or "Pending"

    @property
    def finished(self) -> bool:
        return self.phase in TERMINAL_PHASES


def object_ref(name: str) -> str:
    """How kubectl names an object in its one-line answers: ``finetunejob.kubetune.io/NAME``."""
    return f"{KIND.lower()}.{GROUP}/{name}"


# -- values ----------------------------------------------------------------------------------------------


def short_duration(seconds: float) -> str:
    """A duration the way ``kubectl get`` prints ages: two units at most, coarser as it grows."""
    s = max(0, int(seconds))
    minutes, hours, days = s // 60, s // 3600, s // 86400
    if s < 120:
        return f"{s}s"
    if minutes < 10:
        return f"{minutes}m{s % 60}s" if s % 60 else f"{minutes}m"
    if hours < 3:
        return f"{minutes}m"
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if days < 8:
        return f"{days}d{hours % 24}h" if hours % 24 else f"{days}d"
    return f"{days}d"


def age(since: datetime | None, *, now: datetime) -> str:
    return NONE if since is None else short_duration((now - since).total_seconds())


def number(value: float | None) -> str:
    """Losses and rates: four significant digits (1.183, 0.0421, 2.1e-05)."""
    return NONE if value is None else f"{value:.4g}"


def count(value: float | None) -> str:
    """Token counts and throughput, with thousands separators."""
    return NONE if value is None else f"{value:,.0f}"


def percent(progress: Progress | None) -> str:
    """The trainer's own percentage, else step/totalSteps; "-" before the first report."""
    if progress is None:
        return NONE
    if progress.percent:
        return progress.percent
    if progress.total_steps:
        return f"{100 * progress.step // progress.total_steps}%"
    return NONE


def steps(progress: Progress | None) -> str:
    """E.g. "120/400 (30%)"; "120" when the total is not known yet."""
    if progress is None:
        return NONE
    if progress.total_steps is None:
        return str(progress.step)
    return f"{progress.step}/{progress.total_steps} ({percent(progress)})"


def _loss(metrics: Metrics | None) -> str:
    return number(metrics.loss if metrics else None)


def phase_text(view: JobView) -> str:
    """The phase, and a suspend that is asked for but not yet (or no longer) in effect."""
    if view.suspend and view.phase not in ("Suspended", *TERMINAL_PHASES):
        return f"{view.phase} (suspending)"
    if not view.suspend and view.phase == "Suspended":
        return "Suspended (resuming)"
    return view.phase


# -- list ------------------------------------------------------------------------------------------------


def list_rows(views: Sequence[JobView], *, now: datetime, all_namespaces: bool) -> list[tuple[str, ...]]:
    """``kubetune list``: NAME PHASE PROGRESS LOSS AGE, with NAMESPACE first across namespaces."""
    rows: list[tuple[str, ...]] = []
    for view in views:
        row = (
            view.name,
            phase_text(view),
            percent(view.status.progress),
            _loss(view.status.metrics),
            age(view.created, now=now),
        )
        rows.append((view.namespace, *row) if all_namespaces else row)
    return rows


def list_headers(*, all_namespaces: bool) -> tuple[str, ...]:
    return ("NAMESPACE", *LIST_HEADERS) if all_namespaces else LIST_HEADERS


def natural_width(renderable: RenderableType) -> int:
    """The width a renderable takes when nothing constrains it: print tables at this width (or wider) and
    rich never squeezes a column, so a long name is printed whole, as ``kubectl get`` prints it."""
    probe = Console(file=io.StringIO(), width=100_000)
    return Measurement.get(probe, probe.options, renderable).maximum


def plain_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> Table:
    """Columns without borders, like ``kubectl get``; no cell is wrapped (see :func:`natural_width`)."""
    table = Table(box=None, pad_edge=False, padding=(0, 3, 0, 0), show_edge=False, header_style="bold")
    for header in headers:
        table.add_column(header, no_wrap=True, overflow="ignore")
    for row in rows:
        table.add_row(*row)
    return table


# -- status ----------------------------------------------------------------------------------------------


def rewards(metrics: PreferenceMetrics) -> str:
    """DPO's reward metrics on one line, e.g. "accuracy 81%, margin 0.42 (chosen 0.12, rejected -0.30)"."""
    return (
        f"accuracy {metrics.reward_accuracy:.0%}, margin {metrics.reward_margin:.3g} "
        f"(chosen {metrics.chosen_reward:.3g}, rejected {metrics.rejected_reward:.3g})"
    )


def status_fields(view: JobView, *, now: datetime) -> list[tuple[str, str]]:
    """``kubetune status``: (label, value) for everything known, in reading order."""
    status = view.status
    progress, metrics = status.progress, status.metrics
    fields = [("Name", view.name), ("Namespace", view.namespace), ("Phase", phase_text(view))]
    if progress is not None:
        fields.append(("Progress", steps(progress)))
        if progress.epoch is not None:
            fields.append(("Epoch", f"{progress.epoch:.2f}"))
    if metrics is not None:
        fields += [
            ("Loss", number(metrics.loss)),
            ("Eval loss", number(metrics.eval_loss)),
            ("Tokens/s", count(metrics.tokens_per_second)),
            ("Trained tokens", count(metrics.trained_tokens)),
        ]
        for label, preference in (("Rewards", metrics.preference), ("Eval rewards", metrics.eval_preference)):
            if preference is not None:
                fields.append((label, rewards(preference)))
    if progress is not None and progress.eta_seconds is not None and not view.finished:
        fields.append(("ETA", short_duration(progress.eta_seconds)))
    if status.profile is not None:
        gone = ", deleted since" if status.profile.missing else ""
        fields.append(("Profile", f"{status.profile.name} (by {status.profile.chosen_by}{gone})"))
    fields += check_fields(status, finished=view.finished)
    if status.start_time is not None:
        fields.append(("Started", f"{age(status.start_time, now=now)} ago"))
    if status.completion_time is not None:
        fields.append(("Completed", f"{age(status.completion_time, now=now)} ago"))
    if status.job_name:
        fields.append(("Job", status.job_name))
    if status.failure is not None:
        fields += failure_fields(view)
    if status.output is not None:
        merged = ", merged model" if status.output.merged else ""
        fields.append(("Output", f"{status.output.uri}{merged}"))
    return [(label, value) for label, value in fields if value != NONE]


def check_fields(status: FineTuneJobStatus, *, finished: bool) -> list[tuple[str, str]]:
    """What the data check found: the data, the resolved hyperparameters, the estimate."""
    fields: list[tuple[str, str]] = []
    dataset, hp, estimate = status.dataset, status.hyperparameters, status.estimate
    if dataset is not None:
        tokens = dataset.train_tokens
        fields.append(
            (
                "Data",
                f"{count(dataset.train_examples)} train / {count(dataset.validation_examples)} validation examples, "
                f"{count(tokens.total)} tokens (p95 {tokens.p95}, max {tokens.max} per example)",
            )
        )
        if dataset.error_count:
            fields.append(("Data problems", f"{dataset.error_count} (see status.dataset.errors)"))
        if dataset.warning_count:
            fields.append(("Data warnings", "; ".join(dataset.warnings[:3])))
    if hp is not None:
        chosen = f" (kubetune chose {', '.join(hp.chosen)})" if hp.chosen else ""
        fields.append(
            (
                "Plan",
                f"{hp.epochs} epoch(s), {hp.total_steps} steps of {hp.per_device_batch_size} x {hp.world_size}, "
                f"learning rate {hp.learning_rate:g}{chosen}",
            )
        )
    if estimate is not None and estimate.duration is not None:
        gpu_hours = f", {estimate.gpu_hours:g} GPU-hours" if estimate.gpu_hours is not None else ""
        fields.append(("Estimate", f"{estimate.duration}{gpu_hours} ({estimate.basis or 'estimate'})"))
    if estimate is not None and estimate.estimated_finish_time is not None and not finished:
        fields.append(("Finishes", estimate.estimated_finish_time.isoformat()))
    return fields


def failure_fields(view: JobView) -> list[tuple[str, str]]:
    failure = view.status.failure
    if failure is None:
        return []
    fields = [("Failure", failure.reason)]
    if failure.pod:
        where = [f"container {failure.container}"] if failure.container else []
        where += [f"exit code {failure.exit_code}"] if failure.exit_code is not None else []
        fields.append(("Failed pod", f"{failure.pod} ({', '.join(where)})" if where else failure.pod))
    elif failure.exit_code is not None:
        fields.append(("Exit code", str(failure.exit_code)))
    if failure.message:
        fields.append(("Message", failure.message))
    return fields


def condition_rows(status: FineTuneJobStatus, *, now: datetime) -> list[tuple[str, str, str, str, str]]:
    return [(c.type, c.status, c.reason, age(c.last_transition_time, now=now), c.message) for c in status.conditions]


def status_renderable(view: JobView, *, now: datetime) -> RenderableType:
    """The status view: fields, a progress bar until the job finishes, the conditions."""
    fields = Table.grid(padding=(0, 2))
    fields.add_column(style="bold", no_wrap=True)
    fields.add_column(overflow="fold")
    for label, value in status_fields(view, now=now):
        fields.add_row(label, value)
    parts: list[RenderableType] = [fields]
    progress = view.status.progress
    if progress is not None and progress.total_steps and not view.finished:
        bar = ProgressBar(total=progress.total_steps, completed=min(progress.step, progress.total_steps), width=40)
        parts += [Text(""), bar]
    conditions = condition_rows(view.status, now=now)
    if conditions:
        table = plain_table(CONDITION_HEADERS, conditions)
        table.columns[-1].no_wrap, table.columns[-1].overflow = False, "fold"
        parts += [Text(""), table]
    return Group(*parts)


def watch_line(view: JobView) -> str:
    """One line per change for ``status --watch`` when stdout is not a terminal (logs, CI)."""
    parts = [phase_text(view)]
    progress, metrics = view.status.progress, view.status.metrics
    if progress is not None:
        parts.append(f"step {steps(progress)}")
    if metrics is not None:
        parts += [
            f"{label} {value}"
            for label, value in (
                ("loss", number(metrics.loss)),
                ("eval", number(metrics.eval_loss)),
                ("tok/s", count(metrics.tokens_per_second)),
            )
            if value != NONE
        ]
    if progress is not None and progress.eta_seconds is not None and not view.finished:
        parts.append(f"ETA {short_duration(progress.eta_seconds)}")
    failure = view.status.failure
    if failure is not None:
        parts.append(f"failure {failure.reason}" + (f": {failure.message}" if failure.message else ""))
    if view.status.output is not None and view.phase == "Succeeded":
        parts.append(f"output {view.status.output.uri}")
    return "  ".join(parts)


# -- json / yaml -----------------------------------------------------------------------------------------


def as_list(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Several objects as one document, the way ``kubectl get -o json`` prints them."""
    return {"apiVersion": "v1", "kind": "List", "items": list(items)}


def dump(obj: Mapping[str, Any], *, output: OutputFormat) -> str:
    """The object as JSON (indented) or YAML, ending with a newline."""
    if output is OutputFormat.json:
        return json.dumps(obj, indent=2) + "\n"
    if output is OutputFormat.yaml:
        return yaml.safe_dump(dict(obj), sort_keys=False, allow_unicode=True)
    raise ValueError(f"not a data format: {output}")
