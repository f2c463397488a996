"""Record formats: detect which one a file uses, map its column names, parse records to ``Example``.

Every format parses to the same canonical form, so "the same content" as messages, prompt/completion,
alpaca or sharegpt yields equal examples. Each problem is reported with the record's source and the
offending field.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal, get_args

from kubetune.api.spec import DatasetFormat, FieldMapping
from kubetune_trainer.data.sources import json_type
from kubetune_trainer.data.types import ROLES, DataIssue, Example, Message, Role

Format = Literal["messages", "prompt_completion", "alpaca", "sharegpt", "text"]
FORMATS: tuple[Format, ...] = get_args(Format)

# Column names accepted for each logical field when no fieldMapping names it, in order of preference.
# The first entry is the format's standard name. "question"/"answer" covers lamini_docs and similar sets.
ALIASES: dict[str, tuple[str, ...]] = {
    "messages": ("messages",),
    "conversations": ("conversations",),
    "text": ("text",),
    "instruction": ("instruction",),
    "input": ("input",),
    "output": ("output",),
    "prompt": ("prompt", "question", "query", "input", "instruction"),
    "completion": ("completion", "answer", "response", "output"),
    "system": ("system", "system_prompt"),
}
# Logical fields each format reads; the optional ones may be absent from a record.
REQUIRED: dict[Format, tuple[str, ...]] = {
    "messages": ("messages",),
    "prompt_completion": ("prompt", "completion"),
    "alpaca": ("instruction", "output"),
    "sharegpt": ("conversations",),
    "text": ("text",),
}
OPTIONAL: dict[Format, tuple[str, ...]] = {
    "messages": (),
    "prompt_completion": ("system",),
    "alpaca": ("input", "system"),
    "sharegpt": ("system",),
    "text": (),
}
# ShareGPT speaker names ("from") and the roles they mean.
SHAREGPT_ROLES: dict[str, Role] = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "model": "assistant",
}


@dataclass(frozen=True, kw_only=True)
class Schema:
    """A file's format and the column holding each logical field."""

    format: Format
    columns: dict[str, str]
    detected: bool

    def describe(self) -> str:
        """E.g. "prompt_completion (prompt='question', completion='answer'), auto-detected"."""
        renamed = ", ".join(f"{field}={column!r}" for field, column in self.columns.items())
        how = "auto-detected" if self.detected else "as configured"
        return f"{self.format} ({renamed}), {how}"


# Maps a logical field ("prompt") to the record's column holding it, if any.
_ColumnLookup = Callable[[str], str | None]


class DetectionError(ValueError):
    """No format fits the first record; the message lists the keys seen."""


def detect_schema(sample: Mapping[str, object], *, configured: DatasetFormat, mapping: FieldMapping | None) -> Schema:
    """Choose the format (unless configured) and column names from one record's keys and the mapping."""
    explicit = {k: v for k, v in (mapping.model_dump() if mapping else {}).items() if v is not None}

    def column(field: str) -> str | None:
        if field in explicit:
            return str(explicit[field])
        return next((name for name in ALIASES[field] if name in sample), None)

    if configured == "preference":
        raise DetectionError("dataset.format preference is read only with method.objective dpo")
    if configured != "auto":
        fmt: Format = configured
    else:
        found = _detect_format(sample, column)
        if found is None:
            keys = ", ".join(repr(k) for k in sorted(sample)) or "none"
            raise DetectionError(
                f"cannot detect the dataset format from the keys {keys}; expected messages, "
                "prompt/completion (or question/answer, prompt/response, input/output), "
                "instruction/input/output, conversations or text. Set dataset.format and "
                "dataset.fieldMapping"
            )
        fmt = found
    columns: dict[str, str] = {}
    for field in REQUIRED[fmt]:
        columns[field] = column(field) or ALIASES[field][0]
    if fmt == "sharegpt" and "conversations" not in explicit and "conversations" not in sample:
        columns["conversations"] = column("messages") or "conversations"
    for field in OPTIONAL[fmt]:
        name = column(field)
        if name is not None and name not in columns.values():
            columns[field] = name
    return Schema(format=fmt, columns=columns, detected=configured == "auto")


def _detect_format(sample: Mapping[str, object], column: _ColumnLookup) -> Format | None:
    messages = column("messages")
    if messages is not None and messages in sample:
        return "sharegpt" if _looks_like_sharegpt(sample[messages]) else "messages"
    if column("conversations") in sample:
        return "sharegpt"
    if _mapped(column, "instruction", "output"):
        return "alpaca"
    prompt, completion = column("prompt"), column("completion")
    if prompt is not None and completion is not None and prompt != completion:
        return "prompt_completion"
    if column("text") in sample:
        return "text"
    return None


