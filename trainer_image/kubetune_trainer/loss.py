"""The training objective: summed cross-entropy over label-carrying tokens only.

The model body runs on every position, but the output head (for SmolLM2 a 49k x 576 matrix, ~21% of
the model's FLOPs per token) runs only where the shifted label is not -100: the prompt, the system
prompt, the chat template and padding pay nothing for it. Returning the *sum* (not the mean) lets the
loop normalise by the label tokens of the whole optimizer step (all micro-batches, all ranks), so a
micro-batch with more answer tokens weighs more, exactly as one big batch would.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kubetune_trainer.data.types import IGNORE_INDEX

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
        logits, targets, _ = _label_logits(
            self.model,
            fast=self._fast,
            input_ids=input_ids,
            labels=labels,
            attention_mask=attention_mask,
            position_ids=position_ids,
        )
        return F.cross_entropy(logits.float(), targets, reduction="sum")


def _label_logits(
    model: nn.Module,
    *,
    fast: bool,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logits, targets) at the label-carrying positions, row-major, and their (B, L-1) mask.

    Position ``t`` predicts label ``t + 1``; ``fast`` runs the output head on those positions only.
    """
    selected = labels[:, 1:] != IGNORE_INDEX
    targets = labels[:, 1:][selected]
    causal = causal_lm_of(model)
    if fast:
        hidden = causal.get_decoder()(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=False,
        ).last_hidden_state
        logits = causal.get_output_embeddings()(hidden[:, :-1][selected])
    else:
        logits = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=False,
        ).logits[:, :-1][selected]
    return logits, targets, selected


def per_example_losses(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of an unpacked batch (``collate(..., packing=False)``): its summed cross-entropy over its
    label tokens (float32) and the number of those tokens (int64); a row without labels gets 0 and 0.

    Summed over the rows it equals :class:`LabelTokenLoss`'s loss. It runs under the caller's grad mode
    (wrap it in ``torch.no_grad()`` to evaluate). A packed row holds several examples, so a packed batch
    (its 4-D attention mask) is refused.
    """
    attention_mask = batch["attention_mask"]
    if attention_mask.dim() != 2:
        raise ValueError("per_example_losses needs an unpacked batch (a 2-D padding mask, one example per row)")
    return row_losses(
        model,
        fast=head_only_on_labels_is_exact(causal_lm_of(model)),
        input_ids=batch["input_ids"],
        labels=batch["labels"],
        attention_mask=attention_mask,
        position_ids=batch["position_ids"],
    )


def row_losses(
    model: nn.Module,
    *,
    fast: bool,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: summed cross-entropy of its label tokens (float32) and their number (int64). The negated
    sum is the row's summed log-probability of its labels, which DPO uses (:mod:`kubetune_trainer.dpo`)."""
    logits, targets, selected = _label_logits(
        model,
        fast=fast,
        input_ids=input_ids,
        labels=labels,
        attention_mask=attention_mask,
        position_ids=position_ids,
    )
    token_losses = F.cross_entropy(logits.float(), targets, reduction="none")
    # Scattered back to (B, L-1) and summed per row: a fixed order of additions (index_add_ on CUDA is not).
    dense = torch.zeros(selected.shape, dtype=token_losses.dtype, device=token_losses.device)
    dense = dense.masked_scatter(selected, token_losses)
    return dense.sum(dim=1), selected.sum(dim=1)


def label_token_count(labels: torch.Tensor) -> int:
    """Tokens that carry a loss in a batch (after the one-token shift)."""
    return int((labels[:, 1:] != IGNORE_INDEX).sum().item())
