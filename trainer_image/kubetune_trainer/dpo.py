"""The DPO objective: log-probabilities of whole answers, the sigmoid preference loss, its reward metrics.

A batch holds B pairs as 2B rows, the chosen answers first (``collate_pairs``). An answer's reward is
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
from kubetune_trainer.loss import causal_lm_of, head_only_on_labels_is_exact, per_example_losses, row_losses

# The stats tensor of PreferenceLoss, summed over pairs: add it across micro-batches and ranks, then read it
# with PreferenceStats.from_tensor.
STATS_FIELDS = ("pairs", "correct", "margin_sum", "chosen_reward_sum", "rejected_reward_sum")


class DpoTerms(NamedTuple):
    """Per pair (shape (B,), float32): the loss, and the rewards of both answers (detached)."""

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor


def sequence_logps(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Per row of an unpacked batch: the summed log-probability (float32) of its label tokens, position
    ``t`` predicting label ``t + 1``; 0 for a row without labels. Runs under the caller's grad mode."""
    return -per_example_losses(model, batch)[0]


def _sequence_logps(
    model: nn.Module,
    *,
    fast: bool,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
) -> torch.Tensor:
    if attention_mask.dim() != 2:
        raise ValueError("sequence log-probabilities need an unpacked batch (a 2-D padding mask, one answer per row)")
    # The output head runs only where a label is predicted when ``fast``, as in LabelTokenLoss.
    losses, _ = row_losses(
        model,
        fast=fast,
        input_ids=input_ids,
        labels=labels,
        attention_mask=attention_mask,
        position_ids=position_ids,
    )
    return -losses


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
        labels: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        reference_chosen: torch.Tensor,
        reference_rejected: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = reference_chosen.shape[0]
        if input_ids.shape[0] != 2 * pairs or reference_rejected.shape[0] != pairs:
            raise ValueError(
                f"a batch of {pairs} pairs has 2 x {pairs} rows and {pairs} reference log-probabilities per side; "
                f"got {input_ids.shape[0]} rows and {reference_rejected.shape[0]} rejected references"
            )
        logps = _sequence_logps(
            self.model,
            fast=self._fast,
            input_ids=input_ids,
            labels=labels,
            attention_mask=attention_mask,
            position_ids=position_ids,
        )
        terms = dpo_terms(
            logps[:pairs],
            logps[pairs:],
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
    fast = head_only_on_labels_is_exact(causal_lm_of(model))
    with torch.no_grad(), _eval_mode(model), _adapters_off(model, off=disable_adapters):
        for batch in batches:
            logps = _sequence_logps(
                model,
                fast=fast,
                input_ids=batch["input_ids"],
                labels=batch["labels"],
                attention_mask=batch["attention_mask"],
                position_ids=batch["position_ids"],
            )
            pairs = logps.shape[0] // 2
            chosen.append(logps[:pairs])
            rejected.append(logps[pairs:])
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
