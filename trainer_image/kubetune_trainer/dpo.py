"""The DPO objective: log-probabilities of whole answers, the sigmoid preference loss, its reward metrics.

A batch holds B pairs as B rows (``collate_pairs``): the prompt once, then both answers, each seeing the
prompt and itself, so the prompt is computed once per pair and not once per answer. An answer's reward is
beta x (its log-probability under the trained model - under the reference model), summed over its tokens;
the loss pushes the chosen answer's reward above the rejected one's. The reference is the model before
training: with adapters it is the same module with the adapters switched off, so no second copy of the
weights is kept, and its log-probabilities can be computed once before training.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from kubetune.api.progress import PreferenceMetrics
from kubetune_trainer.data.types import IGNORE_INDEX
from kubetune_trainer.loss import causal_lm_of, head_only_on_labels_is_exact

# The stats tensor of PreferenceLoss, summed over pairs: add it across micro-batches and ranks, then read it
# with PreferenceStats.from_tensor.
STATS_FIELDS = ("pairs", "correct", "margin_sum", "chosen_reward_sum", "rejected_reward_sum")


class DpoTerms(NamedTuple):
    """Per pair (shape (B,), float32): the loss, and the rewards of both answers (detached)."""

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor


def pair_logps(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per pair of a :func:`~kubetune_trainer.data.preference.collate_pairs` batch: the summed
    log-probability (float32) of the chosen answer's label tokens and of the rejected one's, each of shape
    (B,). Runs under the caller's grad mode; pass the model itself or its PEFT wrapper, not a DDP wrapper."""
    return _pair_logps(
        model,
        fast=head_only_on_labels_is_exact(causal_lm_of(model)),
        input_ids=batch["input_ids"],
        position_ids=batch["position_ids"],
        attention_mask=batch["attention_mask"],
        predict_index=batch["predict_index"],
        targets=batch["targets"],
    )


def _pair_logps(
    model: nn.Module,
    *,
    fast: bool,
    input_ids: torch.Tensor,
    position_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    predict_index: torch.Tensor,
    targets: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    if attention_mask.dim() != 4 or targets.shape[0] != 2 * input_ids.shape[0]:
        raise ValueError(
            "expected a batch of pairs from collate_pairs: a (B, 1, L, L) mask and 2B rows of targets, got a "
            f"{attention_mask.dim()}-D mask, {input_ids.shape[0]} rows and {targets.shape[0]} rows of targets"
        )
    selected = targets != IGNORE_INDEX
    causal = causal_lm_of(model)
    if fast:
        # The output head runs only at the positions that predict a label, as in LabelTokenLoss.
        hidden = causal.get_decoder()(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        ).last_hidden_state
        logits = causal.get_output_embeddings()(hidden.reshape(-1, hidden.shape[-1])[predict_index[selected]])
    else:
        full = model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        ).logits
        logits = full.reshape(-1, full.shape[-1])[predict_index[selected]]
    token_losses = F.cross_entropy(logits.float(), targets[selected], reduction="none")
    # Scattered back to (2B, T) and summed per sequence: a fixed order of additions.
    dense = torch.zeros(selected.shape, dtype=token_losses.dtype, device=token_losses.device)
    logps = -dense.masked_scatter(selected, token_losses).sum(dim=1)
    pairs = input_ids.shape[0]
    return logps[:pairs], logps[pairs:]


def dpo_terms(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    *,
    beta: float,
    label_smoothing: float,
) -> DpoTerms:
    """The sigmoid DPO loss per pair from summed answer log-probabilities.

    With logits = (policy_chosen - reference_chosen) - (policy_rejected - reference_rejected):
    loss = -logsigmoid(beta x logits) x (1 - label_smoothing) - logsigmoid(-beta x logits) x label_smoothing,
    the conservative DPO loss, which assumes a fraction ``label_smoothing`` of the preferences is flipped.
    """
    chosen_ratio = policy_chosen.float() - reference_chosen.float().to(policy_chosen.device)
    rejected_ratio = policy_rejected.float() - reference_rejected.float().to(policy_rejected.device)
    logits = beta * (chosen_ratio - rejected_ratio)
    losses = -F.logsigmoid(logits) * (1 - label_smoothing) - F.logsigmoid(-logits) * label_smoothing
    return DpoTerms(
        losses=losses,
        chosen_rewards=(beta * chosen_ratio).detach(),
        rejected_rewards=(beta * rejected_ratio).detach(),
    )


