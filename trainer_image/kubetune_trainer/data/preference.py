"""Preference data for DPO: detect a file's shape, parse records to pairs, tokenize and collate them.

Two record shapes are read. OpenAI's preference format::

    {"input": {"messages": [...]}, "preferred_output": [{"role": "assistant", ...}], "non_preferred_output": [...]}

and the common ``{"prompt", "chosen", "rejected"}``, where the prompt is a string or the conversation so far
and each answer a string or a list of assistant messages. Two variants of the latter are normalized: answers
that repeat the prompt's messages before the reply (the prompt is dropped from them), and records without a
prompt column whose answers are whole conversations (the prompt is the messages they share).

A pair is tokenized like an SFT example (:mod:`kubetune_trainer.data.tokenize`): the chat template renders
the prompt with the generation prompt, only the answer's tokens (through its EOS) carry labels, and both
answers share exactly the prompt's tokens.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal, get_args

import torch

from kubetune.api.spec import FieldMapping
from kubetune_trainer.data.formats import DetectionError, Problems, Rejected, message_content, optional_string
from kubetune_trainer.data.packing import additive_mask
from kubetune_trainer.data.sources import json_type
from kubetune_trainer.data.tokenize import TemplateRejected, chat_segments, eos_token, tokenize_segments
from kubetune_trainer.data.types import (
    IGNORE_INDEX,
    ROLES,
    DataConfigError,
    DataIssue,
    Message,
    TokenizedExample,
    TokenizedPair,
)

if TYPE_CHECKING:  # importing transformers takes seconds; the data layer only needs the type
    from transformers import PreTrainedTokenizerBase

PreferenceFormat = Literal["openai_preference", "prompt_chosen_rejected"]
PREFERENCE_FORMATS: tuple[PreferenceFormat, ...] = get_args(PreferenceFormat)

# Column names accepted for each logical field when no fieldMapping names it, in order of preference.
# "question" and "system" are common column names of public preference sets; "input" holds the prompt
# object of the OpenAI format.
PREFERENCE_ALIASES: dict[str, tuple[str, ...]] = {
    "prompt": ("prompt", "input", "question", "instruction"),
    "chosen": ("chosen", "preferred_output"),
    "rejected": ("rejected", "non_preferred_output"),
    "system": ("system", "system_prompt"),
}
# The keys that mark OpenAI's preference format.
_OPENAI_KEYS = ("preferred_output", "non_preferred_output")


@dataclass(frozen=True, kw_only=True)
class PreferencePair:
    """One preference record in canonical form: the conversation so far (ending with the user's turn) and
    two answers to it, each one or more assistant messages."""

    prompt: tuple[Message, ...]
    chosen: tuple[Message, ...]
    rejected: tuple[Message, ...]
    # Where it came from, "file.jsonl:17", for error messages and the report.
    source: str


@dataclass(frozen=True, kw_only=True)
class PreferenceSchema:
    """A file's preference shape and the column holding each logical field (prompt, chosen, rejected,
    system). ``prompt`` is absent when the answers carry the prompt themselves."""

    format: PreferenceFormat
    columns: dict[str, str]

    def describe(self) -> str:
        """E.g. "prompt_chosen_rejected (prompt='question', chosen='chosen', rejected='rejected'), auto-detected"."""
        renamed = ", ".join(f"{field}={column!r}" for field, column in self.columns.items())
        return f"{self.format} ({renamed}), auto-detected"


def looks_like_preference(sample: Mapping[str, object], *, mapping: FieldMapping | None) -> bool:
    """Whether a record has a chosen and a rejected answer (so it is preference data, not SFT data)."""
    try:
        detect_preference_schema(sample, mapping=mapping)
    except DetectionError:
        return False
    return True


def detect_preference_schema(sample: Mapping[str, object], *, mapping: FieldMapping | None) -> PreferenceSchema:
    """The shape and columns of a file from its first record; :class:`DetectionError` when it has no answers.

    A column the mapping names is used even when this record lacks it (each record then reports it missing).
    """
    explicit = {k: str(v) for k, v in (mapping.model_dump() if mapping else {}).items() if v is not None}

    def column(field: str) -> str | None:
        if field in explicit:
            return explicit[field]
        return next((name for name in PREFERENCE_ALIASES[field] if name in sample), None)

    chosen, rejected = column("chosen"), column("rejected")
    if chosen is None or rejected is None or chosen == rejected:
        keys = ", ".join(repr(k) for k in sorted(sample)) or "none"
        raise DetectionError(
            f"cannot detect a preference format from the keys {keys}; expected OpenAI's "
            "input/preferred_output/non_preferred_output or prompt/chosen/rejected. Set dataset.fieldMapping "
            "(prompt, chosen, rejected)"
        )
    columns = {"chosen": chosen, "rejected": rejected}
    prompt = column("prompt")
    if prompt is not None and prompt not in columns.values():
        columns = {"prompt": prompt, **columns}
    system = column("system")
    if system is not None and system not in columns.values():
        columns["system"] = system
    fmt: PreferenceFormat = "openai_preference" if any(k in sample for k in _OPENAI_KEYS) else "prompt_chosen_rejected"
    return PreferenceSchema(format=fmt, columns=columns)


def parse_preference_record(value: object, *, source: str, schema: PreferenceSchema) -> PreferencePair | Rejected:
    """One record as a pair, or every problem found in it.

    As for SFT records, ``Rejected.errors`` are fatal and a record with only ``blanks`` is skipped with a
    warning: an empty prompt or answer, or a chosen answer identical to the rejected one (no preference).
    """
    if not isinstance(value, dict):
        return Rejected(errors=[DataIssue(source, "", f"expected a JSON object, got {json_type(value)}")], blanks=[])
    out = Problems()
    pair = _parse_pair(value, schema.columns, source, out)
    if pair is None or out.failed:
        return Rejected(errors=list(out), blanks=out.blanks)
    return pair


def _parse_pair(record: dict[str, object], cols: dict[str, str], src: str, out: Problems) -> PreferencePair | None:
    system = optional_string(record, cols.get("system"), src, out)
    prompt_col = cols.get("prompt")
    prompt = _prompt(record, prompt_col, src, out) if prompt_col is not None else []
    chosen = _answer(record, cols["chosen"], src, out)
    rejected = _answer(record, cols["rejected"], src, out)
    if prompt is None or chosen is None or rejected is None or out.failed:
        return None
    if prompt_col is None:
        split = _shared_prompt(chosen, rejected, cols, src, out)
        if split is None:
            return None
        prompt, chosen, rejected = split
        offset = len(prompt)
    else:
        # Answers that repeat the prompt before the reply: their index in the record is past the copy.
        offset = len(prompt) if _repeats(chosen, prompt) and _repeats(rejected, prompt) else 0
        chosen, rejected = chosen[offset:], rejected[offset:]
    if system:
        prompt = [Message(role="system", content=system), *prompt]
    _check_prompt(prompt, prompt_col or cols["chosen"], src, out)
    _check_answer(chosen, cols["chosen"], offset, src, out)
    _check_answer(rejected, cols["rejected"], offset, src, out)
    if out:
        return None
    if chosen == rejected:
        out.blanks.append(DataIssue(src, cols["rejected"], "identical to the chosen answer: no preference to learn"))
        return None
    return PreferencePair(prompt=tuple(prompt), chosen=tuple(chosen), rejected=tuple(rejected), source=src)


def _prompt(record: dict[str, object], field: str, src: str, out: Problems) -> list[Message] | None:
    """A string (one user message), a list of messages, or OpenAI's ``{"messages": [...]}`` object (its other
    keys, such as ``tools``, are not read: SFT records' are not either)."""
    if field not in record:
        keys = ", ".join(repr(k) for k in sorted(record)) or "none"
        out.append(DataIssue(src, field, f"missing key {field!r} (keys: {keys})"))
        return None
    value = _maybe_messages(record[field])
    if isinstance(value, dict):
        if "messages" not in value:
            out.append(DataIssue(src, field, 'expected an object with "messages"'))
            return None
        return _messages(value["messages"], f"{field}.messages", src, out)
    if isinstance(value, list):
        return _messages(value, field, src, out)
    if isinstance(value, str):
        text = message_content(value, field, src, out, present=True, allow_parts=False)
        return None if text is None else [Message(role="user", content=text)]
    expected = 'a string, an array of messages or an object with "messages"'
    out.append(DataIssue(src, field, f"expected {expected}, got {json_type(value)}"))
    return None


