"""Bad FineTuneJobs never run: the API server rejects them (422 naming the field) or the operator marks them
Failed with Validated=False, a message and a Warning Event naming the field, and creates no Job or pod.

``rejected_by`` records which line of defence each case is expected to hit, so moving a check from the
operator into the CRD (or losing one) shows up here.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import pytest
from kubetune_operator.errors import ApiError

pytestmark = pytest.mark.cluster

BASE: dict[str, Any] = {
    "model": {"source": "hf://HuggingFaceTB/SmolLM2-135M-Instruct@main"},
    "dataset": {"train": ["s3://training-data/lamini_docs.jsonl"]},
    "output": {"destination": "s3://outputs/run-1"},
}


def merged(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


@dataclass(frozen=True)
class BadSpec:
    id: str
    path: str  # the field path the error message must name
    rejected_by: Literal["api", "operator"]
    override: dict[str, Any] = field(default_factory=dict)
    without: tuple[str, ...] = ()
    name: str = "bad"

    def spec(self) -> dict[str, Any]:
        spec = merged(BASE, self.override)
        for key in self.without:
            del spec[key]
        return spec


CASES = [
    # Types and ranges the schema checks.
    BadSpec("gpus-wrong-type", "spec.resources.gpusPerNode", "api", {"resources": {"gpusPerNode": "two"}}),
    BadSpec("gpus-too-many", "spec.resources.gpusPerNode", "api", {"resources": {"gpusPerNode": 17}}),
    BadSpec("gpus-negative", "spec.resources.gpusPerNode", "api", {"resources": {"gpusPerNode": -1}}),
    BadSpec("nodes-zero", "spec.resources.nodes", "api", {"resources": {"nodes": 0}}),
    BadSpec("unknown-method", "spec.method.type", "api", {"method": {"type": "prefix-tuning"}}),
    BadSpec("rank-zero", "spec.method.rank", "api", {"method": {"rank": 0}}),
    BadSpec("alpha-zero", "spec.method.alpha", "api", {"method": {"alpha": 0}}),
    BadSpec("dropout-one", "spec.method.dropout", "api", {"method": {"dropout": 1.0}}),
    BadSpec("learning-rate-zero", "spec.hyperparameters.learningRate", "api", {"hyperparameters": {"learningRate": 0}}),
    BadSpec(
        "learning-rate-negative",
        "spec.hyperparameters.learningRate",
        "api",
        {"hyperparameters": {"learningRate": -1e-4}},
    ),
    BadSpec("epochs-zero", "epochs", "api", {"hyperparameters": {"epochs": 0}}),
    BadSpec("epochs-not-auto", "epochs", "api", {"hyperparameters": {"epochs": "many"}}),
    BadSpec("batch-size-zero", "perDeviceBatchSize", "api", {"hyperparameters": {"perDeviceBatchSize": 0}}),
    BadSpec("unknown-scheduler", "spec.hyperparameters.scheduler", "api", {"hyperparameters": {"scheduler": "warp"}}),
    BadSpec("unknown-dtype", "spec.model.dtype", "api", {"model": {"dtype": "int8"}}),
    BadSpec("unknown-format", "spec.dataset.format", "api", {"dataset": {"format": "xml"}}),
    BadSpec("seq-length-tiny", "spec.dataset.maxSeqLength", "api", {"dataset": {"maxSeqLength": 8}}),
    BadSpec("no-training-files", "spec.dataset.train", "api", {"dataset": {"train": []}}),
    BadSpec("backoff-negative", "spec.runPolicy.backoffLimit", "api", {"runPolicy": {"backoffLimit": -1}}),
    BadSpec(
        "deadline-zero", "spec.runPolicy.activeDeadlineSeconds", "api", {"runPolicy": {"activeDeadlineSeconds": 0}}
    ),
    BadSpec("queue-name-invalid", "spec.runPolicy.queueName", "api", {"runPolicy": {"queueName": "Team Queue"}}),
    BadSpec("cpu-not-a-quantity", "spec.resources.cpu", "api", {"resources": {"cpu": "lots"}}),
    BadSpec("gpu-product-invalid", "spec.resources.gpuProduct", "api", {"resources": {"gpuProduct": "H100 please!"}}),
    BadSpec(
        "toleration-operator",
        "spec.resources.tolerations[0].operator",
        "api",
        {"resources": {"tolerations": [{"key": "gpu", "operator": "Sometimes"}]}},
    ),
    BadSpec(
        "secret-name-invalid",
        "spec.credentials.huggingFaceToken.name",
        "api",
        {"credentials": {"huggingFaceToken": {"name": "Bad_Name", "key": "token"}}},
    ),
    BadSpec("model-missing", "spec.model", "api", without=("model",)),
    # A FineTuneProfile's outputBase may give it; with none, the operator refuses the job.
    BadSpec("output-missing", "spec.output.destination", "operator", without=("output",)),
    # Cross-field rules (CEL).
    BadSpec(
        "epochs-and-max-steps", "hyperparameters.maxSteps", "api", {"hyperparameters": {"epochs": 2, "maxSteps": 100}}
    ),
    BadSpec(
        "warmup-steps-and-ratio",
        "hyperparameters.warmupRatio",
        "api",
        {"hyperparameters": {"warmupSteps": 10, "warmupRatio": 0.1}},
    ),
    BadSpec(
        "validation-file-and-split",
        "dataset.validationSplit",
        "api",
        {"dataset": {"validation": "s3://training-data/val.jsonl", "validationSplit": 0.1}},
    ),
    BadSpec(
        "4bit-on-lora", "method.quantization", "api", {"method": {"type": "lora", "quantization": {"quantType": "nf4"}}}
    ),
    BadSpec(
        "gpu-product-on-cpu",
        "resources.gpuProduct",
        "api",
        {"resources": {"gpusPerNode": 0, "gpuProduct": "NVIDIA-L4"}},
    ),
    BadSpec("dpo-settings-on-sft", "method.dpo", "api", {"method": {"dpo": {"beta": 0.2}}}),
    BadSpec("dpo-beta-zero", "spec.method.dpo.beta", "api", {"method": {"objective": "dpo", "dpo": {"beta": 0}}}),
    BadSpec(
        "dpo-with-sft-data", "dataset.format", "api", {"method": {"objective": "dpo"}, "dataset": {"format": "alpaca"}}
    ),
    BadSpec("pairs-for-sft", "dataset.format", "api", {"dataset": {"format": "preference"}}),
    BadSpec(
        "dpo-with-packing", "dataset.packing", "api", {"method": {"objective": "dpo"}, "dataset": {"packing": True}}
    ),
    BadSpec(
        "16-bit-precision-on-cpu",
        "hyperparameters.precision",
        "api",
        {"resources": {"gpusPerNode": 0}, "hyperparameters": {"precision": "bf16"}},
    ),
    BadSpec(
        "secret-looking-env-inline",
        "spec.trainer.env[0]",
        "api",
        {"trainer": {"env": [{"name": "HF_TOKEN", "value": "hf_abcdefghijklmnop"}]}},
    ),
    BadSpec("name-too-long", "metadata.name", "api", name="a" * 51),
    # URIs: the schema's pattern only checks the scheme.
    BadSpec("ftp-scheme", "spec.model.source", "api", {"model": {"source": "ftp://example.org/model"}}),
    BadSpec("gcs-scheme", "spec.dataset.train", "api", {"dataset": {"train": ["gs://bucket/data.jsonl"]}}),
    # What only the operator can check: full URI parsing and names the children derive from.
    BadSpec(
        "s3-uri-with-credentials",
        "spec.dataset.train[0]",
        "operator",
        {"dataset": {"train": ["s3://AKIAXXXX:secret@training-data/data.jsonl"]}},
    ),
    BadSpec("s3-bucket-too-short", "spec.output.destination", "operator", {"output": {"destination": "s3://ab/out"}}),
    BadSpec("pvc-claim-invalid", "spec.model.source", "operator", {"model": {"source": "pvc://Bad_Claim/model"}}),
    BadSpec(
        "pvc-path-escapes", "spec.dataset.train[0]", "operator", {"dataset": {"train": ["pvc://data/../etc/passwd"]}}
    ),
    BadSpec("hf-without-org", "spec.model.source", "operator", {"model": {"source": "hf://just-a-name"}}),
    BadSpec(
        "file-uri-relative", "spec.dataset.validation", "operator", {"dataset": {"validation": "file://data/val.jsonl"}}
    ),
    BadSpec("output-to-hf", "spec.output.destination", "operator", {"output": {"destination": "hf://org/name"}}),
    BadSpec("name-starts-with-digit", "metadata.name", "api", name="7b-finetune"),
]


def test_the_table_covers_at_least_thirty_bad_specs() -> None:
    assert len(CASES) >= 30 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_spec_is_rejected_naming_the_field_and_never_runs(
    case: BadSpec,
    ftjs: Any,
    status: Callable[[dict[str, Any]], dict[str, Any]],
    condition: Callable[[dict[str, Any], str], dict[str, Any]],
) -> None:
    try:
        ftjs.create(case.name, spec=case.spec())
    except ApiError as err:
        assert case.rejected_by == "api", f"expected the operator to catch it, but the API server said: {err}"
        assert err.status == 422, err
        assert case.path in err.message, f"422 does not name {case.path}: {err.message}"
    else:
        assert case.rejected_by == "operator", f"the API server accepted a spec it should reject ({case.path})"
        failed = ftjs.wait_phase(case.name, "Failed", timeout=30)
        validated = condition(failed, "Validated")
        assert validated["status"] == "False" and validated["reason"] == "InvalidSpec"
        assert case.path in validated["message"], validated["message"]
        assert status(failed)["failure"]["reason"] == "InvalidSpec"
        ftjs.wait(case.name, lambda _: "InvalidSpec" in ftjs.event_reasons(case.name), what="an InvalidSpec event")
    assert ftjs.everything("jobs") == [] and ftjs.everything("pods") == []
