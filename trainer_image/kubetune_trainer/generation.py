"""Before/after samples: greedy answers to a few held-out prompts, so a reviewer can see the change."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from kubetune_trainer.data import IGNORE_INDEX, TokenizedExample


@dataclass(frozen=True, kw_only=True)
class SamplePrompt:
    prompt_ids: list[int]
    prompt: str
    reference: str


def sample_prompts(examples: Sequence[TokenizedExample], *, tokenizer: Any, count: int) -> list[SamplePrompt]:
    """The first ``count`` examples that have a prompt: everything before the first labelled token."""
    prompts: list[SamplePrompt] = []
    for example in examples:
        if len(prompts) >= count:
            break
        first = next((i for i, label in enumerate(example.labels) if label != IGNORE_INDEX), None)
        if not first:  # no label at all, or a text example labelled from its first token
            continue
        reference_ids = [t for t in example.labels[first:] if t != IGNORE_INDEX]
        prompts.append(
            SamplePrompt(
                prompt_ids=example.input_ids[:first],
                prompt=tokenizer.decode(example.input_ids[:first], skip_special_tokens=False),
                reference=tokenizer.decode(reference_ids, skip_special_tokens=True),
            )
        )
    return prompts


@torch.no_grad()
def generate(
    model: Any, prompts: Sequence[SamplePrompt], *, tokenizer: Any, max_new_tokens: int, device: torch.device
) -> list[str]:
    """Greedy completions, one prompt at a time (no padding questions, and it is a handful of prompts)."""
    was_training = model.training
    model.eval()
    outputs = []
    try:
        for sample in prompts:
            ids = torch.tensor([sample.prompt_ids], dtype=torch.long, device=device)
            generated = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
                use_cache=True,
            )
            outputs.append(tokenizer.decode(generated[0, ids.shape[1] :], skip_special_tokens=True))
    finally:
        model.train(was_training)
    return outputs
