"""The quickstart's question/answer pairs come from the API's own descriptions and are committed up to date."""

from __future__ import annotations

import json
from pathlib import Path

from kubetune.api.qa_dataset import HELD_OUT_FIELDS, HELD_OUT_FILE, TRAIN_FILE, build_dataset, render_jsonl

REPO = Path(__file__).resolve().parents[3]
REGENERATE = f"kubetune quickstart-data -o {TRAIN_FILE} --held-out {HELD_OUT_FILE}"


def test_committed_dataset_matches_the_models() -> None:
    dataset = build_dataset()
    assert (REPO / TRAIN_FILE).read_text(encoding="utf-8") == render_jsonl(dataset.train), (
        f"{TRAIN_FILE} is stale: run `{REGENERATE}`"
    )
    assert (REPO / HELD_OUT_FILE).read_text(encoding="utf-8") == render_jsonl(dataset.held_out), (
        f"{HELD_OUT_FILE} is stale: run `{REGENERATE}`"
    )


def test_a_few_hundred_distinct_questions_with_question_and_answer_fields_only() -> None:
    train = build_dataset().train
    assert 250 <= len(train) <= 650
    assert len({pair.question for pair in train}) == len(train)
    for line in render_jsonl(train).splitlines():
        record = json.loads(line)
        assert set(record) == {"question", "answer"} and all(record.values()), line


def test_generation_is_deterministic() -> None:
    assert build_dataset() == build_dataset()


def test_each_field_is_asked_in_two_phrasings_with_the_same_answer() -> None:
    train = build_dataset().train
    asked = [pair for pair in train if "spec.method.rank?" in pair.question or "spec.method.rank " in pair.question]
    what = [pair for pair in asked if pair.answer.startswith("spec.method.rank: ")]
    assert len(what) == 2 and what[0].question != what[1].question and what[0].answer == what[1].answer


def test_answers_carry_the_description_bounds_default_and_allowed_values() -> None:
    pairs = build_dataset().train

    def about(path: str, start: str) -> list[str]:
        # Which templates a field gets depends on its position, so answers are found by what they say.
        found = [p.answer for p in pairs if path in p.question and p.answer.startswith(start)]
        assert found, f"no answer about {path} starting {start!r}"
        return found

    rank = about("spec.method.rank", "spec.method.rank: ")[0]
    assert rank == (
        "spec.method.rank: Adapter rank r (lora, qlora, dora). It is an integer: from 1 to 1024. Default: 16."
    )
    assert about("spec.hyperparameters.scheduler", "spec.hyperparameters.scheduler defaults")[0] == (
        "spec.hyperparameters.scheduler defaults to cosine when it is omitted."
    )
    assert about("spec.hyperparameters.learningRate", "spec.hyperparameters.learningRate takes")[0] == (
        "spec.hyperparameters.learningRate takes a number: greater than 0 and at most 1."
    )
    assert "2e-4 for adapters" in about("spec.hyperparameters.learningRate", "spec.hyperparameters.learningRate: ")[0]
    answers = {pair.question: pair.answer for pair in pairs}
    assert answers["What is the kubectl short name of a kubetune FineTuneJob?"].startswith("ftj")
    rules = " ".join(about("spec.dataset ", "spec.dataset"))
    assert "set either dataset.validation or dataset.validationSplit, not both" in rules
    assert any("required" in a for a in about("spec.output.destination", "spec.output.destination"))


def test_held_out_questions_are_phrased_as_no_training_question_is() -> None:
    dataset = build_dataset()
    questions = {pair.question for pair in dataset.train}
    answers = {pair.answer for pair in dataset.train}
    assert [pair.question.split()[-3] for pair in dataset.held_out] == list(HELD_OUT_FIELDS)
    for pair in dataset.held_out:
        assert pair.question not in questions
        assert pair.question.startswith("What is the purpose of")
        # The facts are in the training data; only the phrasing of the question is new.
        assert pair.answer in answers
