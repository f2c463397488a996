"""Question-and-answer pairs about kubetune's own API, generated from the CRD: the quickstart's data.

Users who bring no data of their own fine-tune on these. Every answer is built from what the API itself
says about a field: its description, type, whether it is required, its default, bounds and allowed
values, and the CEL rules of the object it is in. Like ``docs/api.md`` the pairs are generated from the
CRD (wire names, the defaults the API server fills in), so they change when the models do.

The records are ``{"question": ..., "answer": ...}``: the ``prompt_completion`` format with
``fieldMapping`` ``question``/``answer``, as lamini_docs has. There is no randomness: each field gets two
of three question templates, chosen by its position, so the output is the same on every run.
:data:`HELD_OUT_FIELDS` are also asked with a fourth template that no training question uses, to compare
answers before and after training on phrasings the model never saw.

Regenerate with ``kubetune quickstart-data``; a unit test fails while the committed files are stale.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from kubetune.api.crd import build_crd
from kubetune.api.spec import ENV_NAME_PATTERN, QUANTITY_PATTERN, SECRET_NAME_PATTERN
from kubetune.api.uris import URI_PATTERN

Schema = dict[str, Any]

# The committed files, relative to the repository root (``kubetune quickstart-data`` writes them).
TRAIN_FILE = "examples/quickstart/kubetune-api-qa.jsonl"
HELD_OUT_FILE = "examples/quickstart/kubetune-api-qa-heldout.jsonl"

# What a field sets (spec) or reports (status); each field is asked two of the three, by its position.
SPEC_TEMPLATES = (
    "What does {path} set in a kubetune FineTuneJob?",
    "In a kubetune FineTuneJob, what is {path}?",
    "Explain the FineTuneJob field {path} in kubetune.",
)
STATUS_TEMPLATES = (
    "What does {path} report in a kubetune FineTuneJob?",
    "In a kubetune FineTuneJob, what is {path}?",
    "Explain the FineTuneJob status field {path} in kubetune.",
)
DEFAULT_TEMPLATES = (
    "What is the default value of {path} in a kubetune FineTuneJob?",
    "If I leave out {path}, what value does kubetune use?",
)
ALLOWED_TEMPLATES = (
    "Which values does {path} accept in a kubetune FineTuneJob?",
    "What are the valid values of {path} in kubetune?",
)
SECTION_TEMPLATES = (
    "What goes in the {path} section of a kubetune FineTuneJob?",
    "Which fields does {path} have in a kubetune FineTuneJob?",
)
RULE_TEMPLATES = (
    "Which validation rules apply to {path} in a kubetune FineTuneJob?",
    "What does the API server check on {path} of a kubetune FineTuneJob?",
)
HELD_OUT_TEMPLATE = "What is the purpose of {path} in kubetune?"

# Fields a user of the quickstart is likely to ask about; asked with HELD_OUT_TEMPLATE only.
HELD_OUT_FIELDS = (
    "spec.model.ggufFile",
    "spec.dataset.validationSplit",
    "spec.dataset.maxSeqLength",
    "spec.method.rank",
    "spec.method.alpha",
    "spec.hyperparameters.learningRate",
    "spec.hyperparameters.maxSteps",
    "spec.hyperparameters.precision",
    "spec.resources.gpusPerNode",
    "spec.checkpointing.everySteps",
    "spec.output.mergeAdapter",
    "spec.runPolicy.suspend",
    "status.phase",
    "status.progress.etaSeconds",
    "status.metrics.evalLoss",
)

# The patterns the API uses, in words; a pattern not listed here is left out of the answers.
PATTERN_WORDS = {
    URI_PATTERN: "a URI starting with hf://, pvc://, s3:// or file://",
    QUANTITY_PATTERN: "a Kubernetes quantity such as 500m, 8 or 64Gi",
    SECRET_NAME_PATTERN: "a lowercase DNS name",
    ENV_NAME_PATTERN: "a variable name of letters, digits and underscores, not starting with a digit",
    r"^[^/]+\.gguf$": "a file name ending in .gguf",
    r"^https?://\S+$": "an http:// or https:// URL",
}


@dataclass(frozen=True, kw_only=True)
class QAPair:
    question: str
    answer: str


@dataclass(frozen=True, kw_only=True)
class QADataset:
    train: tuple[QAPair, ...]
    held_out: tuple[QAPair, ...]


@dataclass(frozen=True, kw_only=True)
class SchemaField:
    """One property of the schema, by its path as users write it (``spec.resources.tolerations[].key``)."""

    path: str
    schema: Schema
    required: bool


def build_dataset() -> QADataset:
    """The training pairs and the held-out pairs, from the FineTuneJob CRD."""
    crd = build_crd()
    root: Schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    fields = [f for top in ("spec", "status") for f in _fields(root["properties"][top], path=top, required=False)]
    train = list(_resource_pairs(crd))
    for index, field in enumerate(fields):
        train += _field_pairs(field, index=index)
    by_path = {f.path: f for f in fields}
    missing = [path for path in HELD_OUT_FIELDS if path not in by_path]
    if missing:
        raise KeyError(f"held-out fields not in the CRD: {', '.join(missing)}")
    held_out = [
        QAPair(question=HELD_OUT_TEMPLATE.format(path=path), answer=describe(by_path[path])) for path in HELD_OUT_FIELDS
    ]
    return QADataset(train=tuple(train), held_out=tuple(held_out))


def render_jsonl(pairs: Sequence[QAPair]) -> str:
    """One ``{"question": ..., "answer": ...}`` object a line."""
    return "".join(json.dumps({"question": p.question, "answer": p.answer}, ensure_ascii=False) + "\n" for p in pairs)


def _fields(node: Schema, *, path: str, required: bool) -> Iterator[SchemaField]:
    """Every property under ``node`` (itself first), parents before children, in declaration order."""
    yield SchemaField(path=path, schema=node, required=required)
    if "properties" in node:
        needed = set(node.get("required", []))
        for name, prop in node["properties"].items():
            yield from _fields(prop, path=f"{path}.{name}", required=name in needed)
    elif node.get("type") == "array" and "properties" in node.get("items", {}):
        for name, prop in node["items"]["properties"].items():
            needed = set(node["items"].get("required", []))
            yield from _fields(prop, path=f"{path}[].{name}", required=name in needed)


def _resource_pairs(crd: Schema) -> Iterator[QAPair]:
    spec = crd["spec"]
    version = spec["versions"][0]
    api_version = f"{spec['group']}/{version['name']}"
    kind = spec["names"]["kind"]
    root = version["schema"]["openAPIV3Schema"]
    short = spec["names"]["shortNames"][0]
    columns = ", ".join(c["name"] for c in version.get("additionalPrinterColumns", []) if not c.get("priority"))
    yield QAPair(
        question=f"What is a {kind} in kubetune?",
        answer=f"A {kind} ({api_version}) is {_sentence(root['properties']['spec']['description']).lower()}",
    )
    yield QAPair(
        question=f"Which apiVersion and kind does a kubetune {kind} use?",
        answer=f"apiVersion: {api_version}, kind: {kind}. It is a {spec['scope'].lower()} resource.",
    )
    yield QAPair(
        question=f"What is the kubectl short name of a kubetune {kind}?",
        answer=f"{short}, as in kubectl get {short}. The plural is {spec['names']['plural']}.",
    )
    yield QAPair(
        question=f"Which columns does kubectl get {short} show?",
        answer=f"{columns}. kubectl get {short} -o wide shows more.",
    )


def _field_pairs(field: SchemaField, *, index: int) -> list[QAPair]:
    node, path = field.schema, field.path
    pairs: list[QAPair] = []
    if "properties" in node and "." in path:
        pairs.append(_ask(SECTION_TEMPLATES[index % 2], path, _section_answer(field)))
        rules = [r["message"] for r in node.get("x-kubernetes-validations", []) if "message" in r]
        if rules:
            pairs.append(_ask(RULE_TEMPLATES[index % 2], path, f"{path}: " + " ".join(map(_sentence, rules))))
        return pairs
    if "properties" in node or "description" not in node:
        return pairs
    templates = STATUS_TEMPLATES if path.startswith("status.") else SPEC_TEMPLATES
    for offset in (0, 1):
        pairs.append(_ask(templates[(index + offset) % 3], path, describe(field)))
    default = _default_words(node)
    if default is not None and path.startswith("spec."):
        pairs.append(_ask(DEFAULT_TEMPLATES[index % 2], path, f"{path} defaults to {default} when it is omitted."))
    # Asked where more than a length limit bounds the value; of status fields (set by kubetune, not by
    # users) only for enums, such as the phases.
    if _allowed_words(node, lengths=False) and ("enum" in node or path.startswith("spec.")):
        answer = f"{path} takes {_kind(node)}: {_allowed_words(node)}."
        pairs.append(_ask(ALLOWED_TEMPLATES[index % 2], path, answer))
    return pairs


def _ask(template: str, path: str, answer: str) -> QAPair:
    return QAPair(question=template.format(path=path), answer=answer)


def describe(field: SchemaField) -> str:
    """What the API says about one field, as a short paragraph."""
    node = field.schema
    parts = [f"{field.path}: {_sentence(node.get('description', ''))}"]
    kind = f"It is {_kind(node)}"
    allowed = _allowed_words(node)
    if allowed:
        kind += f": {allowed}"
    parts.append(_sentence(kind + (", and required" if field.required else "")))
    default = _default_words(node)
    if default is not None:
        parts.append(f"Default: {default}.")
    return " ".join(parts)


def _section_answer(field: SchemaField) -> str:
    node = field.schema
    names = list(node["properties"])
    required = [name for name in names if name in set(node.get("required", []))]
    text = f"{field.path}: {_sentence(node.get('description', ''))} Fields: {', '.join(names)}."
    if required:
        text += f" Required: {', '.join(required)}."
    return text


def _kind(node: Schema) -> str:
    if node.get("x-kubernetes-int-or-string"):
        return "an integer or the string auto"
    kind = node.get("type")
    if kind == "array":
        items = node.get("items", {})
        return "a list of objects" if "properties" in items else f"a list of {items.get('type', 'value')}s"
    if kind == "object":
        if node.get("x-kubernetes-preserve-unknown-fields"):
            return "a free-form object"
        if isinstance(node.get("additionalProperties"), dict):
            return "a map of string keys to string values"
        return "an object"
    if node.get("format") == "date-time":
        return "a timestamp (RFC 3339)"
    return {"integer": "an integer", "number": "a number", "boolean": "a boolean", "string": "a string"}.get(
        str(kind), f"a {kind}"
    )


def _allowed_words(node: Schema, *, lengths: bool = True) -> str:
    """Bounds, allowed values, known patterns and (with ``lengths``) sizes in words; empty when none apply."""
    if "enum" in node:
        values = [_scalar(v) for v in node["enum"]]
        return f"only {values[0]}" if len(values) == 1 else "one of " + _or_list(values)
    words: list[str] = []
    low, high = node.get("minimum"), node.get("maximum")
    if low is not None and high is not None and not node.get("exclusiveMinimum") and not node.get("exclusiveMaximum"):
        words.append(f"from {_scalar(low)} to {_scalar(high)}")
    else:
        bounds = []
        if low is not None:
            bounds.append(f"{'greater than' if node.get('exclusiveMinimum') else 'at least'} {_scalar(low)}")
        if high is not None:
            bounds.append(f"{'less than' if node.get('exclusiveMaximum') else 'at most'} {_scalar(high)}")
        if bounds:
            words.append(" and ".join(bounds))
    if node.get("pattern") in PATTERN_WORDS:
        words.append(PATTERN_WORDS[node["pattern"]])
    if "maxItems" in node:
        words.append(f"{node.get('minItems', 0)} to {node['maxItems']} items")
    words += [r["message"].rstrip(".") for r in node.get("x-kubernetes-validations", []) if "message" in r]
    if lengths and "maxLength" in node:
        words.append(f"up to {node['maxLength']} characters")
    if lengths and "maxProperties" in node:
        words.append(f"up to {node['maxProperties']} entries")
    return ", ".join(words)


def _default_words(node: Schema) -> str | None:
    if "default" not in node or isinstance(node["default"], dict):
        return None  # {} on an object only makes its fields' own defaults apply
    value = node["default"]
    if value == "":
        return "an empty string"
    if isinstance(value, list):
        return ", ".join(_scalar(v) for v in value)
    return _scalar(value)


def _scalar(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _or_list(values: Sequence[str]) -> str:
    return f"{', '.join(values[:-1])} or {values[-1]}"


def _sentence(text: str) -> str:
    """One line ending in a full stop; the case is kept (descriptions may start with a field's name)."""
    text = " ".join(text.split())
    return text if not text or text.endswith((".", "!", "?")) else text + "."
