"""``FineTuneProfile``: what a platform team sets once for many tenants: defaults and limits.

A cluster-scoped object (``kubectl get finetuneprofiles``). Which profile applies to a FineTuneJob:

1. the profile its namespace names in the label ``kubetune.io/profile`` (binding: a tenant who may not
   label namespaces cannot choose another one, and ``spec.profile`` must then be empty or the same);
2. else the profile ``spec.profile`` names;
3. else the profile with ``spec.default: true`` (the oldest, if several are);
4. else none: the job runs as written, with no defaults and no limits.

**Limits** are enforced twice, with the same rules and messages: by the API server at admission (the
chart's ValidatingAdmissionPolicy, whose parameter is the profile), and by the operator before it creates
anything (a profile may have changed since). **Defaults** fill what the job leaves unset; the operator
records the profile's defaults in the job's status the first time it sees it and builds the children
from the spec and that record, so the user's spec is never changed (GitOps tools see no drift) and a
profile edited later changes new jobs only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic.alias_generators import to_camel

from kubetune.api.base import ApiModel
from kubetune.api.spec import (
    PROFILE_NAME_PATTERN,
    SECRET_NAME_PATTERN,
    Auto,
    Credentials,
    FineTuneJobSpec,
    MethodType,
    Toleration,
    _int_or_auto,
)
from kubetune.api.uris import UriError, parse_uri

PROFILE_KIND = "FineTuneProfile"
PROFILE_PLURAL = "finetuneprofiles"
PROFILE_SINGULAR = "finetuneprofile"
PROFILE_SHORT_NAMES = ("ftprofile",)
# On a Namespace: the profile every FineTuneJob in it gets.
PROFILE_LABEL = "kubetune.io/profile"
# outputBase may contain this, replaced by the FineTuneJob's namespace.
NAMESPACE_PLACEHOLDER = "{namespace}"


class ProfileHyperparameters(ApiModel):
    """Hyperparameters a job gets when it leaves them out (fields with an API default are not here: the
    API server fills those in, so a profile could never tell them from a user's choice)."""

    epochs: (
        Annotated[Annotated[int, Field(ge=1, le=100)] | Auto, _int_or_auto(minimum=1, maximum=100, field="epochs")]
        | None
    ) = Field(default=None, description="Passes over the data when the job sets neither epochs nor maxSteps.")
    learning_rate: float | None = Field(default=None, gt=0, le=1, description="Peak learning rate.")
    per_device_batch_size: (
        Annotated[
            Annotated[int, Field(ge=1, le=4096)] | Auto,
            _int_or_auto(minimum=1, maximum=4096, field="perDeviceBatchSize"),
        ]
        | None
    ) = Field(default=None, description="Examples per GPU per micro-step.")
    warmup_ratio: float | None = Field(
        default=None, ge=0, le=0.5, description="Warmup fraction when the job sets neither warmupRatio nor warmupSteps."
    )
    eval_every_steps: int | None = Field(default=None, ge=1, description="Evaluate every N steps.")


class ProfileDefaults(ApiModel):
    """What a FineTuneJob gets where it says nothing. A job's own value always wins."""

    trainer_image: str | None = Field(
        default=None, min_length=1, max_length=512, description="Trainer image (spec.trainer.image)."
    )
    gpu_product: str | None = Field(
        default=None,
        max_length=63,
        pattern=r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$",
        description="nvidia.com/gpu.product for GPU jobs (spec.resources.gpuProduct).",
    )
    node_selector: dict[str, Annotated[str, Field(max_length=63)]] = Field(
        default_factory=dict, max_length=32, description="Node labels, merged under the job's own."
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, max_length=32, description="Tolerations added before the job's own."
    )
    priority_class_name: str | None = Field(
        default=None, max_length=253, pattern=SECRET_NAME_PATTERN, description="Pod priority class."
    )
    queue_name: str | None = Field(
        default=None, max_length=63, pattern=SECRET_NAME_PATTERN, description="Kueue LocalQueue (runPolicy.queueName)."
    )
    output_base: str | None = Field(
        default=None,
        max_length=1024,
        description=(
            "Where jobs without spec.output.destination write: <outputBase>/<job name>; {namespace} is replaced "
            "by the job's namespace, e.g. s3://ml-artifacts/{namespace}."
        ),
    )
    credentials: Credentials | None = Field(
        default=None, description="Secret references (in the job's namespace) a job that names none gets."
    )
    hyperparameters: ProfileHyperparameters | None = Field(default=None, description="Hyperparameter defaults.")

    @field_validator("output_base")
    @classmethod
    def _check_output_base(cls, value: str | None) -> str | None:
        if value is None:
            return value
        scheme, _, rest = value.partition("://")
        if scheme not in ("pvc", "s3", "file") or not rest.strip("/"):
            raise ValueError(f"must be a pvc://, s3:// or file:// URI with a path, got {value!r}")
        example = value.replace(NAMESPACE_PLACEHOLDER, "team-a").rstrip("/") + "/job"
        try:
            parse_uri(example)
        except UriError as err:
            raise ValueError(f"{value!r} does not make valid destinations: {err}") from None
        return value


class ProfileLimits(ApiModel):
    """What a FineTuneJob under this profile may ask for; the API server refuses the rest."""

    max_gpus_per_node: int | None = Field(default=None, ge=0, le=16, description="Most resources.gpusPerNode.")
    max_nodes: int | None = Field(default=None, ge=1, le=128, description="Most resources.nodes.")
    allowed_gpu_products: list[Annotated[str, Field(min_length=1, max_length=63)]] = Field(
        default_factory=list, max_length=32, description="resources.gpuProduct values allowed; empty: any."
    )
    allowed_model_sources: list[Annotated[str, Field(min_length=1, max_length=2048)]] = Field(
        default_factory=list,
        max_length=32,
        description="Prefixes model.source must start with, e.g. hf://meta-llama/ or pvc://models/; empty: any.",
    )
    allowed_methods: list[MethodType] = Field(
        default_factory=list, max_length=4, description="method.type values allowed; empty: any."
    )
    max_active_deadline_seconds: int | None = Field(
        default=None,
        ge=1,
        description="Most runPolicy.activeDeadlineSeconds; a job that sets none gets this one.",
    )
    allow_image_override: bool = Field(
        default=True, description="Whether a job may set spec.trainer.image (false: only the profile's or default)."
    )


class FineTuneProfileSpec(ApiModel):
    """Defaults and limits for the FineTuneJobs this profile applies to."""

    default: bool = Field(
        default=False,
        description=(
            "The profile for jobs whose namespace has no kubetune.io/profile label and whose spec.profile is empty."
        ),
    )
    description: str | None = Field(default=None, max_length=1024, description="What this profile is for.")
    defaults: ProfileDefaults = Field(
        default_factory=ProfileDefaults, description="What jobs get where they say nothing."
    )
    limits: ProfileLimits = Field(default_factory=ProfileLimits, description="What jobs may ask for.")


ProfileName = Annotated[str, Field(min_length=1, max_length=253, pattern=PROFILE_NAME_PATTERN)]

ChosenBy = Literal["namespace", "spec", "default"]


@dataclass(frozen=True, kw_only=True)
class ProfileRef:
    """A FineTuneProfile as the operator reads it: name, identity and spec."""

    name: str
    spec: FineTuneProfileSpec
    uid: str | None = None
    resource_version: str | None = None
    generation: int | None = None
    created: str = ""


@dataclass(frozen=True, kw_only=True)
class Choice:
    """Which profile applies, and why; ``name`` None: no profile applies."""

    name: str | None
    chosen_by: ChosenBy | None = None
    # Set when the job asks for another profile than its namespace binds it to.
    problem: str | None = None


def choose_profile(
    *, spec_profile: str | None, namespace_profile: str | None, profiles: Sequence[ProfileRef]
) -> Choice:
    """The namespace's label, else spec.profile, else the default profile (the oldest of several)."""
    if namespace_profile:
        if spec_profile and spec_profile != namespace_profile:
            problem = (
                f"spec.profile: {spec_profile} is not allowed: this namespace is bound to profile "
                f"{namespace_profile} (label {PROFILE_LABEL})"
            )
            return Choice(name=namespace_profile, chosen_by="namespace", problem=problem)
        return Choice(name=namespace_profile, chosen_by="namespace")
    if spec_profile:
        return Choice(name=spec_profile, chosen_by="spec")
    defaults = sorted((p for p in profiles if p.spec.default), key=lambda p: (p.created, p.name))
    if defaults:
        return Choice(name=defaults[0].name, chosen_by="default")
    return Choice(name=None)


def effective_spec(
    spec: FineTuneJobSpec, defaults: ProfileDefaults, limits: ProfileLimits | None = None, *, namespace: str, name: str
) -> tuple[FineTuneJobSpec, list[str]]:
    """The spec the children are built from: the job's own values, and the profile's where it has none.

    Returns it with what the profile filled in ("spec.trainer.image: ..."). ``limits`` adds the profile's
    maxActiveDeadlineSeconds to a job that sets no deadline (it is part of what the profile recorded).
    """
    applied: list[str] = []

    def fill(path: str, value: object) -> None:
        applied.append(f"{path}: {value}")

    trainer, resources, run_policy = spec.trainer, spec.resources, spec.run_policy
    if trainer.image is None and defaults.trainer_image is not None:
        trainer = trainer.model_copy(update={"image": defaults.trainer_image})
        fill("spec.trainer.image", defaults.trainer_image)
    res: dict[str, object] = {}
    if resources.gpus_per_node > 0 and resources.gpu_product is None and defaults.gpu_product is not None:
        res["gpu_product"] = defaults.gpu_product
        fill("spec.resources.gpuProduct", defaults.gpu_product)
    added = {k: v for k, v in defaults.node_selector.items() if k not in resources.node_selector}
    if added:
        res["node_selector"] = {**added, **resources.node_selector}
        fill("spec.resources.nodeSelector", ", ".join(f"{k}={v}" for k, v in sorted(added.items())))
    if defaults.tolerations:
        res["tolerations"] = [*defaults.tolerations, *resources.tolerations]
        fill("spec.resources.tolerations", f"{len(defaults.tolerations)} from the profile")
    if resources.priority_class_name is None and defaults.priority_class_name is not None:
        res["priority_class_name"] = defaults.priority_class_name
        fill("spec.resources.priorityClassName", defaults.priority_class_name)
    if res:
        resources = resources.model_copy(update=res)
    rp: dict[str, object] = {}
    if run_policy.queue_name is None and defaults.queue_name is not None:
        rp["queue_name"] = defaults.queue_name
        fill("spec.runPolicy.queueName", defaults.queue_name)
    deadline = limits.max_active_deadline_seconds if limits is not None else None
    if run_policy.active_deadline_seconds is None and deadline is not None:
        rp["active_deadline_seconds"] = deadline
        fill("spec.runPolicy.activeDeadlineSeconds", deadline)
    if rp:
        run_policy = run_policy.model_copy(update=rp)
    output = spec.output
    if output.destination is None and defaults.output_base is not None:
        base = defaults.output_base.replace(NAMESPACE_PLACEHOLDER, namespace).rstrip("/")
        output = output.model_copy(update={"destination": f"{base}/{name}"})
        fill("spec.output.destination", output.destination)
    credentials = spec.credentials
    if defaults.credentials is not None:
        cred: dict[str, object] = {}
        if credentials.hugging_face_token is None and defaults.credentials.hugging_face_token is not None:
            cred["hugging_face_token"] = defaults.credentials.hugging_face_token
            fill("spec.credentials.huggingFaceToken", f"Secret {defaults.credentials.hugging_face_token.name}")
        if credentials.s3 is None and defaults.credentials.s3 is not None:
            cred["s3"] = defaults.credentials.s3
            fill("spec.credentials.s3", f"Secret {defaults.credentials.s3.access_key_id.name}")
        if cred:
            credentials = credentials.model_copy(update=cred)
    hp = spec.hyperparameters
    if defaults.hyperparameters is not None:
        wanted = defaults.hyperparameters
        hpu: dict[str, object] = {}
        if hp.epochs is None and hp.max_steps is None and wanted.epochs is not None:
            hpu["epochs"] = wanted.epochs
        if hp.learning_rate is None and wanted.learning_rate is not None:
            hpu["learning_rate"] = wanted.learning_rate
        if hp.per_device_batch_size is None and wanted.per_device_batch_size is not None:
            hpu["per_device_batch_size"] = wanted.per_device_batch_size
        if hp.warmup_ratio is None and hp.warmup_steps is None and wanted.warmup_ratio is not None:
            hpu["warmup_ratio"] = wanted.warmup_ratio
        if hp.eval_every_steps is None and wanted.eval_every_steps is not None:
            hpu["eval_every_steps"] = wanted.eval_every_steps
        for key, value in hpu.items():
            fill(f"spec.hyperparameters.{to_camel(key)}", value)
        if hpu:
            hp = hp.model_copy(update=hpu)
    effective = spec.model_copy(
        update={
            "trainer": trainer,
            "resources": resources,
            "run_policy": run_policy,
            "output": output,
            "credentials": credentials,
            "hyperparameters": hp,
        }
    )
    return effective, applied


def limit_violations(
    spec: FineTuneJobSpec, effective: FineTuneJobSpec, *, profile: str, limits: ProfileLimits
) -> list[str]:
    """What breaks the profile's limits, one ``<field>: <problem>`` each, worded as the admission policy's.

    ``spec`` is the job as written (an image override is the job's own image), ``effective`` with the
    profile's defaults (a default GPU product must be allowed too).
    """
    problems: list[str] = []
    where = f"profile {profile}"
    resources = effective.resources
    if limits.max_gpus_per_node is not None and resources.gpus_per_node > limits.max_gpus_per_node:
        problems.append(
            f"spec.resources.gpusPerNode: {resources.gpus_per_node} is over the limit of {where} "
            f"(maxGpusPerNode {limits.max_gpus_per_node})"
        )
    if limits.max_nodes is not None and resources.nodes > limits.max_nodes:
        problems.append(
            f"spec.resources.nodes: {resources.nodes} is over the limit of {where} (maxNodes {limits.max_nodes})"
        )
    product = resources.gpu_product
    if limits.allowed_gpu_products and resources.gpus_per_node > 0 and product not in limits.allowed_gpu_products:
        shown = product if product is not None else "(unset)"
        problems.append(
            f"spec.resources.gpuProduct: {shown} is not allowed by {where} "
            f"(allowedGpuProducts {', '.join(limits.allowed_gpu_products)})"
        )
    source = effective.model.source
    if limits.allowed_model_sources and not any(source.startswith(p) for p in limits.allowed_model_sources):
        problems.append(
            f"spec.model.source: {source} is not allowed by {where} "
            f"(allowedModelSources {', '.join(limits.allowed_model_sources)})"
        )
    method = effective.method.type
    if limits.allowed_methods and method not in limits.allowed_methods:
        problems.append(
            f"spec.method.type: {method} is not allowed by {where} (allowedMethods {', '.join(limits.allowed_methods)})"
        )
    deadline = effective.run_policy.active_deadline_seconds
    cap = limits.max_active_deadline_seconds
    if cap is not None and deadline is not None and deadline > cap:
        problems.append(
            f"spec.runPolicy.activeDeadlineSeconds: {deadline} is over the limit of {where} "
            f"(maxActiveDeadlineSeconds {cap})"
        )
    if not limits.allow_image_override and spec.trainer.image is not None:
        problems.append(
            f"spec.trainer.image: {where} does not allow setting the trainer image (allowImageOverride false)"
        )
    return problems


__all__ = [
    "NAMESPACE_PLACEHOLDER",
    "PROFILE_KIND",
    "PROFILE_LABEL",
    "PROFILE_NAME_PATTERN",
    "PROFILE_PLURAL",
    "PROFILE_SHORT_NAMES",
    "PROFILE_SINGULAR",
    "Choice",
    "FineTuneProfileSpec",
    "ProfileDefaults",
    "ProfileHyperparameters",
    "ProfileLimits",
    "ProfileName",
    "ProfileRef",
    "choose_profile",
    "effective_spec",
    "limit_violations",
]
