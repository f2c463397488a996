"""Preference data: both record shapes parse to the same pair, every problem names its record and field,
pairs tokenize like SFT examples with the prompt shared, and collate into chosen rows then rejected rows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import WriteJsonl
from kubetune_trainer.data import IGNORE_INDEX, DataConfigError, DataIssue, Example, Message
from kubetune_trainer.data.formats import DetectionError, Rejected
from kubetune_trainer.data.preference import (
    PreferencePair,
    collate_pairs,
    detect_preference_schema,
    looks_like_preference,
    parse_preference_record,
    tokenize_pair,
)
from kubetune_trainer.data.sources import read_file_bytes, read_records, resolve_data_files
from kubetune_trainer.data.tokenize import tokenize_examples
from kubetune_trainer.data.types import TokenizedPair
from tiny_chat_tokenizer import build_tiny_tokenizer

from kubetune.api.spec import FieldMapping

SYSTEM, QUESTION, GOOD, BAD = "Be brief.", "What is 2+2?", "4.", "Probably 5."


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


SAME_PAIR: dict[str, dict[str, Any]] = {
    "openai": {
        "input": {"messages": [user(QUESTION)], "tools": [], "parallel_tool_calls": True},
        "preferred_output": [assistant(GOOD)],
        "non_preferred_output": [assistant(BAD)],
    },
    "strings": {"prompt": QUESTION, "chosen": GOOD, "rejected": BAD},
    "conversational": {"prompt": [user(QUESTION)], "chosen": [assistant(GOOD)], "rejected": [assistant(BAD)]},
    # Answers that repeat the prompt before the reply (HuggingFaceH4/ultrafeedback_binarized's layout).
    "answers_repeat_prompt": {
        "prompt": QUESTION,
        "chosen": [user(QUESTION), assistant(GOOD)],
        "rejected": [user(QUESTION), assistant(BAD)],
    },
    # No prompt column: the prompt is what both conversations share.
    "implicit_prompt": {"chosen": [user(QUESTION), assistant(GOOD)], "rejected": [user(QUESTION), assistant(BAD)]},
    # CSV cells hold the message lists as JSON text.
    "json_text_cells": {
        "prompt": json.dumps([user(QUESTION)]),
        "chosen": json.dumps([assistant(GOOD)]),
        "rejected": json.dumps([assistant(BAD)]),
    },
}
EXPECTED = PreferencePair(
    prompt=(Message(role="user", content=QUESTION),),
    chosen=(Message(role="assistant", content=GOOD),),
    rejected=(Message(role="assistant", content=BAD),),
    source="f.jsonl:1",
)


def parse(record: Any, *, mapping: FieldMapping | None = None, source: str = "f.jsonl:1") -> PreferencePair | Rejected:
    schema = detect_preference_schema(record, mapping=mapping)
    return parse_preference_record(record, source=source, schema=schema)


def parse_file(path: Path, *, mapping: FieldMapping | None = None) -> tuple[list[PreferencePair], list[DataIssue]]:
    """What the data layer does per file: the first record picks the schema, every record is parsed."""
    [data_file] = resolve_data_files(path.as_uri()).files
    records = list(read_records(data_file, read_file_bytes(data_file)))
    first = next(r.value for r in records if isinstance(r.value, dict))
    assert isinstance(first, dict)
    schema = detect_preference_schema(first, mapping=mapping)
    pairs: list[PreferencePair] = []
    issues: list[DataIssue] = []
    for record in records:
        parsed = parse_preference_record(record.value, source=record.source.rsplit("/", 1)[1], schema=schema)
        if isinstance(parsed, PreferencePair):
            pairs.append(parsed)
        else:
            issues += parsed.errors + parsed.blanks
    return pairs, issues


@pytest.mark.parametrize("shape", list(SAME_PAIR))
def test_every_preference_shape_parses_to_the_same_pair(shape: str) -> None:
    assert parse(SAME_PAIR[shape]) == EXPECTED


def test_the_openai_shape_is_named_in_the_detection() -> None:
    openai = detect_preference_schema(SAME_PAIR["openai"], mapping=None)
    assert openai.format == "openai_preference"
    assert openai.columns == {"prompt": "input", "chosen": "preferred_output", "rejected": "non_preferred_output"}
    assert openai.describe() == (
        "openai_preference (prompt='input', chosen='preferred_output', rejected='non_preferred_output'), auto-detected"
    )
    assert detect_preference_schema(SAME_PAIR["strings"], mapping=None).format == "prompt_chosen_rejected"


def test_a_multi_turn_prompt_keeps_its_turns_and_a_system_column_comes_first() -> None:
    record = {
        "system": SYSTEM,
        "prompt": [user("Hi."), assistant("Hello."), user(QUESTION)],
        "chosen": [assistant(GOOD)],
        "rejected": BAD,
    }
    pair = parse(record)
    assert isinstance(pair, PreferencePair)
    assert [m.role for m in pair.prompt] == ["system", "user", "assistant", "user"]
    assert pair.prompt[0].content == SYSTEM


def test_field_mapping_renames_prompt_chosen_rejected_and_system() -> None:
    record = {"sys": SYSTEM, "q": QUESTION, "good": GOOD, "bad": BAD, "chosen": "not this one"}
    mapping = FieldMapping(prompt="q", chosen="good", rejected="bad", system="sys")
    schema = detect_preference_schema(record, mapping=mapping)
    assert schema.columns == {"prompt": "q", "chosen": "good", "rejected": "bad", "system": "sys"}
    pair = parse(record, mapping=mapping)
    assert isinstance(pair, PreferencePair)
    assert pair.prompt == (Message(role="system", content=SYSTEM), Message(role="user", content=QUESTION))
    assert (pair.chosen[0].content, pair.rejected[0].content) == (GOOD, BAD)


def test_orca_style_question_and_system_columns_are_found_without_a_mapping() -> None:
    schema = detect_preference_schema(
        {"system": SYSTEM, "question": QUESTION, "chosen": GOOD, "rejected": BAD}, mapping=None
    )
    assert schema.columns == {"prompt": "question", "chosen": "chosen", "rejected": "rejected", "system": "system"}


def test_sft_records_are_not_preference_data_and_detection_lists_the_keys() -> None:
    assert looks_like_preference(SAME_PAIR["strings"], mapping=None)
    assert not looks_like_preference({"prompt": QUESTION, "completion": GOOD}, mapping=None)
    assert not looks_like_preference({"messages": [user(QUESTION), assistant(GOOD)]}, mapping=None)
    with pytest.raises(DetectionError, match=r"keys 'completion', 'prompt'.*prompt/chosen/rejected"):
        detect_preference_schema({"prompt": QUESTION, "completion": GOOD}, mapping=None)


# Each case: a bad record, the field named, part of the message, and whether it only skips the record.
PROBLEMS: list[tuple[dict[str, Any], str, str, bool]] = [
    ({"prompt": QUESTION, "chosen": GOOD}, "rejected", "missing key 'rejected'", False),
    ({"prompt": QUESTION, "rejected": BAD}, "chosen", "missing key 'chosen'", False),
    ({"prompt": QUESTION, "chosen": 4, "rejected": BAD}, "chosen", "expected a string or an array of messages", False),
    ({"prompt": 7, "chosen": GOOD, "rejected": BAD}, "prompt", "got a number", False),
    ({"prompt": QUESTION, "chosen": [], "rejected": BAD}, "chosen", "non-empty array of messages", False),
    ({"prompt": QUESTION, "chosen": "   ", "rejected": BAD}, "chosen", "empty content", True),
    ({"prompt": QUESTION, "chosen": [assistant("")], "rejected": BAD}, "chosen[0].content", "empty content", True),
    ({"prompt": "", "chosen": GOOD, "rejected": BAD}, "prompt", "empty content", True),
    ({"prompt": QUESTION, "chosen": GOOD, "rejected": GOOD}, "rejected", "identical to the chosen answer", True),
    ({"prompt": QUESTION, "chosen": [user(GOOD)], "rejected": BAD}, "chosen[0].role", "assistant messages only", False),
    (
        {"prompt": QUESTION, "chosen": GOOD, "rejected": [assistant(BAD), user("More?")]},
        "rejected[1].role",
        "assistant messages only",
        False,
    ),
    (
        {"prompt": QUESTION, "chosen": [{"role": "robot", "content": GOOD}], "rejected": BAD},
        "chosen[0].role",
        "'robot'",
        False,
    ),
    ({"prompt": QUESTION, "chosen": ["4."], "rejected": BAD}, "chosen[0]", "expected a message object", False),
    (
        {"prompt": [user(QUESTION), assistant(GOOD)], "chosen": GOOD, "rejected": BAD},
        "prompt",
        "ends with an assistant message",
        False,
    ),
    ({"prompt": [assistant("Hi.")], "chosen": GOOD, "rejected": BAD}, "prompt", "must be from the user", False),
    (
        {"prompt": [user(QUESTION), {"role": "system", "content": SYSTEM}], "chosen": GOOD, "rejected": BAD},
        "prompt",
        "system message may only come first",
        False,
    ),
    ({"chosen": [assistant(GOOD)], "rejected": [assistant(BAD)]}, "chosen", "no prompt", False),
    ({"chosen": [user(QUESTION)], "rejected": [user(QUESTION), assistant(BAD)]}, "chosen", "no answer", False),
]


@pytest.mark.parametrize(("record", "field", "message", "skipped"), PROBLEMS)
def test_each_problem_names_the_record_and_the_field(
    record: dict[str, Any], field: str, message: str, skipped: bool, write_jsonl: WriteJsonl
) -> None:
    # A good first record fixes the schema, as in a real file; the bad one is on line 3.
    first = SAME_PAIR["conversational" if "prompt" in record else "implicit_prompt"]
    pairs, issues = parse_file(write_jsonl("prefs.jsonl", [first, "", record]))
    assert len(pairs) == 1
    assert [(issue.source, issue.field) for issue in issues] == [("prefs.jsonl:3", field)]
    assert message in issues[0].message
    assert str(issues[0]).startswith(f"prefs.jsonl:3: {field}: ")
    parsed = parse_preference_record(record, source="f.jsonl:3", schema=detect_preference_schema(first, mapping=None))
    assert isinstance(parsed, Rejected)
    assert (not parsed.errors) == skipped


def test_openai_problems_name_the_openai_fields() -> None:
    schema = detect_preference_schema(SAME_PAIR["openai"], mapping=None)
    bad = {"input": {"tools": []}, "preferred_output": [user(GOOD)], "non_preferred_output": [assistant(BAD)]}
    parsed = parse_preference_record(bad, source="o.jsonl:2", schema=schema)
    assert isinstance(parsed, Rejected)
    assert [(i.source, i.field) for i in parsed.errors] == [("o.jsonl:2", "input")]
    bad = {"input": {"messages": [user(QUESTION)]}, "preferred_output": [user(GOOD)], "non_preferred_output": BAD}
    parsed = parse_preference_record(bad, source="o.jsonl:3", schema=schema)
    assert isinstance(parsed, Rejected)
    assert [i.field for i in parsed.errors] == ["preferred_output[0].role"]


def test_a_record_that_is_not_an_object_and_a_mapped_column_that_is_missing_are_reported() -> None:
    mapping = FieldMapping(chosen="good", rejected="bad")
    schema = detect_preference_schema({"prompt": QUESTION, "good": GOOD, "bad": BAD}, mapping=mapping)
    not_object = parse_preference_record([1, 2], source="f.jsonl:4", schema=schema)
    assert isinstance(not_object, Rejected)
    assert not_object.errors == [DataIssue("f.jsonl:4", "", "expected a JSON object, got an array")]
    missing = parse_preference_record({"prompt": QUESTION, "good": GOOD}, source="f.jsonl:5", schema=schema)
    assert isinstance(missing, Rejected)
    assert [i.field for i in missing.errors] == ["bad"]


# --- tokenization -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return build_tiny_tokenizer()


def pair_of(prompt: list[dict[str, str]], chosen: str, rejected: str, *, source: str = "f.jsonl:1") -> PreferencePair:
    parsed = parse({"prompt": prompt, "chosen": chosen, "rejected": rejected}, source=source)
    assert isinstance(parsed, PreferencePair)
    return parsed


def tokenized(pair: PreferencePair, tokenizer: Any, *, max_seq_length: int = 512) -> TokenizedPair:
    result = tokenize_pair(pair, tokenizer=tokenizer, max_seq_length=max_seq_length)
    assert isinstance(result, TokenizedPair), result
    return result


def labelled_text(tokens: Any, tokenizer: Any) -> str:
    return str(
        tokenizer.decode([t for t, label in zip(tokens.input_ids, tokens.labels, strict=True) if label != IGNORE_INDEX])
    )


def prompt_length(tokens: Any) -> int:
    return next(i for i, label in enumerate(tokens.labels) if label != IGNORE_INDEX)


def test_only_each_answer_and_its_eos_carry_labels_after_the_same_prompt_tokens(tokenizer: Any) -> None:
    result = tokenized(pair_of([user(QUESTION)], GOOD, BAD), tokenizer)
    assert labelled_text(result.chosen, tokenizer) == GOOD + "<|im_end|>"
    assert labelled_text(result.rejected, tokenizer) == BAD + "<|im_end|>"
    cut = prompt_length(result.chosen)
    assert prompt_length(result.rejected) == cut
    assert result.chosen.input_ids[:cut] == result.rejected.input_ids[:cut]
    assert tokenizer.decode(result.chosen.input_ids[:cut]).endswith(f"{QUESTION}<|im_end|>\n<|im_start|>assistant\n")
    for side in (result.chosen, result.rejected):
        assert side.labels[cut:] == side.input_ids[cut:]
    assert result.length == max(len(result.chosen.input_ids), len(result.rejected.input_ids))
    assert not result.truncated


def test_a_pair_tokenizes_like_the_sft_example_of_its_prompt_and_chosen_answer(tokenizer: Any) -> None:
    pair = parse(
        {
            "system": SYSTEM,
            "prompt": [user("Hi."), assistant("Hello."), user(QUESTION)],
            "chosen": GOOD,
            "rejected": BAD,
        }
    )
    assert isinstance(pair, PreferencePair)
    result = tokenized(pair, tokenizer)
    example = Example(messages=pair.prompt + pair.chosen, text=None, source=pair.source)
    [sft] = tokenize_examples([example], tokenizer=tokenizer, max_seq_length=512).examples
    assert sft is not None
    assert result.chosen.input_ids == sft.input_ids
    cut = prompt_length(result.chosen)
    # SFT also trains on the prompt's assistant turn; DPO compares only the answers.
    assert result.chosen.labels[cut:] == sft.labels[cut:]
    assert "Hello." in tokenizer.decode(
        [t for t, label in zip(sft.input_ids, sft.labels, strict=True) if label != IGNORE_INDEX]
    )
    assert labelled_text(result.chosen, tokenizer) == GOOD + "<|im_end|>"


def test_long_answers_are_truncated_to_max_seq_length_and_reported(tokenizer: Any) -> None:
    pair = pair_of([user(QUESTION)], "A" * 40, "B" * 60)
    full = tokenized(pair, tokenizer)
    prompt = prompt_length(full.chosen)
    result = tokenized(pair, tokenizer, max_seq_length=prompt + 10)
    assert result.truncated
    assert len(result.chosen.input_ids) == len(result.rejected.input_ids) == prompt + 10 == result.length
    assert result.chosen.input_ids == full.chosen.input_ids[: prompt + 10]
    assert result.rejected.labels == full.rejected.labels[: prompt + 10]
    fits = tokenized(pair, tokenizer, max_seq_length=full.length)
    assert not fits.truncated


def test_a_prompt_that_fills_max_seq_length_is_an_issue_naming_the_lengths(tokenizer: Any) -> None:
    pair = pair_of([user(QUESTION)], GOOD, BAD, source="f.jsonl:9")
    prompt = prompt_length(tokenized(pair, tokenizer).chosen)
    issue = tokenize_pair(pair, tokenizer=tokenizer, max_seq_length=prompt)
    assert isinstance(issue, DataIssue)
    assert (issue.source, issue.field) == ("f.jsonl:9", "maxSeqLength")
    assert f"{prompt} tokens" in issue.message and f"maxSeqLength={prompt}" in issue.message
    assert isinstance(tokenize_pair(pair, tokenizer=tokenizer, max_seq_length=prompt + 1), TokenizedPair)


def test_answers_identical_within_max_seq_length_are_an_issue(tokenizer: Any) -> None:
    pair = pair_of([user(QUESTION)], "Same start, then yes.", "Same start, then no.")
    prompt = prompt_length(tokenized(pair, tokenizer).chosen)
    issue = tokenize_pair(pair, tokenizer=tokenizer, max_seq_length=prompt + len("Same start"))
    assert isinstance(issue, DataIssue)
    assert issue.field == "maxSeqLength" and "identical" in issue.message


def test_a_tokenizer_without_chat_template_is_a_configuration_error() -> None:
    with pytest.raises(DataConfigError, match="no chat template"):
        tokenize_pair(EXPECTED, tokenizer=build_tiny_tokenizer(chat_template=None), max_seq_length=64)


def test_a_batch_holds_one_row_per_pair_the_shared_tokens_once_then_each_answer(tokenizer: Any) -> None:
    pairs = [
        tokenized(pair_of([user(QUESTION)], GOOD, BAD), tokenizer),
        tokenized(
            pair_of([user("A much longer question, to make the rows differ?")], "Yes, indeed.", "Yes, no."), tokenizer
        ),
    ]
    pad = tokenizer.pad_token_id
    batch = collate_pairs(pairs, pad_token_id=pad)
    assert set(batch) == {"input_ids", "position_ids", "attention_mask", "predict_index", "targets"}
    width = max(p.row_length for p in pairs)
    assert batch["input_ids"].shape == batch["position_ids"].shape == (2, width)
    assert batch["attention_mask"].shape == (2, 1, width, width)
    # The second pair's answers start alike ("Yes,"): those tokens are shared too.
    assert pairs[1].shared > prompt_length(pairs[1].chosen) > 0
    assert pairs[0].shared >= prompt_length(pairs[0].chosen)
    flat_ids, flat_positions = batch["input_ids"].flatten(), batch["position_ids"].flatten()
    for b, pair in enumerate(pairs):
        shared, chosen, rejected = pair.shared, pair.chosen, pair.rejected
        row = chosen.input_ids + rejected.input_ids[shared:]
        assert batch["input_ids"][b].tolist() == row + [pad] * (width - len(row))
        rest = len(chosen.input_ids)
        assert batch["position_ids"][b, : len(row)].tolist() == [
            *range(rest),
            *range(shared, len(rejected.input_ids)),
        ]
        allowed = batch["attention_mask"][b, 0] == 0
        # The rejected answer sees the shared tokens and itself, never the chosen answer; the chosen answer
        # sees the shared tokens; padding sees only itself.
        first_rejected = rest
        assert allowed[first_rejected, :shared].all() and not allowed[first_rejected, shared:rest].any()
        assert allowed[rest - 1, :rest].all()
        for q in range(len(row), width):
            assert allowed[q].tolist() == [k == q for k in range(width)]
        # Each sequence's label tokens, each with the token before it in that sequence at its position.
        for side, sequence in ((b, chosen), (len(pairs) + b, rejected)):
            wanted = [
                (sequence.input_ids[t - 1], t - 1, sequence.labels[t])
                for t in range(1, len(sequence.labels))
                if sequence.labels[t] != IGNORE_INDEX
            ]
            n = len(wanted)
            index = batch["predict_index"][side, :n]
            predictors, positions = flat_ids[index].tolist(), flat_positions[index].tolist()
            got = list(zip(predictors, positions, batch["targets"][side, :n].tolist(), strict=True))
            assert got == wanted
            assert (batch["targets"][side, n:] == IGNORE_INDEX).all()
    with pytest.raises(ValueError, match="at least one pair"):
        collate_pairs([], pad_token_id=pad)
