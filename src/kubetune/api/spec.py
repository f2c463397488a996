"""``FineTuneJob.spec``: what a user asks for.

Every field's description becomes the CRD's OpenAPI description (``kubectl explain``) and the
reference in ``docs/api.md``. Cross-field rules are CEL rules (``x-kubernetes-validations``) so the API
server rejects a bad object before the operator ever sees it; :mod:`kubetune.api.validation` checks the
same rules and what CEL cannot express (URI parsing) for the trainer's local mode and the operator.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, WithJsonSchema, field_validator, model_validator

from kubetune.api.base import ApiModel
from kubetune.api.uris import URI_PATTERN, UriError, parse_uri

Auto = Literal["auto"]

# Kubernetes resource quantity, e.g. "8", "500m", "64Gi".
QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$"
# Env var and label names; kept simple and strict.
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
SECRET_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
# A FineTuneProfile's name (a cluster-scoped object name).
PROFILE_NAME_PATTERN = SECRET_NAME_PATTERN


def _int_or_auto(*, minimum: int, maximum: int, field: str) -> WithJsonSchema:
    """Structural schemas only allow this one shape for "an integer or a string"; bounds go in CEL."""
    return WithJsonSchema(
        {
            "x-kubernetes-int-or-string": True,
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "x-kubernetes-validations": [
                {
                    "rule": f"type(self) == string ? self == 'auto' : (self >= {minimum} && self <= {maximum})",
                    "message": f"{field} must be 'auto' or an integer from {minimum} to {maximum}",
                }
            ],
        }
    )


def _check_uri(value: str) -> str:
    try:
        parse_uri(value)
    except UriError as err:
        raise ValueError(str(err)) from None
    return value


# The API server checks the pattern; Python parses the URI fully, with a message saying what is wrong.
Uri = Annotated[
    str,
    Field(max_length=2048),
    AfterValidator(_check_uri),
    WithJsonSchema({"type": "string", "maxLength": 2048, "pattern": URI_PATTERN}),
]


class SecretKeyRef(ApiModel):
    """A key in a Secret in the FineTuneJob's namespace. The value is read by the pod, never copied."""

    name: str = Field(min_length=1, max_length=253, pattern=SECRET_NAME_PATTERN, description="Name of the Secret.")
    key: str = Field(min_length=1, max_length=253, description="Key within the Secret.")


class S3Credentials(ApiModel):
    """Object-store credentials, referenced from a Secret and exposed to the trainer as AWS_* variables."""

    access_key_id: SecretKeyRef = Field(description="Secret key holding the access key id.")
    secret_access_key: SecretKeyRef = Field(description="Secret key holding the secret access key.")
    endpoint_url: str | None = Field(
        default=None,
        max_length=2048,
        pattern=r"^https?://\S+$",
        description="S3-compatible endpoint (MinIO, Ceph...). Not a secret; omit for AWS.",
    )
    region: str | None = Field(default=None, max_length=64, description="Bucket region, e.g. eu-west-1.")


class Credentials(ApiModel):
    """Credentials are Secret references only; the API rejects inline values."""

    hugging_face_token: SecretKeyRef | None = Field(
        default=None, description="Hugging Face token for gated or private models (set as HF_TOKEN)."
    )
    s3: S3Credentials | None = Field(default=None, description="Credentials for s3:// sources and output.")


class ModelSpec(ApiModel):
    """The base model to fine-tune."""

    source: Uri = Field(
        description=(
            "Where the base model is: hf://org/name@revision (pin the revision for reproducible runs), "
            "pvc://claim/path, s3://bucket/prefix or file:///path (a directory of safetensors or GGUF)."
        )
    )
    gguf_file: str | None = Field(
        default=None,
        min_length=1,
        max_length=255,
        pattern=r"^[^/]+\.gguf$",
        description="Name of a GGUF file inside source to load (dequantized for training).",
    )
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        default="auto",
        description="Weight dtype for training. auto: bfloat16 on GPUs that support it, else float32.",
    )
    trust_remote_code: bool = Field(
        default=False,
        description="Run Python code shipped with the model repository. Only for sources you trust.",
    )


