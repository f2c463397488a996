"""Fixtures for the recipe-level tests: a tiny random Llama with SmolLM2's tokenizer (mechanics),
a plain safetensors copy of SmolLM2 (the real model, loaded in seconds), configs and a runner.

The tiny model (2 layers, hidden 32) trains a step in milliseconds; resume, signals, distributed runs and
exit codes do not need a model that knows anything.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kubetune.api.trainer_config import TrainerConfig


@pytest.fixture(scope="session")
def nan_model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """The tiny model with one NaN weight in its first MLP: every forward pass yields NaN."""
    import shutil

    from safetensors.torch import load_file, save_file

    directory = tmp_path_factory.mktemp("nan-llama")
    for item in tiny_model_dir.iterdir():
        shutil.copy2(item, directory / item.name)
    weights = load_file(str(directory / "model.safetensors"))
    weights["model.layers.0.mlp.down_proj.weight"][0, 0] = float("nan")
    save_file(weights, str(directory / "model.safetensors"), metadata={"format": "pt"})
    return directory


@pytest.fixture(scope="session")
def smollm2_plain_dir(tmp_path_factory: pytest.TempPathFactory, smollm2_dir: Path) -> Path:
    """SmolLM2 dequantized from the GGUF and saved as plain fp32 safetensors, once per session."""
    import torch
    from kubetune_trainer.modeling import rebuild_plain
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = tmp_path_factory.mktemp("smollm2-plain")
    gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, gguf_file=gguf, dtype=torch.float32)
    rebuild_plain(model).save_pretrained(directory)
    AutoTokenizer.from_pretrained(smollm2_dir, gguf_file=gguf).save_pretrained(directory)
    return directory


def make_config(
    *,
    model_dir: Path,
    data: Path,
    output: Path,
    gguf_file: str | None = None,
    dataset: dict[str, Any] | None = None,
    method: dict[str, Any] | None = None,
    hyperparameters: dict[str, Any] | None = None,
    checkpointing: dict[str, Any] | None = None,
    merge: bool = False,
) -> dict[str, Any]:
    """A trainer config (wire form) for lamini_docs-style question/answer data."""
    model: dict[str, Any] = {"source": f"file://{model_dir}"}
    if gguf_file is not None:
        model["ggufFile"] = gguf_file
    return {
        "run": {"name": "test-run", "namespace": "default"},
        "model": model,
        "dataset": {
            "train": [f"file://{data}"],
            "format": "prompt_completion",
            "fieldMapping": {"prompt": "question", "completion": "answer"},
            "maxSeqLength": 256,
            "packing": False,
            **(dataset or {}),
        },
        "method": {"type": "lora", "rank": 4, "alpha": 8, "dropout": 0.0, **(method or {})},
        "hyperparameters": {"maxSteps": 4, "perDeviceBatchSize": 4, "learningRate": 1e-3, **(hyperparameters or {})},
        "checkpointing": {"everySteps": 2, "keepLast": 2, **(checkpointing or {})},
        "output": {"destination": f"file://{output}", "mergeAdapter": merge},
    }


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(json.dumps(config), encoding="utf-8")
    return path


@pytest.fixture
def config_factory() -> Callable[..., dict[str, Any]]:
    return make_config


@pytest.fixture
def run_in_process(tmp_path: Path) -> Callable[..., tuple[int, list[Any]]]:
    """Run the trainer in this process; returns (exit code, events). ``on_event`` sees each event first."""
    from kubetune_trainer.cli import run
    from kubetune_trainer.reporting import RecordingReporter

    def runner(
        config: dict[str, Any], *, on_event: Callable[[Any], None] | None = None, samples: int = 2
    ) -> tuple[int, list[Any]]:
        reporter = RecordingReporter()
        if on_event is not None:
            original = reporter.emit

            def emit(event: Any) -> None:
                original(event)
                on_event(event)

            reporter.emit = emit  # type: ignore[method-assign]
        code = run(
            TrainerConfig.model_validate(config),
            reporter=reporter,
            cache_dir=tmp_path / "cache",
            threads=2,
            sample_prompts=samples,
        )
        return code, reporter.events

    return runner
