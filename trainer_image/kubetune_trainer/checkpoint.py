"""Checkpoints under ``<output.destination>/checkpoints/step-00000042``.

A checkpoint holds the trainable weights (adapter, or all weights for full fine-tuning), the optimizer
and scheduler states, every rank's RNG states and the data position. It is written to a staging
directory and published atomically (see :mod:`kubetune_trainer.storage`); ``checkpoint.json`` is its
completeness marker, so a checkpoint cut short by SIGKILL is never resumed from.
"""

from __future__ import annotations

import json
import logging
import random
import re
import shutil
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from kubetune_trainer.storage import Location, download_dir, publish_dir, staging_dir

log = logging.getLogger(__name__)

MARKER = "checkpoint.json"
WEIGHTS = "trainable.safetensors"
OPTIMIZER = "optimizer.pt"
SCHEDULER = "scheduler.pt"
EXTRA = "extra.safetensors"
FORMAT_VERSION = 1
_NAME = re.compile(r"^step-(\d{8,})$")


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def rng_file(rank: int) -> str:
    return f"rng-rank{rank:05d}.pt"


@dataclass(frozen=True, kw_only=True)
class TrainingPosition:
    """Where training stands: optimizer steps done, and which micro-batches of which epoch come next."""

    step: int
    epoch: int
    # Optimizer steps done within ``epoch``; the data plan for an epoch is deterministic, so this and
    # the world size / accumulation at save time say exactly which micro-batches were consumed.
    step_in_epoch: int
    trained_tokens: int
    world_size: int
    gradient_accumulation_steps: int
    last_loss: float | None = None


@dataclass(frozen=True, kw_only=True)
class CheckpointInfo:
    position: TrainingPosition
    uri: str
    local_dir: Path


def capture_rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Ranks(Protocol):
    """The processes of a run, as the store needs them (``runtime.Runtime`` is one)."""

    @property
    def rank(self) -> int: ...

    @property
    def is_main(self) -> bool: ...

    def barrier(self) -> None: ...


@dataclass(frozen=True, kw_only=True)
class TrainingState:
    """What a checkpoint saves. ``weights`` are the trainable ones (the same on every rank); ``extra`` holds
    tensors the run computed once and must not recompute differently after a resume (DPO's reference
    log-probabilities: after full fine-tuning steps, the model no longer is the reference)."""

    position: TrainingPosition
    weights: Mapping[str, torch.Tensor]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    extra: Mapping[str, torch.Tensor] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Restored:
    """A checkpoint loaded into the model, optimizer and scheduler."""

    position: TrainingPosition
    uri: str
    # False when this rank's RNG file is missing (the world size grew): the caller reseeds.
    rng_restored: bool
    extra: dict[str, torch.Tensor]