class FieldMapping(ApiModel):
    """Names of the dataset's columns when they differ from the format's standard names."""

    prompt: str | None = Field(default=None, max_length=128, description="Column holding the prompt.")
    completion: str | None = Field(default=None, max_length=128, description="Column holding the answer.")
    messages: str | None = Field(default=None, max_length=128, description="Column holding chat messages.")
    text: str | None = Field(default=None, max_length=128, description="Column holding raw text.")
    instruction: str | None = Field(default=None, max_length=128, description="Alpaca instruction column.")
    input: str | None = Field(default=None, max_length=128, description="Alpaca input column.")
    output: str | None = Field(default=None, max_length=128, description="Alpaca output column.")
    conversations: str | None = Field(default=None, max_length=128, description="ShareGPT conversations column.")
    system: str | None = Field(default=None, max_length=128, description="Column holding a system prompt.")
    chosen: str | None = Field(
        default=None, max_length=128, description="Preference data: column holding the preferred answer."
    )
    rejected: str | None = Field(
        default=None, max_length=128, description="Preference data: column holding the answer not preferred."
    )


DatasetFormat = Literal["auto", "messages", "prompt_completion", "alpaca", "sharegpt", "text", "preference"]
PreflightMode = Literal["warn", "strict", "skip"]


class DatasetSpec(ApiModel):
    """Training data: JSONL, JSON, Parquet or CSV files."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "!(has(self.validation) && has(self.validationSplit))",
                    "message": "set either dataset.validation or dataset.validationSplit, not both",
                }
            ]
        }
    }

    train: list[Uri] = Field(
        min_length=1, max_length=64, description="Training files or prefixes (URIs); read in order."
    )
    validation: Uri | None = Field(default=None, description="Held-out validation file (URI).")
    validation_split: float | None = Field(
        default=None,
        gt=0,
        le=0.5,
        description="Fraction of the training data held out for validation, split deterministically by seed.",
    )
    format: DatasetFormat = Field(
        default="auto",
        description=(
            "Record format: messages (OpenAI chat), prompt_completion, alpaca (instruction/input/output), "
            "sharegpt (conversations/from/value), text; preference (method.objective dpo): OpenAI's "
            "input.messages/preferred_output/non_preferred_output or prompt/chosen/rejected. auto detects it "
            "from the first records."
        ),
    )
    field_mapping: FieldMapping | None = Field(
        default=None, description="Column names when they differ from the format's standard names."
    )
    max_seq_length: int = Field(
        default=2048, ge=16, le=131072, description="Tokens per example; longer examples are truncated."
    )
    packing: bool = Field(
        # Off by default: length-grouped batches already keep ~96% of each batch real tokens, and packed
        # rows need an explicit block-diagonal mask, which measured slower (docs/benchmarks.md).
        default=False,
        description=(
            "Pack several examples into one row without letting them attend to each other "
            "(block-diagonal attention). Off: one example per row, batches grouped by length."
        ),
    )
    preflight: PreflightMode = Field(
        default="warn",
        description=(
            "The data check a CPU-only pod runs before any GPU is claimed (phase Validating): it reads every "
            "file, tokenizes with the model's tokenizer and fills status.dataset, status.hyperparameters and "
            "status.estimate. warn: bad records fail the job (BadData), warnings become Events; strict: "
            "warnings fail it too; skip: no check (the trainer still validates the data in its own pods)."
        ),
    )

    @model_validator(mode="after")
    def _validation_xor_split(self) -> DatasetSpec:
        if self.validation is not None and self.validation_split is not None:
            raise ValueError("set either dataset.validation or dataset.validationSplit, not both")
        return self


class QuantizationSpec(ApiModel):
    """QLoRA's 4-bit base-model quantization (bitsandbytes)."""

    bits: Literal[4] = Field(default=4, description="Bits per base weight. Only 4 is supported.")
    quant_type: Literal["nf4", "fp4"] = Field(default="nf4", description="4-bit data type; nf4 is QLoRA's.")
    double_quant: bool = Field(default=True, description="Quantize the quantization constants too.")
    compute_dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        default="auto", description="dtype of matmuls on dequantized weights; auto follows the precision."
    )


MethodType = Literal["lora", "qlora", "dora", "full"]
Objective = Literal["sft", "dpo"]


