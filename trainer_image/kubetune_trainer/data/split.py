"""The deterministic train/validation split."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


def split_examples(items: Sequence[T], *, fraction: float, seed: int) -> tuple[list[T], list[T]]:
    """Hold out ``round(fraction * n)`` items (at least one) chosen by ``seed``; both parts keep file order.

    The same (items, fraction, seed) always gives the same split, on any machine: the shuffle's seed is
    a string, which ``random.Random`` hashes with SHA-512 rather than Python's per-process hash.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be between 0 and 1, got {fraction}")
    held_out = max(1, round(fraction * len(items)))
    if held_out >= len(items):
        raise ValueError(f"cannot hold out {held_out} of {len(items)} examples for validation and still train on any")
    order = list(range(len(items)))
    random.Random(f"kubetune-split:{seed}").shuffle(order)
    chosen = set(order[:held_out])
    train = [item for i, item in enumerate(items) if i not in chosen]
    validation = [item for i, item in enumerate(items) if i in chosen]
    return train, validation
