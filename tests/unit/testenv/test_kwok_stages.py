"""The shipped kwok stage set: complete, consistent with the documented annotation contract."""

from __future__ import annotations

import pytest
import yaml
from kubetune_testenv import stages


def by_name(text: str) -> dict[str, dict]:  # type: ignore[type-arg]
    return {doc["metadata"]["name"]: doc for doc in yaml.safe_load_all(text) if doc}


def test_every_required_stage_is_shipped() -> None:
    assert set(stages.REQUIRED_STAGES) <= set(by_name(stages.stage_text()))


def test_rendering_sets_the_default_run_time_of_pods() -> None:
    rendered = by_name(stages.render_stages(default_run_for_ms=750))
    assert rendered["pod-exit"]["spec"]["delay"]["durationMilliseconds"] == 750


def test_rendered_templates_stay_literal_blocks() -> None:
    text = stages.render_stages()
    assert "template: |" in text
    assert by_name(text) == by_name(stages.render_stages())


def test_negative_default_run_time_is_rejected() -> None:
    with pytest.raises(ValueError):
        stages.render_stages(default_run_for_ms=-1)


def test_delays_read_the_documented_annotations() -> None:
    docs = by_name(stages.stage_text())
    exit_delay = docs["pod-exit"]["spec"]["delay"]["durationFrom"]["jq"]["expression"]
    preempt_delay = docs["pod-preempt"]["spec"]["delay"]["durationFrom"]["jq"]["expression"]
    assert stages.RUN_FOR in exit_delay
    assert stages.PREEMPT_AFTER in preempt_delay


def test_every_documented_annotation_is_used_by_a_stage() -> None:
    text = stages.stage_text()
    body = text.split("apiVersion:", 1)[1]  # skip the header comment that documents them
    for annotation in stages.ANNOTATIONS:
        assert annotation in body, annotation


def test_exit_and_preempt_stages_are_mutually_exclusive() -> None:
    docs = by_name(stages.stage_text())
    exit_keys = {(e["key"], e["operator"]) for e in docs["pod-exit"]["spec"]["selector"]["matchExpressions"]}
    preempt_keys = {(e["key"], e["operator"]) for e in docs["pod-preempt"]["spec"]["selector"]["matchExpressions"]}
    annotation = f'.metadata.annotations["{stages.PREEMPT_AFTER}"]'
    assert (annotation, "DoesNotExist") in exit_keys
    assert (annotation, "Exists") in preempt_keys


def test_a_non_stage_document_is_rejected() -> None:
    with pytest.raises(ValueError, match="not a kwok Stage"):
        stages.load_stages("apiVersion: v1\nkind: ConfigMap\n")
