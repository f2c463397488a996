"""The evaluation report: how training changed the loss on each held-out example, for error analysis.

``eval-report.json`` holds every validation example's loss before and after training, the worst examples
after training with the prompt, the reference answer and the model's answer, the loss by example length,
and the before/after generations side by side; ``eval-report.md`` is a short rendering a person reads.

Everything here is pure: the recipe measures the losses (``loss.per_example_losses``), generates the
answers, and passes plain values in. A run without validation data writes no report (nothing was held
out to score). The numbers are in nats: an SFT example's loss is its mean cross-entropy per answer token.
"""

from __future__ import annotations

import json
from bisect import bisect_right
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field

from kubetune.api.base import ApiModel
from kubetune.api.spec import Objective
from kubetune.files import write_file_atomically
from kubetune_trainer.output import GenerationSample

REPORT_JSON = "eval-report.json"
REPORT_MD = "eval-report.md"

METRICS: dict[Objective, str] = {
    "sft": (
        "cross-entropy per answer token, in nats (lower is better); an example's loss is its mean over its "
        "answer tokens, and every mean over several examples weighs each answer token equally, as the eval "
        "loss does"
    ),
    "dpo": "preference loss per pair, in nats (lower is better); means weigh each pair equally",
}
# Characters of a prompt, reference or answer shown in a table cell of the markdown (the JSON has them
# whole): enough for a question and the start of an answer, short enough to keep a row readable.
CELL_CHARS = 300


class ExampleScore(ApiModel):
    """One held-out example: its loss before and after training (None: not measured before, e.g. after a
    resume of a full fine-tune, whose base weights are gone)."""

    # Position in the validation split.
    index: int = Field(ge=0)
    # The example's length in tokens (prompt and answer; for a DPO pair the prompt and both answers), which
    # the length buckets group by.
    tokens: int = Field(ge=0)
    # Tokens that carry a loss (the answer's, after the one-token shift).
    label_tokens: int = Field(ge=0)
    loss_after: float
    loss_before: float | None = None
    # Preference tuning: the reward margin, chosen reward - rejected reward (beta x log-probability ratios).
    margin_after: float | None = None
    margin_before: float | None = None


class WorstExample(ApiModel):
    """One of the examples with the highest loss after training; texts are None where none was generated
    (an example without a prompt, or answers not asked for)."""

    index: int = Field(ge=0)
    tokens: int = Field(ge=0)
    loss_after: float
    loss_before: float | None = None
    prompt: str | None = None
    reference: str | None = None
    answer: str | None = None


class LengthBucket(ApiModel):
    """The examples whose length lies in ``min_tokens..max_tokens`` (both the lengths of members)."""

    label: str
    min_tokens: int = Field(ge=0)
    max_tokens: int = Field(ge=0)
    examples: int = Field(ge=1)
    mean_loss_after: float | None = None
    # None unless every example of the bucket was measured before training.
    mean_loss_before: float | None = None


class EvalReport(ApiModel):
    """``eval-report.json``. Before-training figures are None unless every example was measured before."""

    objective: Objective
    # What "loss" means in this report.
    metric: str
    # The optimizer step the "after" losses and answers were measured at.
    step: int = Field(ge=0)
    example_count: int = Field(ge=0)
    mean_loss_after: float | None = None
    mean_loss_before: float | None = None
    # Examples whose loss went down (after < before) and up (after > before); ties count in neither.
    improved: int | None = None
    worsened: int | None = None
    examples: list[ExampleScore]
    worst: list[WorstExample]
    buckets: list[LengthBucket]
    generations: list[GenerationSample]


@dataclass(frozen=True, kw_only=True)
class ExampleText:
    """What a worst example is shown with: its prompt, its reference answer and the trained model's answer."""

    prompt: str
    reference: str
    answer: str


