"""The build fails clearly (which command, what it said) and reuses finished binaries."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from kubetune_testenv import build
from kubetune_testenv.versions import binaries


def fake_go(directory: Path, script: str) -> None:
    go = directory / "go"
    go.write_text(f"#!/usr/bin/env bash\n{script}\n")
    go.chmod(0o755)


@pytest.fixture
def cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("KUBETUNE_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_existing_binaries_are_reused_without_go(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    bins = binaries()
    bins.directory.mkdir(parents=True)
    for path in bins.all():
        path.write_text("#!/bin/sh\n")
        path.chmod(0o755)
    assert build.build() == bins


def test_missing_go_is_reported(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(build.BuildError, match="Go toolchain"):
        build.build()


def test_a_refused_module_shows_the_command_and_its_error(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_go(tmp_path, 'echo "go: k8s.io/api@v0.0.0: reading proxy: 404 Not Found" >&2; exit 1')
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(build.BuildError) as error:
        build.build()
    message = str(error.value)
    assert "go mod tidy" in message
    assert "404 Not Found" in message
    assert len(binaries().missing()) == 4  # nothing half-built was installed


def test_a_sigkilled_build_suggests_fewer_jobs(cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_go(tmp_path, 'echo "link: signal: killed"; exit 1')
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(build.BuildError, match="KUBETUNE_GO_BUILD_JOBS=1"):
        build.build()
