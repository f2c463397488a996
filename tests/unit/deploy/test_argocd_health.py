"""The Argo CD health check (``deploy/argocd/``) on FineTuneJobs recorded from real runs, with the real ``lua5.4``.

The fixtures under ``tests/fixtures/argocd/`` are observations of live FineTuneJobs on the test control plane
(``tests/integration/test_argocd_health_of_live_jobs.py`` records them), trimmed to ``metadata.generation``
and ``status``.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from argocd_health import CM_KEY, CM_PATCH, EXPECTED, FIXTURES, HEALTH_SCRIPT, health_of


def fixture(name: str) -> dict[str, Any]:
    return dict(json.loads((FIXTURES / f"{name}.json").read_text(encoding="utf-8")))


def test_every_recorded_observation_has_an_expected_health_and_back() -> None:
    assert sorted(p.stem for p in FIXTURES.glob("*.json")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_recorded_observation_gives_the_expected_health(name: str) -> None:
    health = health_of(fixture(name))
    assert health.status == EXPECTED[name].status, health
    assert EXPECTED[name].message in health.message, health


def test_argocd_cm_patch_embeds_the_same_script() -> None:
    patch = yaml.safe_load(CM_PATCH.read_text(encoding="utf-8"))
    assert patch["kind"] == "ConfigMap" and patch["metadata"]["name"] == "argocd-cm"
    assert patch["data"] == {CM_KEY: HEALTH_SCRIPT.read_text(encoding="utf-8")}


def test_degraded_message_names_the_failure_reason_and_the_trainers_message() -> None:
    health = health_of(fixture("failed-bad-data"))
    failure = fixture("failed-bad-data")["status"]["failure"]
    assert health.message == f"{failure['reason']}: {failure['message']}"


def test_without_status_failure_the_failed_condition_explains() -> None:
    obj = fixture("failed-bad-data")
    del obj["status"]["failure"]
    failed = next(c for c in obj["status"]["conditions"] if c["type"] == "Failed")
    assert health_of(obj).message == f"BadData: {failed['message']}"


def test_progress_of_a_running_job_joins_the_running_message() -> None:
    # The kwok pods print no progress events, so the recorded Running job gets the trainer's progress here.
    obj = fixture("running")
    obj["status"]["progress"] = {"step": 20, "totalSteps": 80, "percent": "25%", "etaSeconds": 162}
    assert health_of(obj).message == "1/1 pods running; step 20/80 (25%)"


def test_succeeded_names_the_output() -> None:
    obj = fixture("succeeded")
    obj["status"]["output"] = {"uri": "pvc://outputs/fine", "manifestSha256": "ab" * 32, "merged": False}
    assert health_of(obj).message == "training succeeded; output pvc://outputs/fine"


def test_a_final_phase_ignores_a_generation_the_operator_will_never_observe() -> None:
    for name in ("succeeded-then-edited", "failed-unschedulable"):
        obj = copy.deepcopy(fixture(name))
        obj["metadata"]["generation"] = obj["status"]["observedGeneration"] + 3
        assert health_of(obj).status in ("Healthy", "Degraded")


def test_an_unknown_phase_is_in_progress_not_unknown() -> None:
    obj = fixture("running")
    obj["status"]["phase"] = "Validating"
    assert health_of(obj).status == "Progressing"


def test_the_harness_refuses_what_argocd_refuses(tmp_path: Path) -> None:
    """Argo CD opens no string or math library; a script relying on them must fail here as it would there."""
    script = tmp_path / "plain.lua"
    script.write_text('local hs = {status = "Healthy", message = "n=" .. tostring(3)}\nreturn hs\n')
    assert health_of({"metadata": {"generation": 1}}, script=script).message == "n=3"
    for body in ('string.format("%d", 1)', '("x"):upper()', "math.floor(1.5)"):
        script = tmp_path / "uses-a-library.lua"
        script.write_text(f'local hs = {{status = "Healthy", message = {body}}}\nreturn hs\n')
        with pytest.raises(AssertionError, match="the health script failed"):
            health_of({"metadata": {"generation": 1}}, script=script)
