"""The pod's exit code under ``launch``: the workers' documented code wins over torchrun's generic 1."""

from __future__ import annotations

from pathlib import Path

import pytest
from kubetune_trainer.launcher import EXIT_DIR_ENV, pod_exit_code, record_exit_code


@pytest.mark.parametrize(
    ("workers", "launcher", "expected"),
    [
        ([0, 0], 0, 0),
        ([75, 75], 1, 75),
        ([79, 79], 1, 79),
        ([65, 75], 1, 65),  # a fatal code outranks a checkpointed stop
        ([75], 1, 75),  # the other rank was killed before it could record
        ([], 1, 1),  # a crash: retryable, torchrun's code
    ],
)
def test_pod_exit_code_prefers_fatal_then_sigterm_then_torchrun(
    workers: list[int], launcher: int, expected: int
) -> None:
    assert pod_exit_code(worker_codes=workers, launcher_code=launcher) == expected


def test_workers_record_their_exit_code_by_rank(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(EXIT_DIR_ENV, str(tmp_path))
    monkeypatch.setenv("RANK", "3")
    record_exit_code(75)
    assert (tmp_path / "rank-3.exit").read_text() == "75"
