"""Tokenization: the loss is only on what the assistant writes (plus EOS), whatever the template adds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from kubetune_trainer.data import (
    IGNORE_INDEX,
    DataConfigError,
    Example,
    Message,
    TokenizedExample,
    collate,
    prepare_data,
)
from kubetune_trainer.data.tokenize import tokenize_examples
from tiny_chat_tokenizer import CHATML_TEMPLATE, build_tiny_tokenizer

from kubetune.api.exit_codes import ExitCode
from kubetune.api.spec import DatasetSpec

QUESTION = "What is the capital of France?"
ANSWER = "The capital of France is Paris."


def chat(*turns: tuple[str, str], source: str = "t.jsonl:1") -> Example:
    return Example(messages=tuple(Message(role=r, content=c) for r, c in turns), text=None, source=source)  # type: ignore[arg-type]


def tokenize_one(example: Example, tokenizer: Any, *, max_seq_length: int = 2048) -> TokenizedExample:
    outcome = tokenize_examples([example], tokenizer=tokenizer, max_seq_length=max_seq_length)
    assert outcome.issues == []
    [tokenized] = outcome.examples
    assert tokenized is not None
    return tokenized


def trained_spans(tokenized: TokenizedExample) -> list[list[int]]:
    """Runs of consecutive labelled positions, as token ids."""
    spans: list[list[int]] = []
    previous = IGNORE_INDEX
    for token, label in zip(tokenized.input_ids, tokenized.labels, strict=True):
        if label != IGNORE_INDEX:
            if previous == IGNORE_INDEX:
                spans.append([])
            spans[-1].append(token)
            assert label == token
        previous = label
    return spans


@pytest.mark.model
def test_smollm2_labels_only_the_answer_and_its_eos(smollm2_tokenizer: Any) -> None:
    tok = smollm2_tokenizer
    tokenized = tokenize_one(chat(("user", QUESTION), ("assistant", ANSWER)), tok)
    [span] = trained_spans(tokenized)
    assert tok.decode(span) == ANSWER + "<|im_end|>"
    assert tokenized.input_ids[-1] == tok.eos_token_id and tokenized.labels[-1] == tok.eos_token_id
    # Everything before the answer is exactly the inference-time prompt, and none of it is trained.
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": QUESTION}], tokenize=False, add_generation_prompt=True
    )
    prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    assert tokenized.input_ids[: len(prompt_ids)] == prompt_ids
    assert set(tokenized.labels[: len(prompt_ids)]) == {IGNORE_INDEX}
    assert "You are a helpful AI assistant named SmolLM" in tok.decode(prompt_ids)
    assert len(tokenized.input_ids) == len(prompt_ids) + len(span)


@pytest.mark.model
def test_smollm2_multi_turn_trains_every_assistant_turn_and_no_user_turn(smollm2_tokenizer: Any) -> None:
    tok = smollm2_tokenizer
    example = chat(
        ("system", "Answer in one word."),
        ("user", "Capital of France?"),
        ("assistant", "Paris."),
        ("user", "And of Italy?"),
        ("assistant", "Rome."),
        ("user", "Thanks!"),
    )
    tokenized = tokenize_one(example, tok)
    assert [tok.decode(s) for s in trained_spans(tokenized)] == ["Paris.<|im_end|>", "Rome.<|im_end|>"]
    text = tok.decode(tokenized.input_ids)
    assert "And of Italy?" in text and "SmolLM" not in text  # the given system prompt replaces the default
    assert "Thanks!" not in text  # turns after the last answer teach nothing and are dropped


@pytest.mark.model
def test_smollm2_text_format_trains_every_token_and_appends_eos(smollm2_tokenizer: Any) -> None:
    tok = smollm2_tokenizer
    tokenized = tokenize_one(Example(messages=None, text="Once upon a time", source="t:1"), tok)
    assert tokenized.input_ids == tok("Once upon a time")["input_ids"] + [tok.eos_token_id]
    assert tokenized.labels == tokenized.input_ids


@pytest.mark.model
def test_smollm2_eos_stays_labelled_although_pad_is_eos(smollm2_tokenizer: Any) -> None:
    tok = smollm2_tokenizer
    assert tok.pad_token_id == tok.eos_token_id
    short = tokenize_one(chat(("user", "Hi"), ("assistant", "Hello")), tok)
    long = tokenize_one(chat(("user", QUESTION), ("assistant", ANSWER)), tok)
    batch = collate([[short], [long]], packing=False, pad_token_id=tok.pad_token_id)
    end = len(short.input_ids)
    assert batch["input_ids"][0, end - 1] == tok.eos_token_id and batch["labels"][0, end - 1] == tok.eos_token_id
    assert (batch["input_ids"][0, end:] == tok.eos_token_id).all()  # padding uses the same id ...
    assert (batch["labels"][0, end:] == IGNORE_INDEX).all()  # ... but is masked by position


def test_chat_data_without_a_chat_template_is_a_config_error() -> None:
    tokenizer = build_tiny_tokenizer(chat_template=None)
    with pytest.raises(DataConfigError, match="no chat template") as caught:
        tokenize_examples([chat(("user", "Hi"), ("assistant", "Yo"))], tokenizer=tokenizer, max_seq_length=64)
    assert caught.value.exit_code == ExitCode.BAD_CONFIG


def test_text_data_needs_no_chat_template() -> None:
    tokenizer = build_tiny_tokenizer(chat_template=None)
    tokenized = tokenize_one(Example(messages=None, text="abc", source="t:1"), tokenizer)
    assert tokenized.input_ids == [*tokenizer("abc")["input_ids"], tokenizer.eos_token_id]


def test_a_tokenizer_without_eos_is_a_config_error() -> None:
    tokenizer = build_tiny_tokenizer()
    tokenizer.eos_token = None
    with pytest.raises(DataConfigError, match="no EOS token"):
        tokenize_examples([Example(messages=None, text="abc", source="t:1")], tokenizer=tokenizer, max_seq_length=64)


def test_a_template_that_rewrites_earlier_turns_is_a_config_error() -> None:
    # Renders the conversation's length first, so no conversation is an extension of its prefix.
    tokenizer = build_tiny_tokenizer(chat_template="{{ messages | length }}" + CHATML_TEMPLATE)
    with pytest.raises(DataConfigError, match="prefix-stable"):
        tokenize_examples([chat(("user", "Hi"), ("assistant", "Yo"))], tokenizer=tokenizer, max_seq_length=64)


def test_a_template_that_renders_no_assistant_text_is_reported_as_all_masked() -> None:
    drops_answers = "{% for m in messages %}{% if m['role'] != 'assistant' %}{{ m['content'] }}{% endif %}{% endfor %}"
    tokenizer = build_tiny_tokenizer(chat_template=drops_answers)
    outcome = tokenize_examples([chat(("user", "Hi"), ("assistant", "Yo"))], tokenizer=tokenizer, max_seq_length=64)
    assert outcome.examples == [None]
    [issue] = outcome.issues
    assert issue.source == "t.jsonl:1" and "no token carries a label" in issue.message


def test_truncation_keeps_max_seq_length_tokens_and_counts_the_example(tiny_tokenizer: Any) -> None:
    long = chat(("user", "Hi"), ("assistant", "x" * 100))
    outcome = tokenize_examples([long], tokenizer=tiny_tokenizer, max_seq_length=70)
    [tokenized] = outcome.examples
    assert tokenized is not None and outcome.truncated == 1
    assert len(tokenized.input_ids) == len(tokenized.labels) == 70
    assert tokenized.labels[-1] != IGNORE_INDEX


def test_tiny_tokenizer_labels_match_the_smollm2_rules(tiny_tokenizer: Any) -> None:
    tokenized = tokenize_one(chat(("user", "Hi"), ("assistant", "Yo")), tiny_tokenizer)
    assert [tiny_tokenizer.decode(s) for s in trained_spans(tokenized)] == ["Yo<|im_end|>"]


def test_a_conversation_the_template_rejects_is_reported_for_that_example_only() -> None:
    # Like Mistral's and Gemma's templates, which refuse system messages or non-alternating roles.
    strict = "{% if messages[0]['role'] == 'system' %}{{ raise_exception('no system role') }}{% endif %}"
    tokenizer = build_tiny_tokenizer(chat_template=strict + CHATML_TEMPLATE)
    fine = chat(("user", "Hi"), ("assistant", "Yo"), source="t.jsonl:1")
    refused = chat(("system", "Be nice."), ("user", "Hi"), ("assistant", "Yo"), source="t.jsonl:2")
    outcome = tokenize_examples([fine, refused], tokenizer=tokenizer, max_seq_length=64)
    assert outcome.examples[0] is not None and outcome.examples[1] is None
    [issue] = outcome.issues
    assert issue.source == "t.jsonl:2" and "rejects this conversation: no system role" in issue.message


@pytest.mark.model
def test_smollm2_lamini_docs_trains_exactly_each_answer(smollm2_tokenizer: Any) -> None:

    lamini = (Path(__file__).resolve().parents[4] / ".." / "shared" / "datasets" / "lamini_docs.jsonl").resolve()
    rows = [json.loads(line) for line in lamini.read_text(encoding="utf-8").splitlines()]
    answers = [row["answer"] for row in rows if row["answer"].strip()]
    data = prepare_data(DatasetSpec(train=[lamini.as_uri()], max_seq_length=2048), tokenizer=smollm2_tokenizer, seed=0)
    assert len(data.train) == len(answers) == 1399 and data.report.truncated == 0
    for tokenized, answer in zip(data.train, answers, strict=True):
        [span] = trained_spans(tokenized)
        assert smollm2_tokenizer.decode(span) == answer + "<|im_end|>"
