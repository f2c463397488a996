"""The progress-report protocol: rank 0 of a FineTuneJob's trainer pushes its events to the operator.

One request: ``POST {KUBETUNE_REPORT_URL}`` (``https://<operator>/v1/reports/<namespace>/<name>``) with
``Authorization: Bearer <token>`` and a JSON :class:`ReportBatch` of at most :data:`MAX_REPORT_BYTES`. The
token is the pod's projected ServiceAccount token whose audience is :func:`audience` of the FineTuneJob;
the kubelet rotates it, so the trainer reads the file again for every request. The operator answers:

- ``202`` — accepted (the body says how many events);
- ``400`` malformed, ``413`` too large, ``401`` not a valid token for this job, ``403`` a valid token of a pod
  that is not this job's, ``404`` no such FineTuneJob, ``409`` the job already finished: the trainer drops
  that batch (sending it again cannot succeed);
- ``429``, ``5xx`` or no answer: the trainer keeps the events and retries with backoff.

Events are the typed stream of :mod:`kubetune.api.progress`, oldest first. Sending one twice is harmless:
the operator keeps the latest state and ignores events older than what it has.
"""

from __future__ import annotations

from pydantic import Field

from kubetune.api.base import ApiModel
from kubetune.api.progress import ProgressEvent

# The environment of the trainer container (set by the operator's pod builder).
REPORT_URL_ENV = "KUBETUNE_REPORT_URL"
REPORT_TOKEN_FILE_ENV = "KUBETUNE_REPORT_TOKEN_FILE"
REPORT_CA_FILE_ENV = "KUBETUNE_REPORT_CA_FILE"
# The port of the trainer's own /metrics (rank 0 only), for a PodMonitor.
TRAINER_METRICS_PORT_ENV = "KUBETUNE_METRICS_PORT"
TRAINER_METRICS_PORT = 9400

REPORTS_PATH_PREFIX = "/v1/reports"
# A batch holds up to a few hundred step events; anything larger is a bug or an attack.
MAX_REPORT_BYTES = 64 * 1024


def audience(*, namespace: str, name: str) -> str:
    """The token audience that names one FineTuneJob: a token for one job is refused for every other."""
    return f"kubetune.io/finetunejobs/{namespace}/{name}"


def report_path(*, namespace: str, name: str) -> str:
    return f"{REPORTS_PATH_PREFIX}/{namespace}/{name}"


class ReportBatch(ApiModel):
    """What one report request carries."""

    events: list[ProgressEvent] = Field(min_length=1, max_length=1024, description="Events, oldest first.")


class ReportAccepted(ApiModel):
    accepted: int = Field(ge=0, description="Events taken (older ones than the operator has are ignored).")
