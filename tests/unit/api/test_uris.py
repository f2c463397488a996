from __future__ import annotations

from pathlib import PurePosixPath

import pytest

from kubetune.api.uris import UriError, local_path, parse_uri


@pytest.mark.parametrize(
    ("raw", "scheme", "authority", "path", "revision"),
    [
        ("hf://HuggingFaceTB/SmolLM2-135M-Instruct@main", "hf", "HuggingFaceTB/SmolLM2-135M-Instruct", "", "main"),
        ("hf://meta-llama/Llama-3.2-1B", "hf", "meta-llama/Llama-3.2-1B", "", None),
        ("pvc://models/llama/3.2", "pvc", "models", "llama/3.2", None),
        ("pvc://data", "pvc", "data", "", None),
        ("s3://my-bucket/prefix/a/", "s3", "my-bucket", "prefix/a", None),
        ("file:///tmp/model", "file", "", "/tmp/model", None),
    ],
)
def test_valid_uris_parse(raw: str, scheme: str, authority: str, path: str, revision: str | None) -> None:
    uri = parse_uri(raw)
    assert (uri.scheme, uri.authority, uri.path, uri.revision) == (scheme, authority, path, revision)


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ("gs://bucket/x", "unsupported scheme 'gs'"),
        ("/data/train.jsonl", "is not a URI"),
        ("hf://just-a-name", "hf://org/name"),
        ("hf://org/name@", "empty revision"),
        ("pvc://Bad_Claim/x", "not a valid PersistentVolumeClaim name"),
        ("s3://AKIA:secret@bucket/x", "must not carry credentials"),
        ("s3://B/x", "not a valid bucket name"),
        ("file://relative/path", "must be absolute"),
        ("pvc://claim/../etc", "'..'"),
        ("s3://", "empty or blank"),
    ],
)
def test_bad_uris_say_what_is_wrong(raw: str, fragment: str) -> None:
    with pytest.raises(UriError, match=None) as err:
        parse_uri(raw)
    assert fragment in str(err.value)


def test_credentials_are_not_echoed_in_the_error() -> None:
    with pytest.raises(UriError) as err:
        parse_uri("s3://AKIAEXAMPLE:hunter2@bucket/x")
    assert "hunter2" not in str(err.value)


def test_local_paths_follow_the_pvc_mount_contract() -> None:
    assert local_path(parse_uri("pvc://data/a/b.jsonl")) == PurePosixPath("/mnt/kubetune/pvc/data/a/b.jsonl")
    assert local_path(parse_uri("pvc://data/x"), pvc_root=PurePosixPath("/tmp/r")) == PurePosixPath("/tmp/r/data/x")
    assert local_path(parse_uri("file:///srv/x")) == PurePosixPath("/srv/x")
    assert local_path(parse_uri("s3://bucket/x")) is None
