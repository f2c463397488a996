"""``kubetune estimate`` runs a FineTuneJob's data check here: dataset, resolved hyperparameters, cost."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune.api.preflight import PreflightResult
from kubetune.cli import main
from kubetune.cli.errors import CliExit

TINY_TOKENIZER = Path(__file__).resolve().parents[1] / "trainer" / "data" / "tiny_chat_tokenizer.py"


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # no value folded over two lines


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trainer tests' tiny chat tokenizer and a Llama config.json: a model without weights."""
    spec = importlib.util.spec_from_file_location("tiny_chat_tokenizer", TINY_TOKENIZER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    directory: Path = module.write_config_only_model(tmp_path_factory.mktemp("model"))
    return directory


def _manifest(path: Path, *, model: str, train: str, **spec: Any) -> Path:
    document = {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "demo"},
        "spec": {
            "model": {"source": model},
            "dataset": {"train": [train], "maxSeqLength": 512},
            "output": {"destination": "pvc://outputs/demo"},
            **spec,
        },
    }
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


def _chat(i: int) -> str:
    return json.dumps(
        {"messages": [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": f"answer {i}"}]}
    )


def test_a_job_on_claims_is_checked_with_the_claims_under_pvc_root(
    tmp_path: Path, model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    claims = tmp_path / "pvc"
    (claims / "models").mkdir(parents=True)
    (claims / "models" / "tiny").symlink_to(model_dir)
    (claims / "datasets").mkdir()
    (claims / "datasets" / "train.jsonl").write_text("\n".join(_chat(i) for i in range(200)) + "\n")
    manifest = _manifest(
        tmp_path / "job.yaml",
        model="pvc://models/tiny",
        train="pvc://datasets/train.jsonl",
        resources={"gpusPerNode": 1, "gpuProduct": "NVIDIA-L4"},
    )

    code = main(["estimate", "-f", str(manifest), "--pvc-root", str(claims)])

    out = capsys.readouterr().out
    assert code == CliExit.OK
    # 512 tokens per row on a GPU: 8 rows per batch, 25 batches per epoch.
    assert "Passed: 200 training examples, 3 epoch(s), 75 optimizer steps" in out
    assert "200 train / 0 validation" in out
    assert "3 (auto)" in out and "8 (auto)" in out and "0.0002 (auto)" in out  # epochs, batch, learning rate
    assert "L4 (121 TFLOP/s bf16 dense)" in out and "GPU-hours" in out
    assert "warning: only 200 training examples" not in out  # 200 is enough


def test_json_output_is_the_check_result(tmp_path: Path, model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(_chat(i) for i in range(10)) + "\n")
    manifest = _manifest(
        tmp_path / "job.yaml", model=model_dir.as_uri(), train=data.as_uri(), resources={"gpusPerNode": 0}
    )

    assert main(["estimate", "-f", str(manifest), "-o", "json"]) == CliExit.OK

    result = PreflightResult.model_validate(json.loads(capsys.readouterr().out))
    assert result.outcome == "Passed" and result.estimate is not None and result.estimate.gpu_hours is None
    assert result.hyperparameters is not None and result.hyperparameters.per_device_batch_size == 8


def test_bad_records_exit_invalid_and_are_listed_by_line(
    tmp_path: Path, model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text(_chat(0) + "\n{broken\n" + _chat(2) + "\n" + json.dumps({"messages": []}) + "\n")
    manifest = _manifest(tmp_path / "job.yaml", model=model_dir.as_uri(), train=data.as_uri())

    assert main(["estimate", "-f", str(manifest)]) == CliExit.INVALID == 3

    captured = capsys.readouterr()
    assert "BadData: data validation failed" in captured.out and "Problems   2" in captured.out
    lines = captured.err.splitlines()
    assert lines[0].startswith(f"{data.as_uri()}:2: invalid JSON")
    assert lines[1].startswith(f"{data.as_uri()}:4: messages")
    assert lines[-1] == "kubetune: error: demo: BadData: data validation failed: 2 problems in the dataset"


def test_a_model_source_without_a_tokenizer_is_reported_as_bad_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text(_chat(0) + "\n")
    empty = tmp_path / "empty-model"
    empty.mkdir()
    manifest = _manifest(tmp_path / "job.yaml", model=empty.as_uri(), train=data.as_uri())

    assert main(["estimate", "-f", str(manifest)]) == CliExit.INVALID

    assert "kubetune: error: demo: BadConfig: model.source: cannot load a tokenizer" in capsys.readouterr().err
