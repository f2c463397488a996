"""``check_data``: the validation pass without a tokenizer finds what ``prepare_data`` finds before tokenizing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kubetune_trainer.data import DataError, check_data, prepare_data

from kubetune.api.spec import DatasetSpec

WriteJsonl = Callable[[str, list[Any]], Path]
GOOD = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


def test_check_data_reports_each_bad_record_like_prepare_data(write_jsonl: WriteJsonl, tiny_tokenizer: Any) -> None:
    path = write_jsonl("train.jsonl", [GOOD, "{not json", {"messages": [{"role": "robot", "content": "x"}]}])
    spec = DatasetSpec(train=[path.as_uri()])
    with pytest.raises(DataError) as checked:
        check_data(spec, seed=0)
    with pytest.raises(DataError) as prepared:
        prepare_data(spec, tokenizer=tiny_tokenizer, seed=0)
    assert checked.value.errors == prepared.value.errors
    assert [issue.source.rsplit(":", 1)[1] for issue in checked.value.errors] == ["2", "3"]


def test_check_data_counts_examples_splits_and_warns_without_tokens(write_jsonl: WriteJsonl) -> None:
    path = write_jsonl("train.jsonl", [GOOD] * 10)
    report = check_data(DatasetSpec(train=[path.as_uri()], validation_split=0.2), seed=0)
    assert (report.records, report.train_examples, report.validation_examples) == (10, 8, 2)
    assert report.train_tokens.count == 0
    assert any("only 8 training examples" in w for w in report.warnings)
    assert any("duplicate" in w for w in report.warnings)
