"""Model sources: which loading failures are permanent (BAD_CONFIG) and which the Job should retry."""

from __future__ import annotations

from pathlib import Path

import pytest
from huggingface_hub.errors import RepositoryNotFoundError
from kubetune_trainer.errors import ConfigError
from kubetune_trainer.modeling import ModelSource, is_permanent_load_error, resolve_model_source

from kubetune.api.spec import ModelSpec


def _hub(name: str = "org/model") -> ModelSource:
    return ModelSource(
        name_or_path=name, revision="main", gguf_file=None, trust_remote_code=False, uri=f"hf://{name}@main"
    )


def _wrapped(cause: BaseException) -> OSError:
    try:
        raise OSError("transformers could not load it") from cause
    except OSError as err:
        return err


def test_a_missing_hub_repository_is_permanent() -> None:
    # The real exception needs an HTTP response object; its class is what the check looks at.
    not_found = RepositoryNotFoundError.__new__(RepositoryNotFoundError)
    assert is_permanent_load_error(_wrapped(not_found), source=_hub())


def test_a_hub_timeout_is_left_to_the_retry() -> None:
    assert not is_permanent_load_error(_wrapped(TimeoutError("read timed out")), source=_hub())


def test_an_unusable_local_directory_is_permanent(tmp_path: Path) -> None:
    local = ModelSource(
        name_or_path=str(tmp_path), revision=None, gguf_file=None, trust_remote_code=False, uri=f"file://{tmp_path}"
    )
    assert is_permanent_load_error(OSError("no config.json"), source=local)


def test_missing_gguf_file_is_reported_against_model_gguf_file(tmp_path: Path) -> None:
    spec = ModelSpec(source=f"file://{tmp_path}", gguf_file="absent.gguf")
    with pytest.raises(ConfigError, match=r"^model\.ggufFile: absent\.gguf not found"):
        resolve_model_source(spec, cache_dir=tmp_path)


def test_hub_source_keeps_its_pinned_revision(tmp_path: Path) -> None:
    source = resolve_model_source(ModelSpec(source="hf://HuggingFaceTB/SmolLM2-135M@a1b2c3"), cache_dir=tmp_path)
    assert (source.name_or_path, source.revision) == ("HuggingFaceTB/SmolLM2-135M", "a1b2c3")
    assert source.pretrained_kwargs()["revision"] == "a1b2c3"
