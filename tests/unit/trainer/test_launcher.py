"""The pod's exit code under ``launch``: the workers' documented code wins over torchrun's generic 1."""

from __future__ import annotations

from pathlib import Path

import pytest
from kubetune_trainer.launcher import (
    EXIT_DIR_ENV,
    TERMINATION_LOG_ENV,
    TERMINATION_MESSAGE_MAX_BYTES,
    failure_message,
    pod_exit_code,
    record_exit_code,
    record_failure_message,
    write_termination_message,
)


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


def test_a_failure_outside_launch_goes_straight_to_the_termination_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "termination-log"
    log.write_text("")  # the kubelet creates the file; the trainer only fills it
    monkeypatch.delenv(EXIT_DIR_ENV, raising=False)
    monkeypatch.setenv(TERMINATION_LOG_ENV, str(log))
    record_failure_message("BadData: data.jsonl:2: answer: missing key 'answer'")
    assert log.read_text() == "BadData: data.jsonl:2: answer: missing key 'answer'"


def test_without_a_termination_log_file_nothing_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(EXIT_DIR_ENV, raising=False)
    monkeypatch.setenv(TERMINATION_LOG_ENV, str(tmp_path / "absent"))
    write_termination_message("BadConfig: x")
    assert not (tmp_path / "absent").exists()


def test_the_termination_message_is_cut_at_the_kubelets_limit_on_a_character_boundary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "termination-log"
    log.write_text("")
    monkeypatch.setenv(TERMINATION_LOG_ENV, str(log))
    write_termination_message("é" * 3000)  # 6000 bytes in UTF-8
    data = log.read_bytes()
    assert len(data) <= TERMINATION_MESSAGE_MAX_BYTES
    assert data.decode("utf-8") == "é" * (len(data) // 2)


def test_launch_passes_on_the_message_of_the_rank_whose_code_the_pod_exits_with(tmp_path: Path) -> None:
    for rank, (code, message) in enumerate([(75, "stopped"), (65, "BadData: rank 1"), (65, "BadData: rank 2")]):
        (tmp_path / f"rank-{rank}.exit").write_text(str(code))
        (tmp_path / f"rank-{rank}.message").write_text(message)
    assert failure_message(tmp_path, code=65) == "BadData: rank 1"
    assert failure_message(tmp_path, code=1) is None