class DpoSpec(ApiModel):
    """Direct preference optimization settings (method.objective dpo)."""

    beta: float = Field(
        default=0.1,
        gt=0,
        le=10,
        description=(
            "How far the tuned model may move from the reference (the model before training): the implicit "
            "reward is beta times the log-probability ratio. Lower allows larger changes."
        ),
    )
    label_smoothing: float = Field(
        default=0.0,
        ge=0,
        # Not an exclusive bound at 0.5: the API server checks a default of 0 (an integer once Helm turns the
        # YAML into JSON) against an exclusive float maximum as an integer, 0 < 0, and refuses the CRD.
        le=0.49,
        description="Assumed fraction of pairs whose preference is wrong (conservative DPO); 0 is plain DPO.",
    )


class MethodSpec(ApiModel):
    """How the model is adapted."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.quantization) || self.type == 'qlora'",
                    "message": "method.quantization is only valid with method.type qlora",
                },
                {
                    "rule": "!has(self.dpo) || self.objective == 'dpo'",
                    "message": "method.dpo is only valid with method.objective dpo",
                },
            ]
        }
    }

    type: MethodType = Field(
        default="lora",
        description=(
            "lora: low-rank adapters; qlora: lora on a 4-bit quantized base; dora: weight-decomposed lora; "
            "full: train every weight (needs far more GPU memory)."
        ),
    )
    rank: int = Field(default=16, ge=1, le=1024, description="Adapter rank r (lora, qlora, dora).")
    alpha: int = Field(default=32, ge=1, le=4096, description="Adapter scaling alpha; the update is alpha/r.")
    dropout: float = Field(default=0.05, ge=0, lt=1, description="Dropout on the adapter input.")
    target_modules: list[Annotated[str, Field(min_length=1, max_length=128)]] = Field(
        default=["all-linear"],  # pydantic copies mutable defaults per instance
        min_length=1,
        max_length=64,
        description="Module names to adapt, or all-linear for every linear layer but the output head.",
    )
    quantization: QuantizationSpec | None = Field(
        default=None, description="4-bit settings; only with type qlora (defaults apply when omitted)."
    )
    objective: Objective = Field(
        default="sft",
        description=(
            "sft: supervised fine-tuning on the answers; dpo: direct preference optimization on pairs of a "
            "preferred and a not preferred answer (dataset.format preference). Works with every method.type."
        ),
    )
    dpo: DpoSpec | None = Field(
        default=None, description="DPO settings; only with objective dpo (defaults apply when omitted)."
    )

    @model_validator(mode="after")
    def _settings_match_type(self) -> MethodSpec:
        if self.quantization is not None and self.type != "qlora":
            raise ValueError("method.quantization is only valid with method.type qlora")
        if self.dpo is not None and self.objective != "dpo":
            raise ValueError("method.dpo is only valid with method.objective dpo")
        return self

    @property
    def dpo_settings(self) -> DpoSpec:
        """The DPO settings in force (the defaults when method.dpo is omitted)."""
        return self.dpo or DpoSpec()


class Hyperparameters(ApiModel):
    """Optimisation settings. Leave a field out (or 'auto') to let kubetune choose."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "!(has(self.epochs) && has(self.maxSteps))",
                    "message": "set either hyperparameters.epochs or hyperparameters.maxSteps, not both",
                },
                {
                    "rule": "!(has(self.warmupSteps) && has(self.warmupRatio))",
                    "message": "set either hyperparameters.warmupSteps or hyperparameters.warmupRatio, not both",
                },
            ]
        }
    }

    epochs: (
        Annotated[Annotated[int, Field(ge=1, le=100)] | Auto, _int_or_auto(minimum=1, maximum=100, field="epochs")]
        | None
    ) = Field(
        default=None,
        description="Passes over the training data, or auto (3, fewer for large datasets). Omit with maxSteps.",
    )
    max_steps: int | None = Field(
        default=None, ge=1, le=10_000_000, description="Optimizer steps to run instead of epochs."
    )
    learning_rate: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="Peak learning rate. Omitted: 2e-4 for adapters, 2e-5 for full fine-tuning.",
    )
    scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = Field(
        default="cosine", description="Learning-rate schedule after warmup."
    )
    warmup_ratio: float | None = Field(
        default=None, ge=0, le=0.5, description="Fraction of steps for linear warmup (default 0.03)."
    )
    warmup_steps: int | None = Field(default=None, ge=0, description="Warmup steps instead of a ratio.")
    per_device_batch_size: (
        Annotated[
            Annotated[int, Field(ge=1, le=4096)] | Auto,
            _int_or_auto(minimum=1, maximum=4096, field="perDeviceBatchSize"),
        ]
        | None
    ) = Field(default=None, description="Examples (or packed rows) per GPU per micro-step, or auto.")
    gradient_accumulation_steps: int = Field(default=1, ge=1, le=1024, description="Micro-steps per optimizer step.")
    weight_decay: float = Field(default=0.0, ge=0, le=1, description="AdamW weight decay.")
    max_grad_norm: float = Field(default=1.0, gt=0, description="Gradient clipping norm.")
    seed: int = Field(default=42, ge=0, le=2**31 - 1, description="Seed for init, shuffling and the split.")
    gradient_checkpointing: bool = Field(
        default=False, description="Recompute activations in backward: less memory, about 30% slower."
    )
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        default="auto",
        description=(
            "Mixed precision. auto: bf16 on GPUs that support it, fp32 on CPU. "
            "CPU jobs (resources.gpusPerNode 0) train in fp32: auto or fp32 only."
        ),
    )
    eval_every_steps: int | None = Field(
        default=None, ge=1, description="Evaluate on the validation data every N steps (and at the end)."
    )

    @model_validator(mode="after")
    def _exclusive_pairs(self) -> Hyperparameters:
        if self.epochs is not None and self.max_steps is not None:
            raise ValueError("set either hyperparameters.epochs or hyperparameters.maxSteps, not both")
        if self.warmup_steps is not None and self.warmup_ratio is not None:
            raise ValueError("set either hyperparameters.warmupSteps or hyperparameters.warmupRatio, not both")
        return self


