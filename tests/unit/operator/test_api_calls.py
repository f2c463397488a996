"""Pure parts of the API layer: paths and Event objects."""

from __future__ import annotations

from datetime import UTC, datetime

from kubetune_operator.builders.event import EventSpec, build_event
from kubetune_operator.k8s import collection_path, object_path


def test_core_and_group_resources_have_their_api_prefixes() -> None:
    assert collection_path(api_version="v1", plural="pods", namespace="ns") == "/api/v1/namespaces/ns/pods"
    assert (
        object_path(api_version="kubetune.io/v1alpha1", plural="finetunejobs", namespace="ns", name="x")
        == "/apis/kubetune.io/v1alpha1/namespaces/ns/finetunejobs/x"
    )


def test_events_point_at_the_finetunejob_and_cap_the_message() -> None:
    ftj = {"metadata": {"name": "demo", "namespace": "ns", "uid": "u1", "resourceVersion": "7"}}
    event = build_event(
        ftj=ftj,
        event=EventSpec(type="Warning", reason="BadData", message="x" * 5000),
        now=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
    )
    assert event["involvedObject"] == {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "name": "demo",
        "namespace": "ns",
        "uid": "u1",
        "resourceVersion": "7",
    }
    assert (event["type"], event["reason"]) == ("Warning", "BadData")
    assert len(event["message"]) == 1024
    assert event["firstTimestamp"] == event["lastTimestamp"] == "2026-01-02T03:04:05Z"
    assert event["metadata"] == {"generateName": "demo.", "namespace": "ns"}


def test_the_status_guard_tests_whole_parts_and_leaves_out_numbers_go_prints_differently() -> None:
    from kubetune_operator.k8s import status_guard

    previous = {"phase": "Running", "metrics": {"loss": 2.5, "learningRate": 2e-05}, "conditions": [{"type": "A"}]}
    ops = status_guard(previous, pointer="/status")
    assert {"op": "test", "path": "/status/phase", "value": "Running"} in ops
    assert {"op": "test", "path": "/status/metrics/loss", "value": 2.5} in ops
    assert {"op": "test", "path": "/status/conditions", "value": [{"type": "A"}]} in ops
    assert not any(op["path"] == "/status/metrics/learningRate" for op in ops)
    assert status_guard({"phase": "Running"}, pointer="/status") == [
        {"op": "test", "path": "/status", "value": {"phase": "Running"}}
    ]
