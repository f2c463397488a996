"""The data check: the trainer's data pass with the model's tokenizer, no weights, for the target hardware."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import pytest
from kubetune_trainer.data import DataIssue
from kubetune_trainer.modeling import ModelSource, count_base_parameters, count_parameters
from kubetune_trainer.preflight import data_problem, differences_from_check, run_preflight
from model_files import SMOLLM2_GGUF

from kubetune.api.preflight import MAX_RESULT_BYTES, decode_result, encode_result
from kubetune.api.trainer_config import TrainerConfig, Validated

ANSWER = "answer number 00"  # every answer has this many bytes: one token per byte with the tiny tokenizer


def _config(source: str, train: list[str], **sections: Any) -> TrainerConfig:
    dataset = {"train": train, "maxSeqLength": 256, **sections.pop("dataset", {})}
    return TrainerConfig.model_validate(
        {
            "run": {"name": "check"},
            "model": {"source": source, **sections.pop("model", {})},
            "dataset": dataset,
            "output": {"destination": "file:///unused"},
            **sections,
        }
    )


def _write(path: Path, rows: list[Any]) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def _answer(i: int) -> str:
    return f"answer number {i:02d}"


RECORDS = {
    "messages": lambda i: {
        "messages": [
            {"role": "system", "content": "You answer in one line."},
            {"role": "user", "content": f"question {i}"},
            {"role": "assistant", "content": _answer(i)},
        ]
    },
    "alpaca": lambda i: {"instruction": f"Answer question {i}", "input": "briefly", "output": _answer(i)},
    "sharegpt": lambda i: {
        "conversations": [
            {"from": "system", "value": "You answer in one line."},
            {"from": "human", "value": f"question {i}"},
            {"from": "gpt", "value": _answer(i)},
        ]
    },
    "text": lambda i: {"text": f"Document {i}: {_answer(i)}"},
}


@pytest.mark.parametrize("fmt", list(RECORDS))
def test_each_record_format_passes_with_its_counts(fmt: str, tmp_path: Path, config_only_model_dir: Path) -> None:
    rows: list[Any] = [RECORDS[fmt](i) for i in range(16)]
    data = _write(tmp_path / f"{fmt}.jsonl", rows)
    config = _config(f"file://{config_only_model_dir}", [data.as_uri()], dataset={"validationSplit": 0.25})

    result = run_preflight(config, cache_dir=tmp_path / "cache")

    assert result.outcome == "Passed", result.message
    dataset = result.dataset
    assert dataset is not None
    assert dataset.format == fmt
    assert (dataset.train_examples, dataset.validation_examples) == (12, 4)
    assert (dataset.error_count, dataset.errors, dataset.skipped_examples, dataset.duplicate_examples) == (0, [], 0, 0)
    assert dataset.sha256 is not None and len(dataset.sha256) == 64
    tokens = dataset.train_tokens
    assert 0 < tokens.p50 <= tokens.p95 <= tokens.max <= 256 and tokens.total >= 12 * tokens.p50 // 2
    if fmt == "text":
        assert tokens.trained == tokens.total - 12  # every token but each example's first
    else:
        assert tokens.trained == 12 * (len(ANSWER) + 1)  # the answer's bytes and the end-of-turn token only
    assert dataset.warning_count == len(dataset.warnings) == 1 and "only 12 training examples" in dataset.warnings[0]


def test_the_result_plans_for_the_target_hardware(tmp_path: Path, config_only_model_dir: Path) -> None:
    data = _write(tmp_path / "train.jsonl", [RECORDS["messages"](i) for i in range(300)])
    gpus = {"nodes": 2, "gpusPerNode": 4, "gpuProduct": "NVIDIA-A100-SXM4-80GB"}
    config = _config(f"file://{config_only_model_dir}", [data.as_uri()], resources=gpus)

    result = run_preflight(config, cache_dir=tmp_path / "cache")

    hp, estimate = result.hyperparameters, result.estimate
    assert hp is not None and estimate is not None
    # 300 examples: 3 epochs; maxSeqLength 256 on a GPU: 16 rows of 256 tokens; 19 micro-batches on 8 ranks.
    assert (hp.epochs, hp.per_device_batch_size, hp.world_size, hp.total_steps) == (3, 16, 8, 9)
    assert (hp.learning_rate, hp.warmup_steps) == (2e-4, 1)
    assert hp.chosen == ["epochs", "perDeviceBatchSize", "learningRate", "warmupSteps"]
    assert estimate.optimizer_steps == 9 and estimate.train_tokens == 3 * result.dataset.train_tokens.total  # type: ignore[union-attr]
    assert estimate.gpu_hours is not None and estimate.basis is not None and estimate.basis.startswith("A100")
    assert "300 training examples, 3 epoch(s), 9 optimizer steps" in result.message


def test_a_dpo_estimate_counts_each_pairs_row_once_and_the_reference_pass(
    tmp_path: Path, config_only_model_dir: Path
) -> None:
    rows = [{"prompt": f"question {i}, asked at length", "chosen": _answer(i), "rejected": "no"} for i in range(40)]
    data = _write(tmp_path / "pairs.jsonl", rows)
    config = _config(
        f"file://{config_only_model_dir}",
        [data.as_uri()],
        dataset={"format": "preference"},
        method={"objective": "dpo"},
        hyperparameters={"epochs": 1},
    )

    result = run_preflight(config, cache_dir=tmp_path / "cache")

    assert result.outcome == "Passed", result.message
    assert result.dataset is not None and result.estimate is not None
    both_sequences = result.dataset.train_tokens.total
    # A pair's row holds its prompt once: the model computes fewer tokens than both sequences have, and the
    # reference's forward pass adds a third of a training pass.
    assert result.estimate.train_tokens < both_sequences * 4 / 3
    answers = 40 * (len(ANSWER) + 1 + len("no") + 1)
    prompts = (both_sequences - answers) // 2
    assert result.estimate.train_tokens == round((prompts + answers) * 4 / 3)


def test_100000_bad_lines_still_give_a_small_result(tmp_path: Path, config_only_model_dir: Path) -> None:
    data = tmp_path / "broken.jsonl"
    data.write_text("{not json\n" * 100_000, encoding="utf-8")
    config = _config(f"file://{config_only_model_dir}", [data.as_uri()])

    result = run_preflight(config, cache_dir=tmp_path / "cache")
    encoded = encode_result(result)

    assert result.outcome == "BadData"
    assert len(encoded.encode()) <= MAX_RESULT_BYTES
    decoded = decode_result(encoded)
    assert decoded is not None and decoded.dataset is not None
    assert decoded.dataset.error_count == 100_000
    assert decoded.dataset.errors, "the first problems are listed"
    assert [p.line for p in decoded.dataset.errors] == list(range(1, len(decoded.dataset.errors) + 1))
    assert all(p.file == data.as_uri() and p.reason.startswith("invalid JSON") for p in decoded.dataset.errors)
    assert result.hyperparameters is None and result.estimate is None


def test_bad_records_among_good_ones_are_named_with_what_was_read(tmp_path: Path, config_only_model_dir: Path) -> None:
    rows: list[Any] = [RECORDS["alpaca"](i) for i in range(5)]
    rows[2] = {"instruction": "no output"}
    rows[4] = "[1, 2]"
    data = _write(tmp_path / "mixed.jsonl", rows)

    result = run_preflight(_config(f"file://{config_only_model_dir}", [data.as_uri()]), cache_dir=tmp_path)

    assert result.outcome == "BadData" and "2 problems" in result.message
    assert result.dataset is not None and result.dataset.format == "alpaca" and result.dataset.error_count == 2
    assert [(p.line, p.field) for p in result.dataset.errors] == [(3, "output"), (5, "")]


def test_a_model_directory_without_a_tokenizer_is_bad_config(tmp_path: Path, config_only_model_dir: Path) -> None:
    no_tokenizer = tmp_path / "model"
    no_tokenizer.mkdir()
    (no_tokenizer / "config.json").write_bytes((config_only_model_dir / "config.json").read_bytes())
    data = _write(tmp_path / "train.jsonl", [RECORDS["messages"](0)])

    result = run_preflight(_config(f"file://{no_tokenizer}", [data.as_uri()]), cache_dir=tmp_path / "cache")

    assert result.outcome == "BadConfig" and result.message.startswith("model.source: cannot load a tokenizer")
    assert result.dataset is None
    missing = run_preflight(_config(f"file://{tmp_path}/absent", [data.as_uri()]), cache_dir=tmp_path / "cache")
    assert missing.outcome == "BadConfig" and "is not a directory" in missing.message


def test_a_chat_dataset_for_a_tokenizer_without_a_chat_template_is_bad_config(
    tmp_path: Path, config_only_model_dir: Path
) -> None:
    model = tmp_path / "model"
    model.mkdir()
    for item in config_only_model_dir.iterdir():
        (model / item.name).write_bytes(item.read_bytes())
    (model / "chat_template.jinja").unlink(missing_ok=True)
    tokenizer_config = json.loads((model / "tokenizer_config.json").read_text())
    tokenizer_config.pop("chat_template", None)
    (model / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    data = _write(tmp_path / "train.jsonl", [RECORDS["messages"](0)])

    result = run_preflight(_config(f"file://{model}", [data.as_uri()]), cache_dir=tmp_path / "cache")

    assert result.outcome == "BadConfig" and "no chat template" in result.message


def test_the_parameter_count_from_the_config_equals_the_loaded_models(tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    source = ModelSource(
        name_or_path=str(tiny_model_dir), revision=None, gguf_file=None, trust_remote_code=False, uri="file://tiny"
    )
    loaded = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert count_base_parameters(source) == count_parameters(loaded)[1]


@pytest.mark.model
def test_a_gguf_model_gives_its_tokenizer_and_config_from_the_file_metadata(tmp_path: Path, smollm2_dir: Path) -> None:
    data = _write(tmp_path / "train.jsonl", [RECORDS["messages"](i) for i in range(4)])
    config = _config(
        f"file://{smollm2_dir}", [data.as_uri()], model={"ggufFile": SMOLLM2_GGUF}, resources={"gpusPerNode": 0}
    )

    result = run_preflight(config, cache_dir=tmp_path / "cache")

    assert result.outcome == "Passed", result.message
    assert result.estimate is not None and result.estimate.parameters == 134_515_008  # SmolLM2-135M, tied head
    assert result.estimate.basis is not None and ": measured" in result.estimate.basis


@pytest.fixture
def bucket() -> Iterator[Any]:
    memory = fsspec.filesystem("memory")
    yield memory
    memory.rm("/kubetune-preflight", recursive=True)


def test_an_s3_model_is_fetched_without_its_weights(tmp_path: Path, config_only_model_dir: Path, bucket: Any) -> None:
    for item in config_only_model_dir.iterdir():
        bucket.pipe(f"/kubetune-preflight/model/{item.name}", item.read_bytes())
    bucket.pipe("/kubetune-preflight/model/model.safetensors", b"weights")
    bucket.pipe("/kubetune-preflight/model/onnx/model.json", b"{}")
    bucket.pipe("/kubetune-preflight/model/additional_chat_templates/tool_use.jinja", b"{{ messages }}")
    lines = "\n".join(json.dumps(RECORDS["messages"](i)) for i in range(3)) + "\n"
    bucket.pipe("/kubetune-preflight/data/train.jsonl", lines.encode())
    config = _config("s3://kubetune-preflight/model", ["s3://kubetune-preflight/data/train.jsonl"])

    result = run_preflight(config, cache_dir=tmp_path / "cache", remote_fs=bucket)

    assert result.outcome == "Passed", result.message
    fetched = tmp_path / "cache" / "tokenizer"
    expected = [p.name for p in config_only_model_dir.iterdir()] + ["additional_chat_templates"]
    assert sorted(p.name for p in fetched.iterdir()) == sorted(expected)
    assert (fetched / "additional_chat_templates" / "tool_use.jinja").is_file()


def test_data_problems_keep_file_line_and_field_within_the_status_bounds() -> None:
    assert data_problem(DataIssue("file:///d/train.jsonl:17", "messages[0].role", "bad role")).model_dump() == {
        "file": "file:///d/train.jsonl",
        "line": 17,
        "field": "messages[0].role",
        "reason": "bad role",
    }
    parquet = data_problem(DataIssue("s3://b/part-0.parquet:#3", "", "not an object"))
    assert (parquet.file, parquet.line) == ("s3://b/part-0.parquet", 3)
    assert data_problem(DataIssue("file:///d/x.jsonl.gz", "", "not gzip")).line is None
    long = data_problem(DataIssue("file:///" + "d/" * 400 + "train.jsonl:2", "f" * 500, "r" * 1000))
    assert long.file.endswith("/train.jsonl") and len(long.file) == 300
    assert (len(long.field), len(long.reason)) == (128, 300)


def test_the_trainer_names_what_changed_since_the_check() -> None:
    checked = Validated(dataset_sha256="a" * 64, train_examples=100, total_steps=39)
    same = differences_from_check(checked, train_examples=100, dataset_sha256="a" * 64, total_steps=39)
    changed = differences_from_check(checked, train_examples=120, dataset_sha256="b" * 64, total_steps=45)
    assert same == []
    assert changed == [
        "dataset sha256 bbbbbbbbbbbb, the check saw aaaaaaaaaaaa",
        "120 training examples, the check saw 100",
        "45 optimizer steps planned, the check planned 39",
    ]
