"""FineTuneJob objects in each phase and a fake API server, for the command line's tests.

``FakeKube`` stands in for the API server: it answers from a table of (method, path) → object or
``ApiError`` and records every request, so a test can assert what was sent (or that nothing was).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kubetune_operator.errors import ApiError, api_error

NAMESPACE = "team"
SERVER = "https://api.example:6443"
FTJ_PATH = f"/apis/kubetune.io/v1alpha1/namespaces/{NAMESPACE}/finetunejobs"

SPEC = {
    "model": {"source": "hf://HuggingFaceTB/SmolLM2-135M-Instruct@main"},
    "dataset": {"train": ["pvc://data/train.jsonl"]},
    "output": {"destination": "pvc://out/demo"},
}


def condition(type_: str, status: str, reason: str, message: str = "") -> dict[str, Any]:
    return {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": "2026-01-01T10:00:00Z",
    }


def ftj(name: str, *, status: Mapping[str, Any] | None = None, suspend: bool = False) -> dict[str, Any]:
    spec = copy.deepcopy(SPEC) | ({"runPolicy": {"suspend": True}} if suspend else {})
    return {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {
            "name": name,
            "namespace": NAMESPACE,
            "uid": f"uid-{name}",
            "resourceVersion": "1",
            "creationTimestamp": "2026-01-01T10:00:00Z",
        },
        "spec": spec,
        "status": dict(status or {}),
    }


RUNNING_STATUS = {
    "phase": "Running",
    "jobName": "demo-train",
    "startTime": "2026-01-01T10:01:00Z",
    "progress": {"step": 120, "totalSteps": 400, "epoch": 0.6, "percent": "30%", "etaSeconds": 750},
    "metrics": {"loss": 1.18342, "evalLoss": 1.2519, "tokensPerSecond": 5321.7, "trainedTokens": 1234567},
    "conditions": [
        condition("Validated", "True", "SpecValid"),
        condition("Running", "True", "TrainerRunning", "1/1 pods running"),
    ],
}
FAILED_STATUS = {
    "phase": "Failed",
    "jobName": "demo-train",
    "startTime": "2026-01-01T10:01:00Z",
    "completionTime": "2026-01-01T10:05:00Z",
    "progress": {"step": 3, "totalSteps": 400},
    "failure": {
        "reason": "BadData",
        "message": "train.jsonl:17: messages[0].role: role is 'robot'",
        "pod": "demo-train-0-abcde",
        "container": "trainer",
        "exitCode": 65,
    },
    "conditions": [condition("Failed", "True", "BadData", "train.jsonl:17: messages[0].role: role is 'robot'")],
}
SUCCEEDED_STATUS = {
    "phase": "Succeeded",
    "jobName": "demo-train",
    "startTime": "2026-01-01T10:01:00Z",
    "completionTime": "2026-01-01T11:01:00Z",
    "progress": {"step": 400, "totalSteps": 400, "percent": "100%", "etaSeconds": 0},
    "metrics": {"loss": 0.91, "evalLoss": 1.02},
    "output": {"uri": "pvc://out/demo", "manifestSha256": "ab" * 32, "merged": True},
    "conditions": [condition("Succeeded", "True", "TrainerSucceeded")],
}


Answer = dict[str, Any] | str | ApiError | Callable[[], Any]


@dataclass
class FakeKube:
    """The API server: ``answers[(method, path)]`` is returned (or raised, for an ApiError)."""

    answers: dict[tuple[str, str], Answer] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)

    def _answer(self, method: str, path: str) -> Any:
        answer = self.answers.get((method, path))
        if answer is None:
            raise api_error(status=404, reason="NotFound", message=f"no answer for {method} {path}")
        if callable(answer):
            answer = answer()
        if isinstance(answer, ApiError):
            raise answer
        return answer

    def request(self, method: str, path: str, *, query: Any = (), body: Any = None, content_type: str = "") -> Any:
        self.requests.append(
            {"method": method, "path": path, "query": list(query), "body": body, "content_type": content_type}
        )
        return copy.deepcopy(self._answer(method, path))

    def get(self, path: str) -> Any:
        try:
            return self.request("GET", path)
        except ApiError as err:
            if err.status == 404:
                return None
            raise

    def request_text(self, path: str, *, query: Any = ()) -> str:
        self.requests.append({"method": "GET", "path": path, "query": list(query)})
        return str(self._answer("GET", path))