class PreferenceLoss(nn.Module):
    """``forward(batch, reference log-probabilities) -> (summed DPO loss, stats)``; wraps the trained model so
    DDP sees one module per step.

    The loss is summed over the batch's pairs: the loop divides by the pairs of the whole optimizer step (all
    micro-batches, all ranks), as it divides the SFT loss by label tokens. ``stats`` is detached, float32, in
    the order of :data:`STATS_FIELDS`.
    """

    def __init__(self, model: nn.Module, *, beta: float, label_smoothing: float) -> None:
        super().__init__()
        self.model = model
        self.beta = beta
        self.label_smoothing = label_smoothing
        self._fast = head_only_on_labels_is_exact(causal_lm_of(model))

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        predict_index: torch.Tensor,
        targets: torch.Tensor,
        reference_chosen: torch.Tensor,
        reference_rejected: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = reference_chosen.shape[0]
        if input_ids.shape[0] != pairs or reference_rejected.shape[0] != pairs:
            raise ValueError(
                f"a batch of {pairs} pairs has {pairs} rows and {pairs} reference log-probabilities per side; "
                f"got {input_ids.shape[0]} rows and {reference_rejected.shape[0]} rejected references"
            )
        policy_chosen, policy_rejected = _pair_logps(
            self.model,
            fast=self._fast,
            input_ids=input_ids,
            position_ids=position_ids,
            attention_mask=attention_mask,
            predict_index=predict_index,
            targets=targets,
        )
        terms = dpo_terms(
            policy_chosen,
            policy_rejected,
            reference_chosen,
            reference_rejected,
            beta=self.beta,
            label_smoothing=self.label_smoothing,
        )
        chosen, rejected = terms.chosen_rewards, terms.rejected_rewards
        stats = torch.stack(
            [
                torch.tensor(float(pairs), device=chosen.device),
                (chosen > rejected).float().sum(),
                (chosen - rejected).sum(),
                chosen.sum(),
                rejected.sum(),
            ]
        )
        return terms.losses.sum(), stats.detach()


@dataclass(frozen=True, kw_only=True)
class PreferenceStats:
    """Sums over pairs (of a step, or an evaluation), as :class:`PreferenceLoss` returns them."""

    pairs: float = 0.0
    # Pairs whose chosen reward is strictly the higher.
    correct: float = 0.0
    margin_sum: float = 0.0
    chosen_reward_sum: float = 0.0
    rejected_reward_sum: float = 0.0

    @classmethod
    def from_tensor(cls, stats: torch.Tensor) -> PreferenceStats:
        """From a stats tensor (summed over micro-batches and ranks); one transfer to the host."""
        values = [float(v) for v in stats.detach().float().cpu().tolist()]
        if len(values) != len(STATS_FIELDS):
            raise ValueError(f"expected {len(STATS_FIELDS)} stats ({', '.join(STATS_FIELDS)}), got {len(values)}")
        return cls(**dict(zip(STATS_FIELDS, values, strict=True)))

    def __add__(self, other: PreferenceStats) -> PreferenceStats:
        return PreferenceStats(
            **{name: getattr(self, name) + getattr(other, name) for name in STATS_FIELDS},
        )

    def metrics(self) -> PreferenceMetrics | None:
        """Means per pair; ``None`` without pairs."""
        if self.pairs <= 0:
            return None
        return PreferenceMetrics(
            reward_accuracy=min(1.0, max(0.0, self.correct / self.pairs)),
            reward_margin=self.margin_sum / self.pairs,
            chosen_reward=self.chosen_reward_sum / self.pairs,
            rejected_reward=self.rejected_reward_sum / self.pairs,
        )


def reference_logps(
    model: nn.Module, batches: Iterable[Mapping[str, torch.Tensor]], *, disable_adapters: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference model's summed answer log-probabilities, (chosen, rejected), each of shape (pairs,) in
    batch order, float32, on the batches' device.

    Computed without gradients, in eval mode (the model's mode is restored after). ``disable_adapters``: the
    reference is the base model under a PEFT model's adapters (``model.disable_adapter()``); otherwise the
    model as it is (call it before training to fix the reference of a full fine-tune). Pass the model itself,
    not a DDP wrapper.
    """
    chosen: list[torch.Tensor] = []
    rejected: list[torch.Tensor] = []
    with torch.no_grad(), _eval_mode(model), _adapters_off(model, off=disable_adapters):
        for batch in batches:
            batch_chosen, batch_rejected = pair_logps(model, batch)
            chosen.append(batch_chosen)
            rejected.append(batch_rejected)
    if not chosen:
        return torch.zeros(0), torch.zeros(0)
    return torch.cat(chosen), torch.cat(rejected)


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode (no dropout) inside; each submodule's own mode restored after."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def _adapters_off(model: nn.Module, *, off: bool) -> contextlib.AbstractContextManager[object]:
    if not off:
        return contextlib.nullcontext()
    disable = getattr(model, "disable_adapter", None)
    if not callable(disable):
        raise TypeError(f"disable_adapters needs a PEFT model (with disable_adapter()), got {type(model).__name__}")
    context: contextlib.AbstractContextManager[object] = disable()
    return context