def _answer(record: dict[str, object], field: str, src: str, out: Problems) -> list[Message] | None:
    """A string (one assistant message), a list of messages, or a single message object."""
    if field not in record:
        keys = ", ".join(repr(k) for k in sorted(record)) or "none"
        out.append(DataIssue(src, field, f"missing key {field!r} (keys: {keys})"))
        return None
    value = _maybe_messages(record[field])
    if isinstance(value, dict):
        value = [value]
    if isinstance(value, list):
        return _messages(value, field, src, out)
    if isinstance(value, str):
        text = message_content(value, field, src, out, present=True, allow_parts=False)
        return None if text is None else [Message(role="assistant", content=text)]
    out.append(DataIssue(src, field, f"expected a string or an array of messages, got {json_type(value)}"))
    return None


def _messages(raw: object, field: str, src: str, out: Problems) -> list[Message] | None:
    if not isinstance(raw, list) or not raw:
        out.append(DataIssue(src, field, f"expected a non-empty array of messages, got {json_type(raw)}"))
        return None
    messages: list[Message] = []
    for index, item in enumerate(raw):
        where = f"{field}[{index}]"
        if not isinstance(item, dict):
            out.append(DataIssue(src, where, f"expected a message object, got {json_type(item)}"))
            continue
        role = item.get("role")
        if role not in ROLES:
            got = "missing" if role is None else repr(role)
            out.append(DataIssue(src, f"{where}.role", f"role is {got}; expected one of {', '.join(ROLES)}"))
        content = message_content(item.get("content"), f"{where}.content", src, out, present="content" in item)
        if role in ROLES and content is not None:
            messages.append(Message(role=role, content=content))
    # Every item either became a message or was reported.
    return messages if len(messages) == len(raw) else None


