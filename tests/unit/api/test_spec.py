"""The pydantic models enforce in Python what the CRD's schema and CEL rules enforce in the API server."""

from __future__ import annotations

from typing import Any

import pytest

from kubetune.api.spec import FineTuneJobSpec
from kubetune.api.trainer_config import RunIdentity, TrainerConfig
from kubetune.api.validation import manifest_errors, spec_errors


def minimal_spec(**overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": {"source": "hf://HuggingFaceTB/SmolLM2-135M-Instruct@main"},
        "dataset": {"train": ["pvc://data/lamini_docs.jsonl"]},
        "output": {"destination": "pvc://outputs/run-1"},
    }
    for key, value in overrides.items():
        spec[key] = value
    return spec


def test_a_minimal_spec_gets_documented_defaults() -> None:
    spec = FineTuneJobSpec.model_validate(minimal_spec())
    assert spec.method.type == "lora" and spec.method.rank == 16 and spec.method.alpha == 32
    assert spec.method.target_modules == ["all-linear"]
    assert spec.resources.gpus_per_node == 1 and spec.resources.nodes == 1
    assert spec.run_policy.backoff_limit == 3 and spec.run_policy.suspend is False
    assert spec.hyperparameters.epochs is None and spec.hyperparameters.learning_rate is None


def test_wire_form_is_camel_case_and_round_trips() -> None:
    spec = FineTuneJobSpec.model_validate(minimal_spec(hyperparameters={"maxSteps": 10, "perDeviceBatchSize": "auto"}))
    wire = spec.to_wire()
    assert wire["hyperparameters"]["maxSteps"] == 10
    assert wire["hyperparameters"]["perDeviceBatchSize"] == "auto"
    assert "runPolicy" in wire and "run_policy" not in wire
    assert FineTuneJobSpec.model_validate(wire) == spec


@pytest.mark.parametrize(
    ("overrides", "field", "fragment"),
    [
        ({"method": {"type": "lora", "quantization": {"bits": 4}}}, "spec.method", "only valid with method.type qlora"),
        ({"hyperparameters": {"epochs": 2, "maxSteps": 5}}, "spec.hyperparameters", "not both"),
        ({"hyperparameters": {"epochs": "many"}}, "spec.hyperparameters.epochs", ""),
        ({"hyperparameters": {"epochs": 0}}, "spec.hyperparameters.epochs", "greater than or equal to 1"),
        ({"hyperparameters": {"perDeviceBatchSize": 5000}}, "spec.hyperparameters.perDeviceBatchSize", "4096"),
        ({"hyperparameters": {"learningRate": 0}}, "spec.hyperparameters.learningRate", "greater than 0"),
        ({"method": {"rank": 0}}, "spec.method.rank", "greater than or equal to 1"),
        ({"method": {"type": "prefix"}}, "spec.method.type", "'lora', 'qlora', 'dora' or 'full'"),
        ({"resources": {"gpusPerNode": -1}}, "spec.resources.gpusPerNode", "greater than or equal to 0"),
        ({"resources": {"gpusPerNode": 17}}, "spec.resources.gpusPerNode", "less than or equal to 16"),
        (
            {"resources": {"gpusPerNode": 0, "gpuProduct": "NVIDIA-L4"}},
            "spec.resources",
            "resources.gpuProduct must be unset when resources.gpusPerNode is 0",
        ),
        (
            {"resources": {"gpusPerNode": 0}, "hyperparameters": {"precision": "bf16"}},
            "spec",
            "hyperparameters.precision must be auto or fp32 when resources.gpusPerNode is 0",
        ),
        ({"dataset": {"train": ["gs://b/x"]}}, "spec.dataset.train", "unsupported scheme"),
        (
            {"dataset": {"train": ["pvc://d/x"], "validation": "pvc://d/v", "validationSplit": 0.1}},
            "spec.dataset",
            "not both",
        ),
        ({"output": {"destination": "hf://org/name"}}, "spec.output.destination", "not hf://"),
        ({"trainer": {"env": [{"name": "HF_TOKEN", "value": "hf_abc"}]}}, "spec.trainer.env[0].name", "credential"),
        ({"model": {"source": "s3://KEY:SECRET@bucket/m"}}, "spec.model.source", "credentials"),
        ({"model": {"source": "hf://org/m", "unknownField": 1}}, "spec.model.unknownField", "Extra inputs"),
        ({"method": {"dpo": {"beta": 0.2}}}, "spec.method", "method.dpo is only valid with method.objective dpo"),
        ({"method": {"objective": "dpo", "dpo": {"beta": 0}}}, "spec.method.dpo.beta", "greater than 0"),
        ({"method": {"objective": "dpo", "dpo": {"labelSmoothing": 0.5}}}, "spec.method.dpo.labelSmoothing", "0.49"),
        ({"method": {"objective": "ppo"}}, "spec.method.objective", "'sft' or 'dpo'"),
        (
            {"method": {"objective": "dpo"}, "dataset": {"train": ["pvc://d/x"], "format": "alpaca"}},
            "spec",
            "dpo reads only preference data",
        ),
        ({"dataset": {"train": ["pvc://d/x"], "format": "preference"}}, "spec", "goes with method.objective dpo"),
        (
            {"method": {"objective": "dpo"}, "dataset": {"train": ["pvc://d/x"], "packing": True}},
            "spec",
            "dataset.packing is not used with method.objective dpo",
        ),
    ],
)
def test_bad_specs_name_the_field(overrides: dict[str, Any], field: str, fragment: str) -> None:
    problems = spec_errors(minimal_spec(**overrides))
    assert problems, "expected the spec to be rejected"
    assert any(p.startswith(field) and fragment in p for p in problems), problems
    assert not any("SECRET" in p or "hf_abc" in p for p in problems)


