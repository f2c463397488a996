"""The trainer's input: the operator writes it into a ConfigMap, the trainer reads it from a file.

It is the FineTuneJob spec's training part plus what the operator resolved (names, storage paths).
Both sides import this one model, so a field added here is added to both ends of the contract.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from kubetune.api.base import ApiModel
from kubetune.api.spec import (
    CheckpointingSpec,
    DatasetSpec,
    FineTuneJobSpec,
    Hyperparameters,
    MethodSpec,
    ModelSpec,
    OutputSpec,
)
from kubetune.api.status import DatasetStatus, ResolvedHyperparameters

TRAINER_CONFIG_KIND = "TrainerConfig"
# Inside the trainer pod: where the ConfigMap is mounted and what the file is called.
CONFIG_MOUNT_PATH = "/etc/kubetune"
CONFIG_FILE_NAME = "trainer-config.yaml"
# The spec-only config the data-check pod reads (the training pods' config carries the resolved values).
PREFLIGHT_CONFIG_FILE_NAME = "preflight-config.yaml"


class RunIdentity(ApiModel):
    """Which FineTuneJob this run belongs to (for logs, manifests and progress reports)."""

    name: str = Field(description="FineTuneJob name.")
    namespace: str = Field(default="default", description="FineTuneJob namespace.")
    uid: str = Field(default="", description="FineTuneJob UID.")


class TargetResources(ApiModel):
    """The hardware the training runs on: the data check plans steps and estimates time for it."""

    nodes: int = Field(default=1, ge=1, description="Pods in the training Job.")
    gpus_per_node: int = Field(default=1, ge=0, description="GPUs per pod; 0: CPU training.")
    gpu_product: str | None = Field(default=None, description="The nvidia.com/gpu.product label, when required.")

    @property
    def world_size(self) -> int:
        """One training process per GPU, one per CPU pod."""
        return self.nodes * max(self.gpus_per_node, 1)


class Validated(ApiModel):
    """What the data check saw, for the trainer to compare with what it reads."""

    dataset_sha256: str | None = Field(default=None, description="sha256 of the training files' bytes.")
    train_examples: int = Field(ge=0, description="Training examples.")
    total_steps: int = Field(ge=1, description="Optimizer steps planned.")


class TrainerConfig(ApiModel):
    """Everything the trainer needs to run, resolved by the operator (or written by hand locally)."""

    api_version: Literal["kubetune.io/v1alpha1"] = "kubetune.io/v1alpha1"
    kind: Literal["TrainerConfig"] = "TrainerConfig"
    run: RunIdentity
    model: ModelSpec
    dataset: DatasetSpec
    method: MethodSpec = Field(default_factory=MethodSpec)
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    checkpointing: CheckpointingSpec = Field(default_factory=CheckpointingSpec)
    output: OutputSpec
    resources: TargetResources = Field(default_factory=TargetResources)
    # Set in the training pods' config once the data check passed; their hyperparameters are then the
    # resolved ones, so the pods run with exactly what status.hyperparameters says.
    validated: Validated | None = None

    @classmethod
    def from_spec(cls, spec: FineTuneJobSpec, *, run: RunIdentity) -> TrainerConfig:
        return cls(
            run=run,
            model=spec.model,
            dataset=spec.dataset,
            method=spec.method,
            hyperparameters=spec.hyperparameters,
            checkpointing=spec.checkpointing,
            output=spec.output,
            resources=TargetResources(
                nodes=spec.resources.nodes,
                gpus_per_node=spec.resources.gpus_per_node,
                gpu_product=spec.resources.gpu_product,
            ),
        )

    @model_validator(mode="after")
    def _output_is_known(self) -> TrainerConfig:
        # A FineTuneJob may leave it to its profile; the operator writes the resolved one here.
        if self.output.destination is None:
            raise ValueError("output.destination: required in a trainer config")
        return self

    @property
    def destination(self) -> str:
        """``output.destination``, which the validator makes sure is set."""
        assert self.output.destination is not None
        return self.output.destination

    def with_resolved(self, resolved: ResolvedHyperparameters, *, dataset: DatasetStatus) -> TrainerConfig:
        """This config with every auto or omitted hyperparameter replaced by the data check's value."""
        hp = self.hyperparameters
        update: dict[str, object] = {
            "per_device_batch_size": resolved.per_device_batch_size,
            "learning_rate": resolved.learning_rate,
            "warmup_steps": resolved.warmup_steps,
            "warmup_ratio": None,
        }
        if hp.max_steps is None:
            update["epochs"] = resolved.epochs
        return self.model_copy(
            update={
                "hyperparameters": hp.model_copy(update=update),
                "validated": Validated(
                    dataset_sha256=dataset.sha256,
                    train_examples=dataset.train_examples,
                    total_steps=resolved.total_steps,
                ),
            }
        )

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_wire(), sort_keys=False)


class TrainerConfigError(ValueError):
    """The config file is unreadable or invalid; the message names the file and each bad field."""


def load_trainer_config(path: Path) -> TrainerConfig:
    """Read and validate a trainer config file (YAML or JSON)."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise TrainerConfigError(f"{path}: cannot read trainer config: {err}") from None
    if not isinstance(raw, dict):
        raise TrainerConfigError(f"{path}: trainer config must be a mapping, got {type(raw).__name__}")
    try:
        return TrainerConfig.model_validate(raw)
    except ValidationError as err:
        raise TrainerConfigError(f"{path}: invalid trainer config:\n{format_validation_error(err)}") from None


def format_validation_error(err: ValidationError) -> str:
    """One line per problem, each naming the field by its camelCase path, e.g. ``method.rank``."""
    lines = []
    for item in err.errors():
        where = ".".join(str(p) for p in item["loc"]) or "<root>"
        lines.append(f"  {where}: {item['msg']}")
    return "\n".join(lines)
