"""Record formats: detection, field mapping, and that every format parses to the same examples."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from kubetune_trainer.data import Example, Message
from kubetune_trainer.data.formats import DetectionError, Rejected, Schema, detect_schema, parse_record

from kubetune.api.spec import DatasetFormat, FieldMapping

LAMINI = Path(__file__).resolve().parents[4] / ".." / "shared" / "datasets" / "lamini_docs.jsonl"

SYSTEM, QUESTION, ANSWER = "Be brief.", "What is 2+2?", "4."
SAME_CONTENT: dict[str, dict[str, Any]] = {
    "messages": {
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": QUESTION},
            {"role": "assistant", "content": ANSWER},
        ]
    },
    "prompt_completion": {"system": SYSTEM, "prompt": QUESTION, "completion": ANSWER},
    "alpaca": {"system": SYSTEM, "instruction": QUESTION, "input": "", "output": ANSWER},
    "sharegpt": {
        "conversations": [
            {"from": "system", "value": SYSTEM},
            {"from": "human", "value": QUESTION},
            {"from": "gpt", "value": ANSWER},
        ]
    },
}
EXPECTED = (
    Message(role="system", content=SYSTEM),
    Message(role="user", content=QUESTION),
    Message(role="assistant", content=ANSWER),
)


def parse(record: dict[str, Any], *, fmt: DatasetFormat = "auto", mapping: FieldMapping | None = None) -> Any:
    schema = detect_schema(record, configured=fmt, mapping=mapping)
    return parse_record(record, source="f.jsonl:1", schema=schema)


@pytest.mark.parametrize("fmt", list(SAME_CONTENT))
def test_every_chat_format_parses_to_the_same_messages(fmt: str) -> None:
    record = SAME_CONTENT[fmt]
    detected = detect_schema(record, configured="auto", mapping=None)
    assert detected.format == fmt
    assert parse(record) == Example(messages=EXPECTED, text=None, source="f.jsonl:1")


@pytest.mark.parametrize("fmt", list(SAME_CONTENT))
def test_configured_format_parses_like_detected(fmt: Any) -> None:
    assert parse(SAME_CONTENT[fmt], fmt=fmt) == parse(SAME_CONTENT[fmt])


def test_alpaca_input_follows_the_instruction_after_a_blank_line() -> None:
    example = parse({"instruction": "Translate.", "input": "bonjour", "output": "hello"})
    assert example.messages == (
        Message(role="user", content="Translate.\n\nbonjour"),
        Message(role="assistant", content="hello"),
    )


def test_text_format_keeps_the_text_and_no_messages() -> None:
    assert parse({"text": "Once upon a time."}) == Example(messages=None, text="Once upon a time.", source="f.jsonl:1")


def test_messages_content_may_be_a_list_of_text_parts() -> None:
    record = {
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]},
            {"role": "assistant", "content": "Hello"},
        ]
    }
    assert parse(record).messages[0] == Message(role="user", content="Hi there")


def test_sharegpt_records_under_a_messages_key_are_detected_as_sharegpt() -> None:
    record = {"messages": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}
    schema = detect_schema(record, configured="auto", mapping=None)
    assert schema.format == "sharegpt" and schema.columns["conversations"] == "messages"
    assert parse(record).messages == (Message(role="user", content="Hi"), Message(role="assistant", content="Hello"))


@pytest.mark.parametrize(
    ("keys", "prompt", "completion"),
    [
        (("question", "answer"), "question", "answer"),
        (("prompt", "response"), "prompt", "response"),
        (("input", "output"), "input", "output"),
        (("query", "completion"), "query", "completion"),
    ],
)
def test_common_prompt_completion_aliases_are_auto_detected(
    keys: tuple[str, str], prompt: str, completion: str
) -> None:
    record = {keys[0]: "Q?", keys[1]: "A."}
    schema = detect_schema(record, configured="auto", mapping=None)
    assert schema == Schema(
        format="prompt_completion", columns={"prompt": prompt, "completion": completion}, detected=True
    )
    assert "prompt_completion" in schema.describe() and repr(prompt) in schema.describe()
    assert parse(record).messages == (Message(role="user", content="Q?"), Message(role="assistant", content="A."))


def test_field_mapping_renames_columns_of_a_configured_format() -> None:
    mapping = FieldMapping(prompt="ask", completion="reply", system="persona")
    record = {"ask": QUESTION, "reply": ANSWER, "persona": SYSTEM, "id": 7}
    schema = detect_schema(record, configured="prompt_completion", mapping=mapping)
    assert schema.columns == {"prompt": "ask", "completion": "reply", "system": "persona"}
    assert not schema.detected
    assert parse(record, fmt="prompt_completion", mapping=mapping).messages == EXPECTED


def test_field_mapping_alone_lets_auto_detection_find_the_format() -> None:
    mapping = FieldMapping(messages="chat")
    record = {"chat": SAME_CONTENT["messages"]["messages"]}
    assert detect_schema(record, configured="auto", mapping=mapping).format == "messages"
    assert parse(record, mapping=mapping).messages == EXPECTED


def test_field_mapping_for_alpaca_and_text() -> None:
    alpaca = FieldMapping(instruction="task", input="context", output="result")
    record = {"task": "Sum.", "context": "2 and 2", "result": "4"}
    assert parse(record, mapping=alpaca).messages[0].content == "Sum.\n\n2 and 2"
    text = FieldMapping(text="body")
    assert parse({"body": "raw"}, fmt="text", mapping=text).text == "raw"


def test_undetectable_record_names_the_keys_it_saw() -> None:
    with pytest.raises(DetectionError, match=r"'colour', 'size'"):
        detect_schema({"size": 1, "colour": "red"}, configured="auto", mapping=None)


def test_lamini_docs_is_detected_as_prompt_completion_from_question_and_answer() -> None:
    first_line = LAMINI.read_text(encoding="utf-8").split("\n", 1)[0]
    record = json.loads(first_line)
    schema = detect_schema(record, configured="auto", mapping=None)
    assert schema.format == "prompt_completion"
    assert schema.columns == {"prompt": "question", "completion": "answer"}
    example = parse(record)
    assert example.messages[0] == Message(role="user", content=record["question"])
    assert example.messages[1] == Message(role="assistant", content=record["answer"])


def test_blank_content_is_a_skip_not_an_error() -> None:
    rejected = parse({"question": "Q?", "answer": "   "})
    assert isinstance(rejected, Rejected)
    assert rejected.errors == [] and [b.field for b in rejected.blanks] == ["answer"]
