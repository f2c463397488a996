"""Offline validation of FineTuneJob manifests: the checks the CRD schema and the operator apply.

Used by ``kubetune validate`` (before ``kubectl apply``) and by the operator on create, so a user sees
the same message, naming the same field, wherever a mistake is caught.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from kubetune.api.resource import API_VERSION, KIND, MAX_NAME_LENGTH, NAME_START_PATTERN
from kubetune.api.spec import FineTuneJobSpec


def field_path(loc: tuple[int | str, ...], *, prefix: str = "spec") -> str:
    """``("method", "rank")`` → ``spec.method.rank``; list indices become ``[i]``."""
    out = prefix
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def spec_errors(spec: Mapping[str, Any]) -> list[str]:
    """Problems in a FineTuneJob spec, one ``<field path>: <message>`` per problem; empty when valid."""
    try:
        FineTuneJobSpec.model_validate(spec)
    except ValidationError as err:
        problems = []
        for item in err.errors():
            # "Value error, ..." is pydantic's prefix for our own messages: drop it, keep the message.
            message = item["msg"].removeprefix("Value error, ")
            problems.append(f"{field_path(tuple(item['loc']))}: {message}")
        return problems
    return []


def manifest_errors(obj: Mapping[str, Any]) -> list[str]:
    """Problems in a whole FineTuneJob object (apiVersion, kind, name, spec)."""
    problems = []
    if obj.get("apiVersion") != API_VERSION:
        problems.append(f"apiVersion: expected {API_VERSION}, got {obj.get('apiVersion')!r}")
    if obj.get("kind") != KIND:
        problems.append(f"kind: expected {KIND}, got {obj.get('kind')!r}")
    metadata = obj.get("metadata") or {}
    name = metadata.get("name", "") if isinstance(metadata, Mapping) else ""
    if not name:
        problems.append("metadata.name: required")
    elif len(name) > MAX_NAME_LENGTH:
        problems.append(f"metadata.name: must be at most {MAX_NAME_LENGTH} characters")
    if name and not re.match(NAME_START_PATTERN, name):
        problems.append("metadata.name: must start with a lowercase letter")
    spec = obj.get("spec")
    if not isinstance(spec, Mapping):
        problems.append("spec: required and must be a mapping")
    else:
        problems.extend(spec_errors(spec))
    return problems


def validate_manifest_file(path: Path) -> list[str]:
    """Validate every FineTuneJob document in a YAML file; problems are prefixed with file and document."""
    try:
        documents = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
    except (OSError, yaml.YAMLError) as err:
        return [f"{path}: {err}"]
    problems = []
    for index, doc in enumerate(documents):
        if doc is None:
            continue
        if not isinstance(doc, Mapping):
            problems.append(f"{path} document {index}: not a mapping")
            continue
        if doc.get("kind") != KIND:
            continue
        problems.extend(f"{path} document {index}: {p}" for p in manifest_errors(doc))
    return problems
