"""Finding and running the helm binary that ``.ci/build-helm.sh`` builds, and picking manifests apart."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubetune_testenv.helm import find_helm, pinned_helm_version

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "charts" / "kubetune"
RELEASE = "kubetune"
NAMESPACE = "kubetune-system"
# Render for the oldest Kubernetes the chart claims (Chart.yaml kubeVersion), whatever helm was built against.
KUBE_VERSION = "v1.30.0"

Manifest = dict[str, Any]
# render(values=None, *, include_crds=False) -> manifests: the `render` fixture.
Render = Callable[..., list[Manifest]]

__all__ = ["CHART", "KUBE_VERSION", "NAMESPACE", "RELEASE", "find_helm", "pinned_helm_version", "run_helm"]


def run_helm(helm: Path, *args: str, values: dict[str, Any] | None, tmp_dir: Path) -> subprocess.CompletedProcess[str]:
    command = [str(helm), *args]
    if values is not None:
        # JSON is YAML: helm reads it with -f, and no value needs --set escaping.
        values_file = tmp_dir / "values.json"
        values_file.write_text(json.dumps(values))
        command += ["-f", str(values_file)]
    env = {**os.environ, "HELM_CACHE_HOME": str(tmp_dir / "cache"), "HELM_CONFIG_HOME": str(tmp_dir / "config")}
    return subprocess.run(command, capture_output=True, text=True, timeout=60, env=env, check=False)


def by_kind(manifests: list[Manifest], kind: str) -> list[Manifest]:
    return [m for m in manifests if m["kind"] == kind]


def one(manifests: list[Manifest], kind: str, name: str | None = None) -> Manifest:
    found = [m for m in by_kind(manifests, kind) if name is None or m["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {[m['metadata']['name'] for m in found]}"
    return found[0]
