"""Batch planning and collation; packed examples must never see each other (checked on a real model)."""

from __future__ import annotations

import copy
import math
import random
from collections import Counter
from typing import Any

import pytest
import torch
from kubetune_trainer.data import IGNORE_INDEX, TokenizedExample, block_causal_mask, collate, plan_batches

MASKED = torch.finfo(torch.float32).min
VOCAB = 259


def random_lengths(n: int, *, seed: int, high: int = 500) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(20, high) for _ in range(n)]


def plan(lengths: list[int], *, packing: bool, seed: int = 0, epoch: int = 0, batch_size: int = 8) -> Any:
    return plan_batches(lengths, batch_size=batch_size, max_seq_length=512, packing=packing, seed=seed, epoch=epoch)


@pytest.mark.parametrize("packing", [False, True])
def test_plan_is_deterministic_per_seed_and_epoch(packing: bool) -> None:
    lengths = random_lengths(300, seed=1)
    assert plan(lengths, packing=packing) == plan(lengths, packing=packing)
    assert plan(lengths, packing=packing, epoch=1) != plan(lengths, packing=packing)
    assert plan(lengths, packing=packing, seed=1) != plan(lengths, packing=packing)


@pytest.mark.parametrize("packing", [False, True])
@pytest.mark.parametrize("epoch", [0, 1, 2])
def test_plan_covers_every_example_exactly_once_per_epoch(packing: bool, epoch: int) -> None:
    lengths = random_lengths(301, seed=epoch)
    seen = Counter(i for batch in plan(lengths, packing=packing, epoch=epoch) for row in batch for i in row)
    assert seen == Counter(range(len(lengths)))


@pytest.mark.parametrize("packing", [False, True])
def test_plan_respects_max_seq_length_and_batch_size(packing: bool) -> None:
    lengths = random_lengths(300, seed=2, high=512)
    batches = plan(lengths, packing=packing)
    assert all(1 <= len(batch) <= 8 for batch in batches)
    assert all(sum(lengths[i] for i in row) <= 512 for batch in batches for row in batch)
    if not packing:
        assert all(len(row) == 1 for batch in batches for row in batch)


def test_packing_fills_rows_nearly_as_well_as_possible() -> None:
    lengths = random_lengths(1000, seed=3, high=300)
    rows = [row for batch in plan(lengths, packing=True) for row in batch]
    assert len(rows) <= math.ceil(sum(lengths) / 512) * 1.02 + 1


def test_length_grouping_cuts_padding_against_random_batches() -> None:
    lengths = random_lengths(2000, seed=4)

    def padding(batches: list[list[list[int]]]) -> int:
        return sum(max(lengths[r[0]] for r in b) * len(b) - sum(lengths[r[0]] for r in b) for b in batches)

    order = list(range(len(lengths)))
    random.Random(0).shuffle(order)
    shuffled = [[[i] for i in order[j : j + 8]] for j in range(0, len(order), 8)]
    assert padding(plan(lengths, packing=False)) < padding(shuffled) / 5


@pytest.mark.parametrize("bad", [0, 513])
def test_plan_rejects_lengths_outside_1_to_max_seq_length(bad: int) -> None:
    with pytest.raises(ValueError, match="max_seq_length=512"):
        plan([10, bad], packing=True)


def test_unpacked_rows_longer_than_max_seq_length_are_only_ordered() -> None:
    """A DPO pair's row holds two sequences of up to max_seq_length each."""
    lengths = [900, 10, 1000, 12, 950, 11, 980, 9]
    batches = plan(lengths, packing=False, batch_size=4)
    assert sorted(sorted(row[0] for row in batch) for batch in batches) == [[0, 2, 4, 6], [1, 3, 5, 7]]
    with pytest.raises(ValueError, match="expected 1 to"):
        plan([10, 0], packing=False)


def example(ids: list[int], *, masked: int = 0) -> TokenizedExample:
    """Token ids with the first ``masked`` positions unlabelled (a prompt)."""
    return TokenizedExample(input_ids=ids, labels=[IGNORE_INDEX] * masked + ids[masked:])


def test_unpacked_collate_pads_right_with_a_padding_mask() -> None:
    batch = collate([[example([5, 6, 7], masked=1)], [example([8, 9])]], packing=False, pad_token_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 9, 0]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 6, 7], [IGNORE_INDEX, 9, IGNORE_INDEX]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2], [0, 1, 0]]


def test_packed_collate_restarts_positions_and_unlabels_each_first_token() -> None:
    batch = collate([[example([5, 6]), example([7, 8, 9])], [example([3])]], packing=True, pad_token_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9], [3, 0, 0, 0, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 0, 1, 2], [0, 0, 0, 0, 0]]
    # Label 7 would otherwise be predicted from token 6 of the previous example.
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 6, IGNORE_INDEX, 8, 9], [IGNORE_INDEX] * 5]