def example_scores(
    *,
    tokens: Sequence[int],
    label_tokens: Sequence[int],
    loss_sums_after: Sequence[float],
    loss_sums_before: Sequence[float] | None = None,
    margins_after: Sequence[float] | None = None,
    margins_before: Sequence[float] | None = None,
) -> list[ExampleScore]:
    """Scores from per-example summed losses (index = position in the sequences); examples without label
    tokens (an answer truncated away) carry no loss and are left out, as the eval loss leaves them. For
    preference tuning ``label_tokens`` is 1 per pair and the margins are the pairs' reward margins."""
    optional = [c for c in (loss_sums_before, margins_after, margins_before) if c is not None]
    columns = [tokens, label_tokens, loss_sums_after, *optional]
    if len({len(column) for column in columns}) != 1:
        raise ValueError(f"per-example sequences differ in length: {[len(column) for column in columns]}")
    return [
        ExampleScore(
            index=i,
            tokens=tokens[i],
            label_tokens=count,
            loss_after=loss_sums_after[i] / count,
            loss_before=None if loss_sums_before is None else loss_sums_before[i] / count,
            margin_after=None if margins_after is None else margins_after[i],
            margin_before=None if margins_before is None else margins_before[i],
        )
        for i, count in enumerate(label_tokens)
        if count > 0
    ]


def worst_indices(scores: Sequence[ExampleScore], n: int) -> list[int]:
    """The ``index`` of the ``n`` examples (fewer when there are fewer) with the highest loss after
    training, highest first; equal losses in order of index."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    ranked = sorted(scores, key=lambda score: (-score.loss_after, score.index))
    return [score.index for score in ranked[:n]]


def length_buckets(
    scores: Sequence[ExampleScore], *, objective: Objective = "sft", count: int = 4
) -> list[LengthBucket]:
    """At most ``count`` buckets of the examples by length, shortest first, each about the same size.

    The edges are the lengths at the 1/count, 2/count... quantiles; every example falls in exactly one
    bucket, examples of equal length in the same one, and buckets left empty (equal edges) are dropped.
    """
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    lengths = sorted(score.tokens for score in scores)
    n = len(lengths)
    # Position of the k/count quantile, ceil(k * n / count), in integers.
    cuts = (-(-k * n // count) for k in range(1, count))
    edges = sorted({lengths[cut] for cut in cuts if cut < n})
    members: list[list[ExampleScore]] = [[] for _ in range(len(edges) + 1)]
    for score in sorted(scores, key=lambda s: (s.tokens, s.index)):
        members[bisect_right(edges, score.tokens)].append(score)
    return [_bucket(group, objective=objective) for group in members if group]


def build_eval_report(
    *,
    objective: Objective,
    step: int,
    scores: Sequence[ExampleScore],
    worst_count: int,
    texts: Mapping[int, ExampleText] | None = None,
    generations: Sequence[GenerationSample] = (),
    bucket_count: int = 4,
    metric: str | None = None,
) -> EvalReport:
    """The report over ``scores``; the worst examples are ``worst_indices(scores, worst_count)``, shown
    with ``texts[index]`` where given. ``metric`` overrides the objective's description of the loss."""
    if len({score.index for score in scores}) != len(scores):
        raise ValueError("scores hold an example index twice")
    worst = [_worst(score, (texts or {}).get(score.index)) for score in _ranked(scores, worst_count)]
    return EvalReport(
        objective=objective,
        metric=METRICS[objective] if metric is None else metric,
        step=step,
        example_count=len(scores),
        mean_loss_after=_mean(scores, before=False, objective=objective),
        mean_loss_before=_mean(scores, before=True, objective=objective),
        improved=_count_if(scores, lambda after, before: after < before),
        worsened=_count_if(scores, lambda after, before: after > before),
        examples=sorted(scores, key=lambda s: s.index),
        worst=worst,
        buckets=length_buckets(scores, objective=objective, count=bucket_count),
        generations=list(generations),
    )


def render_markdown(report: EvalReport) -> str:
    """``eval-report.md``: a summary line, the loss by length, the worst examples, the generations."""
    lines = ["# Evaluation report", "", _summary(report), "", f"Loss: {report.metric}.", ""]
    if report.buckets:
        lines += ["## Loss by example length", "", "| Length | Examples | Before | After |", "|---|---:|---:|---:|"]
        lines += [
            f"| {_cell(b.label)} | {b.examples} | {_number(b.mean_loss_before)} | {_number(b.mean_loss_after)} |"
            for b in report.buckets
        ]
        lines.append("")
    if report.worst:
        lines += [
            f"## The {len(report.worst)} worst examples after training",
            "",
            "| Example | Before | After | Prompt | Reference | Answer |",
            "|---:|---:|---:|---|---|---|",
        ]
        lines += [
            f"| {w.index} | {_number(w.loss_before)} | {_number(w.loss_after)} | {_text_cell(w.prompt)} "
            f"| {_text_cell(w.reference)} | {_text_cell(w.answer)} |"
            for w in report.worst
        ]
        lines.append("")
    if report.generations:
        lines += [
            "## Generations before and after training",
            "",
            "| Prompt | Reference | Before | After |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {_text_cell(g.prompt)} | {_text_cell(g.reference)} | {_text_cell(g.before)} | {_text_cell(g.after)} |"
            for g in report.generations
        ]
        lines.append("")
    return "\n".join(lines)