def _maybe_messages(value: object) -> object:
    """CSV cells hold strings: one that is a JSON array of objects is a list of messages; any other is text."""
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            decoded: object = json.loads(value)
        except json.JSONDecodeError:
            return value
        if isinstance(decoded, list) and decoded and all(isinstance(item, dict) for item in decoded):
            return decoded
    return value


def _repeats(answer: list[Message], prompt: list[Message]) -> bool:
    """Whether the answer starts with a copy of the prompt (datasets whose answers are whole conversations)."""
    return len(answer) > len(prompt) and answer[: len(prompt)] == prompt


def _shared_prompt(
    chosen: list[Message], rejected: list[Message], cols: dict[str, str], src: str, out: Problems
) -> tuple[list[Message], list[Message], list[Message]] | None:
    """Without a prompt column: the prompt is the messages both answers start with, up to the last non-assistant
    one; what follows in each is its answer."""
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    while shared and chosen[shared - 1].role == "assistant":
        shared -= 1
    if not shared:
        message = (
            "no prompt: the record has no prompt column, and the chosen and rejected answers do not start with "
            "the same conversation. Add a prompt column or set dataset.fieldMapping.prompt"
        )
        out.append(DataIssue(src, cols["chosen"], message))
        return None
    return chosen[:shared], chosen[shared:], rejected[shared:]


def _check_prompt(prompt: list[Message], field: str, src: str, out: Problems) -> None:
    """The rules every chat template relies on, and a prompt the answers reply to."""
    if any(m.role == "system" for m in prompt[1:]):
        out.append(DataIssue(src, field, "a system message may only come first"))
    turns = [m for m in prompt if m.role != "system"]
    if not turns:
        out.append(DataIssue(src, field, "no user message"))
    elif turns[0].role != "user":
        out.append(DataIssue(src, field, "the first message after the system prompt must be from the user"))
    elif prompt[-1].role == "assistant":
        message = "the prompt ends with an assistant message; it must end with the user turn the answers reply to"
        out.append(DataIssue(src, field, message))


