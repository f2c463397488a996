"""A tiny byte-level chat tokenizer for the data layer's tests (imported by conftest.py and tests).

It behaves like SmolLM2's where it matters (a ChatML template that injects a default system prompt, no
``{% generation %}`` markers, pad == eos) but builds in milliseconds, with no download.
"""

from __future__ import annotations

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
