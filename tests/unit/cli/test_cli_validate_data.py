"""``kubetune validate-data`` runs the trainer's own validation: each bad record named by file and line."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from kubetune.cli import main
from kubetune.cli.errors import CliExit

CHAT = {"messages": [{"role": "user", "content": "What is LoRA?"}, {"role": "assistant", "content": "Low-rank."}]}
TINY_TOKENIZER = Path(__file__).resolve().parents[1] / "trainer" / "data" / "tiny_chat_tokenizer.py"


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trainer tests' tiny chat tokenizer, saved as a model directory would hold it."""
    spec = importlib.util.spec_from_file_location("tiny_chat_tokenizer", TINY_TOKENIZER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    directory = tmp_path_factory.mktemp("tokenizer")
    module.build_tiny_tokenizer().save_pretrained(directory)
    return directory


def test_bad_records_are_named_by_the_path_typed_and_line(in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_jsonl(in_tmp / "train.jsonl", [CHAT, "{not json", {"messages": [{"role": "robot", "content": "x"}]}])
    assert main(["validate-data", "train.jsonl"]) == CliExit.INVALID == 3
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [
        "train.jsonl:2: invalid JSON: Expecting property name enclosed in double quotes (column 2)",
        "train.jsonl:3: messages[0].role: role is 'robot'; expected one of system, user, assistant",
        "kubetune: error: data validation failed: 2 problems in the dataset",
    ]


def test_good_data_reports_format_counts_and_warnings(in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pairs = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(9)] + [{"question": "q", "answer": ""}]
    write_jsonl(in_tmp / "qa.jsonl", pairs)
    assert main(["validate-data", "qa.jsonl", "--validation-split", "0.25"]) == 0
    out = capsys.readouterr().out
    assert "qa.jsonl" in out and "prompt_completion (prompt='question', completion='answer'), auto-detected" in out
    assert "9 (1 skipped)" in out and "7 train / 2 validation (split)" in out
    assert "warning: qa.jsonl:10: answer: empty content: record skipped" in out
    assert out.splitlines()[-1] == "valid: 7 training examples"
    assert "file://" not in out


def test_a_forced_format_that_does_not_fit_is_reported(in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_jsonl(in_tmp / "chat.jsonl", [CHAT])
    assert main(["validate-data", "chat.jsonl", "--format", "alpaca"]) == CliExit.INVALID
    assert "chat.jsonl:1: instruction: missing key 'instruction'" in capsys.readouterr().err


def test_json_output_is_the_trainers_data_report(in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_jsonl(in_tmp / "chat.jsonl", [CHAT, CHAT])
    assert main(["validate-data", "chat.jsonl", "-o", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["status"] == "ok" and report["records"] == 2 and report["duplicates"] == 1
    assert report["formats"] == {"messages": 2}


def test_json_output_of_bad_data_lists_every_error(in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_jsonl(in_tmp / "chat.jsonl", [CHAT, "[]"])
    assert main(["validate-data", "chat.jsonl", "-o", "json"]) == CliExit.INVALID
    failed = json.loads(capsys.readouterr().out)
    assert failed["status"] == "failed"
    assert [e["source"].rsplit("/", 1)[1] for e in failed["errors"]] == ["chat.jsonl:2"]


def test_a_tokenizer_adds_token_counts(in_tmp: Path, tokenizer_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_jsonl(in_tmp / "chat.jsonl", [CHAT])
    assert main(["validate-data", "chat.jsonl", "--tokenizer", str(tokenizer_dir), "--max-seq-length", "512"]) == 0
    lines = capsys.readouterr().out.splitlines()
    tokens = next(line for line in lines if line.startswith("train tokens"))
    assert "trained); length p50" in tokens
    assert "truncated     0 (maxSeqLength 512)" in lines


def test_options_the_dataset_spec_rejects_are_named(in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_jsonl(in_tmp / "chat.jsonl", [CHAT])
    assert main(["validate-data", "chat.jsonl", "--validation-split", "0.9"]) == CliExit.USAGE
    assert capsys.readouterr().err.startswith("kubetune: error: --validation-split: Input should be less than")
    assert main(["validate-data", "chat.jsonl", "--tokenizer", "missing-dir"]) == CliExit.USAGE
    assert capsys.readouterr().err == "kubetune: error: --tokenizer: missing-dir is not a directory\n"


def test_a_missing_file_is_a_data_error_naming_it(in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate-data", "nope.jsonl"]) == CliExit.INVALID
    assert "nope.jsonl: train[0]: no such file, directory or prefix" in capsys.readouterr().err


def test_preference_pairs_are_checked_with_format_preference(
    in_tmp: Path, tokenizer_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = {"prompt": "What is LoRA?", "chosen": "Low-rank adapters.", "rejected": "A radio protocol."}
    write_jsonl(in_tmp / "pairs.jsonl", [good, {"prompt": "Hi", "chosen": "Hello"}])
    assert main(["validate-data", "pairs.jsonl", "--format", "preference"]) == CliExit.INVALID
    err = capsys.readouterr().err
    assert "pairs.jsonl:2: rejected" in err

    write_jsonl(in_tmp / "pairs.jsonl", [good] * 3)
    assert main(["validate-data", "pairs.jsonl", "--format", "preference", "--tokenizer", str(tokenizer_dir)]) == 0
    out = capsys.readouterr().out
    assert "prompt_chosen_rejected" in out and "valid: 3 training examples" in out
