"""bench/trainer_dpo.py still runs: two steps of kubetune and of TRL's best configuration (not timed here;
the figures come from full runs on a quiet machine, docs/benchmarks.md)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.model

REPO = Path(__file__).resolve().parents[3]


def test_the_dpo_benchmark_runs_both_trainers_and_writes_its_table_and_json(tmp_path: Path) -> None:
    out = tmp_path / "bench-dpo.json"
    command = [
        sys.executable,
        str(REPO / "bench" / "trainer_dpo.py"),
        "--steps",
        "2",
        "--configs",
        "kubetune-precomputed",
        "trl-best",
        "--json",
        str(out),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "vs TRL best" in result.stdout
    report = json.loads(out.read_text())
    assert report["steps"] == 2
    for name in ("kubetune-precomputed", "trl-best"):
        run = report["results"][name]
        # Step 1 starts with the policy equal to the reference: the DPO loss is ln 2 for both trainers.
        assert abs(run["losses"][0] - math.log(2)) < 1e-3, run["losses"]
        assert run["tokens"] > 0 and run["tokens_per_second"] > 0 and run["precompute_seconds"] > 0
        assert len(run["step_seconds"]) == 1
