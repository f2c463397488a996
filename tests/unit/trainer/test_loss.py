"""The label-only loss equals the model's own loss: the output head skipped elsewhere changes nothing."""

from __future__ import annotations

import pytest
import torch
from kubetune_trainer.loss import LabelTokenLoss, label_token_count
from transformers import LlamaConfig, LlamaForCausalLM


@pytest.fixture(scope="module")
def model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(config).eval()


def test_summed_label_token_loss_matches_the_models_mean_loss_times_label_tokens(model: LlamaForCausalLM) -> None:
    input_ids = torch.randint(0, 128, (2, 12))
    labels = input_ids.clone()
    labels[0, :5] = -100  # prompt
    labels[1, :3] = -100
    labels[1, 9:] = -100  # padding
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 9:] = 0
    position_ids = torch.arange(12).expand(2, 12)

    ours = LabelTokenLoss(model)(
        input_ids=input_ids, labels=labels, attention_mask=attention_mask, position_ids=position_ids
    )
    reference = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss

    assert label_token_count(labels) == 7 + 6  # positions 5..11 and 3..8
    torch.testing.assert_close(ours, reference * label_token_count(labels), rtol=1e-5, atol=1e-5)


def test_gradients_flow_only_through_label_positions_head(model: LlamaForCausalLM) -> None:
    input_ids = torch.randint(0, 128, (1, 8))
    labels = torch.full_like(input_ids, -100)
    labels[0, -1] = input_ids[0, -1]
    loss = LabelTokenLoss(model)(
        input_ids=input_ids,
        labels=labels,
        attention_mask=torch.ones_like(input_ids),
        position_ids=torch.arange(8)[None],
    )
    model.zero_grad()
    loss.backward()
    head_grad = model.lm_head.weight.grad
    assert head_grad is not None and torch.isfinite(head_grad).all() and head_grad.abs().sum() > 0
