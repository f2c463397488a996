"""The headless Service that gives each trainer pod a stable DNS name for the torchrun rendezvous."""

from __future__ import annotations

from typing import Any

from kubetune.api.resource import FineTuneJob
from kubetune_operator.builders.names import FINETUNEJOB_LABEL, child_metadata, child_names
from kubetune_operator.settings import OperatorSettings


def build_service(*, ftj: FineTuneJob, settings: OperatorSettings) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": child_metadata(ftj=ftj, name=child_names(name=ftj.metadata.name).service),
        "spec": {
            "clusterIP": "None",
            # Pod 0 must be resolvable before it is Ready: the other nodes rendezvous with it while it starts.
            "publishNotReadyAddresses": True,
            "selector": {FINETUNEJOB_LABEL: ftj.metadata.name},
            "ports": [{"name": "rendezvous", "port": settings.master_port, "targetPort": settings.master_port}],
        },
    }
