"""100 FineTuneJobs sitting idle (half finished, half running) for 10 minutes cost the operator no status write
and no API request: reads come from its watch caches, re-checks are scheduled only when due, and progress
is pushed by the trainers (kwok pods run none, so none reports here).

The jobs and their own operator are set up before the first integration test (``idle_scenario``); this test
runs last, so the window spans the rest of the suite (its API server restart included)."""

from __future__ import annotations

import os
import re
import time
from collections import Counter

import pytest
from idle_scenario import SETTLED, IdleWindow
from operator_harness import metric_sum

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

# The issue asks for 10 idle minutes (at least: in a full run the window spans the suite, 20 minutes and more,
# which takes in the operator's 10-minute safety re-checks); a shorter window is for trying the test out.
IDLE_SECONDS = float(os.environ.get("KUBETUNE_IDLE_TEST_SECONDS", "600"))


def requests_by_kind(metrics: str) -> Counter[str]:
    """kubetune_operator_api_requests_total summed by verb and resource."""
    out: Counter[str] = Counter()
    pattern = r"^kubetune_operator_api_requests_total\{([^}]*)\} (\S+)$"
    for labels, value in re.findall(pattern, metrics, flags=re.M):
        parsed = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        out[f"{parsed['verb']} {parsed['resource']}"] += int(float(value))
    return out


def test_idle_jobs_cost_no_status_write_and_no_request(idle_window: IdleWindow | None) -> None:
    assert idle_window is not None, "conftest opens the window whenever this test is selected"
    # The window opened before the first integration test; this test runs last and waits out the rest.
    time.sleep(max(0.0, IDLE_SECONDS - (time.monotonic() - idle_window.opened_at)))
    after = idle_window.operator.metrics()
    idle = time.monotonic() - idle_window.opened_at
    before = idle_window.metrics_at_open

    writes = metric_sum(after, "kubetune_operator_status_writes_total") - metric_sum(
        before, "kubetune_operator_status_writes_total"
    )
    assert writes == 0
    spent = requests_by_kind(after)
    spent.subtract(requests_by_kind(before))
    spent = +spent  # drop the kinds that did not move
    # Before progress was pushed, each running job cost a pods/log read every 30 s here (50 jobs: 1,000 reads
    # in 10 minutes).
    assert spent == Counter(), f"{dict(spent)} in {idle:.0f}s"
    assert idle_window.phases() == SETTLED
