"""The kwok Stage set shipped with this package (``stages.yaml``) and the annotations it understands."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml

# Pod annotations interpreted by the stages (the contract documented in docs/testing.md).
RUN_FOR = "kubetune.test/run-for"  # Go duration, default DEFAULT_RUN_FOR_MS
EXIT_CODE = "kubetune.test/exit-code"  # integer as a string, default 0 (137 for OOMKilled, 1 other reasons)
REASON = "kubetune.test/reason"  # container termination reason, e.g. OOMKilled
MESSAGE = "kubetune.test/message"  # container termination message
PREEMPT_AFTER = "kubetune.test/preempt-after"  # Go duration: DisruptionTarget, Failed, deleted
ANNOTATIONS = (RUN_FOR, EXIT_CODE, REASON, MESSAGE, PREEMPT_AFTER)

DEFAULT_RUN_FOR_MS = 2000
REQUIRED_STAGES = ("node-initialize", "node-heartbeat", "pod-ready", "pod-exit", "pod-preempt", "pod-delete")


class _BlockDumper(yaml.SafeDumper):
    """Dumps multi-line strings (the Go templates) as literal blocks so the written file stays readable."""


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|" if "\n" in data else None)


_BlockDumper.add_representer(str, _represent_str)


def stage_text() -> str:
    return resources.files(__package__).joinpath("stages.yaml").read_text()


def load_stages(text: str | None = None) -> list[dict[str, Any]]:
    documents = [doc for doc in yaml.safe_load_all(stage_text() if text is None else text) if doc]
    for document in documents:
        if document.get("apiVersion") != "kwok.x-k8s.io/v1alpha1" or document.get("kind") != "Stage":
            raise ValueError(f"not a kwok Stage: {document.get('kind')} {document.get('apiVersion')}")
    return documents


def render_stages(*, default_run_for_ms: int = DEFAULT_RUN_FOR_MS) -> str:
    """The stage file kwok gets, with the default run time of pods that carry no run-for annotation."""
    if default_run_for_ms < 0:
        raise ValueError("default_run_for_ms must be >= 0")
    stages = load_stages()
    by_name = {stage["metadata"]["name"]: stage for stage in stages}
    missing = [name for name in REQUIRED_STAGES if name not in by_name]
    if missing:
        raise ValueError(f"stages.yaml lacks stages {missing}")
    by_name["pod-exit"]["spec"]["delay"]["durationMilliseconds"] = default_run_for_ms
    return yaml.dump_all(stages, Dumper=_BlockDumper, sort_keys=False, width=1000)


def write_stages(path: Path, *, default_run_for_ms: int = DEFAULT_RUN_FOR_MS) -> Path:
    path.write_text(render_stages(default_run_for_ms=default_run_for_ms))
    return path
