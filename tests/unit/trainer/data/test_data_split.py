"""The train/validation split: deterministic by seed, exact in size, disjoint; or a separate file."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from kubetune_trainer.data import DataError, prepare_data
from kubetune_trainer.data.report import render_report
from kubetune_trainer.data.split import split_examples

from kubetune.api.spec import DatasetSpec

WriteJsonl = Callable[[str, list[Any]], Path]
ITEMS = list(range(200))


def test_split_is_the_same_for_the_same_seed() -> None:
    assert split_examples(ITEMS, fraction=0.1, seed=7) == split_examples(ITEMS, fraction=0.1, seed=7)


def test_split_differs_between_seeds() -> None:
    assert split_examples(ITEMS, fraction=0.1, seed=7)[1] != split_examples(ITEMS, fraction=0.1, seed=8)[1]


def test_split_sizes_are_exact_and_parts_disjoint_and_ordered() -> None:
    train, validation = split_examples(ITEMS, fraction=0.15, seed=0)
    assert (len(train), len(validation)) == (170, 30)
    assert sorted(train + validation) == ITEMS
    assert train == sorted(train) and validation == sorted(validation)


def test_split_holds_out_at_least_one_and_keeps_at_least_one() -> None:
    assert len(split_examples([1, 2, 3], fraction=0.01, seed=0)[1]) == 1
    with pytest.raises(ValueError, match="cannot hold out 1 of 1"):
        split_examples([1], fraction=0.5, seed=0)


def records(n: int) -> list[dict[str, str]]:
    return [{"prompt": f"Question number {i}?", "completion": f"Answer {i}."} for i in range(n)]


def test_prepare_data_splits_by_seed(write_jsonl: WriteJsonl, tiny_tokenizer: Any) -> None:
    path = write_jsonl("d.jsonl", records(50))
    spec = DatasetSpec(train=[path.as_uri()], validation_split=0.2)

    def held_out(seed: int) -> list[list[int]]:
        data = prepare_data(spec, tokenizer=tiny_tokenizer, seed=seed)
        assert (len(data.train), len(data.validation)) == (40, 10)
        assert data.report.validation_source == "split"
        return [e.input_ids for e in data.validation]

    assert held_out(1) == held_out(1)
    assert held_out(1) != held_out(2)


def test_a_single_example_cannot_be_split(write_jsonl: WriteJsonl, tiny_tokenizer: Any) -> None:
    path = write_jsonl("d.jsonl", records(1))
    with pytest.raises(DataError, match="cannot hold out"):
        prepare_data(DatasetSpec(train=[path.as_uri()], validation_split=0.5), tokenizer=tiny_tokenizer, seed=0)


def test_a_validation_file_in_another_format_is_used_as_is(tmp_path: Path, tiny_tokenizer: Any) -> None:
    train = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist(records(6)), train)
    validation = tmp_path / "val.csv"
    validation.write_text("instruction,input,output\nSum,2 and 2,4\nSay hi,,hi\n", encoding="utf-8")
    spec = DatasetSpec(train=[train.as_uri()], validation=validation.as_uri())
    data = prepare_data(spec, tokenizer=tiny_tokenizer, seed=0)
    assert (len(data.train), len(data.validation)) == (6, 2)
    report = data.report
    assert report.validation_source == "file"
    assert report.formats == {"prompt_completion": 6, "alpaca": 2}
    assert [(f["role"], f["format"]) for f in report.files] == [
        ("train", "prompt_completion"),
        ("validation", "alpaca"),
    ]
    assert report.validation_tokens.count == 2 and report.train_tokens.trained > 0


def test_validation_examples_that_are_also_training_examples_are_warned_about(
    write_jsonl: WriteJsonl, tiny_tokenizer: Any
) -> None:
    train = write_jsonl("train.jsonl", records(5))
    validation = write_jsonl("val.jsonl", records(2))
    spec = DatasetSpec(train=[train.as_uri()], validation=validation.as_uri())
    warnings = prepare_data(spec, tokenizer=tiny_tokenizer, seed=0).report.warnings
    assert "2 validation example(s) also appear in the training data" in warnings


def test_report_is_json_serializable_end_to_end(write_jsonl: WriteJsonl, tiny_tokenizer: Any) -> None:
    path = write_jsonl("d.jsonl", records(10))
    data = prepare_data(DatasetSpec(train=[path.as_uri()]), tokenizer=tiny_tokenizer, seed=0)
    report = json.loads(render_report(data.report))
    assert report["train_tokens"]["count"] == 10 and report["validation_source"] == "none"
