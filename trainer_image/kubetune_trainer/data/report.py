"""The data report: token statistics, and its JSON form (``data-report.json`` in the artifact)."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence

from kubetune_trainer.data.types import IGNORE_INDEX, DataReport, TokenizedExample, TokenStats

REPORT_FILE_NAME = "data-report.json"
# The report keeps this many errors; a file with a million broken lines needs no million-line report.
MAX_REPORTED_ERRORS = 1000


def token_stats(examples: Sequence[TokenizedExample]) -> TokenStats:
    """Length statistics (nearest-rank percentiles) and trained-token count of a split."""
    if not examples:
        return TokenStats()
    lengths = sorted(len(e.input_ids) for e in examples)
    return TokenStats(
        count=len(lengths),
        total=sum(lengths),
        # Position 0 is never predicted; collate drops its label too.
        trained=sum(sum(1 for label in e.labels[1:] if label != IGNORE_INDEX) for e in examples),
        min=lengths[0],
        mean=round(sum(lengths) / len(lengths), 2),
        p50=_percentile(lengths, 50),
        p95=_percentile(lengths, 95),
        max=lengths[-1],
    )


def _percentile(ordered: Sequence[int], percent: int) -> int:
    rank = max(1, math.ceil(percent / 100 * len(ordered)))
    return ordered[rank - 1]


def report_to_dict(report: DataReport) -> dict[str, object]:
    """JSON-ready form; errors as {"source", "field", "message"} objects."""
    data = dataclasses.asdict(report)
    data["errors"] = [issue._asdict() for issue in report.errors]
    return data


def render_report(report: DataReport) -> str:
    """``data-report.json``'s text."""
    return json.dumps(report_to_dict(report), indent=2, ensure_ascii=False) + "\n"
