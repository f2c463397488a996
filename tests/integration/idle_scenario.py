"""100 FineTuneJobs left idle (50 finished, 50 running) under an operator that watches only their namespace.

The window opens before the first integration test and is measured by the last one (conftest's
``idle_window``): the other tests' operators and objects are elsewhere, so every status write and API request
this operator counts is about these 100 jobs. The window spans what the other tests do to the cluster as a
whole, an API server restart among them.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kube_objects import FineTuneJobs, ftj_collection, minimal_spec, wait_for
from kubetune_operator.k8s import Kube, object_path
from operator_harness import OperatorProcess

FINISHED = tuple(f"done-{i:02d}" for i in range(50))
RUNNING = tuple(f"busy-{i:02d}" for i in range(50))
SETTLED = Counter(Succeeded=len(FINISHED), Running=len(RUNNING))


@dataclass
class IdleWindow:
    """The settled jobs, their operator, and its metrics when the window opened."""

    ftjs: FineTuneJobs
    operator: OperatorProcess
    opened_at: float
    metrics_at_open: str

    def phases(self) -> Counter[str]:
        items = self.ftjs.kube.request("GET", ftj_collection(self.ftjs.namespace))["items"]
        return Counter((item.get("status") or {}).get("phase", "") for item in items)

    @classmethod
    @contextmanager
    def opened(cls, admin: Kube, kubeconfig: Path, *, log_dir: Path) -> Iterator[IdleWindow]:
        # Not t-*: the session's operator must not act here.
        namespace = f"idle-{uuid.uuid4().hex[:6]}"
        admin.request("POST", "/api/v1/namespaces", body={"metadata": {"name": namespace}})
        operator = OperatorProcess(
            kubeconfig=kubeconfig, log_path=log_dir / "idle-operator.log", extra_env={"KUBETUNE_NAMESPACES": namespace}
        )
        try:
            wait_for(
                lambda: admin.get(
                    object_path(api_version="v1", plural="serviceaccounts", namespace=namespace, name="default")
                ),
                lambda account: account is not None,
                what=f"{namespace}'s default ServiceAccount",
            )
            operator.start()
            ftjs = FineTuneJobs(kube=admin, namespace=namespace)
            spec: dict[str, Any] = minimal_spec() | {"resources": {"gpusPerNode": 0}}
            for name in FINISHED:
                ftjs.create(name, spec=spec, annotations={"kubetune.test/run-for": "1s"})
            for name in RUNNING:
                ftjs.create(name, spec=spec, annotations={"kubetune.test/run-for": "2h"})
            window = cls(ftjs=ftjs, operator=operator, opened_at=0.0, metrics_at_open="")
            wait_for(window.phases, lambda phases: phases == SETTLED, what="50 finished, 50 running", timeout=300)
            time.sleep(5)  # the last events of the settling jobs
            window.metrics_at_open = operator.metrics()
            window.opened_at = time.monotonic()
            yield window
        finally:
            operator.stop()
            admin.request("DELETE", f"/api/v1/namespaces/{namespace}")
