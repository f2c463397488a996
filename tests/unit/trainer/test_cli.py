"""The entry point's contract: config errors exit 78 naming the field, before any heavy import runs; the data
check (``validate``) puts its result in the termination message and exits 0, 65 or 78."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from kubetune_trainer.cli import build_parser, main
from kubetune_trainer.launcher import TERMINATION_LOG_ENV

from kubetune.api.exit_codes import ExitCode
from kubetune.api.preflight import decode_result
from kubetune.api.progress import parse_event


def test_invalid_config_exits_bad_config_and_names_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        "run: {name: x}\nmodel: {source: 'file:///m'}\ndataset: {train: ['file:///d.jsonl']}\n"
        "method: {type: lora, rank: 0}\noutput: {destination: 'file:///o'}\n"
    )
    events = tmp_path / "events.jsonl"

    code = main(["train", "--config", str(config), "--events-file", str(events), "--no-stdout-events"])

    assert code == ExitCode.BAD_CONFIG == 78
    assert "method.rank" in capsys.readouterr().err
    failed = parse_event(events.read_text().splitlines()[-1])
    assert failed.event == "failed" and failed.reason == "BadConfig" and "method.rank" in failed.message


def test_unreadable_config_exits_bad_config(tmp_path: Path) -> None:
    assert main(["train", "--config", str(tmp_path / "missing.yaml"), "--no-stdout-events"]) == 78


def test_train_subcommand_accepts_the_documented_options() -> None:
    args = build_parser().parse_args(["train", "--config", "c.yaml", "--pvc-root", "/pvc", "--events-file", "e.jsonl"])
    assert (str(args.config), str(args.pvc_root), str(args.events_file)) == ("c.yaml", "/pvc", "e.jsonl")


def _check_config(tmp_path: Path, *, model_dir: Path, rows: list[str]) -> Path:
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(rows) + "\n", encoding="utf-8")
    config = tmp_path / "preflight-config.yaml"
    config.write_text(
        f"run: {{name: check}}\nmodel: {{source: 'file://{model_dir}'}}\n"
        f"dataset: {{train: ['{data.as_uri()}'], maxSeqLength: 128}}\noutput: {{destination: 'file:///unused'}}\n"
        "resources: {nodes: 1, gpusPerNode: 2, gpuProduct: NVIDIA-L4}\n",
        encoding="utf-8",
    )
    return config


@pytest.mark.parametrize(
    ("rows", "code", "outcome"),
    [
        ([json.dumps({"text": f"document {i}"}) for i in range(20)], ExitCode.OK, "Passed"),
        ([json.dumps({"text": "fine"}), "{not json", json.dumps({"text": ""}), "[]"], ExitCode.BAD_DATA, "BadData"),
    ],
)
def test_validate_writes_its_result_to_the_termination_message_and_exits_with_the_outcome(
    tmp_path: Path, config_only_model_dir: Path, rows: list[str], code: int, outcome: str
) -> None:
    config = _check_config(tmp_path, model_dir=config_only_model_dir, rows=rows)
    termination_log = tmp_path / "termination-log"
    termination_log.touch()  # the kubelet creates it in every container
    env = {**os.environ, TERMINATION_LOG_ENV: str(termination_log), "HF_HUB_OFFLINE": "1"}

    process = subprocess.run(
        [sys.executable, "-m", "kubetune_trainer", "validate", "--config", str(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert process.returncode == code, process.stderr[-3000:]
    result = decode_result(termination_log.read_text(encoding="utf-8"))
    assert result is not None and result.outcome == outcome
    assert f"kubetune-trainer validate: {outcome}: " in process.stderr
    if outcome == "Passed":
        assert result.dataset is not None and result.dataset.train_examples == 20
        assert result.hyperparameters is not None and result.hyperparameters.world_size == 2
        assert result.estimate is not None and result.estimate.basis is not None and "L4" in result.estimate.basis
    else:
        assert result.dataset is not None and result.dataset.error_count == 2
        assert [(p.line, p.reason[:12]) for p in result.dataset.errors] == [(2, "invalid JSON"), (4, "expected a J")]
        assert "train.jsonl:2: invalid JSON" in process.stderr


def test_validate_with_an_invalid_config_exits_bad_config_with_a_result(tmp_path: Path) -> None:
    config = tmp_path / "preflight-config.yaml"
    config.write_text("run: {name: x}\nmodel: {source: 'file:///m'}\ndataset: {train: []}\n", encoding="utf-8")
    result_file = tmp_path / "result.json"

    code = main(["validate", "--config", str(config), "--result-file", str(result_file)])

    assert code == ExitCode.BAD_CONFIG
    result = decode_result(result_file.read_text(encoding="utf-8"))
    assert result is not None and result.outcome == "BadConfig" and "dataset.train" in result.message
