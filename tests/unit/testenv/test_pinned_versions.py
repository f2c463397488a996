"""Pinned versions: staging version derivation and the binaries' cache location."""

from __future__ import annotations

from pathlib import Path

import pytest
from kubetune_testenv.versions import Versions, bin_dir, binaries


def test_staging_version_follows_the_kubernetes_release() -> None:
    assert Versions(kubernetes="v1.36.3").staging == "v0.36.3"
    assert Versions(kubernetes="v1.37.2").staging == "v0.37.2"


def test_a_non_release_kubernetes_version_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"v1\.36\.3"):
        _ = Versions(kubernetes="master").staging


def test_cache_key_changes_with_any_version() -> None:
    base = Versions()
    assert (
        len(
            {
                base.key,
                Versions(etcd="v3.6.15").key,
                Versions(kwok="v0.7.0").key,
                Versions(kubernetes="v1.37.2").key,
                Versions(coredns="v1.14.6").key,
            }
        )
        == 5
    )


def test_binaries_live_under_the_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KUBETUNE_CACHE_DIR", str(tmp_path))
    assert bin_dir() == tmp_path / "k8s" / Versions().key
    bins = binaries()
    assert bins.missing() == [bins.etcd, bins.kube, bins.kwok, bins.coredns]
    for path in bins.all():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("#!/bin/sh\n")
        path.chmod(0o755)
    assert bins.missing() == []
