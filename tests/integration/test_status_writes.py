"""The guarded status write against the real API server: numbers Go and Python print differently (1e-08,
2e-05) do not make the guard fail, and a status someone else changed still does."""

from __future__ import annotations

import pytest
from kube_objects import FineTuneJobs
from kubetune_operator.errors import Conflict, Invalid
from kubetune_operator.k8s import Kube, patch_finetunejob_status

pytestmark = pytest.mark.cluster


@pytest.fixture
def ftjs(admin: Kube, namespace: str) -> FineTuneJobs:
    """FineTuneJobs with no operator: these tests are the only writers of the status."""
    return FineTuneJobs(kube=admin, namespace=namespace)


# A cosine schedule's last learning rates and other numbers in exponent form.
AWKWARD = {"learningRate": 1.6389810421846286e-08, "loss": 2e-05, "perplexity": 1.5e16, "evalLoss": 10.69}


def test_a_status_with_awkward_numbers_can_be_written_again(ftjs: FineTuneJobs) -> None:
    uid = ftjs.create("awkward")["metadata"]["uid"]
    checkpoint = {"step": 1, "uri": "pvc://o/c", "time": "2026-11-29T12:00:00Z", "trainLoss": 3e-07}
    first = {"phase": "Running", "metrics": AWKWARD, "checkpoints": [checkpoint]}
    patch_finetunejob_status(ftjs.kube, namespace=ftjs.namespace, name="awkward", status=first, previous=None, uid=uid)
    stored = (ftjs.get("awkward") or {})["status"]
    assert stored["metrics"]["learningRate"] == pytest.approx(AWKWARD["learningRate"])
    second = {"metrics": {**AWKWARD, "loss": 1.0}}
    written = patch_finetunejob_status(
        ftjs.kube, namespace=ftjs.namespace, name="awkward", status=second, previous=stored, uid=uid
    )
    assert written["status"]["metrics"]["loss"] == 1.0


def test_a_status_changed_by_someone_else_fails_the_guard(ftjs: FineTuneJobs) -> None:
    uid = ftjs.create("raced")["metadata"]["uid"]
    status = {"phase": "Running", "metrics": AWKWARD, "progress": {"step": 3}}
    patch_finetunejob_status(ftjs.kube, namespace=ftjs.namespace, name="raced", status=status, previous=None, uid=uid)
    seen = (ftjs.get("raced") or {})["status"]
    theirs = {"progress": {"step": 4}}
    patch_finetunejob_status(ftjs.kube, namespace=ftjs.namespace, name="raced", status=theirs, previous=seen, uid=uid)
    with pytest.raises(Conflict):
        patch_finetunejob_status(
            ftjs.kube, namespace=ftjs.namespace, name="raced", status={"phase": "Failed"}, previous=seen, uid=uid
        )


def test_a_status_the_schema_refuses_is_reported_as_invalid_not_as_a_lost_race(ftjs: FineTuneJobs) -> None:
    uid = ftjs.create("refused")["metadata"]["uid"]
    bad = {"phase": "Running", "checkpoints": [{"step": 1}]}
    with pytest.raises(Invalid, match="checkpoints"):
        patch_finetunejob_status(
            ftjs.kube, namespace=ftjs.namespace, name="refused", status=bad, previous=None, uid=uid
        )
