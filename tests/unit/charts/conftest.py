"""Fixtures rendering the Helm chart with the real ``helm`` binary that ``.ci/build-helm.sh`` builds.

A missing binary fails these tests (it never skips them): run ``.ci/build-helm.sh`` or point ``$HELM`` at a
helm 3 binary.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from helm_render import (
    CHART,
    KUBE_VERSION,
    NAMESPACE,
    RELEASE,
    Manifest,
    Render,
    find_helm,
    pinned_helm_version,
    run_helm,
)


@pytest.fixture(scope="session")
def helm() -> Path:
    binary = find_helm()
    if binary is None or not os.access(binary, os.X_OK):
        pytest.fail(
            f"helm {pinned_helm_version()} not found: run .ci/build-helm.sh (or set $HELM to a helm 3 binary)",
            pytrace=False,
        )
    return binary


@pytest.fixture(scope="session")
def render_result(
    helm: Path, tmp_path_factory: pytest.TempPathFactory
) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``helm template`` with the given values; the completed process, for tests that expect a failure."""

    def _run(values: dict[str, Any] | None = None, *, include_crds: bool = False) -> subprocess.CompletedProcess[str]:
        args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--kube-version", KUBE_VERSION]
        if include_crds:
            args.append("--include-crds")
        return run_helm(helm, *args, values=values, tmp_dir=tmp_path_factory.mktemp("helm"))

    return _run


@pytest.fixture(scope="session")
def render(render_result: Callable[..., subprocess.CompletedProcess[str]]) -> Render:
    """``helm template`` with the given values, parsed into manifests; a rendering error fails the test."""

    def _render(values: dict[str, Any] | None = None, *, include_crds: bool = False) -> list[Manifest]:
        result = render_result(values, include_crds=include_crds)
        assert result.returncode == 0, f"helm template failed:\n{result.stderr}"
        return [doc for doc in yaml.safe_load_all(result.stdout) if doc]

    return _render


@pytest.fixture(scope="session")
def default_manifests(render: Render) -> list[Manifest]:
    return render()
