"""Batch planning and collation: which examples share a batch (and a row), and the tensors they become.

Packing puts several examples in one row. They must not see each other: restarting ``position_ids``
alone does not isolate them with sdpa or eager attention (tests/unit/trainer/data/test_data_packing.py
shows it), so a packed batch carries a 4-D
additive mask that is block-diagonal and causal. A boolean mask is wrong with eager attention, hence
float: 0.0 where attention is allowed, the dtype's most negative finite value elsewhere.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Sequence

import torch

from kubetune_trainer.data.types import IGNORE_INDEX, TokenizedExample

# Unpacked batching sorts by length within windows of this many batches: long enough to group similar
# lengths (less padding), short enough that the batch order stays random across the epoch.
LENGTH_GROUP_BATCHES = 64


def plan_batches(
    lengths: Sequence[int], *, batch_size: int, max_seq_length: int, packing: bool, seed: int, epoch: int
) -> list[list[list[int]]]:
    """Batches → rows → example indices, deterministic for (lengths, settings, seed, epoch).

    Every example appears exactly once per epoch; the last batch may be smaller. Unpacked: one item per
    row, rows length-grouped; ``lengths`` are the rows' tokens, which only order them (a DPO pair's row
    holds two sequences, so it may be longer than ``max_seq_length``). Packed: best-fit-decreasing bins of
    at most ``max_seq_length`` tokens, ``batch_size`` rows per batch.
    """
    if batch_size < 1 or max_seq_length < 1:
        raise ValueError(f"batch_size and max_seq_length must be positive, got {batch_size}, {max_seq_length}")
    longest = max_seq_length if packing else None
    for index, length in enumerate(lengths):
        if length < 1 or (longest is not None and length > longest):
            raise ValueError(f"example {index} has {length} tokens; expected 1 to max_seq_length={max_seq_length}")
    # A string seed is hashed with SHA-512 by random.Random: stable across processes and Python versions.
    rng = random.Random(f"kubetune-batches:{seed}:{epoch}")
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if packing:
        rows = _best_fit_decreasing(order, lengths, capacity=max_seq_length)
        rng.shuffle(rows)
        return [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
    batches: list[list[list[int]]] = []
    window = batch_size * LENGTH_GROUP_BATCHES
    for start in range(0, len(order), window):
        # Stable sort after a shuffle: equal lengths keep their random order.
        group = sorted(order[start : start + window], key=lambda i: -lengths[i])
        batches += [[[i] for i in group[j : j + batch_size]] for j in range(0, len(group), batch_size)]
    rng.shuffle(batches)
    return batches


def _best_fit_decreasing(order: list[int], lengths: Sequence[int], *, capacity: int) -> list[list[int]]:
    """Each example, longest first, goes into the fullest row it still fits in (or a new row)."""
    rows: list[list[int]] = []
    # Sorted (free space, row index) of rows that still have room.
    free: list[tuple[int, int]] = []
    for index in sorted(order, key=lambda i: -lengths[i]):
        need = lengths[index]
        at = bisect.bisect_left(free, (need, -1))
        if at == len(free):
            rows.append([index])
            row, left = len(rows) - 1, capacity - need
        else:
            space, row = free.pop(at)
            rows[row].append(index)
            left = space - need
        if left > 0:
            bisect.insort(free, (left, row))
    return rows


def collate(
    examples: Sequence[Sequence[TokenizedExample]],
    *,
    packing: bool,
    pad_token_id: int,
    mask_dtype: torch.dtype = torch.float32,
) -> dict[str, torch.Tensor]:
    """Rows of examples → ``input_ids``, ``labels``, ``position_ids`` and ``attention_mask`` tensors.

    Rows are right-padded to the longest; labels are IGNORE_INDEX on padding and on each example's first
    token (never predicted: in a packed row it would otherwise be predicted from the previous example's
    last token, so packed and unpacked losses agree). Unpacked: ``attention_mask`` is the (B, L) 0/1
    padding mask. Packed: a (B, 1, L, L) additive mask in ``mask_dtype`` (float32 by default; pass the
    model's dtype for half-precision attention), 0.0 inside each example's causal block and
    ``finfo(mask_dtype).min`` elsewhere; a padding position attends only to itself, so no softmax row is
    empty.
    """
    if not examples or any(not row for row in examples):
        raise ValueError("collate needs at least one row, and every row at least one example")
    if not packing and any(len(row) != 1 for row in examples):
        raise ValueError("unpacked batches hold exactly one example per row")
    width = max(sum(len(e.input_ids) for e in row) for row in examples)
    batch = len(examples)
    input_ids = torch.full((batch, width), pad_token_id, dtype=torch.long)
    labels = torch.full((batch, width), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros((batch, width), dtype=torch.long)
    # Segment id per position: 1, 2, ... per example, 0 for padding.
    segments = torch.zeros((batch, width), dtype=torch.long)
    for b, row in enumerate(examples):
        at = 0
        for number, example in enumerate(row, start=1):
            n = len(example.input_ids)
            if len(example.labels) != n:
                raise ValueError(f"example has {n} input ids but {len(example.labels)} labels")
            input_ids[b, at : at + n] = torch.tensor(example.input_ids, dtype=torch.long)
            labels[b, at + 1 : at + n] = torch.tensor(example.labels[1:], dtype=torch.long)
            position_ids[b, at : at + n] = torch.arange(n)
            segments[b, at : at + n] = number
            at += n
    out = {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}
    if not packing:
        out["attention_mask"] = (segments > 0).long()
        return out
    out["attention_mask"] = block_causal_mask(segments, dtype=mask_dtype)
    return out


def block_causal_mask(segments: torch.Tensor, *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(B, L) segment ids (0 = padding) → (B, 1, L, L) additive mask: a query sees earlier keys of its
    own segment; padding sees only itself."""
    width = segments.shape[1]
    same = segments[:, :, None] == segments[:, None, :]
    causal = torch.ones((width, width), dtype=torch.bool).tril()
    return additive_mask(same & causal & (segments[:, :, None] > 0), dtype=dtype)


def additive_mask(allowed: torch.Tensor, *, dtype: torch.dtype) -> torch.Tensor:
    """(B, L, L) booleans, query by key → (B, 1, L, L) additive mask: 0.0 where allowed, ``finfo(dtype).min``
    elsewhere. Every position also sees itself, so no softmax row is empty (padding sees only itself)."""
    allowed = allowed | torch.eye(allowed.shape[-1], dtype=torch.bool)
    mask = torch.zeros(allowed.shape, dtype=dtype)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None, :, :]
