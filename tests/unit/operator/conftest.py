"""Builders for FineTuneJobs, Jobs and pods as the API server would return them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from kubetune_operator.settings import OperatorSettings

from kubetune.api.resource import FineTuneJob

MakeFtj = Callable[..., FineTuneJob]


def base_spec() -> dict[str, Any]:
    return {
        "model": {"source": "hf://HuggingFaceTB/SmolLM2-135M-Instruct@main"},
        "dataset": {"train": ["s3://training-data/lamini_docs.jsonl"], "preflight": "skip"},
        "output": {"destination": "s3://outputs/run-1"},
    }


@pytest.fixture
def settings() -> OperatorSettings:
    return OperatorSettings()


@pytest.fixture
def make_ftj() -> MakeFtj:
    def make(*, name: str = "demo", annotations: dict[str, str] | None = None, **spec: Any) -> FineTuneJob:
        body = base_spec() | spec
        return FineTuneJob.from_object(
            {
                "apiVersion": "kubetune.io/v1alpha1",
                "kind": "FineTuneJob",
                "metadata": {
                    "name": name,
                    "namespace": "team-a",
                    "uid": "1f0c-uid",
                    "generation": 1,
                    "annotations": annotations or {},
                },
                "spec": body,
            }
        )

    return make
