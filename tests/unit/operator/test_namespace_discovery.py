"""kopf's namespace observer, with KUBETUNE_NAMESPACES patterns, serves a namespace created between its first
listing and its watch's own listing (kopf alone drops the listed events, and never watches that namespace)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from kopf._cogs.clients import fetching
from kopf._cogs.configs.configuration import OperatorSettings
from kopf._cogs.structs import references
from kopf._core.reactor import observation, queueing
from kubetune_operator import namespace_discovery

PATTERNS = ["team-*"]


def namespace(name: str, *, deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    status: dict[str, Any] = {"phase": "Active"}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
        # Its content is gone (no condition is True): kopf stops watching it.
        status = {"phase": "Terminating", "conditions": [{"type": "NamespaceContentRemaining", "status": "False"}]}
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": meta, "status": status}


class CountingCondition(asyncio.Condition):
    """insights.revised, counting the wake-ups of kopf's orchestrator."""

    def __init__(self) -> None:
        super().__init__()
        self.notified = 0

    def notify_all(self) -> None:
        self.notified += 1
        super().notify_all()


@pytest.fixture
def restored_kopf(monkeypatch: pytest.MonkeyPatch) -> None:
    """kopf's own handler is put back after the test (install() replaces it for the whole process)."""
    monkeypatch.setattr(
        observation, "process_discovered_namespace_event", observation.process_discovered_namespace_event
    )


@pytest.mark.parametrize("installed", [False, True], ids=["kopf-alone", "installed"])
def test_a_namespace_created_between_kopfs_two_listings_is_watched(
    installed: bool, restored_kopf: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # kopf's first listing has team-a; by the time its watch lists again, team-new exists too (no ADDED event
    # follows for it: it is older than the listing the watch starts from).
    async def first_listing(**_: Any) -> AsyncIterator[tuple[list[dict[str, Any]], str]]:
        yield [namespace("default"), namespace("team-a")], "10"

    async def watch(*, processor: Any, **_: Any) -> None:
        for name in ("default", "team-a", "team-new"):
            await processor(raw_event={"type": None, "object": namespace(name)})

    monkeypatch.setattr(fetching, "fetch_objs", first_listing)
    monkeypatch.setattr(queueing, "watcher", watch)
    if installed:
        namespace_discovery.install()

    async def observe() -> set[Any]:
        insights = references.Insights()
        namespaces = references.Resource(group="", version="v1", plural="namespaces", namespaced=False)
        await insights.backbone.fill(resources=[namespaces])
        await observation.namespace_observer(
            clusterwide=False, namespaces=PATTERNS, insights=insights, settings=OperatorSettings()
        )
        return insights.namespaces

    seen = asyncio.run(observe())
    # kopf-alone is kopf's behaviour that install() exists for: should a kopf upgrade serve team-new itself,
    # this case fails and namespace_discovery can go.
    assert seen == ({"team-a", "team-new"} if installed else {"team-a"})


def test_listed_namespaces_are_applied_by_kopfs_rules_and_wake_kopf_only_when_they_change_something() -> None:
    async def scenario() -> tuple[set[Any], list[int]]:
        insights = references.Insights(revised=CountingCondition())
        insights.namespaces.update({references.NamespaceName("team-a"), references.NamespaceName("team-old")})
        wakeups = []
        events: list[Any] = [
            {"type": None, "object": namespace("team-a")},  # already known: nothing to do
            {"type": None, "object": namespace("other")},  # matches no pattern
            {"type": None, "object": namespace("team-gone", deleting=True)},  # unknown, and being deleted
            {"type": None, "object": namespace("team-new")},  # created between the listings
            {"type": None, "object": namespace("team-old", deleting=True)},  # deleted between the listings
            {"type": "MODIFIED", "object": namespace("team-a")},  # a watch event wakes kopf, as kopf's own does
        ]
        for raw_event in events:
            await namespace_discovery.process_namespace_event(
                raw_event=raw_event, namespaces=PATTERNS, insights=insights
            )
            wakeups.append(insights.revised.notified)  # type: ignore[attr-defined]
        return insights.namespaces, wakeups

    namespaces, wakeups = asyncio.run(scenario())
    assert namespaces == {"team-a", "team-new"}
    assert wakeups == [0, 0, 0, 1, 2, 3]