def _check_answer(answer: list[Message], field: str, offset: int, src: str, out: Problems) -> None:
    """``offset``: the record's index of the answer's first message."""
    if not answer:
        out.append(DataIssue(src, field, "no answer: the messages only repeat the prompt"))
    for index, message in enumerate(answer, start=offset):
        if message.role != "assistant":
            where = f"{field}[{index}].role"
            out.append(DataIssue(src, where, f"an answer holds assistant messages only, got {message.role!r}"))


def tokenize_pair(
    pair: PreferencePair, *, tokenizer: PreTrainedTokenizerBase, max_seq_length: int
) -> TokenizedPair | DataIssue:
    """Both answers tokenized after the prompt, as SFT tokenizes one conversation: the prompt (and any
    assistant turn inside it) unlabelled, each answer labelled through its EOS.

    Longer than ``max_seq_length``: the answers are cut to fit (``truncated``). An issue (field
    "maxSeqLength") when the prompt leaves no answer token, or when the cut answers are identical. Raises
    :class:`DataConfigError` when the tokenizer has no chat template or EOS token, or its template is not
    prefix-stable.
    """
    eos_id, eos_text = eos_token(tokenizer)
    if not getattr(tokenizer, "chat_template", None):
        raise DataConfigError(
            "the tokenizer has no chat template, but preference data is in a chat format; use an instruct "
            "model's tokenizer"
        )
    in_prompt = sum(m.role == "assistant" for m in pair.prompt)
    try:
        segmented = [
            chat_segments([*pair.prompt, *answer], tokenizer=tokenizer, eos_text=eos_text)
            for answer in (pair.chosen, pair.rejected)
        ]
    except TemplateRejected as err:
        return DataIssue(pair.source, "", f"the model's chat template rejects this conversation: {err}")
    # Segments alternate untrained, trained per assistant turn: the prompt's own turns get no loss.
    for segments in segmented:
        for index in range(1, 2 * in_prompt, 2):
            segments[index] = replace(segments[index], trained=False)
    sides: list[tuple[list[int], list[int]]] = []
    for ids, labels in tokenize_segments(segmented, tokenizer=tokenizer):
        if not any(label != IGNORE_INDEX for label in labels):
            return DataIssue(pair.source, "", "no token carries a label: the chat template renders no answer text")
        if ids[-1] != eos_id or labels[-1] == IGNORE_INDEX:
            ids, labels = [*ids, eos_id], [*labels, eos_id]
        sides.append((ids, labels))
    prompt_tokens = next(i for i, label in enumerate(sides[0][1]) if label != IGNORE_INDEX)
    if prompt_tokens >= max_seq_length:
        message = (
            f"too long: the prompt alone has {prompt_tokens} tokens, so maxSeqLength={max_seq_length} leaves no "
            "room for an answer"
        )
        return DataIssue(pair.source, "maxSeqLength", message)
    truncated = any(len(ids) > max_seq_length for ids, _ in sides)
    (chosen_ids, chosen_labels), (rejected_ids, rejected_labels) = (
        (ids[:max_seq_length], labels[:max_seq_length]) for ids, labels in sides
    )
    if chosen_ids == rejected_ids:
        message = (
            f"the chosen and rejected answers only differ after maxSeqLength={max_seq_length} tokens "
            f"(the prompt has {prompt_tokens}), so truncated they are identical"
        )
        return DataIssue(pair.source, "maxSeqLength", message)
    return TokenizedPair(
        chosen=TokenizedExample(input_ids=chosen_ids, labels=chosen_labels),
        rejected=TokenizedExample(input_ids=rejected_ids, labels=rejected_labels),
        truncated=truncated,
    )


