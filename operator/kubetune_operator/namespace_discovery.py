"""kopf's discovery of the namespaces that match KUBETUNE_NAMESPACES patterns, made to see every namespace.

With namespace patterns (``team-*``), kopf's namespace observer lists the namespaces once, starts the
watchers of the matching ones, and then runs a watch of namespaces, which lists them again before it streams
changes. kopf 1.45 (the version pinned in pyproject.toml) drops the events of that second listing, and of
every later re-listing (after the watch's resourceVersion expired). A matching namespace created between the
two listings is therefore in neither kopf's first list nor any watch event: kopf starts no watcher in it,
and the operator handles none of its FineTuneJobs until the namespace itself changes (a label edited, or its
deletion begun). The operator's /healthz can answer before that second listing, so a namespace created right
after an operator (re)start can fall in between.

:func:`install` replaces kopf's handler of those events with :func:`process_namespace_event`, which applies
listed namespaces as kopf applies its first list: with kopf's own rules (patterns, namespaces being deleted).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from kopf._cogs.structs import bodies, references
from kopf._core.reactor import observation


async def process_namespace_event(
    *,
    raw_event: bodies.RawEvent,
    namespaces: Collection[references.NamespacePattern],
    insights: references.Insights,
    **_: Any,
) -> None:
    """kopf's ``process_discovered_namespace_event``, listed namespaces (event type None) included.

    A listed namespace that changes nothing (every namespace kopf's first list held) wakes no one; any other
    event wakes kopf's orchestrator, as kopf does, which starts or stops the namespace's watchers."""
    name = raw_event["object"]["metadata"]["name"]
    async with insights.revised:
        known = name in insights.namespaces
        observation.revise_namespaces(raw_events=[raw_event], insights=insights, namespaces=namespaces)
        if raw_event["type"] is not None or (name in insights.namespaces) != known:
            insights.revised.notify_all()


def install() -> None:
    """Make kopf's namespace observer use :func:`process_namespace_event`; call before ``kopf.run``.

    The observer looks the function up by its module-level name when it starts its watch."""
    observation.process_discovered_namespace_event = process_namespace_event
