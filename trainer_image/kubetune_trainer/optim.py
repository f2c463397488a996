"""AdamW and the learning-rate schedule."""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from kubetune_trainer.settings import ResolvedHyperparameters


def build_optimizer(model: nn.Module, *, hp: ResolvedHyperparameters, device: torch.device) -> torch.optim.AdamW:
    """AdamW over the trainable weights; no decay on biases and norms (the usual LLM recipe).

    ``fused=True`` runs one kernel for all tensors on CUDA (and on the CPU since torch 2.4); ``foreach``
    otherwise.
    """
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "norm" in name.lower() else decay).append(param)
    groups: list[dict[str, Any]] = [{"params": decay, "weight_decay": hp.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    kwargs: dict[str, Any] = {"lr": hp.learning_rate, "betas": (0.9, 0.999), "eps": 1e-8}
    if "fused" in inspect.signature(torch.optim.AdamW).parameters and _fused_supported(model, device):
        kwargs["fused"] = True
    return torch.optim.AdamW(groups, **kwargs)


def _fused_supported(model: nn.Module, device: torch.device) -> bool:
    # Fused AdamW needs floating-point params on a supported device; 4-bit bases keep their adapters in
    # float, so this only excludes odd dtypes.
    return device.type in ("cuda", "cpu") and all(
        p.dtype in (torch.float32, torch.float16, torch.bfloat16) for p in model.parameters() if p.requires_grad
    )


def build_scheduler(
    optimizer: torch.optim.Optimizer, *, hp: ResolvedHyperparameters
) -> torch.optim.lr_scheduler.LRScheduler:
    """Linear warmup to the peak, then linear / cosine decay to 0 (or constant)."""
    from transformers import get_scheduler

    name = "constant_with_warmup" if hp.scheduler == "constant" and hp.warmup_steps else hp.scheduler
    scheduler = get_scheduler(
        name, optimizer=optimizer, num_warmup_steps=hp.warmup_steps, num_training_steps=hp.total_steps
    )
    assert isinstance(scheduler, torch.optim.lr_scheduler.LRScheduler)
    return scheduler