class CheckpointStore:
    """Writes, finds, loads and prunes the checkpoints of one run; the only code that knows their layout."""

    def __init__(self, location: Location, *, keep_last: int, cache_dir: Path) -> None:
        self.location = location
        self.keep_last = keep_last
        self._cache_dir = cache_dir

    # -- writing ----------------------------------------------------------------------------------

    def save(self, state: TrainingState, *, ranks: Ranks) -> str | None:
        """Write a complete checkpoint; every rank calls this. Returns its URI on the main rank.

        Each rank writes its own RNG state; the main rank writes the shared parts (weights, optimizer,
        scheduler, extra), then the marker, and publishes. On a local (shared) filesystem all ranks write
        into the main rank's staging directory; on an object store the other ranks upload their file into
        the checkpoint's directory before the main rank publishes the marker.
        """
        step = state.position.step
        name = checkpoint_name(step)
        staged = staging_dir(self.location, name) if ranks.is_main else None
        ranks.barrier()
        if self.location.local is not None:
            _write_rng(self.location.local / f".tmp-{name}", rank=ranks.rank)
        elif staged is not None:
            _write_rng(staged, rank=ranks.rank)
        else:
            own = staging_dir(self.location, f"rank{ranks.rank}")
            _write_rng(own, rank=ranks.rank)
            file = rng_file(ranks.rank)
            self.location.fs.put_file(str(own / file), f"{self.location.child(name).path}/{file}")
            shutil.rmtree(own, ignore_errors=True)
        ranks.barrier()
        uri = None
        if staged is not None:
            _write_shared(staged, state)
            uri = self._publish(staged, position=state.position)
        ranks.barrier()
        return uri

    def _publish(self, staged: Path, *, position: TrainingPosition) -> str:
        marker = {"formatVersion": FORMAT_VERSION, **asdict(position)}
        (staged / MARKER).write_text(json.dumps(marker, indent=2), encoding="utf-8")
        name = checkpoint_name(position.step)
        publish_dir(staged, self.location, name, marker=MARKER)
        self.prune()
        return self.location.child(name).uri

    def prune(self) -> None:
        """Delete complete checkpoints beyond ``keep_last`` and leftovers of interrupted writes."""
        complete = self.complete_steps()
        for step in complete[: max(0, len(complete) - self.keep_last)]:
            self.location.remove(checkpoint_name(step))
        newest = complete[-1] if complete else -1
        for name in self.location.list_dirs():
            match = _NAME.match(name)
            if match and int(match.group(1)) < newest and int(match.group(1)) not in complete:
                self.location.remove(name)  # an incomplete upload older than a complete checkpoint

    # -- reading ---------------------------------------------------------------------------------

    def complete_steps(self) -> list[int]:
        steps = []
        for name in self.location.list_dirs():
            match = _NAME.match(name)
            if match and self.location.exists(f"{name}/{MARKER}"):
                steps.append(int(match.group(1)))
        return sorted(steps)

    def latest(self) -> CheckpointInfo | None:
        """The newest complete checkpoint, fetched to a local directory, or None."""
        steps = self.complete_steps()
        if not steps:
            return None
        name = checkpoint_name(steps[-1])
        local = download_dir(self.location, name, into=self._cache_dir / "checkpoints")
        raw = json.loads((local / MARKER).read_text(encoding="utf-8"))
        if raw.pop("formatVersion", None) != FORMAT_VERSION:
            raise RuntimeError(f"{self.location.child(name).uri}: unsupported checkpoint format")
        return CheckpointInfo(position=TrainingPosition(**raw), uri=self.location.child(name).uri, local_dir=local)

    def restore(
        self,
        *,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        rank: int,
        device: torch.device,
    ) -> Restored | None:
        """Load the newest complete checkpoint into the model, optimizer and scheduler (None: there is none).
        A copy downloaded from an object store is deleted once loaded."""
        info = self.latest()
        if info is None:
            return None
        try:
            rng_restored = load_checkpoint(
                info, model=model, optimizer=optimizer, scheduler=scheduler, rank=rank, device=device
            )
            extra_path = info.local_dir / EXTRA
            extra = load_file(str(extra_path)) if extra_path.is_file() else {}
        finally:
            if self.location.local is None:
                shutil.rmtree(info.local_dir, ignore_errors=True)
        return Restored(position=info.position, uri=info.uri, rng_restored=rng_restored, extra=extra)


def _write_rng(staged: Path, *, rank: int) -> None:
    torch.save(capture_rng_state(), staged / rng_file(rank))


def _write_shared(staged: Path, state: TrainingState) -> None:
    save_file({k: v.contiguous().cpu() for k, v in state.weights.items()}, str(staged / WEIGHTS))
    torch.save(state.optimizer.state_dict(), staged / OPTIMIZER)
    torch.save(state.scheduler.state_dict(), staged / SCHEDULER)
    if state.extra:
        save_file({k: v.contiguous().cpu() for k, v in state.extra.items()}, str(staged / EXTRA))


def load_checkpoint(
    info: CheckpointInfo,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    rank: int,
    device: torch.device,
) -> bool:
    """Restore weights, optimizer, scheduler and this rank's RNG; False when the RNG file is missing
    (e.g. the world size grew), in which case the caller reseeds."""
    # Accelerate reports "cpu:0" for a CPU rank under torchrun; safetensors and torch.load's map_location
    # know the CPU only as "cpu" and refuse an indexed one.
    target = torch.device("cpu") if device.type == "cpu" else device
    weights = load_file(str(info.local_dir / WEIGHTS), device=str(target))
    params = dict(model.named_parameters())
    missing = [name for name in weights if name not in params]
    if missing:
        raise RuntimeError(f"{info.uri}: checkpoint weights do not match the model (e.g. {missing[0]})")
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor)
    optimizer.load_state_dict(torch.load(info.local_dir / OPTIMIZER, map_location=target, weights_only=False))
    scheduler.load_state_dict(torch.load(info.local_dir / SCHEDULER, weights_only=False))
    rng_path = info.local_dir / rng_file(rank)
    if not rng_path.is_file():
        return False
    restore_rng_state(torch.load(rng_path, weights_only=False))
    return True
