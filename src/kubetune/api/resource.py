"""The FineTuneJob resource: names, the top-level object, and a parser for objects from the API."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from kubetune.api.base import ApiModel
from kubetune.api.spec import FineTuneJobSpec
from kubetune.api.status import FineTuneJobStatus

GROUP = "kubetune.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "FineTuneJob"
PLURAL = "finetunejobs"
SINGULAR = "finetunejob"
SHORT_NAMES = ("ftj",)
CATEGORIES = ("kubetune",)

# Pods are named <job>-<index>-<5 random chars> and the headless Service's DNS names must stay valid
# DNS-1035 labels (63 characters); 50 leaves room for the suffixes the builders add.
MAX_NAME_LENGTH = 50
# The headless Service is named after the FineTuneJob, and Service names are DNS-1035 labels: they must
# start with a letter, which the Kubernetes object-name rules (DNS-1123 subdomains) do not require.
NAME_START_PATTERN = "^[a-z]"


class ObjectMeta(ApiModel):
    """The parts of metav1.ObjectMeta kubetune reads."""

    model_config = ApiModel.model_config | {"extra": "ignore"}

    name: str = ""
    namespace: str = ""
    uid: str = ""
    generation: int = 0
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class FineTuneJob(ApiModel):
    """A FineTuneJob as stored in the API server."""

    model_config = ApiModel.model_config | {"extra": "ignore"}

    api_version: str = API_VERSION
    kind: str = KIND
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: FineTuneJobSpec
    status: FineTuneJobStatus = Field(default_factory=FineTuneJobStatus)

    @classmethod
    def from_object(cls, obj: dict[str, Any]) -> FineTuneJob:
        """Parse an object as the API returns it (camelCase, possibly with extra metadata)."""
        return cls.model_validate(obj)
