"""kopf is configured explicitly: annotation storage (the status schema prunes status.kopf), our finalizer."""

from __future__ import annotations

import os

import kopf
import pytest
from kubetune_operator.handlers import FINALIZER, configure_kopf, register
from kubetune_operator.k8s import Kube
from kubetune_operator.metrics import OperatorMetrics
from kubetune_operator.settings import OperatorSettings


def test_kopf_keeps_its_bookkeeping_in_annotations_not_in_the_pruned_status() -> None:
    kopf_settings = kopf.OperatorSettings()
    configure_kopf(kopf_settings=kopf_settings, settings=OperatorSettings(max_workers=3))
    assert isinstance(kopf_settings.persistence.progress_storage, kopf.AnnotationsProgressStorage)
    assert isinstance(kopf_settings.persistence.diffbase_storage, kopf.AnnotationsDiffBaseStorage)
    assert kopf_settings.persistence.finalizer == FINALIZER
    assert kopf_settings.peering.standalone is True
    assert kopf_settings.execution.max_workers == 3


def test_a_peering_name_turns_standalone_mode_off() -> None:
    kopf_settings = kopf.OperatorSettings()
    configure_kopf(kopf_settings=kopf_settings, settings=OperatorSettings(peering_name="kubetune"))
    assert kopf_settings.peering.standalone is False and kopf_settings.peering.name == "kubetune"


def test_handlers_watch_finetunejobs_and_their_labelled_jobs_and_pods() -> None:
    registry = kopf.OperatorRegistry()
    requeue = register(
        registry=registry,
        settings=OperatorSettings(),
        kube=Kube(api_client=None),  # type: ignore[arg-type]
        metrics=OperatorMetrics(),
    )
    requeue.stop()
    watched = {(h.selector.group, h.selector.any_name) for h in registry._watching.get_all_handlers()}  # type: ignore[union-attr]
    indexed = {(h.selector.group, h.selector.any_name) for h in registry._indexing.get_all_handlers()}  # type: ignore[union-attr]
    # Only watch-event handlers: kopf then needs no finalizer and writes no annotations on FineTuneJobs.
    assert list(registry._changing.get_all_handlers()) == []
    assert list(registry._spawning.get_all_handlers()) == []
    assert watched == {
        ("kubetune.io", "finetunejobs"),
        ("batch", "jobs"),
        ("", "pods"),
        ("", "configmaps"),
        ("", "services"),
        # Cluster-scoped: the profiles, and the namespaces' kubetune.io/profile labels.
        ("kubetune.io", "finetuneprofiles"),
        ("", "namespaces"),
    }
    assert indexed == watched
    for handler in [*registry._watching.get_all_handlers(), *registry._indexing.get_all_handlers()]:  # children
        if handler.selector.group != "kubetune.io" and handler.selector.any_name != "namespaces":  # type: ignore[union-attr]
            assert "kubetune.io/finetunejob" in (handler.labels or {})


def test_children_and_pods_are_filtered_by_the_api_server_not_after_download() -> None:
    kopf_settings = kopf.OperatorSettings()
    configure_kopf(kopf_settings=kopf_settings, settings=OperatorSettings())
    selectors = {
        selector.plural or selector.any_name: value
        for selector, value in kopf_settings.watching.label_selectors.items()
    }
    assert selectors == dict.fromkeys(["jobs", "configmaps", "services", "pods"], "kubetune.io/finetunejob")


def test_the_operators_identity_needs_no_password_database_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    import getpass
    import pwd

    from kubetune_operator.__main__ import operator_identity

    def no_entry(uid: int) -> pwd.struct_passwd:
        raise KeyError(f"getpwuid(): uid not found: {uid}")

    monkeypatch.setattr(pwd, "getpwuid", no_entry)
    for variable in ("LOGNAME", "USER", "LNAME", "USERNAME"):
        monkeypatch.delenv(variable, raising=False)
    with pytest.raises(KeyError):
        getpass.getuser()  # what kopf's default identity calls: the crash in a pod with a numeric UID
    identity = operator_identity()
    assert identity.startswith("kubetune@") and identity.endswith(f"/{os.getpid()}")


def test_replicas_get_distinct_peering_priorities_and_the_older_one_wins() -> None:
    from kubetune_operator.__main__ import peering_priority

    older, newer = peering_priority(started_at=1_780_000_000.123), peering_priority(started_at=1_780_000_000.124)
    assert older > newer  # kopf lets the highest priority act and pauses all on a tie