class Toleration(ApiModel):
    """A core/v1 Toleration."""

    key: str | None = Field(default=None, max_length=316, description="Taint key; empty matches all keys.")
    operator: Literal["Exists", "Equal"] = Field(default="Equal", description="Exists or Equal.")
    value: str | None = Field(default=None, max_length=63, description="Taint value for Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to match; empty matches all."
    )
    toleration_seconds: int | None = Field(default=None, description="For NoExecute: seconds to stay bound.")


class EnvVar(ApiModel):
    """An extra plain environment variable for the trainer. Secrets go under spec.credentials."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "!self.name.upperAscii().matches('(TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|ACCESS_KEY)')",
                    "message": "env looks like a credential; reference a Secret under spec.credentials",
                }
            ]
        }
    }

    name: str = Field(min_length=1, max_length=128, pattern=ENV_NAME_PATTERN, description="Variable name.")
    value: str = Field(default="", max_length=4096, description="Variable value.")

    @field_validator("name")
    @classmethod
    def _not_a_credential(cls, value: str) -> str:
        if _CREDENTIAL_NAME.search(value.upper()):
            raise ValueError("env looks like a credential; reference a Secret under spec.credentials")
        return value


_CREDENTIAL_NAME = re.compile(r"(TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|ACCESS_KEY)")

GPU_PRODUCT_ON_CPU_MESSAGE = "resources.gpuProduct must be unset when resources.gpusPerNode is 0 (CPU training)"
# The trainer always trains in fp32 on the CPU; a 16-bit request there would be silently ignored.
PRECISION_ON_CPU_MESSAGE = (
    "hyperparameters.precision must be auto or fp32 when resources.gpusPerNode is 0 (CPU training)"
)


class ResourcesSpec(ApiModel):
    """Where and on how much hardware the training runs."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "self.gpusPerNode > 0 || !has(self.gpuProduct)",
                    "message": GPU_PRODUCT_ON_CPU_MESSAGE,
                }
            ]
        }
    }

    gpus_per_node: int = Field(
        default=1,
        ge=0,
        le=16,
        description=(
            "GPUs per pod (nvidia.com/gpu); one training process per GPU. 0: CPU training, one process per pod "
            "in fp32 (small models, trials, tests); steer it to CPU nodes with nodeSelector and tolerations."
        ),
    )
    nodes: int = Field(default=1, ge=1, le=128, description="Pods (nodes) in the job; >1 is multi-node DDP.")
    gpu_product: str | None = Field(
        default=None,
        max_length=63,
        pattern=r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$",
        description="Required nvidia.com/gpu.product node label, e.g. NVIDIA-H100-80GB-HBM3. Unset on CPU jobs.",
    )
    cpu: str | None = Field(default=None, pattern=QUANTITY_PATTERN, description="CPU request per pod.")
    memory: str | None = Field(default=None, pattern=QUANTITY_PATTERN, description="Memory request per pod.")
    shared_memory: str | None = Field(
        default=None, pattern=QUANTITY_PATTERN, description="Size of /dev/shm (data loaders, NCCL)."
    )
    node_selector: dict[str, Annotated[str, Field(max_length=63)]] = Field(
        default_factory=dict, max_length=32, description="Extra node labels to require."
    )
    tolerations: list[Toleration] = Field(default_factory=list, max_length=32, description="Pod tolerations.")
    affinity: Annotated[
        dict[str, Any] | None,
        WithJsonSchema({"type": "object", "x-kubernetes-preserve-unknown-fields": True}),
    ] = Field(default=None, description="A core/v1 Affinity, passed through to the pods.")
    priority_class_name: str | None = Field(
        default=None, max_length=253, pattern=SECRET_NAME_PATTERN, description="Pod priority class."
    )

    @model_validator(mode="after")
    def _no_gpu_product_on_cpu(self) -> ResourcesSpec:
        if self.gpus_per_node == 0 and self.gpu_product is not None:
            raise ValueError(GPU_PRODUCT_ON_CPU_MESSAGE)
        return self


