"""Examples → token ids and labels, with the loss only on what the model should learn to write.

Chat examples go through the tokenizer's chat template. The assistant spans are computed here, not by
the template: SmolLM2's template (like many) has no ``{% generation %}`` markers and injects a default
system prompt. For each assistant turn the text up to it is rendered with the generation prompt; the
turn's span runs from there to the end of the conversation rendered through that turn, cut after the
EOS token. Segments are tokenized separately so the prompt's tokens are exactly those the model sees at
inference. Labels are set by position, never by token id: SmolLM2's pad token IS its EOS token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kubetune_trainer.data.types import (
    IGNORE_INDEX,
    DataConfigError,
    DataIssue,
    Example,
    Message,
    TokenizedExample,
)

if TYPE_CHECKING:  # importing transformers takes seconds; the data layer only needs the type
    from transformers import PreTrainedTokenizerBase

# Texts per call to the (Rust, multi-threaded) fast tokenizer: large enough to amortize the call.
TOKENIZE_CHUNK = 2048


@dataclass(frozen=True, kw_only=True)
class TokenizeOutcome:
    """Per input example: its tokens, or ``None`` where ``issues`` says why it cannot be trained on."""

    examples: list[TokenizedExample | None]
    issues: list[DataIssue]
    # Examples longer than max_seq_length that were cut to it (and still train on something).
    truncated: int


class TemplateRejected(Exception):
    """The chat template raised on a conversation (a data problem: it is reported per example)."""


@dataclass(frozen=True, kw_only=True)
class _Segment:
    text: str
    trained: bool


def tokenize_examples(
    examples: Sequence[Example], *, tokenizer: PreTrainedTokenizerBase, max_seq_length: int
) -> TokenizeOutcome:
    """Tokenize every example; raise :class:`DataConfigError` when the tokenizer cannot format them."""
    eos_id, eos_text = eos_token(tokenizer)
    if any(e.messages is not None for e in examples) and not getattr(tokenizer, "chat_template", None):
        raise DataConfigError(
            "the tokenizer has no chat template, but the dataset is in a chat format (messages, "
            "prompt_completion, alpaca or sharegpt); use an instruct model's tokenizer, or the text format"
        )
    issues: list[DataIssue] = []
    rejected: set[int] = set()
    segmented: list[list[_Segment]] = []
    for index, example in enumerate(examples):
        try:
            if example.messages is not None:
                segmented.append(chat_segments(example.messages, tokenizer=tokenizer, eos_text=eos_text))
            else:
                segmented.append([])
        except TemplateRejected as err:
            issues.append(DataIssue(example.source, "", f"the model's chat template rejects this conversation: {err}"))
            segmented.append([])
            rejected.add(index)
    chat_ids = tokenize_segments(segmented, tokenizer=tokenizer)
    text_positions = [i for i, e in enumerate(examples) if e.text is not None]
    text_ids = _encode([examples[i].text or "" for i in text_positions], tokenizer, special=True)
    results: list[TokenizedExample | None] = []
    truncated = 0
    text_by_position = dict(zip(text_positions, text_ids, strict=True))
    for index, example in enumerate(examples):
        if example.text is not None:
            ids = list(text_by_position[index])
            labels = list(ids)
        else:
            ids, labels = chat_ids[index]
            if index in rejected or all(label == IGNORE_INDEX for label in labels):
                if index not in rejected:
                    message = "no token carries a label: the chat template renders no assistant text"
                    issues.append(DataIssue(example.source, "", message))
                results.append(None)
                continue
        if not ids or ids[-1] != eos_id or labels[-1] == IGNORE_INDEX:
            ids.append(eos_id)
            labels.append(eos_id)
        tokenized, issue, was_truncated = _fit(ids, labels, source=example.source, max_seq_length=max_seq_length)
        truncated += was_truncated
        results.append(tokenized)
        if issue is not None:
            issues.append(issue)
    return TokenizeOutcome(examples=results, issues=issues, truncated=truncated)


def eos_token(tokenizer: PreTrainedTokenizerBase) -> tuple[int, str]:
    eos_id = tokenizer.eos_token_id
    eos_text = tokenizer.eos_token
    if not isinstance(eos_id, int) or not isinstance(eos_text, str) or not eos_text:
        raise DataConfigError("the tokenizer has no EOS token; the model could not learn to stop")
    return eos_id, eos_text


def _fit(
    ids: list[int], labels: list[int], *, source: str, max_seq_length: int
) -> tuple[TokenizedExample | None, DataIssue | None, bool]:
    """Truncate to max_seq_length; an example left with no trained token is an error, not a warning."""
    was_truncated = len(ids) > max_seq_length
    if was_truncated:
        ids, labels = ids[:max_seq_length], labels[:max_seq_length]
    # Position 0 is never predicted (nothing precedes it), so its label does not count.
    if all(label == IGNORE_INDEX for label in labels[1:]):
        if was_truncated:
            message = (
                f"too long: the prompt alone fills maxSeqLength={max_seq_length} tokens, so truncation "
                "would leave no trained token"
            )
        else:  # a one-token text: only EOS, which nothing precedes
            message = "too short: nothing to predict"
        return None, DataIssue(source, "maxSeqLength" if was_truncated else "", message), False
    return TokenizedExample(input_ids=ids, labels=labels), None, was_truncated


def _render(tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message], *, generation: bool) -> str:
    conversation: list[dict[str, Any]] = [{"role": m.role, "content": m.content} for m in messages]
    try:
        text = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=generation)
    except Exception as err:  # templates raise their own errors, e.g. "roles must alternate user/assistant"
        raise TemplateRejected(str(err)) from err
    if not isinstance(text, str):
        raise DataConfigError(f"the chat template rendered {type(text).__name__}, not text")
    return text


def chat_segments(messages: Sequence[Message], *, tokenizer: PreTrainedTokenizerBase, eos_text: str) -> list[_Segment]:
    """The conversation's text cut into untrained / trained pieces; nothing after the last assistant turn."""
    full = _render(tokenizer, messages, generation=False)
    segments: list[_Segment] = []
    cursor = 0
    for index, message in enumerate(messages):
        if message.role != "assistant":
            continue
        prompt = _render(tokenizer, messages[:index], generation=True)
        through = _render(tokenizer, messages[: index + 1], generation=False)
        start = len(prompt)
        if not (full.startswith(prompt) and full.startswith(through) and start <= len(through)):
            raise DataConfigError(
                "the chat template does not render a conversation as an extension of its prefix, so the "
                "assistant turns cannot be located; kubetune needs a prefix-stable chat template"
            )
        span = full[start : len(through)]
        # Train through the EOS that closes the turn; template whitespace after it stays untrained.
        cut = span.find(eos_text)
        trained = span[: cut + len(eos_text)] if cut >= 0 else span.rstrip()
        segments.append(_Segment(text=full[cursor:start], trained=False))
        segments.append(_Segment(text=trained, trained=True))
        cursor = start + len(trained)
    return segments


def tokenize_segments(
    segmented: list[list[_Segment]], *, tokenizer: PreTrainedTokenizerBase
) -> list[tuple[list[int], list[int]]]:
    flat = [segment.text for segments in segmented for segment in segments]
    encoded = iter(_encode(flat, tokenizer, special=False))
    out: list[tuple[list[int], list[int]]] = []
    for segments in segmented:
        ids: list[int] = []
        labels: list[int] = []
        for segment in segments:
            piece = next(encoded)
            ids += piece
            labels += piece if segment.trained else [IGNORE_INDEX] * len(piece)
        out.append((ids, labels))
    return out


def _encode(texts: list[str], tokenizer: PreTrainedTokenizerBase, *, special: bool) -> list[list[int]]:
    """Token ids of each text. ``special`` adds the tokenizer's BOS (for raw text; templates add their own)."""
    ids: list[list[int]] = []
    for start in range(0, len(texts), TOKENIZE_CHUNK):
        chunk = texts[start : start + TOKENIZE_CHUNK]
        batch = tokenizer(chunk, add_special_tokens=special)["input_ids"]
        ids += [list(map(int, row)) for row in batch]
    return ids
