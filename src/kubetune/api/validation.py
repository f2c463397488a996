"""Offline validation of kubetune manifests: the checks the CRD schemas and the operator apply.

Used by ``kubetune validate`` (before ``kubectl apply``) and by the operator on create, so a user sees
the same message, naming the same field, wherever a mistake is caught. A file may hold FineTuneJobs and
FineTuneProfiles; documents of other kinds are not kubetune's and are skipped.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from kubetune.api.profile import PROFILE_KIND, PROFILE_NAME_PATTERN, FineTuneProfileSpec
from kubetune.api.resource import API_VERSION, KIND, MAX_NAME_LENGTH, NAME_START_PATTERN
from kubetune.api.spec import FineTuneJobSpec

# A cluster-scoped object's name is a DNS-1123 subdomain: at most 253 characters.
MAX_PROFILE_NAME_LENGTH = 253


def field_path(loc: tuple[int | str, ...], *, prefix: str = "spec") -> str:
    """``("method", "rank")`` → ``spec.method.rank``; list indices become ``[i]``."""
    out = prefix
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _model_errors(model: type[BaseModel], spec: Mapping[str, Any]) -> list[str]:
    try:
        model.model_validate(spec)
    except ValidationError as err:
        problems = []
        for item in err.errors():
            # "Value error, ..." is pydantic's prefix for our own messages: drop it, keep the message.
            message = item["msg"].removeprefix("Value error, ")
            problems.append(f"{field_path(tuple(item['loc']))}: {message}")
        return problems
    return []


def spec_errors(spec: Mapping[str, Any]) -> list[str]:
    """Problems in a FineTuneJob spec, one ``<field path>: <message>`` per problem; empty when valid.

    A spec without ``output.destination`` is valid: the job's FineTuneProfile may give one.
    """
    return _model_errors(FineTuneJobSpec, spec)


def profile_spec_errors(spec: Mapping[str, Any]) -> list[str]:
    """Problems in a FineTuneProfile spec, worded as :func:`spec_errors`'s."""
    return _model_errors(FineTuneProfileSpec, spec)


def _header_errors(obj: Mapping[str, Any], *, kind: str) -> tuple[list[str], str]:
    """apiVersion and kind problems, and the object's name ("" when it has none)."""
    problems = []
    if obj.get("apiVersion") != API_VERSION:
        problems.append(f"apiVersion: expected {API_VERSION}, got {obj.get('apiVersion')!r}")
    if obj.get("kind") != kind:
        problems.append(f"kind: expected {kind}, got {obj.get('kind')!r}")
    metadata = obj.get("metadata") or {}
    name = metadata.get("name", "") if isinstance(metadata, Mapping) else ""
    return problems, name if isinstance(name, str) else str(name)


def _spec_of(obj: Mapping[str, Any], check: Callable[[Mapping[str, Any]], list[str]]) -> list[str]:
    spec = obj.get("spec")
    if not isinstance(spec, Mapping):
        return ["spec: required and must be a mapping"]
    return check(spec)


def manifest_errors(obj: Mapping[str, Any]) -> list[str]:
    """Problems in a whole FineTuneJob object (apiVersion, kind, name, spec)."""
    problems, name = _header_errors(obj, kind=KIND)
    if not name:
        problems.append("metadata.name: required")
    elif len(name) > MAX_NAME_LENGTH:
        problems.append(f"metadata.name: must be at most {MAX_NAME_LENGTH} characters")
    if name and not re.match(NAME_START_PATTERN, name):
        problems.append("metadata.name: must start with a lowercase letter")
    return problems + _spec_of(obj, spec_errors)


def profile_manifest_errors(obj: Mapping[str, Any]) -> list[str]:
    """Problems in a whole FineTuneProfile object (apiVersion, kind, name, spec).

    A profile is cluster-scoped: its name is a DNS-1123 subdomain, and a ``metadata.namespace`` is
    ignored by the API server, as for every cluster-scoped object.
    """
    problems, name = _header_errors(obj, kind=PROFILE_KIND)
    if not name:
        problems.append("metadata.name: required")
    elif len(name) > MAX_PROFILE_NAME_LENGTH:
        problems.append(f"metadata.name: must be at most {MAX_PROFILE_NAME_LENGTH} characters")
    elif not re.match(PROFILE_NAME_PATTERN, name):
        problems.append(
            "metadata.name: must be lowercase letters, digits, '-' and '.', and start and end with a letter or digit"
        )
    return problems + _spec_of(obj, profile_spec_errors)


# What each kubetune kind is checked with; other kinds are not kubetune's to judge.
_CHECKS: dict[str, Callable[[Mapping[str, Any]], list[str]]] = {
    KIND: manifest_errors,
    PROFILE_KIND: profile_manifest_errors,
}


def validate_manifest_file(path: Path) -> list[str]:
    """Validate every FineTuneJob and FineTuneProfile document in a YAML file; problems are prefixed with
    file and document (``<file> document <i>: <field path>: <problem>``)."""
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
        check = _CHECKS.get(str(doc.get("kind")))
        if check is not None:
            problems.extend(f"{path} document {index}: {p}" for p in check(doc))
    return problems