@pytest.mark.parametrize(
    "overrides",
    [
        {"resources": {"gpusPerNode": 0}},
        {"resources": {"gpusPerNode": 0}, "hyperparameters": {"precision": "fp32"}},
        {"resources": {"gpusPerNode": 0}, "method": {"type": "qlora"}},  # bitsandbytes 4-bit runs on the CPU too
        {"resources": {"gpusPerNode": 0, "nodes": 2}},
    ],
    ids=["auto-precision", "fp32", "qlora", "two-pods"],
)
def test_zero_gpus_per_node_is_a_cpu_job(overrides: dict[str, Any]) -> None:
    spec = FineTuneJobSpec.model_validate(minimal_spec(**overrides))
    assert spec.resources.gpus_per_node == 0 and spec.resources.gpu_product is None


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_gpu_jobs_keep_16_bit_precision_and_a_gpu_product(precision: str) -> None:
    overrides = {
        "resources": {"gpusPerNode": 1, "gpuProduct": "NVIDIA-L4"},
        "hyperparameters": {"precision": precision},
    }
    assert spec_errors(minimal_spec(**overrides)) == []


def test_a_dpo_spec_defaults_beta_and_reads_auto_or_preference_data() -> None:
    for data_format in ("auto", "preference"):
        dataset = {"train": ["pvc://d/pairs.jsonl"], "format": data_format}
        spec = FineTuneJobSpec.model_validate(minimal_spec(method={"objective": "dpo"}, dataset=dataset))
        assert spec.method.dpo is None
        assert (spec.method.dpo_settings.beta, spec.method.dpo_settings.label_smoothing) == (0.1, 0.0)
    assert FineTuneJobSpec.model_validate(minimal_spec()).method.objective == "sft"


def test_manifest_checks_name_length_and_kind() -> None:
    obj = {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "x" * 51}}
    problems = manifest_errors({**obj, "spec": minimal_spec()})
    assert problems == ["metadata.name: must be at most 50 characters"]
    assert manifest_errors({**obj, "metadata": {"name": "ok"}, "spec": minimal_spec()}) == []
    assert manifest_errors({**obj, "metadata": {"name": "1st-run"}, "spec": minimal_spec()}) == [
        "metadata.name: must start with a lowercase letter"
    ]


def test_trainer_config_carries_the_spec_training_parts() -> None:
    spec = FineTuneJobSpec.model_validate(minimal_spec(method={"type": "qlora", "quantization": {}}))
    config = TrainerConfig.from_spec(spec, run=RunIdentity(name="job", namespace="ns", uid="u"))
    again = TrainerConfig.model_validate(__import__("yaml").safe_load(config.to_yaml()))
    assert again == config
    assert again.method.quantization is not None and again.method.quantization.quant_type == "nf4"
