"""Trainer unit tests use the session fixtures of ``tests/conftest.py``: ``smollm2_dir``,
``smollm2_tokenizer`` (the real SmolLM2 tokenizer; tests marked ``@pytest.mark.model``), ``tiny_model_dir``
and ``lamini_subset``; and ``config_only_model_dir`` from here.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

TINY_CHAT_TOKENIZER = Path(__file__).resolve().parent / "data" / "tiny_chat_tokenizer.py"


def load_tiny_chat_tokenizer() -> ModuleType:
    """``data/tiny_chat_tokenizer.py``, which is on the import path only for the data tests."""
    spec = importlib.util.spec_from_file_location("tiny_chat_tokenizer", TINY_CHAT_TOKENIZER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def config_only_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny chat tokenizer and a 2-layer Llama config.json, no weights: what the data check reads."""
    directory: Path = load_tiny_chat_tokenizer().write_config_only_model(tmp_path_factory.mktemp("config-only"))
    return directory