def test_packed_mask_is_block_diagonal_causal_and_padding_sees_only_itself() -> None:
    mask = collate([[example([5, 6]), example([7, 8]), example([9])]], packing=True, pad_token_id=0)["attention_mask"]
    assert mask.shape == (1, 1, 5, 5) and mask.dtype == torch.float32
    allowed = [
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [0, 0, 1, 0, 0],
        [0, 0, 1, 1, 0],
        [0, 0, 0, 0, 1],
    ]
    expected = torch.where(torch.tensor(allowed, dtype=torch.bool), 0.0, MASKED)
    assert torch.equal(mask[0, 0], expected)
    padded = block_causal_mask(torch.tensor([[1, 1, 0, 0]]))[0, 0]
    assert padded[2].tolist() == [MASKED, MASKED, 0.0, MASKED] and padded[3].tolist() == [MASKED] * 3 + [0.0]


def test_mask_dtype_follows_the_model_dtype() -> None:
    mask = collate([[example([5, 6]), example([7])]], packing=True, pad_token_id=0, mask_dtype=torch.bfloat16)
    assert mask["attention_mask"].dtype == torch.bfloat16
    assert mask["attention_mask"].min().item() == torch.finfo(torch.bfloat16).min


def test_unpacked_rows_must_hold_one_example() -> None:
    with pytest.raises(ValueError, match="one example per row"):
        collate([[example([1]), example([2])]], packing=False, pad_token_id=0)


# --- on a model: a tiny random Llama, in both attention implementations ---------------------------------


@pytest.fixture(scope="module", params=["sdpa", "eager"])
def tiny_llama(request: pytest.FixtureRequest) -> Any:
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=request.param)
    assert model.config._attn_implementation == request.param
    return model.eval()


def random_examples(lengths: list[int], *, seed: int) -> list[TokenizedExample]:
    rng = random.Random(seed)
    return [example([rng.randrange(VOCAB) for _ in range(n)], masked=n // 3) for n in lengths]


def logits_alone(model: Any, item: TokenizedExample) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([item.input_ids])).logits[0]


def test_packed_examples_give_the_same_logits_as_each_alone(tiny_llama: Any) -> None:
    rows = [random_examples([7, 12, 5], seed=0), random_examples([20, 3], seed=1)]
    batch = collate(rows, packing=True, pad_token_id=0)
    with torch.no_grad():
        packed = tiny_llama(**{k: v for k, v in batch.items() if k != "labels"}).logits
    for b, row in enumerate(rows):
        at = 0
        for item in row:
            n = len(item.input_ids)
            delta = (packed[b, at : at + n] - logits_alone(tiny_llama, item)).abs().max().item()
            assert delta < 1e-4, f"row {b}, example at {at}: max |Δlogit| = {delta}"
            at += n


def test_without_the_block_mask_packed_examples_leak_into_each_other(tiny_llama: Any) -> None:
    """The control for the test above: restarting position ids alone does not isolate examples."""
    first, second = random_examples([10, 10], seed=2)
    batch = collate([[first, second]], packing=True, pad_token_id=0)
    with torch.no_grad():
        leaky = tiny_llama(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
    assert (leaky[0, 10:] - logits_alone(tiny_llama, second)).abs().max().item() > 1e-2


def test_packed_and_unpacked_batches_give_the_same_loss(tiny_llama: Any) -> None:
    items = random_examples([9, 14, 6, 11], seed=3)
    unpacked = collate([[item] for item in items], packing=False, pad_token_id=0)
    packed = collate([items[:2], items[2:]], packing=True, pad_token_id=0)
    with torch.no_grad():
        loss_unpacked = tiny_llama(**unpacked).loss.item()
        loss_packed = tiny_llama(**packed).loss.item()
    assert loss_packed == pytest.approx(loss_unpacked, rel=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float32, 1e-4), (torch.bfloat16, 5e-2)])
def test_packed_examples_stay_isolated_on_cuda(tiny_llama: Any, dtype: torch.dtype, tolerance: float) -> None:
    """The CPU test above, on CUDA kernels; half precision needs the mask in the model's dtype."""
    model = copy.deepcopy(tiny_llama).to(device="cuda", dtype=dtype)  # the fixture stays on the CPU
    row = random_examples([7, 12, 5], seed=4)
    batch = collate([row], packing=True, pad_token_id=0, mask_dtype=dtype)
    inputs = {k: v.cuda() for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        packed = model(**inputs).logits[0].float()
        at = 0
        for item in row:
            n = len(item.input_ids)
            alone = model(input_ids=torch.tensor([item.input_ids], device="cuda")).logits[0].float()
            assert (packed[at : at + n] - alone).abs().max().item() < tolerance
            at += n
