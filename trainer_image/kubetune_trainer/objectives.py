"""What the loop optimizes: supervised fine-tuning on answers (sft) or preference pairs (dpo).

The recipe's loop, evaluation, checkpoints and output are the same for both; an objective supplies the
rest: the items' lengths for batch planning, their tensors, the module whose forward returns a *summed*
loss (with optional statistics), the units that sum is divided by (label tokens for sft, pairs for dpo),
and per-item scores on the held-out data for the evaluation report.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
from torch import nn

from kubetune.api.progress import PreferenceMetrics
from kubetune.api.spec import Objective as ObjectiveName
from kubetune_trainer.data import PreparedData, TokenizedExample, collate
from kubetune_trainer.data.preference import collate_pairs
from kubetune_trainer.data.types import PreparedPairs, TokenizedPair
from kubetune_trainer.dpo import PreferenceLoss, PreferenceStats, dpo_terms, pair_logps, reference_logps
from kubetune_trainer.loss import LabelTokenLoss, label_token_count, per_example_losses

log = logging.getLogger(__name__)

Batch = dict[str, torch.Tensor]
Split = Literal["train", "validation"]
# precomputed: the reference model's log-probabilities of every pair once, before the first step (kept in
# checkpoints); live: recomputed in every step with the adapters switched off (PEFT methods only).
ReferenceMode = Literal["precomputed", "live"]


@dataclass(frozen=True, kw_only=True)
class ItemScores:
    """Per held-out item (in validation order): its summed loss, the units it is divided by, and for dpo the
    reward margin (chosen - rejected)."""

    loss_sums: list[float]
    units: list[float]
    chosen_rewards: list[float] | None = None
    rejected_rewards: list[float] | None = None

    @property
    def margins(self) -> list[float] | None:
        if self.chosen_rewards is None or self.rejected_rewards is None:
            return None
        return [c - r for c, r in zip(self.chosen_rewards, self.rejected_rewards, strict=True)]

    def preference(self) -> PreferenceMetrics | None:
        """Reward metrics over all items (dpo only)."""
        chosen, rejected = self.chosen_rewards, self.rejected_rewards
        if chosen is None or rejected is None or not chosen:
            return None
        pairs = len(chosen)
        return PreferenceMetrics(
            reward_accuracy=sum(c > r for c, r in zip(chosen, rejected, strict=True)) / pairs,
            reward_margin=(sum(chosen) - sum(rejected)) / pairs,
            chosen_reward=sum(chosen) / pairs,
            rejected_reward=sum(rejected) / pairs,
        )


class Objective(Protocol):
    name: ObjectiveName

    def lengths(self, split: Split) -> list[int]: ...

    def size(self, split: Split) -> int: ...

    def loss_module(self, model: nn.Module) -> nn.Module: ...

    def batch(self, rows: list[list[int]], *, split: Split, device: torch.device) -> Batch: ...

    def units(self, batch: Batch) -> float: ...

    def input_tokens(self, rows: list[list[int]], *, split: Split) -> int: ...

    def forward(self, module: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor | None]: ...

    def metrics(self, stats: torch.Tensor | None) -> PreferenceMetrics | None: ...

    def score(self, model: nn.Module, indices: list[int], *, device: torch.device) -> ItemScores: ...

    def examples_for_prompts(self, split: Split) -> list[TokenizedExample]: ...


class SftObjective:
    """Cross-entropy on the answer tokens, divided by the answer tokens of the whole step."""

    name: ObjectiveName = "sft"

    def __init__(self, data: PreparedData, *, packing: bool, pad_token_id: int) -> None:
        self.data = data
        self._packing = packing
        self._pad = pad_token_id

    def _items(self, split: Split) -> list[TokenizedExample]:
        return self.data.train if split == "train" else self.data.validation

    def lengths(self, split: Split) -> list[int]:
        return [e.row_length for e in self._items(split)]

    def size(self, split: Split) -> int:
        return len(self._items(split))

    def loss_module(self, model: nn.Module) -> nn.Module:
        return LabelTokenLoss(model)

    def batch(self, rows: list[list[int]], *, split: Split, device: torch.device) -> Batch:
        items = self._items(split)
        tensors = collate([[items[i] for i in row] for row in rows], packing=self._packing, pad_token_id=self._pad)
        return {k: v.to(device, non_blocking=True) for k, v in tensors.items()}

    def units(self, batch: Batch) -> float:
        return float(label_token_count(batch["labels"]))

    def input_tokens(self, rows: list[list[int]], *, split: Split) -> int:
        items = self._items(split)
        return sum(len(items[i].input_ids) for row in rows for i in row)

    def forward(self, module: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        return module(**batch), None

    def metrics(self, stats: torch.Tensor | None) -> PreferenceMetrics | None:
        return None

    def score(self, model: nn.Module, indices: list[int], *, device: torch.device) -> ItemScores:
        items = self.data.validation
        tensors = collate([[items[i]] for i in indices], packing=False, pad_token_id=self._pad)
        sums, counts = per_example_losses(model, {k: v.to(device) for k, v in tensors.items()})
        return ItemScores(loss_sums=sums.double().tolist(), units=counts.double().tolist())

    def examples_for_prompts(self, split: Split) -> list[TokenizedExample]:
        return self._items(split)


class DpoObjective:
    """The DPO loss per pair, divided by the pairs of the whole step; rewards as statistics.

    The reference model is the model before training: for PEFT methods the base with the adapters switched
    off (no second copy of the weights), for full fine-tuning the weights as loaded. Its log-probabilities
    are computed once, before the first step, and kept in checkpoints (``reference_mode`` "precomputed"), or
    recomputed in every step with the adapters off ("live", PEFT only; measured by ``bench/trainer_dpo.py``).
    """

    name: ObjectiveName = "dpo"

    def __init__(
        self,
        data: PreparedPairs,
        *,
        beta: float,
        label_smoothing: float,
        pad_token_id: int,
        peft: bool,
        reference_mode: ReferenceMode = "precomputed",
    ) -> None:
        if reference_mode == "live" and not peft:
            raise ValueError("a live reference needs a PEFT method (full fine-tuning changes the reference weights)")
        self.data = data
        self.beta = beta
        self.label_smoothing = label_smoothing
        self._pad = pad_token_id
        self._peft = peft
        self.reference_mode: ReferenceMode = reference_mode
        self._model: nn.Module | None = None
        # Reference log-probabilities per pair, (chosen, rejected), per split; on the CPU.
        self.reference: dict[Split, tuple[torch.Tensor, torch.Tensor]] = {}

    def _items(self, split: Split) -> list[TokenizedPair]:
        return self.data.train if split == "train" else self.data.validation

    def lengths(self, split: Split) -> list[int]:
        return [p.row_length for p in self._items(split)]

    def size(self, split: Split) -> int:
        return len(self._items(split))

    def loss_module(self, model: nn.Module) -> nn.Module:
        self._model = model
        return PreferenceLoss(model, beta=self.beta, label_smoothing=self.label_smoothing)

    # -- the reference ---------------------------------------------------------------------------

    def compute_reference(
        self, model: nn.Module, *, batch_size: int, device: torch.device, rank: int, world_size: int
    ) -> tuple[torch.Tensor, ...]:
        """This rank's share (every world_size-th pair) of the reference log-probabilities of both splits,
        as four zero-filled full-length tensors (train chosen, train rejected, validation chosen, validation
        rejected): the caller sums them over ranks and hands them to :meth:`set_reference`."""
        out: list[torch.Tensor] = []
        for split in ("train", "validation"):
            items = self._items(split)
            chosen = torch.zeros(len(items), dtype=torch.float32, device=device)
            rejected = torch.zeros(len(items), dtype=torch.float32, device=device)
            mine = sorted(range(len(items)), key=lambda i: items[i].row_length)[rank::world_size]
            for start in range(0, len(mine), batch_size):
                indices = mine[start : start + batch_size]
                tensors = collate_pairs([items[i] for i in indices], pad_token_id=self._pad)
                batch = {k: v.to(device) for k, v in tensors.items()}
                c, r = reference_logps(model, [batch], disable_adapters=self._peft)
                index = torch.tensor(indices, device=device)
                chosen[index] = c.float()
                rejected[index] = r.float()
            out += [chosen, rejected]
        return tuple(out)

    def set_reference(self, tensors: Sequence[torch.Tensor]) -> None:
        train_c, train_r, val_c, val_r = (t.detach().float().cpu() for t in tensors)
        self.reference = {"train": (train_c, train_r), "validation": (val_c, val_r)}

    def checkpoint_extra(self) -> dict[str, torch.Tensor]:
        """What a checkpoint must keep so a resumed run scores against the same reference."""
        if not self.reference:
            return {}
        return {
            "reference_train_chosen": self.reference["train"][0],
            "reference_train_rejected": self.reference["train"][1],
            "reference_validation_chosen": self.reference["validation"][0],
            "reference_validation_rejected": self.reference["validation"][1],
        }

    def restore_extra(self, extra: dict[str, torch.Tensor]) -> bool:
        """Take the reference from a checkpoint; False when it has none that fits this data."""
        names = (
            "reference_train_chosen",
            "reference_train_rejected",
            "reference_validation_chosen",
            "reference_validation_rejected",
        )
        if not all(name in extra for name in names):
            return False
        tensors = [extra[name] for name in names]
        sizes = (self.size("train"),) * 2 + (self.size("validation"),) * 2
        if tuple(t.shape[0] for t in tensors) != sizes:
            log.warning("the checkpoint's reference log-probabilities do not match the data; recomputing them")
            return False
        self.set_reference(tensors)
        return True

    def _reference_for(self, split: Split, indices: list[int], batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        if self.reference_mode == "live":
            assert self._model is not None, "loss_module() first"
            return reference_logps(self._model, [batch], disable_adapters=True)
        chosen, rejected = self.reference[split]
        index = torch.tensor(indices)
        device = batch["input_ids"].device
        return chosen[index].to(device), rejected[index].to(device)

    # -- batches, loss, scores -------------------------------------------------------------------

    def batch(self, rows: list[list[int]], *, split: Split, device: torch.device) -> Batch:
        items = self._items(split)
        indices = [row[0] for row in rows]
        tensors = collate_pairs([items[i] for i in indices], pad_token_id=self._pad)
        batch = {k: v.to(device, non_blocking=True) for k, v in tensors.items()}
        batch["reference_chosen"], batch["reference_rejected"] = self._reference_for(split, indices, batch)
        return batch

    def units(self, batch: Batch) -> float:
        return float(batch["reference_chosen"].shape[0])

    def input_tokens(self, rows: list[list[int]], *, split: Split) -> int:
        """Both answers' sequences of every pair: what the model reads."""
        items = self._items(split)
        return sum(len(items[i].chosen.input_ids) + len(items[i].rejected.input_ids) for row in rows for i in row)

    def forward(self, module: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        loss, stats = module(**batch)
        return loss, stats

    def metrics(self, stats: torch.Tensor | None) -> PreferenceMetrics | None:
        return None if stats is None else PreferenceStats.from_tensor(stats).metrics()

    def score(self, model: nn.Module, indices: list[int], *, device: torch.device) -> ItemScores:
        batch = self.batch([[i] for i in indices], split="validation", device=device)
        policy_chosen, policy_rejected = pair_logps(model, batch)
        pairs = len(indices)
        terms = dpo_terms(
            policy_chosen,
            policy_rejected,
            batch["reference_chosen"],
            batch["reference_rejected"],
            beta=self.beta,
            label_smoothing=self.label_smoothing,
        )
        return ItemScores(
            loss_sums=terms.losses.double().tolist(),
            units=[1.0] * pairs,
            chosen_rewards=terms.chosen_rewards.double().tolist(),
            rejected_rewards=terms.rejected_rewards.double().tolist(),
        )

    def examples_for_prompts(self, split: Split) -> list[TokenizedExample]:
        """The chosen side: its prompt is the pair's prompt, its answer the preferred one."""
        return [p.chosen for p in self._items(split)]
