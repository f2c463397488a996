"""The operator's settings: typed, documented, read once from ``KUBETUNE_*`` environment variables.

Each field maps to ``KUBETUNE_<FIELD_NAME_UPPERCASE>``; tuples are comma-separated. The operator validates
them at start-up and refuses to run with a bad value, instead of failing on the first FineTuneJob.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

ENV_PREFIX = "KUBETUNE_"


class SettingsError(ValueError):
    """A setting from the environment is invalid; the message names the variable."""


class OperatorSettings(BaseModel):
    """Everything about the operator's behaviour that a cluster admin may tune."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    trainer_image: str = Field(
        default="kubetune/trainer:0.1.0",
        min_length=1,
        max_length=512,
        description="Trainer image when spec.trainer.image is unset; the chart pins it to its appVersion.",
    )
    trainer_image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field(
        default="IfNotPresent", description="Pull policy when spec.trainer.imagePullPolicy is unset."
    )
    pending_timeout_seconds: int = Field(
        default=600,
        ge=1,
        description=(
            "Seconds a trainer pod may stay unschedulable before the FineTuneJob fails as Unschedulable. "
            "10 minutes leaves a cluster autoscaler time to add a GPU node."
        ),
    )
    termination_grace_period_seconds: int = Field(
        default=300,
        ge=30,
        description=(
            "Seconds between SIGTERM and SIGKILL for a trainer pod: the trainer writes a checkpoint in "
            "that window (a 7B model's optimizer state to object storage takes minutes)."
        ),
    )
    master_port: int = Field(
        default=29500, ge=1024, le=65535, description="torchrun rendezvous port on pod 0 (torch's default)."
    )
    resync_interval_seconds: float = Field(
        default=600.0,
        gt=0,
        description=(
            "Seconds between safety re-checks of each FineTuneJob. Watches deliver every change and "
            "time-based checks (pending timeout, TTL, progress) are scheduled for when they fall due, so "
            "this only bounds the damage of a bug; it reads the watch caches and costs no request."
        ),
    )
    run_as_user: int = Field(default=1000, ge=1, description="UID of the trainer (non-root, restricted PSS).")
    run_as_group: int = Field(default=1000, ge=1, description="GID of the trainer.")
    fs_group: int = Field(default=1000, ge=1, description="Group owning mounted volumes, so PVCs are writable.")
    pod_annotation_prefixes: tuple[str, ...] = Field(
        default=(),
        description=(
            "FineTuneJob annotations whose key starts with one of these prefixes are copied to the trainer "
            "pods (e.g. a cost-allocation or service-mesh prefix). None by default: a tenant's annotations "
            "reach pods only where the platform team allows it. The test cluster sets its kwok hook here."
        ),
    )
    namespaces: tuple[str, ...] = Field(default=(), description="Namespaces to watch; empty means the whole cluster.")
    metrics_port: int = Field(
        default=8080, ge=0, le=65535, description="Port of the Prometheus /metrics endpoint; 0 disables it."
    )
    health_port: int = Field(
        default=8081, ge=0, le=65535, description="Port of the liveness endpoint (/healthz); 0 disables it."
    )
    reports_port: int = Field(
        default=8443,
        ge=0,
        le=65535,
        description="Port of the HTTPS endpoint trainers push their progress reports to; 0 disables it.",
    )
    report_url_base: str | None = Field(
        default=None,
        pattern=r"^https://[^/?#]+$",
        max_length=512,
        description=(
            "https://host:port at which trainer pods reach the report endpoint (the chart sets the operator's "
            "Service). Unset: pods get no report address, and status.progress stays empty."
        ),
    )
    report_cert_hosts: tuple[str, ...] = Field(
        default=(),
        description=(
            "More DNS names or IP addresses for the certificate the operator makes for its report endpoint "
            "(the host of report_url_base is always in it)."
        ),
    )
    reports_tls_dir: str | None = Field(
        default=None,
        min_length=1,
        description=(
            "Directory with tls.crt, tls.key and ca.crt for the report endpoint (e.g. a cert-manager Secret). "
            "Unset: the operator makes a CA and a certificate at start-up, in memory."
        ),
    )
    reports_ca_secret: str | None = Field(
        default=None,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?/[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description=(
            "namespace/name of the Secret holding the report endpoint's CA (made there when missing), so "
            "the CA that trainer pods trust survives restarts and is shared by replicas. Unset (and no "
            "reports_tls_dir): a CA made in memory at every start. The chart sets its release's Secret."
        ),
    )
    report_writes_per_second: float = Field(
        default=20.0,
        gt=0,
        description=(
            "Most status writes per second that reports may cause, all jobs together: with more jobs "
            "reporting than this times report_write_interval_seconds, each job is written less often "
            "(200 reporting jobs at 20/s: every 10 s). Milestones are not held back."
        ),
    )
    report_write_interval_seconds: float = Field(
        default=5.0,
        ge=0,
        description=(
            "Least seconds between two status writes of one job caused by progress reports; milestones "
            "(started, checkpoint, eval, finished, failed) are written at once."
        ),
    )
    preflight_cpu: str = Field(
        default="1",
        pattern=r"^[0-9]+(\.[0-9]+)?m?$",
        description="CPU request (and limit) of the data-check pod that runs before any GPU is claimed.",
    )
    preflight_memory: str = Field(
        default="4Gi",
        pattern=r"^[0-9]+(\.[0-9]+)?(k|M|G|T|Ki|Mi|Gi|Ti)?$",
        description=(
            "Memory request (and limit) of the data-check pod: it holds the tokenized dataset (about 40 bytes a "
            "token) and the tokenizer, never the model's weights."
        ),
    )
    preflight_deadline_seconds: int = Field(
        default=1800,
        ge=60,
        description="Seconds the data check may run (downloads included) before the FineTuneJob fails.",
    )
    preflight_queue_name: str | None = Field(
        default=None,
        max_length=63,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description=(
            "Kueue LocalQueue for the data-check Jobs (one with CPU quota only). Unset: the check carries no "
            "queue label, so Kueue leaves it alone (manageJobsWithoutQueueName is false by default) and it "
            "never waits for, or holds, the GPU queue's quota."
        ),
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Level of the operator's log (kopf's and the handlers')."
    )
    peering_name: str | None = Field(
        default=None,
        min_length=1,
        max_length=253,
        description=(
            "kopf peering object to coordinate replicas through (only the highest-priority replica acts); "
            "unset runs standalone, which is right for the single replica the chart deploys by default."
        ),
    )
    max_workers: int = Field(
        default=8,
        ge=1,
        le=256,
        description="Threads running reconciles off the work queue (each makes blocking API calls).",
    )

    @classmethod
    def from_env(cls, *, environ: Mapping[str, str]) -> OperatorSettings:
        """Read ``KUBETUNE_*`` variables; unknown ``KUBETUNE_*`` variables are left to other components."""
        raw: dict[str, object] = {}
        for name, field in cls.model_fields.items():
            key = ENV_PREFIX + name.upper()
            if key not in environ:
                continue
            value = environ[key]
            if field.annotation == tuple[str, ...]:
                raw[name] = tuple(part.strip() for part in value.split(",") if part.strip())
            else:
                raw[name] = value
        try:
            return cls.model_validate(raw)
        except ValidationError as err:
            problems = "; ".join(
                f"{ENV_PREFIX}{'.'.join(str(p) for p in e['loc']).upper()}: {e['msg']}" for e in err.errors()
            )
            raise SettingsError(f"invalid operator settings: {problems}") from None
