"""Trainer unit tests use the session fixtures of ``tests/conftest.py``: ``smollm2_dir``,
``smollm2_tokenizer`` (the real SmolLM2 tokenizer; tests marked ``@pytest.mark.model``), ``tiny_model_dir``
and ``lamini_subset``.
"""
