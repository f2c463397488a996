"""The training objective: summed cross-entropy over label-carrying tokens only.

The model body runs on every position, but the output head (for SmolLM2 a 49k x 576 matrix, ~21% of
the model's FLOPs per token) runs only where the shifted label is not -100: the prompt, the system
prompt, the chat template and padding pay nothing for it. Returning the *sum* (not the mean) lets the
loop normalise by the label tokens of the whole optimizer step (all micro-batches, all ranks), so a
micro-batch with more answer tokens weighs more, exactly as one big batch would.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

IGNORE_INDEX = -100
# Config attributes of models whose logits are transformed after the head (softcapping, scaling):
# for those, the plain head is not the model's output, so the loss goes through the full forward.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def causal_lm_of(model: nn.Module) -> Any:
    """The transformers ``*ForCausalLM`` inside a PEFT wrapper (or the model itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def head_only_on_labels_is_exact(causal_lm: Any) -> bool:
    config = causal_lm.config
    return all(getattr(config, name, None) in (None, 1.0) for name in _LOGIT_TRANSFORMS)


class LabelTokenLoss(nn.Module):
    """``forward(batch) -> summed loss``; wraps the trained model so DDP sees one module per step."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        causal = causal_lm_of(model)
        self._fast = head_only_on_labels_is_exact(causal)

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
    ) -> torch.Tensor:
        shift_labels = labels[:, 1:]
        selected = shift_labels != IGNORE_INDEX
        targets = shift_labels[selected]
        causal = causal_lm_of(self.model)
        if self._fast:
            hidden = causal.get_decoder()(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=False,
            ).last_hidden_state
            logits = causal.get_output_embeddings()(hidden[:, :-1][selected])
        else:
            logits = self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=False,
            ).logits[:, :-1][selected]
        return F.cross_entropy(logits.float(), targets, reduction="sum")


def label_token_count(labels: torch.Tensor) -> int:
    """Tokens that carry a loss in a batch (after the one-token shift)."""
    return int((labels[:, 1:] != IGNORE_INDEX).sum().item())
