"""Kubernetes Events about a FineTuneJob: what ``kubectl describe ftj`` lists under Events."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from kubetune.api.resource import API_VERSION, KIND
from kubetune_operator.builders.names import MANAGED_BY

EventType = Literal["Normal", "Warning"]
# The API server's validation caps an Event's message at 1 KiB.
MAX_MESSAGE_LENGTH = 1024


@dataclass(frozen=True, kw_only=True)
class EventSpec:
    type: EventType
    reason: str
    message: str


def build_event(*, ftj: Mapping[str, Any], event: EventSpec, now: datetime) -> dict[str, Any]:
    """A core/v1 Event about the FineTuneJob."""
    meta = ftj["metadata"]
    stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta["uid"],
            "resourceVersion": meta.get("resourceVersion", ""),
        },
        "type": event.type,
        "reason": event.reason,
        "message": event.message[:MAX_MESSAGE_LENGTH],
        "source": {"component": MANAGED_BY},
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }
