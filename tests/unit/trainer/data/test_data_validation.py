"""The validation pass: every bad record is reported with file:line and field, and stops the run."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kubetune_trainer.data import DataConfigError, DataError, prepare_data
from kubetune_trainer.data.report import report_to_dict
from tiny_chat_tokenizer import build_tiny_tokenizer

from kubetune.api.exit_codes import ExitCode
from kubetune.api.spec import DatasetSpec

WriteJsonl = Callable[[str, list[Any]], Path]

LAMINI = Path(__file__).resolve().parents[4] / ".." / "shared" / "datasets" / "lamini_docs.jsonl"

GOOD = {
    "messages": {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]},
    "prompt_completion": {"prompt": "Hi", "completion": "Hello"},
    "sharegpt": {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
    "alpaca": {"instruction": "Greet.", "input": "", "output": "Hello"},
    "text": {"text": "Hello world"},
}


def chat(*turns: Any) -> dict[str, Any]:
    return {"messages": list(turns)}


USER, ASSISTANT = {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}


def case(name: str, fmt: str, bad: Any, field: str, message: str) -> Any:
    """A bad-data case: the bad line (object or raw text) after two good lines of format ``fmt``."""
    return pytest.param(fmt, bad, field, message, id=name)


ROBOT = {"role": "robot", "content": "Hi"}
LATE_SYSTEM = {"role": "system", "content": "x"}
BAD_DATA = [
    case("invalid-json", "messages", '{"messages": [', "", r"invalid JSON"),
    case("not-an-object", "messages", "[1, 2]", "", r"expected a JSON object, got an array"),
    case("missing-messages-key", "messages", {"msgs": [USER, ASSISTANT]}, "messages", r"missing key 'messages'"),
    case("messages-not-a-list", "messages", {"messages": "Hi"}, "messages", r"array of messages, got a string"),
    case("empty-messages", "messages", {"messages": []}, "messages", r"expected a non-empty array"),
    case("message-not-an-object", "messages", chat("Hi", ASSISTANT), "messages[0]", r"message object, got a string"),
    case("unknown-role", "messages", chat(ROBOT, ASSISTANT), "messages[0].role", r"role is .robot.; expected"),
    case("missing-role", "messages", chat({"content": "Hi"}, ASSISTANT), "messages[0].role", r"role is missing"),
    case(
        "content-wrong-type",
        "messages",
        chat(USER, {"role": "assistant", "content": 42}),
        "messages[1].content",
        r"expected a string, got a number",
    ),
    case("content-missing", "messages", chat(USER, {"role": "assistant"}), "messages[1].content", r"missing"),
    case("no-assistant-turn", "messages", chat(USER), "messages", r"no assistant message"),
    case("system-not-first", "messages", chat(USER, LATE_SYSTEM, ASSISTANT), "messages[1]", r"may only come first"),
    case("assistant-before-user", "messages", chat(ASSISTANT, USER, ASSISTANT), "messages", r"must be from the user"),
    case("missing-completion", "prompt_completion", {"prompt": "Hi"}, "completion", r"missing key 'completion'"),
    case("prompt-null", "prompt_completion", {"prompt": None, "completion": "x"}, "prompt", r"got null"),
    case(
        "sharegpt-unknown-speaker",
        "sharegpt",
        {"conversations": [{"from": "bot", "value": "x"}]},
        "conversations[0].from",
        r"speaker is 'bot'",
    ),
    case("alpaca-missing-output", "alpaca", {"instruction": "Greet."}, "output", r"missing key 'output'"),
    case("text-wrong-type", "text", {"text": ["Hello"]}, "text", r"expected a string, got an array"),
]


@pytest.mark.parametrize(("fmt", "bad", "field", "message"), BAD_DATA)
def test_bad_record_is_a_data_error_naming_file_line_and_field(
    write_jsonl: WriteJsonl, tiny_tokenizer: Any, fmt: str, bad: Any, field: str, message: str
) -> None:
    path = write_jsonl("bad.jsonl", [GOOD[fmt], GOOD[fmt], bad, GOOD[fmt]])
    with pytest.raises(DataError) as caught:
        prepare_data(DatasetSpec(train=[path.as_uri()]), tokenizer=tiny_tokenizer, seed=0)
    [issue] = caught.value.errors
    assert issue.source == f"{path.as_uri()}:3"
    assert issue.field == field
    assert re.search(message, issue.message), issue.message
    assert caught.value.exit_code == ExitCode.BAD_DATA
    assert "bad.jsonl:3" in str(caught.value)


def test_invalid_utf8_names_the_line(tmp_path: Path, tiny_tokenizer: Any) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(json.dumps(GOOD["text"]).encode() + b'\n{"text": "caf\xe9"}\n')
    with pytest.raises(DataError) as caught:
        prepare_data(DatasetSpec(train=[path.as_uri()]), tokenizer=tiny_tokenizer, seed=0)
    [issue] = caught.value.errors
    assert (issue.source, issue.message) == (f"{path.as_uri()}:2", "not valid UTF-8 text")


def test_csv_row_with_extra_fields_names_its_line(tmp_path: Path, tiny_tokenizer: Any) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("prompt,completion\nHi,Hello\nHi,Hello,oops\n", encoding="utf-8")
    with pytest.raises(DataError) as caught:
        prepare_data(DatasetSpec(train=[path.as_uri()]), tokenizer=tiny_tokenizer, seed=0)
    [issue] = caught.value.errors
    assert (issue.source, issue.message) == (f"{path.as_uri()}:3", "row has more fields than the header")


def test_prompt_longer_than_max_seq_length_is_an_error_not_a_truncation(
    write_jsonl: WriteJsonl, tiny_tokenizer: Any
) -> None:
    path = write_jsonl("long.jsonl", [GOOD["prompt_completion"], {"prompt": "x" * 200, "completion": "y"}])
    with pytest.raises(DataError) as caught:
        prepare_data(DatasetSpec(train=[path.as_uri()], max_seq_length=64), tokenizer=tiny_tokenizer, seed=0)
    [issue] = caught.value.errors
    assert (issue.source, issue.field) == (f"{path.as_uri()}:2", "maxSeqLength")
    assert "no trained token" in issue.message


def test_long_completion_is_truncated_and_counted(write_jsonl: WriteJsonl, tiny_tokenizer: Any) -> None:
    path = write_jsonl("long.jsonl", [GOOD["prompt_completion"], {"prompt": "Hi", "completion": "y" * 200}])
    data = prepare_data(DatasetSpec(train=[path.as_uri()], max_seq_length=64), tokenizer=tiny_tokenizer, seed=0)
    assert data.report.truncated == 1
    assert max(len(e.input_ids) for e in data.train) == 64
    assert any("1 example(s) longer than maxSeqLength=64" in w for w in data.report.warnings)


def test_every_bad_record_is_reported_not_only_the_first(write_jsonl: WriteJsonl, tiny_tokenizer: Any) -> None:
    good = GOOD["prompt_completion"]
    path = write_jsonl("bad.jsonl", [good, {"prompt": "Hi"}, good, "oops", {"prompt": 1, "completion": "x"}])
    with pytest.raises(DataError) as caught:
        prepare_data(DatasetSpec(train=[path.as_uri()]), tokenizer=tiny_tokenizer, seed=0)
    assert [(e.source.rsplit(":", 1)[1], e.field) for e in caught.value.errors] == [
        ("2", "completion"),
        ("4", ""),
        ("5", "prompt"),
    ]


def test_undetectable_format_is_a_data_error_with_guidance(write_jsonl: WriteJsonl, tiny_tokenizer: Any) -> None:
    path = write_jsonl("odd.jsonl", [{"foo": 1, "bar": 2}])
    with pytest.raises(DataError, match=r"dataset\.fieldMapping") as caught:
        prepare_data(DatasetSpec(train=[path.as_uri()]), tokenizer=tiny_tokenizer, seed=0)
    assert caught.value.errors[0].field == "format"


def test_failure_keeps_the_report_with_status_failed(write_jsonl: WriteJsonl, tiny_tokenizer: Any) -> None:
    path = write_jsonl("bad.jsonl", [GOOD["messages"], chat(USER)])
    with pytest.raises(DataError) as caught:
        prepare_data(DatasetSpec(train=[path.as_uri()]), tokenizer=tiny_tokenizer, seed=0)
    report = caught.value.report
    assert report is not None and report.status == "failed" and report.error_count == 1
    assert report_to_dict(report)["errors"] == [
        {"source": f"{path.as_uri()}:2", "field": "messages", "message": "no assistant message: nothing to train on"}
    ]


def test_success_keeps_the_report_in_memory_and_writes_nothing(
    write_jsonl: WriteJsonl, tiny_tokenizer: Any, tmp_path: Path
) -> None:
    path = write_jsonl("ok.jsonl", [GOOD["messages"]] * 3)
    before = sorted(p.name for p in path.parent.iterdir())
    data = prepare_data(DatasetSpec(train=[path.as_uri()]), tokenizer=tiny_tokenizer, seed=0)
    assert data.report.status == "ok" and data.report.train_examples == 3
    assert sorted(p.name for p in path.parent.iterdir()) == before


def test_small_and_duplicated_datasets_are_warnings_not_errors(write_jsonl: WriteJsonl, tiny_tokenizer: Any) -> None:
    chats = write_jsonl("chats.jsonl", [GOOD["messages"]] * 3)
    pairs = write_jsonl("pairs.jsonl", [GOOD["prompt_completion"]])
    data = prepare_data(DatasetSpec(train=[chats.as_uri(), pairs.as_uri()]), tokenizer=tiny_tokenizer, seed=0)
    # The prompt_completion record is the same conversation as the messages ones: 3 duplicates.
    assert data.report.duplicates == 3
    assert any("only 4 training examples" in w for w in data.report.warnings)
    assert any("3 training example(s) duplicate" in w for w in data.report.warnings)


def test_lamini_docs_auto_detects_and_skips_its_one_empty_answer(tiny_tokenizer: Any) -> None:
    spec = DatasetSpec(train=[LAMINI.resolve().as_uri()], validation_split=0.1)
    data = prepare_data(spec, tokenizer=tiny_tokenizer, seed=42)
    report = data.report
    assert report.formats == {"prompt_completion": 1399}
    assert "prompt_completion (prompt='question', completion='answer'), auto-detected" in report.detection[0]
    assert report.skipped == 1
    assert any("lamini_docs.jsonl:424: answer: empty content: record skipped" in w for w in report.warnings)
    assert (report.train_examples, report.validation_examples) == (1259, 140)
    assert report.train_tokens.count == 1259 and report.train_tokens.min <= report.train_tokens.p50
    assert report.train_tokens.p50 <= report.train_tokens.p95 <= report.train_tokens.max


def test_a_tokenizer_that_cannot_format_the_data_fails_as_config(write_jsonl: WriteJsonl) -> None:
    path = write_jsonl("ok.jsonl", [GOOD["messages"]])
    with pytest.raises(DataConfigError) as caught:
        prepare_data(
            DatasetSpec(train=[path.as_uri()]),
            tokenizer=build_tiny_tokenizer(chat_template=None),
            seed=0,
        )
    assert caught.value.exit_code == ExitCode.BAD_CONFIG
    assert "chat template" in str(caught.value)


def test_an_empty_shard_is_a_warning_but_no_records_at_all_is_an_error(tmp_path: Path, tiny_tokenizer: Any) -> None:
    (tmp_path / "a.jsonl").write_text(json.dumps(GOOD["text"]) + "\n", encoding="utf-8")
    (tmp_path / "b.jsonl").write_text("\n", encoding="utf-8")
    data = prepare_data(DatasetSpec(train=[tmp_path.as_uri()]), tokenizer=tiny_tokenizer, seed=0)
    assert f"{tmp_path.as_uri()}/b.jsonl: empty, no records" in data.report.warnings
    with pytest.raises(DataError, match="no training records"):
        prepare_data(DatasetSpec(train=[(tmp_path / "b.jsonl").as_uri()]), tokenizer=tiny_tokenizer, seed=0)


def test_a_file_starting_with_a_non_object_names_its_type(write_jsonl: WriteJsonl, tiny_tokenizer: Any) -> None:
    path = write_jsonl("d.jsonl", ['"just a string"', GOOD["text"]])
    with pytest.raises(DataError) as caught:
        prepare_data(DatasetSpec(train=[path.as_uri()]), tokenizer=tiny_tokenizer, seed=0)
    [issue] = caught.value.errors
    assert (issue.source, issue.message) == (f"{path.as_uri()}:1", "expected a JSON object, got a string")
