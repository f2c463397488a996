"""Finding and running the helm binary that ``.ci/build-helm.sh`` builds, and picking manifests apart.

Also what the chart's selectors must match: a label selector's semantics, and the trainer pod the operator builds.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubetune_operator.builders.pod import build_pod_template
from kubetune_operator.settings import OperatorSettings
from kubetune_testenv.helm import find_helm, pinned_helm_version

from kubetune.api.resource import FineTuneJob

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


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a metav1.LabelSelector (matchLabels, matchExpressions) selects an object with these labels."""
    if any(labels.get(key) != value for key, value in selector.get("matchLabels", {}).items()):
        return False
    for requirement in selector.get("matchExpressions", []):
        key, operator, values = requirement["key"], requirement["operator"], requirement.get("values", [])
        matched = {
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
            "In": labels.get(key) in values,
            "NotIn": labels.get(key) not in values,
        }[operator]
        if not matched:
            return False
    return True


def trainer_pod_template(*, namespace: str = "team-a", name: str = "demo") -> dict[str, Any]:
    """The pod template of a FineTuneJob's trainer Job, as the operator builds it with a report URL."""
    spec = {
        "model": {"source": "hf://HuggingFaceTB/SmolLM2-135M-Instruct@main"},
        "dataset": {"train": ["s3://training-data/lamini_docs.jsonl"]},
        "output": {"destination": "s3://outputs/run-1"},
    }
    metadata = {"name": name, "namespace": namespace, "uid": "uid", "generation": 1}
    ftj = FineTuneJob.from_object(
        {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": metadata, "spec": spec}
    )
    settings = OperatorSettings(report_url_base="https://kubetune-reports.kubetune-system.svc:8443")
    return build_pod_template(ftj=ftj, settings=settings)
