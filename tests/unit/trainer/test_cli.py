"""The entry point's contract: config errors exit 78 naming the field, before any heavy import runs."""

from __future__ import annotations

from pathlib import Path

import pytest
from kubetune_trainer.cli import build_parser, main

from kubetune.api.exit_codes import ExitCode
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
