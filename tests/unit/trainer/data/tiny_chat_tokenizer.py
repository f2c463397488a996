"""A tiny byte-level chat tokenizer for the data layer's tests (imported by conftest.py and tests).

It behaves like SmolLM2's where it matters (a ChatML template that injects a default system prompt, no
``{% generation %}`` markers, pad == eos) but builds in milliseconds, with no download.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# A ChatML template written for these tests, shaped like SmolLM2's: a default system prompt unless the
# conversation starts with one, "<|im_start|>role\ncontent<|im_end|>\n" per message.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a tiny test model.<|im_end|>\\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def build_tiny_tokenizer(*, chat_template: str | None = CHATML_TEMPLATE) -> Any:
    """One token per byte (256) plus three special tokens: vocabulary 259."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {symbol: index for index, symbol in enumerate(sorted(alphabet))}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|im_end|>", bos_token="<|im_start|>"
    )
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS})
    tokenizer.chat_template = chat_template
    return tokenizer


def write_config_only_model(directory: Path) -> Path:
    """A model directory without weights: this tokenizer and a 2-layer Llama ``config.json``, everything
    the data check reads (it never loads weights)."""
    from transformers import LlamaConfig

    tokenizer = build_tiny_tokenizer()
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(directory)
    LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    ).save_pretrained(directory)
    return directory
