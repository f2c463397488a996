"""The shipped quickstart data passes the trainer's own checks with examples/quickstart.yaml's dataset settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from kubetune_trainer.data import check_data, prepare_data

from kubetune.api.qa_dataset import HELD_OUT_FILE, TRAIN_FILE
from kubetune.api.resource import FineTuneJob
from kubetune.api.spec import DatasetSpec

REPO = Path(__file__).resolve().parents[4]


def quickstart_job() -> FineTuneJob:
    (document,) = yaml.safe_load_all((REPO / "examples" / "quickstart.yaml").read_text(encoding="utf-8"))
    return FineTuneJob.from_object(document)


def local_dataset(file: str) -> DatasetSpec:
    """The example's spec.dataset reading the committed file instead of the pvc:// claim."""
    dataset = quickstart_job().spec.dataset
    return dataset.model_copy(update={"train": [(REPO / file).as_uri()]})


def test_the_example_maps_question_and_answer_onto_prompt_completion() -> None:
    dataset = quickstart_job().spec.dataset
    assert dataset.format == "prompt_completion"
    assert dataset.field_mapping is not None
    assert (dataset.field_mapping.prompt, dataset.field_mapping.completion) == ("question", "answer")


def test_shipped_pairs_pass_the_trainer_data_check_with_no_warning() -> None:
    spec = quickstart_job().spec
    report = check_data(local_dataset(TRAIN_FILE), seed=spec.hyperparameters.seed)
    assert report.detection == [
        f"{(REPO / TRAIN_FILE).as_uri()}: prompt_completion (prompt='question', completion='answer'), as configured"
    ]
    assert report.skipped == 0 and report.duplicates == 0 and report.warnings == []
    assert report.validation_source == "split"
    assert report.validation_examples == round(report.records * 0.1)


def test_held_out_pairs_pass_as_a_validation_file_that_does_not_leak_into_training() -> None:
    held_out = (REPO / HELD_OUT_FILE).as_uri()
    dataset = local_dataset(TRAIN_FILE).model_copy(update={"validation_split": None, "validation": held_out})
    report = check_data(dataset, seed=0)
    assert report.validation_source == "file" and report.validation_examples >= 10
    assert report.warnings == []


@pytest.mark.model
def test_no_shipped_pair_is_truncated_at_the_example_max_seq_length(smollm2_tokenizer: Any) -> None:
    spec = quickstart_job().spec
    report = prepare_data(local_dataset(TRAIN_FILE), tokenizer=smollm2_tokenizer, seed=spec.hyperparameters.seed).report
    assert report.truncated == 0
    assert report.train_tokens.max < spec.dataset.max_seq_length
