"""The data check's result: what the CPU-only validation pod tells the operator.

The pod (``kubetune-trainer validate``) writes one :class:`PreflightResult` as compact JSON to its
termination message; the operator reads it from the pod's status (no log, no extra RBAC) and maps it
into ``status.dataset``, ``status.hyperparameters`` and ``status.estimate``. The kubelet keeps at most
4096 bytes of a termination message, so :func:`encode_result` drops warnings, then problems (both stay
counted) until the JSON fits :data:`MAX_RESULT_BYTES`.
"""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import Field, ValidationError

from kubetune.api.base import ApiModel
from kubetune.api.spec import FineTuneJobSpec
from kubetune.api.status import DatasetStatus, Estimate, ResolvedHyperparameters

PREFLIGHT_RESULT_KIND = "PreflightResult"
# Below the kubelet's 4096-byte cap on a termination message, with room for its own framing.
MAX_RESULT_BYTES = 3900
MAX_MESSAGE_CHARS = 512

PreflightOutcome = Literal["Passed", "BadData", "BadConfig"]


class PreflightResult(ApiModel):
    """One data check: its outcome, and what it found when it got that far."""

    kind: Literal["PreflightResult"] = "PreflightResult"
    outcome: PreflightOutcome = Field(description="Passed, BadData (the records) or BadConfig (model, tokenizer).")
    message: str = Field(default="", max_length=MAX_MESSAGE_CHARS, description="A one-paragraph summary.")
    dataset: DatasetStatus | None = None
    hyperparameters: ResolvedHyperparameters | None = None
    estimate: Estimate | None = None


def encode_result(result: PreflightResult, *, limit: int = MAX_RESULT_BYTES) -> str:
    """Compact JSON of at most ``limit`` bytes: warnings, then problems, are dropped from the end until it
    fits (their counts stay), then the message is shortened."""
    current = result
    while True:
        text = json.dumps(current.to_wire(), separators=(",", ":"), ensure_ascii=False)
        if len(text.encode()) <= limit:
            return text
        dataset = current.dataset
        if dataset is not None and dataset.warnings:
            current = current.model_copy(
                update={"dataset": dataset.model_copy(update={"warnings": dataset.warnings[:-1]})}
            )
        elif dataset is not None and dataset.errors:
            current = current.model_copy(update={"dataset": dataset.model_copy(update={"errors": dataset.errors[:-1]})})
        elif current.message:
            current = current.model_copy(update={"message": current.message[: len(current.message) // 2]})
        else:
            raise ValueError(f"a preflight result without problems, warnings or message exceeds {limit} bytes")


def decode_result(text: object) -> PreflightResult | None:
    """The result in a termination message; None when there is none (a crash, a foreign message)."""
    if not isinstance(text, str) or not text.strip().startswith("{"):
        return None
    try:
        raw = json.loads(text)
    except ValueError:
        return None
    if not isinstance(raw, dict) or raw.get("kind") != PREFLIGHT_RESULT_KIND:
        return None
    try:
        return PreflightResult.model_validate(raw)
    except ValidationError:
        return None


def preflight_spec_hash(spec: FineTuneJobSpec) -> str:
    """A digest of everything the check's result depends on: the model and its tokenizer, the data, the
    method and hyperparameters, and the hardware (world size and GPU product decide steps and estimate).

    A FineTuneJob whose digest differs from ``status.dataset.specHash`` is checked again.
    """
    resources = spec.resources
    wanted = {
        "model": spec.model.to_wire(),
        "dataset": spec.dataset.to_wire(),
        "method": spec.method.to_wire(),
        "hyperparameters": spec.hyperparameters.to_wire(),
        "hardware": [resources.nodes, resources.gpus_per_node, resources.gpu_product],
    }
    return hashlib.sha256(json.dumps(wanted, sort_keys=True).encode()).hexdigest()[:16]