def _mapped(column: _ColumnLookup, *fields: str) -> bool:
    return all(column(f) is not None for f in fields)


def _looks_like_sharegpt(value: object) -> bool:
    return isinstance(value, list) and bool(value) and isinstance(value[0], dict) and "from" in value[0]


@dataclass(frozen=True, kw_only=True)
class Rejected:
    """Why a record yields no example. ``errors`` are fatal (the file or mapping is wrong); a record with
    only ``blanks`` (an empty prompt, answer or message, e.g. lamini_docs line 424) is skipped with a
    warning, because one empty answer in a real dataset should not stop the run."""

    errors: list[DataIssue]
    blanks: list[DataIssue]


class Problems(list[DataIssue]):
    """Errors found in a record (the list itself) and blank-content findings (``blanks``)."""

    def __init__(self) -> None:
        super().__init__()
        self.blanks: list[DataIssue] = []

    @property
    def failed(self) -> bool:
        return bool(self) or bool(self.blanks)


def parse_record(value: object, *, source: str, schema: Schema) -> Example | Rejected:
    """One record in canonical form, or every problem found in it."""
    if not isinstance(value, dict):
        return Rejected(errors=[DataIssue(source, "", f"expected a JSON object, got {json_type(value)}")], blanks=[])
    problems = Problems()
    example = _PARSERS[schema.format](value, schema.columns, source, problems)
    if example is None or problems.failed:
        return Rejected(errors=list(problems), blanks=problems.blanks)
    return example


def _nonempty_list(record: dict[str, object], field: str, what: str, src: str, out: Problems) -> list[object] | None:
    """The record's ``field`` as a non-empty list (a JSON-encoded string counts), or ``None`` with an issue."""
    raw = _present(record, field, src, out)
    if raw is None:
        return None
    raw = _maybe_json_list(raw)
    if not isinstance(raw, list) or not raw:
        out.append(DataIssue(src, field, f"expected a non-empty array of {what}, got {json_type(raw)}"))
        return None
    return raw


def _parse_messages(record: dict[str, object], cols: dict[str, str], src: str, out: Problems) -> Example | None:
    field = cols["messages"]
    raw = _nonempty_list(record, field, "messages", src, out)
    if raw is None:
        return None
    messages: list[Message] = []
    for index, item in enumerate(raw):
        where = f"{field}[{index}]"
        if not isinstance(item, dict):
            out.append(DataIssue(src, where, f"expected a message object, got {json_type(item)}"))
            continue
        role = item.get("role")
        if role not in ROLES:
            allowed = ", ".join(ROLES)
            got = "missing" if role is None else repr(role)
            out.append(DataIssue(src, f"{where}.role", f"role is {got}; expected one of {allowed}"))
        content = message_content(item.get("content"), f"{where}.content", src, out, present="content" in item)
        if role in ROLES and content is not None:
            messages.append(Message(role=role, content=content))
    if out.failed:
        return None
    return _conversation(messages, field, src, out)


def _parse_sharegpt(record: dict[str, object], cols: dict[str, str], src: str, out: Problems) -> Example | None:
    field = cols["conversations"]
    raw = _nonempty_list(record, field, "turns", src, out)
    if raw is None:
        return None
    messages = _system_message(record, cols, src, out)
    for index, item in enumerate(raw):
        where = f"{field}[{index}]"
        if not isinstance(item, dict):
            out.append(DataIssue(src, where, f"expected a turn object, got {json_type(item)}"))
            continue
        speaker = item.get("from")
        role = SHAREGPT_ROLES.get(speaker) if isinstance(speaker, str) else None
        if role is None:
            allowed = ", ".join(SHAREGPT_ROLES)
            got = "missing" if speaker is None else repr(speaker)
            out.append(DataIssue(src, f"{where}.from", f"speaker is {got}; expected one of {allowed}"))
        content = message_content(item.get("value"), f"{where}.value", src, out, present="value" in item)
        if role is not None and content is not None:
            messages.append(Message(role=role, content=content))
    if out.failed:
        return None
    return _conversation(messages, field, src, out)