class TrainerSpec(ApiModel):
    """The trainer container."""

    image: str | None = Field(
        default=None, min_length=1, max_length=512, description="Trainer image; default set by the operator."
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = Field(
        default=None, description="Image pull policy."
    )
    env: list[EnvVar] = Field(default_factory=list, max_length=64, description="Extra plain env vars.")


class CheckpointingSpec(ApiModel):
    """Periodic checkpoints; a retried or preempted pod resumes from the newest complete one."""

    every_steps: int = Field(default=200, ge=1, description="Write a checkpoint every N optimizer steps.")
    keep_last: int = Field(default=2, ge=1, le=100, description="Checkpoints kept; older ones are deleted.")


class OutputSpec(ApiModel):
    """Where the trained artifact goes."""

    destination: Uri | None = Field(
        default=None,
        description=(
            "Output location (pvc://, s3:// or file://). Checkpoints go under <destination>/checkpoints. "
            "Omitted: <outputBase>/<name> of the job's FineTuneProfile (required without one)."
        ),
    )
    merge_adapter: bool = Field(
        default=False,
        description="Also write the base model with the adapter merged in (16-bit even for QLoRA).",
    )

    @field_validator("destination")
    @classmethod
    def _check_destination(cls, value: str | None) -> str | None:
        if value is not None and value.startswith("hf://"):
            raise ValueError("output.destination must be pvc://, s3:// or file://, not hf://")
        return value


class RunPolicy(ApiModel):
    """Retries, deadlines, clean-up and queueing."""

    backoff_limit: int = Field(
        default=3, ge=0, le=100, description="Retryable pod failures allowed before the job fails."
    )
    active_deadline_seconds: int | None = Field(
        default=None, ge=1, description="Fail the job (DeadlineExceeded) if it runs longer than this."
    )
    ttl_seconds_after_finished: int | None = Field(
        default=None,
        ge=0,
        # Ten years: a bound keeps the deletion time a representable date (a 2**63 s TTL overflowed it).
        le=315_360_000,
        description="Delete the FineTuneJob this long after it succeeds or fails (at most ten years).",
    )
    suspend: bool = Field(default=False, description="Suspend: running pods checkpoint and stop; set false to resume.")
    queue_name: str | None = Field(
        default=None,
        max_length=63,
        pattern=SECRET_NAME_PATTERN,
        description="Kueue LocalQueue; set as the kueue.x-k8s.io/queue-name label on the Job.",
    )


IMMUTABLE_SPEC_FIELDS = ("model", "dataset", "method", "hyperparameters", "output")


def immutable_rule(field: str) -> dict[str, str]:
    """A CEL transition rule that forbids changing spec.<field> once the object exists."""
    return {"rule": "self == oldSelf", "message": f"spec.{field} is immutable; create a new FineTuneJob"}


OBJECTIVE_FORMAT_MESSAGE = (
    "dataset.format preference goes with method.objective dpo, and dpo reads only preference data "
    "(dataset.format auto or preference)"
)

DPO_PACKING_MESSAGE = "dataset.packing is not used with method.objective dpo: each pair is two rows of its own"


class FineTuneJobSpec(ApiModel):
    """A fine-tuning run: a base model, data, a method and where the result goes."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    # Field by field: whole-object equality over affinity (free-form) blows the CEL cost budget.
                    "rule": (
                        "(self.runPolicy.suspend && oldSelf.runPolicy.suspend) || ("
                        "self.resources.nodes == oldSelf.resources.nodes"
                        " && self.resources.gpusPerNode == oldSelf.resources.gpusPerNode"
                        " && has(self.resources.gpuProduct) == has(oldSelf.resources.gpuProduct)"
                        " && (!has(self.resources.gpuProduct)"
                        " || self.resources.gpuProduct == oldSelf.resources.gpuProduct))"
                    ),
                    "message": "spec.resources can change only while the job is suspended",
                },
                {
                    "rule": "self.resources.gpusPerNode > 0 || self.hyperparameters.precision in ['auto', 'fp32']",
                    "message": PRECISION_ON_CPU_MESSAGE,
                },
                {
                    # spec.profile is optional and has no default: a rule on the field itself would let it be
                    # added or removed; this one on the spec forbids those too.
                    "rule": (
                        "has(self.profile) == has(oldSelf.profile)"
                        " && (!has(self.profile) || self.profile == oldSelf.profile)"
                    ),
                    "message": "spec.profile is immutable; create a new FineTuneJob",
                },
                {
                    "rule": (
                        "self.method.objective == 'dpo'"
                        " ? self.dataset.format in ['auto', 'preference'] : self.dataset.format != 'preference'"
                    ),
                    "message": OBJECTIVE_FORMAT_MESSAGE,
                },
                {
                    "rule": "self.method.objective != 'dpo' || !self.dataset.packing",
                    "message": DPO_PACKING_MESSAGE,
                },
            ]
        }
    }

    model: ModelSpec = Field(description="The base model to fine-tune.")
    dataset: DatasetSpec = Field(description="Training and validation data.")
    method: MethodSpec = Field(default_factory=MethodSpec, description="How the model is adapted.")
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters, description="Optimisation.")
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec, description="Hardware per run.")
    trainer: TrainerSpec = Field(default_factory=TrainerSpec, description="The trainer container.")
    checkpointing: CheckpointingSpec = Field(default_factory=CheckpointingSpec, description="Checkpoints.")
    output: OutputSpec = Field(default_factory=OutputSpec, description="Where the trained artifact goes.")
    profile: str | None = Field(
        default=None,
        min_length=1,
        # A namespace names its profile in a label, whose values are at most 63 characters.
        max_length=63,
        pattern=PROFILE_NAME_PATTERN,
        description=(
            "The FineTuneProfile (defaults and limits set by the platform team) to run under. A namespace "
            "labelled kubetune.io/profile binds its jobs to that profile: this must then be empty or the same. "
            "Empty: the namespace's profile, else the default profile, else none."
        ),
    )
    run_policy: RunPolicy = Field(default_factory=RunPolicy, description="Retries, deadlines, queueing.")
    credentials: Credentials = Field(default_factory=Credentials, description="Secret references.")

    @model_validator(mode="after")
    def _full_precision_on_cpu(self) -> FineTuneJobSpec:
        if self.resources.gpus_per_node == 0 and self.hyperparameters.precision not in ("auto", "fp32"):
            raise ValueError(PRECISION_ON_CPU_MESSAGE)
        return self

    @model_validator(mode="after")
    def _format_fits_objective(self) -> FineTuneJobSpec:
        preference = self.dataset.format == "preference"
        if (self.method.objective == "dpo" and self.dataset.format not in ("auto", "preference")) or (
            self.method.objective == "sft" and preference
        ):
            raise ValueError(OBJECTIVE_FORMAT_MESSAGE)
        if self.method.objective == "dpo" and self.dataset.packing:
            raise ValueError(DPO_PACKING_MESSAGE)
        return self
