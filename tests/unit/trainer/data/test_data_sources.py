"""Reading data files: every file type, directories and prefixes in sorted order, pvc:// and s3://."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path, PurePosixPath
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from kubetune_trainer.data import DataError, prepare_data
from kubetune_trainer.data.sources import read_file_bytes, read_records, resolve_data_files

from kubetune.api.spec import DatasetSpec

ROWS = [{"prompt": f"Question {i}?", "completion": f"Answer {i}."} for i in range(3)]


def records_of(path: Path) -> list[Any]:
    [data_file] = resolve_data_files(path.as_uri()).files
    return [(r.source.rsplit("/", 1)[1], r.value, r.error) for r in read_records(data_file, read_file_bytes(data_file))]


def test_jsonl_records_carry_their_physical_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(f"{json.dumps(ROWS[0])}\n\n{json.dumps(ROWS[1])}\n", encoding="utf-8")
    assert records_of(path) == [("d.jsonl:1", ROWS[0], None), ("d.jsonl:3", ROWS[1], None)]


def test_json_array_records_are_numbered(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_text(json.dumps(ROWS), encoding="utf-8")
    assert [source for source, _, _ in records_of(path)] == ["d.json:#1", "d.json:#2", "d.json:#3"]


def test_json_file_holding_json_lines_is_read_as_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_text("\n".join(json.dumps(r) for r in ROWS), encoding="utf-8")
    assert [value for _, value, _ in records_of(path)] == ROWS


def test_parquet_rows_are_records(tmp_path: Path) -> None:
    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), path)
    assert records_of(path) == [(f"d.parquet:#{i + 1}", row, None) for i, row in enumerate(ROWS)]


def test_csv_rows_are_records_numbered_by_line_with_the_header_as_line_1(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text('prompt,completion\nQ1,A1\n"multi\nline",A2\nQ3,A3\n', encoding="utf-8")
    assert records_of(path) == [
        ("d.csv:2", {"prompt": "Q1", "completion": "A1"}, None),
        ("d.csv:3", {"prompt": "multi\nline", "completion": "A2"}, None),
        ("d.csv:5", {"prompt": "Q3", "completion": "A3"}, None),
    ]


def test_gzipped_jsonl_is_decompressed(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl.gz"
    path.write_bytes(gzip.compress("\n".join(json.dumps(r) for r in ROWS).encode()))
    assert [value for _, value, _ in records_of(path)] == ROWS


def test_a_directory_reads_every_data_file_under_it_in_sorted_order(tmp_path: Path) -> None:
    for name in ["b/part-1.jsonl", "a.jsonl", "b/part-0.jsonl", "_SUCCESS", ".hidden.jsonl", "README.md"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("{}\n", encoding="utf-8")
    resolved = resolve_data_files(tmp_path.as_uri() + "/")
    root = tmp_path.as_uri()
    assert [f.uri for f in resolved.files] == [f"{root}/a.jsonl", f"{root}/b/part-0.jsonl", f"{root}/b/part-1.jsonl"]
    assert resolved.skipped == [f"{root}/README.md"]


def test_a_prefix_reads_the_files_whose_names_start_with_it(tmp_path: Path) -> None:
    for name in ["train-01.jsonl", "train-00.jsonl", "test-00.jsonl"]:
        (tmp_path / name).write_text("{}\n", encoding="utf-8")
    resolved = resolve_data_files(f"{tmp_path.as_uri()}/train-")
    assert [f.uri.rsplit("/", 1)[1] for f in resolved.files] == ["train-00.jsonl", "train-01.jsonl"]


def test_pvc_uris_read_under_the_claim_mount(tmp_path: Path) -> None:
    (tmp_path / "my-claim" / "sets").mkdir(parents=True)
    (tmp_path / "my-claim" / "sets" / "d.jsonl").write_text(json.dumps(ROWS[0]) + "\n", encoding="utf-8")
    [data_file] = resolve_data_files("pvc://my-claim/sets/d.jsonl", pvc_root=PurePosixPath(tmp_path)).files
    assert data_file.path == str(tmp_path / "my-claim" / "sets" / "d.jsonl")
    assert [r.source for r in read_records(data_file, read_file_bytes(data_file))] == ["pvc://my-claim/sets/d.jsonl:1"]


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("file:///nonexistent/kubetune/d.jsonl", "no such file"),
        ("hf://org/name", "not a dataset location"),
    ],
)
def test_unusable_locations_are_lookup_errors(uri: str, message: str) -> None:
    with pytest.raises(LookupError, match=message):
        resolve_data_files(uri)


def test_unsupported_file_type_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "d.txt").write_text("hello", encoding="utf-8")
    with pytest.raises(LookupError, match="unsupported file type"):
        resolve_data_files((tmp_path / "d.txt").as_uri())


def test_s3_prefix_is_read_through_fsspec(tiny_tokenizer: Any) -> None:
    memory = fsspec.filesystem("memory")
    shards = [ROWS[:2], ROWS[2:]]
    blobs = ["\n".join(json.dumps(r) for r in shard).encode() for shard in shards]
    try:
        for index, blob in enumerate(blobs):
            memory.pipe(f"/kubetune-test-bucket/data/part-{index}.jsonl", blob)
        spec = DatasetSpec(train=["s3://kubetune-test-bucket/data/"])
        data = prepare_data(spec, tokenizer=tiny_tokenizer, seed=0, remote_fs=memory)
    finally:
        memory.rm("/kubetune-test-bucket", recursive=True)
    assert len(data.train) == 3
    assert [f["uri"] for f in data.report.files] == [
        "s3://kubetune-test-bucket/data/part-0.jsonl",
        "s3://kubetune-test-bucket/data/part-1.jsonl",
    ]
    assert data.dataset_sha256 == hashlib.sha256(b"".join(blobs)).hexdigest()


def test_dataset_hash_covers_training_files_in_order_and_not_validation(tmp_path: Path, tiny_tokenizer: Any) -> None:
    first, second, held_out = (tmp_path / n for n in ("1.jsonl", "2.jsonl", "v.jsonl"))
    first.write_text(json.dumps(ROWS[0]) + "\n", encoding="utf-8")
    second.write_text(json.dumps(ROWS[1]) + "\n", encoding="utf-8")
    held_out.write_text(json.dumps(ROWS[2]) + "\n", encoding="utf-8")

    def digest(train: list[Path]) -> str:
        spec = DatasetSpec(train=[p.as_uri() for p in train], validation=held_out.as_uri())
        return prepare_data(spec, tokenizer=tiny_tokenizer, seed=0).dataset_sha256

    assert digest([first, second]) == hashlib.sha256(first.read_bytes() + second.read_bytes()).hexdigest()
    assert digest([second, first]) != digest([first, second])


def test_missing_training_file_is_a_data_error_naming_the_uri(tmp_path: Path, tiny_tokenizer: Any) -> None:
    uri = (tmp_path / "absent.jsonl").as_uri()
    with pytest.raises(DataError) as caught:
        prepare_data(DatasetSpec(train=[uri]), tokenizer=tiny_tokenizer, seed=0)
    [issue] = caught.value.errors
    assert (issue.source, issue.field) == (uri, "train[0]")
