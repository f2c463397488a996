"""The trainer's input: the operator writes it into a ConfigMap, the trainer reads it from a file.

It is the FineTuneJob spec's training part plus what the operator resolved (names, storage paths).
Both sides import this one model, so a field added here is added to both ends of the contract.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, ValidationError

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

TRAINER_CONFIG_KIND = "TrainerConfig"
# Inside the trainer pod: where the ConfigMap is mounted and what the file is called.
CONFIG_MOUNT_PATH = "/etc/kubetune"
CONFIG_FILE_NAME = "trainer-config.yaml"


class RunIdentity(ApiModel):
    """Which FineTuneJob this run belongs to (for logs, manifests and progress reports)."""

    name: str = Field(description="FineTuneJob name.")
    namespace: str = Field(default="default", description="FineTuneJob namespace.")
    uid: str = Field(default="", description="FineTuneJob UID.")


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