def collate_pairs(
    pairs: Sequence[TokenizedPair], *, pad_token_id: int, mask_dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    """B pairs → one row each: the tokens both sequences share (the prompt) once, then the rest of the
    chosen sequence, then the rest of the rejected one, right-padded to the longest row.

    Each rest sees the shared tokens and itself, never the other rest, and its positions continue from the
    shared tokens: every token is computed exactly as in its own sequence, and the prompt only once.

    - ``input_ids``, ``position_ids``: (B, L);
    - ``attention_mask``: (B, 1, L, L) additive, as :func:`~kubetune_trainer.data.packing.block_causal_mask`
      (0.0 where allowed, ``finfo(mask_dtype).min`` elsewhere; a padding position sees only itself);
    - ``targets``: (2B, T), the label tokens of the B chosen sequences, then of the B rejected ones in the
      same order, IGNORE_INDEX after each sequence's last; ``predict_index``: (2B, T), the flat position
      (``b * L + t``) whose output predicts each target (0 where there is none).
    """
    if not pairs:
        raise ValueError("collate_pairs needs at least one pair")
    width = max(pair.row_length for pair in pairs)
    batch = len(pairs)
    input_ids = torch.full((batch, width), pad_token_id, dtype=torch.long)
    position_ids = torch.zeros((batch, width), dtype=torch.long)
    # Per position: 0 shared, 1 chosen, 2 rejected, -1 padding.
    branch = torch.full((batch, width), -1, dtype=torch.long)
    sides: list[tuple[list[int], list[int]]] = [([], []) for _ in range(2 * batch)]
    for b, pair in enumerate(pairs):
        shared = pair.shared
        chosen, rejected = pair.chosen, pair.rejected
        rest_chosen = len(chosen.input_ids) - shared
        input_ids[b, : shared + rest_chosen] = torch.tensor(chosen.input_ids, dtype=torch.long)
        input_ids[b, shared + rest_chosen : pair.row_length] = torch.tensor(
            rejected.input_ids[shared:], dtype=torch.long
        )
        position_ids[b, : shared + rest_chosen] = torch.arange(shared + rest_chosen)
        position_ids[b, shared + rest_chosen : pair.row_length] = torch.arange(shared, len(rejected.input_ids))
        branch[b, :shared] = 0
        branch[b, shared : shared + rest_chosen] = 1
        branch[b, shared + rest_chosen : pair.row_length] = 2
        for side, example, offset in ((b, chosen, 0), (batch + b, rejected, rest_chosen)):
            if len(example.labels) != len(example.input_ids):
                raise ValueError(f"a sequence has {len(example.input_ids)} input ids but {len(example.labels)} labels")
            predictors, targets = sides[side]
            # Token t of the sequence (t >= 1) is predicted by its token t - 1, at row position
            # t - 1 in the shared part and t - 1 + offset after it.
            for t in range(1, len(example.labels)):
                if example.labels[t] != IGNORE_INDEX:
                    before = t - 1
                    predictors.append(b * width + (before if before < shared else before + offset))
                    targets.append(example.labels[t])
    most = max(1, max(len(targets) for _, targets in sides))
    predict_index = torch.zeros((2 * batch, most), dtype=torch.long)
    target_ids = torch.full((2 * batch, most), IGNORE_INDEX, dtype=torch.long)
    for row, (predictors, targets) in enumerate(sides):
        predict_index[row, : len(predictors)] = torch.tensor(predictors, dtype=torch.long)
        target_ids[row, : len(targets)] = torch.tensor(targets, dtype=torch.long)
    return {
        "input_ids": input_ids,
        "position_ids": position_ids,
        "attention_mask": _branch_mask(branch, dtype=mask_dtype),
        "predict_index": predict_index,
        "targets": target_ids,
    }


def _branch_mask(branch: torch.Tensor, *, dtype: torch.dtype) -> torch.Tensor:
    """(B, L) branch ids (0 shared, 1 and 2 the two rests, -1 padding) → (B, 1, L, L) additive mask: a query
    sees earlier keys of the shared part and of its own branch; padding sees only itself."""
    width = branch.shape[1]
    causal = torch.ones((width, width), dtype=torch.bool).tril()
    keys, queries = branch[:, None, :], branch[:, :, None]
    return additive_mask(causal & (queries >= 0) & ((keys == 0) | (keys == queries)), dtype=dtype)