def _parse_prompt_completion(
    record: dict[str, object], cols: dict[str, str], src: str, out: Problems
) -> Example | None:
    messages = _system_message(record, cols, src, out)
    prompt = _string(record, cols["prompt"], src, out)
    completion = _string(record, cols["completion"], src, out)
    if out or prompt is None or completion is None:
        return None
    messages += [Message(role="user", content=prompt), Message(role="assistant", content=completion)]
    return Example(messages=tuple(messages), text=None, source=src)


def _parse_alpaca(record: dict[str, object], cols: dict[str, str], src: str, out: Problems) -> Example | None:
    messages = _system_message(record, cols, src, out)
    instruction = _string(record, cols["instruction"], src, out)
    extra = optional_string(record, cols.get("input"), src, out)
    output = _string(record, cols["output"], src, out)
    if out or instruction is None or output is None:
        return None
    # The Stanford Alpaca layout: the input (context) follows the instruction after a blank line.
    user = f"{instruction}\n\n{extra}" if extra else instruction
    messages += [Message(role="user", content=user), Message(role="assistant", content=output)]
    return Example(messages=tuple(messages), text=None, source=src)


def _parse_text(record: dict[str, object], cols: dict[str, str], src: str, out: Problems) -> Example | None:
    text = _string(record, cols["text"], src, out)
    return None if text is None else Example(messages=None, text=text, source=src)


_PARSERS = {
    "messages": _parse_messages,
    "sharegpt": _parse_sharegpt,
    "prompt_completion": _parse_prompt_completion,
    "alpaca": _parse_alpaca,
    "text": _parse_text,
}


def _conversation(messages: list[Message], field: str, src: str, out: Problems) -> Example | None:
    """Structural rules every chat template relies on."""
    for index, message in enumerate(messages):
        if message.role == "system" and index != 0:
            out.append(DataIssue(src, f"{field}[{index}]", "a system message may only come first"))
    turns = [m for m in messages if m.role != "system"]
    if not turns:
        out.append(DataIssue(src, field, "no user or assistant messages"))
    elif turns[0].role != "user":
        out.append(DataIssue(src, field, "the first message after the system prompt must be from the user"))
    if not any(m.role == "assistant" for m in messages):
        out.append(DataIssue(src, field, "no assistant message: nothing to train on"))
    return None if out else Example(messages=tuple(messages), text=None, source=src)


def _present(record: dict[str, object], field: str, src: str, out: Problems) -> object | None:
    if field not in record:
        keys = ", ".join(repr(k) for k in sorted(record)) or "none"
        out.append(DataIssue(src, field, f"missing key {field!r} (keys: {keys})"))
        return None
    return record[field]


def _string(record: dict[str, object], field: str, src: str, out: Problems) -> str | None:
    if field not in record:
        _present(record, field, src, out)
        return None
    return message_content(record[field], field, src, out, present=True, allow_parts=False)


def optional_string(record: dict[str, object], field: str | None, src: str, out: Problems) -> str | None:
    """An optional column: absent, null or "" (CSV's empty cell) all mean "not given"."""
    if field is None or record.get(field) in (None, ""):
        return None
    return message_content(record[field], field, src, out, present=True, allow_parts=False)


def _system_message(record: dict[str, object], cols: dict[str, str], src: str, out: Problems) -> list[Message]:
    system = optional_string(record, cols.get("system"), src, out)
    return [Message(role="system", content=system)] if system else []


def message_content(
    value: object, where: str, src: str, out: Problems, *, present: bool, allow_parts: bool = True
) -> str | None:
    """A non-blank string. Chat content may also be OpenAI's list of {"type": "text", "text"} parts."""
    if not present:
        out.append(DataIssue(src, where, "missing"))
        return None
    if allow_parts and isinstance(value, list):
        texts = [p.get("text") for p in value if isinstance(p, dict) and p.get("type") == "text"]
        if len(texts) != len(value) or not all(isinstance(t, str) for t in texts):
            out.append(DataIssue(src, where, 'content parts must all be {"type": "text", "text": ...}'))
            return None
        value = "".join(t for t in texts if isinstance(t, str))
    if not isinstance(value, str):
        out.append(DataIssue(src, where, f"expected a string, got {json_type(value)}"))
        return None
    if not value.strip():
        out.blanks.append(DataIssue(src, where, "empty content"))
        return None
    return value


def _maybe_json_list(value: object) -> object:
    """CSV cells hold strings; a messages column there is a JSON-encoded array."""
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            decoded: object = json.loads(value)
        except json.JSONDecodeError:
            return value
        return decoded
    return value