def report_json(report: EvalReport) -> bytes:
    """``eval-report.json``'s bytes, camelCase; a figure not measured is ``null`` (not left out), so a reader
    sees it is missing and the file reads back with ``EvalReport.model_validate_json``."""
    wire = report.model_dump(mode="json", by_alias=True)
    return (json.dumps(wire, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def write_eval_report(report: EvalReport, directory: Path) -> None:
    """Write ``eval-report.json`` and ``eval-report.md`` into ``directory`` (the local staging directory)."""
    write_file_atomically(directory / REPORT_JSON, report_json(report))
    write_file_atomically(directory / REPORT_MD, render_markdown(report))


# -- helpers ------------------------------------------------------------------------------------------


def _ranked(scores: Sequence[ExampleScore], n: int) -> list[ExampleScore]:
    by_index = {score.index: score for score in scores}
    return [by_index[index] for index in worst_indices(scores, n)]


def _worst(score: ExampleScore, text: ExampleText | None) -> WorstExample:
    return WorstExample(
        index=score.index,
        tokens=score.tokens,
        loss_after=score.loss_after,
        loss_before=score.loss_before,
        prompt=None if text is None else text.prompt,
        reference=None if text is None else text.reference,
        answer=None if text is None else text.answer,
    )


def _bucket(group: Sequence[ExampleScore], *, objective: Objective) -> LengthBucket:
    low, high = group[0].tokens, group[-1].tokens
    return LengthBucket(
        label=f"{low} tokens" if low == high else f"{low}-{high} tokens",
        min_tokens=low,
        max_tokens=high,
        examples=len(group),
        mean_loss_after=_mean(group, before=False, objective=objective),
        mean_loss_before=_mean(group, before=True, objective=objective),
    )


def _mean(scores: Sequence[ExampleScore], *, before: bool, objective: Objective) -> float | None:
    """The weighted mean loss after (or before) training; None when there is none, or a before loss is
    missing (a mean over part of the examples would not compare with the after mean)."""
    values = [s.loss_before if before else s.loss_after for s in scores]
    # SFT means weigh answer tokens (as the eval loss does); preference means weigh pairs.
    weights = [s.label_tokens if objective == "sft" else 1 for s in scores]
    total = sum(weights)
    if total == 0 or any(v is None for v in values):
        return None
    return sum(v * w for v, w in zip(values, weights, strict=True) if v is not None) / total


def _count_if(scores: Sequence[ExampleScore], changed: Callable[[float, float], bool]) -> int | None:
    pairs = [(s.loss_after, s.loss_before) for s in scores]
    if any(before is None for _, before in pairs):
        return None
    return sum(1 for after, before in pairs if before is not None and changed(after, before))


def _summary(report: EvalReport) -> str:
    line = f"Step {report.step}, {report.example_count} held-out examples ({report.objective})."
    if report.mean_loss_after is None:
        return line
    line += f" Mean loss {_number(report.mean_loss_before)} before training, {_number(report.mean_loss_after)} after"
    if report.improved is not None and report.worsened is not None:
        line += f"; lower after training on {report.improved} examples, higher on {report.worsened}"
    return line + "."


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _shorten(text: str, limit: int = CELL_CHARS) -> str:
    """``text`` cut in the middle to about ``limit`` characters: a prompt's question is at its end, an
    answer's gist at its start, so both ends stay."""
    if len(text) <= limit:
        return text
    head = limit // 2
    tail = limit - head
    return f"{text[:head]} … [{len(text) - limit} characters cut] … {text[-tail:]}"


def _text_cell(text: str | None) -> str:
    return "-" if text is None else _cell(_shorten(text))


def _cell(text: str) -> str:
    """``text`` as one markdown table cell: pipes escaped, HTML shown as text (a ``<think>`` a model writes
    would otherwise vanish as an unknown tag), line breaks as ``<br>``."""
    escaped = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")
    return escaped.replace("\r\n", "\n").replace("\n", "<br>")
