"""The DPO objective: the loss by hand, the same loss and reward metrics as TRL's DPOTrainer on the same
tokens, summed stats, gradients only into adapters, and the reference as the model with adapters off."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from kubetune_trainer.data import Message, collate
from kubetune_trainer.data.preference import PreferencePair, collate_pairs, tokenize_pair
from kubetune_trainer.data.types import TokenizedPair
from kubetune_trainer.dpo import (
    STATS_FIELDS,
    PreferenceLoss,
    PreferenceStats,
    dpo_terms,
    pair_logps,
    reference_logps,
)
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from kubetune.api.progress import PreferenceMetrics

# (system prompt or None, question, chosen, rejected)
PAIRS = [
    (None, "What is 2+2?", "4.", "Probably 5."),
    (None, "Capital of France?", "Paris.", "Lyon, I think, or maybe Marseille."),
    ("Be brief.", "Say hello.", "Hello!", "Go away."),
    (None, "Colour of the sky?", "Blue, on a clear day.", "Green."),
    (None, "Largest planet?", "Jupiter.", "The Moon."),
    ("Answer in French.", "Thanks?", "Merci.", "Thank you."),
    # The answers' first tokens agree: a pair's row shares them too.
    (None, "Best fruit?", "Apples are the best fruit.", "Apples are awful."),
]


@pytest.fixture(scope="module")
def tokenizer(config_only_model_dir: Path) -> Any:
    return AutoTokenizer.from_pretrained(config_only_model_dir)


@pytest.fixture(scope="module")
def reference(config_only_model_dir: Path) -> LlamaForCausalLM:
    """The tiny 2-layer Llama with random weights, float32, eval mode (no dropout)."""
    torch.manual_seed(0)
    config = LlamaConfig.from_pretrained(config_only_model_dir)
    return LlamaForCausalLM(config).float().eval()


@pytest.fixture(scope="module")
def policy(reference: LlamaForCausalLM) -> LlamaForCausalLM:
    """The reference moved by noise, as if trained: rewards clearly away from zero, of both signs."""
    torch.manual_seed(1)
    moved = copy.deepcopy(reference)
    with torch.no_grad():
        for param in moved.parameters():
            param.add_(0.3 * torch.randn_like(param))
    return moved.eval()


def make_pair(system: str | None, question: str, chosen: str, rejected: str) -> PreferencePair:
    prompt = (Message(role="system", content=system),) if system else ()
    return PreferencePair(
        prompt=(*prompt, Message(role="user", content=question)),
        chosen=(Message(role="assistant", content=chosen),),
        rejected=(Message(role="assistant", content=rejected),),
        source="pairs.jsonl:1",
    )


@pytest.fixture(scope="module")
def tokenized(tokenizer: Any) -> list[TokenizedPair]:
    out = []
    for row in PAIRS:
        result = tokenize_pair(make_pair(*row), tokenizer=tokenizer, max_seq_length=256)
        assert isinstance(result, TokenizedPair)
        out.append(result)
    return out


@pytest.fixture(scope="module")
def batch(tokenized: list[TokenizedPair], tokenizer: Any) -> dict[str, torch.Tensor]:
    """What the trainer feeds the model: one row per pair, the prompt once."""
    return collate_pairs(tokenized, pad_token_id=tokenizer.pad_token_id)


@pytest.fixture(scope="module")
def rows(tokenized: list[TokenizedPair], tokenizer: Any) -> dict[str, torch.Tensor]:
    """The textbook layout: every sequence in its own padded row, the chosen ones first (as TRL batches)."""
    sequences = [[p.chosen] for p in tokenized] + [[p.rejected] for p in tokenized]
    return collate(sequences, packing=False, pad_token_id=tokenizer.pad_token_id)


def manual_logps(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed label log-probabilities of each row of the textbook layout from the model's full logits."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
    labels = batch["labels"][:, 1:]
    mask = labels != -100
    picked = logits.log_softmax(-1).gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1)
    return (picked * mask).sum(dim=1)


# --- the loss by hand ---------------------------------------------------------------------------------------


def test_dpo_terms_match_a_hand_computation() -> None:
    policy_chosen, policy_rejected = torch.tensor([-10.0, -5.0]), torch.tensor([-12.0, -4.0])
    reference_chosen, reference_rejected = torch.tensor([-11.0, -5.0]), torch.tensor([-11.0, -5.0])
    beta, smoothing = 0.1, 0.2
    terms = dpo_terms(
        policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta=beta, label_smoothing=smoothing
    )
    # Pair 0: chosen ratio +1, rejected ratio -1, logits 2. Pair 1: 0 and +1, logits -1.
    expected = []
    for logits in (2.0, -1.0):
        z = beta * logits
        expected.append((1 - smoothing) * math.log1p(math.exp(-z)) + smoothing * math.log1p(math.exp(z)))
    torch.testing.assert_close(terms.losses, torch.tensor(expected), rtol=0, atol=1e-6)
    torch.testing.assert_close(terms.chosen_rewards, torch.tensor([0.1, 0.0]))
    torch.testing.assert_close(terms.rejected_rewards, torch.tensor([-0.1, 0.1]))
    plain = dpo_terms(
        policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta=beta, label_smoothing=0
    )
    torch.testing.assert_close(plain.losses, torch.tensor([math.log1p(math.exp(-0.2)), math.log1p(math.exp(0.1))]))


def test_rewards_are_detached_and_the_loss_is_not() -> None:
    policy_chosen = torch.tensor([-3.0], requires_grad=True)
    terms = dpo_terms(
        policy_chosen, torch.tensor([-4.0]), torch.tensor([-3.5]), torch.tensor([-3.5]), beta=0.1, label_smoothing=0
    )
    assert terms.losses.requires_grad
    assert not terms.chosen_rewards.requires_grad and not terms.rejected_rewards.requires_grad


# --- answer log-probabilities -------------------------------------------------------------------------------


def test_pair_logps_from_shared_prompt_rows_equal_each_sequence_in_its_own_row(
    policy: LlamaForCausalLM, batch: dict[str, torch.Tensor], rows: dict[str, torch.Tensor]
) -> None:
    with torch.no_grad():
        chosen, rejected = pair_logps(policy, batch)
        expected = manual_logps(policy, rows)
    assert chosen.dtype == torch.float32 and chosen.shape == rejected.shape == (len(PAIRS),)
    torch.testing.assert_close(torch.cat([chosen, rejected]), expected, rtol=1e-5, atol=1e-4)
    # The shared rows are shorter than the two sequences side by side.
    assert batch["input_ids"].numel() < rows["input_ids"].numel()
    # A logit transform (softcapping) disables the head-only fast path: the full forward gives the same here.
    transformed = copy.deepcopy(policy)
    transformed.config.final_logit_softcapping = 30.0
    with torch.no_grad():
        torch.testing.assert_close(torch.cat(pair_logps(transformed, batch)), expected, rtol=1e-5, atol=1e-4)


def test_a_batch_of_single_sequences_is_refused(policy: LlamaForCausalLM, rows: dict[str, torch.Tensor]) -> None:
    single = dict(rows, predict_index=rows["labels"].clamp(min=0), targets=rows["labels"])
    with pytest.raises(ValueError, match="collate_pairs"):
        pair_logps(policy, single)


# --- the same numbers as TRL --------------------------------------------------------------------------------


def trl_loss_and_metrics(
    policy: LlamaForCausalLM,
    reference: LlamaForCausalLM,
    tokenizer: Any,
    tokenized: list[TokenizedPair],
    *,
    beta: float,
    output_dir: Path,
) -> tuple[float, dict[str, float], dict[str, torch.Tensor]]:
    """TRL 1.16's DPOTrainer loss and reward metrics on our tokens: its own collator builds the batch from our
    prompt/chosen/rejected ids and its own ``compute_loss`` runs both models (its sigmoid loss)."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(
        output_dir=str(output_dir),
        beta=beta,
        loss_type=["sigmoid"],
        max_length=None,
        bf16=False,  # TRL defaults to bf16 autocast, also on CPU
        use_cpu=True,
        report_to="none",
        disable_dropout=True,
        per_device_train_batch_size=len(tokenized),
    )
    trainer = DPOTrainer(
        model=copy.deepcopy(policy),
        ref_model=copy.deepcopy(reference),
        args=args,
        # TRL requires a dataset; the batch below does not come from it.
        train_dataset=Dataset.from_list([{"prompt": "q", "chosen": "a", "rejected": "b"}]),
        processing_class=tokenizer,
    )
    rows = []
    for pair in tokenized:
        cut = next(i for i, label in enumerate(pair.chosen.labels) if label != -100)
        ids = pair.chosen.input_ids
        rows.append({"prompt_ids": ids[:cut], "chosen_ids": ids[cut:], "rejected_ids": pair.rejected.input_ids[cut:]})
    inputs = trainer.data_collator(rows)
    trainer.model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, inputs)
    metrics = {key: values[-1] for key, values in trainer._metrics["eval"].items()}
    return float(loss), metrics, inputs


def kubetune_loss_and_metrics(
    policy: LlamaForCausalLM,
    reference: LlamaForCausalLM,
    batch: dict[str, torch.Tensor],
    *,
    beta: float,
    label_smoothing: float = 0.0,
) -> tuple[float, PreferenceMetrics]:
    (ref_chosen, ref_rejected) = reference_logps(reference, [batch], disable_adapters=False)
    loss_fn = PreferenceLoss(policy, beta=beta, label_smoothing=label_smoothing)
    with torch.no_grad():
        loss_sum, stats = loss_fn(**batch, reference_chosen=ref_chosen, reference_rejected=ref_rejected)
    summed = PreferenceStats.from_tensor(stats)
    metrics = summed.metrics()
    assert metrics is not None
    return float(loss_sum) / summed.pairs, metrics


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_loss_and_reward_metrics_equal_trls_dpo_trainer(
    beta: float,
    policy: LlamaForCausalLM,
    reference: LlamaForCausalLM,
    tokenizer: Any,
    tokenized: list[TokenizedPair],
    batch: dict[str, torch.Tensor],
    rows: dict[str, torch.Tensor],
    tmp_path: Path,
) -> None:
    trl_loss, trl, trl_inputs = trl_loss_and_metrics(
        policy, reference, tokenizer, tokenized, beta=beta, output_dir=tmp_path
    )
    # Both sides see the same tokens: TRL's batch is our sequences one per row, chosen rows first, its
    # completion mask our labels.
    assert torch.equal(trl_inputs["input_ids"], rows["input_ids"])
    assert torch.equal(trl_inputs["attention_mask"], rows["attention_mask"])
    assert torch.equal(trl_inputs["completion_mask"][:, 1:].bool(), rows["labels"][:, 1:] != -100)

    loss, ours = kubetune_loss_and_metrics(policy, reference, batch, beta=beta)
    assert loss == pytest.approx(trl_loss, abs=1e-4)
    assert ours.reward_accuracy == pytest.approx(trl["rewards/accuracies"], abs=1e-4)
    assert ours.reward_margin == pytest.approx(trl["rewards/margins"], abs=1e-4)
    assert ours.chosen_reward == pytest.approx(trl["rewards/chosen"], abs=1e-4)
    assert ours.rejected_reward == pytest.approx(trl["rewards/rejected"], abs=1e-4)
    # The comparison has teeth: the pairs disagree (neither all right nor all wrong), the loss is far from
    # log 2 (policy == reference), and another beta gives another loss.
    assert 0 < ours.reward_accuracy < 1
    assert abs(loss - math.log(2)) > 0.05
    other, _ = kubetune_loss_and_metrics(policy, reference, batch, beta=beta * 3)
    assert abs(other - trl_loss) > 1e-2


def test_label_smoothed_loss_equals_trls_sigmoid_loss_plus_smoothing_times_its_margin(
    policy: LlamaForCausalLM,
    reference: LlamaForCausalLM,
    tokenizer: Any,
    tokenized: list[TokenizedPair],
    batch: dict[str, torch.Tensor],
    tmp_path: Path,
) -> None:
    # TRL 1.16's sigmoid loss ignores label_smoothing (it smooths only its robust, exo_pair and aot losses). The
    # conservative DPO loss is (1 - e) x softplus(-z) + e x softplus(z) = softplus(-z) + e x z with z = beta x
    # logits, and the mean of z is TRL's rewards/margins: so it is TRL's loss + e x TRL's margin.
    beta, smoothing = 0.5, 0.2
    trl_loss, trl, _ = trl_loss_and_metrics(policy, reference, tokenizer, tokenized, beta=beta, output_dir=tmp_path)
    loss, ours = kubetune_loss_and_metrics(policy, reference, batch, beta=beta, label_smoothing=smoothing)
    assert loss == pytest.approx(trl_loss + smoothing * trl["rewards/margins"], abs=1e-4)
    assert ours.reward_accuracy == pytest.approx(trl["rewards/accuracies"], abs=1e-4)
    assert abs(loss - trl_loss) > 1e-2


def test_trl_tokenizes_a_conversational_pair_like_us_but_trains_the_newline_after_eos(
    policy: LlamaForCausalLM,
    reference: LlamaForCausalLM,
    tokenizer: Any,
    tokenized: list[TokenizedPair],
    tmp_path: Path,
) -> None:
    """Where the token ids come from: TRL's own tokenization of the same conversations gives the same prompt
    and answers, plus the chat template's "\\n" after each answer's EOS, which SFT (and we) leave out."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    records = []
    for system, question, chosen, rejected in PAIRS:
        prompt = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
        records.append(
            {
                "prompt": prompt,
                "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}],
            }
        )
    args = DPOConfig(output_dir=str(tmp_path), bf16=False, use_cpu=True, report_to="none", max_length=None)
    trainer = DPOTrainer(
        model=copy.deepcopy(policy),
        ref_model=copy.deepcopy(reference),
        args=args,
        train_dataset=Dataset.from_list(records),
        processing_class=tokenizer,
    )
    newline = tokenizer.encode("\n", add_special_tokens=False)
    for theirs, ours in zip(trainer.train_dataset, tokenized, strict=True):
        cut = len(theirs["prompt_ids"])
        assert ours.chosen.input_ids[:cut] == theirs["prompt_ids"]
        assert ours.chosen.input_ids[cut:] + newline == theirs["chosen_ids"]
        assert ours.rejected.input_ids[cut:] + newline == theirs["rejected_ids"]


# --- the training module ------------------------------------------------------------------------------------


def test_preference_loss_returns_the_summed_loss_and_summed_stats(
    policy: LlamaForCausalLM,
    reference: LlamaForCausalLM,
    batch: dict[str, torch.Tensor],
    rows: dict[str, torch.Tensor],
    tokenized: list[TokenizedPair],
    tokenizer: Any,
) -> None:
    beta, smoothing = 0.3, 0.1
    ref_chosen, ref_rejected = reference_logps(reference, [batch], disable_adapters=False)
    loss_fn = PreferenceLoss(policy, beta=beta, label_smoothing=smoothing)
    loss, stats = loss_fn(**batch, reference_chosen=ref_chosen, reference_rejected=ref_rejected)
    pairs = len(PAIRS)
    with torch.no_grad():
        logps = manual_logps(policy, rows)
    terms = dpo_terms(logps[:pairs], logps[pairs:], ref_chosen, ref_rejected, beta=beta, label_smoothing=smoothing)
    torch.testing.assert_close(loss, terms.losses.sum(), rtol=1e-5, atol=1e-4)
    assert loss.requires_grad and not stats.requires_grad
    assert stats.dtype == torch.float32 and stats.shape == (len(STATS_FIELDS),)
    chosen, rejected = terms.chosen_rewards, terms.rejected_rewards
    expected = [pairs, (chosen > rejected).sum(), (chosen - rejected).sum(), chosen.sum(), rejected.sum()]
    torch.testing.assert_close(stats, torch.tensor([float(v) for v in expected]), rtol=1e-4, atol=1e-4)

    # Stats add up across micro-batches: two halves give the whole batch's sums.
    half = pairs // 2
    halves = PreferenceStats()
    for lo, hi in ((0, half), (half, pairs)):
        part = collate_pairs(tokenized[lo:hi], pad_token_id=tokenizer.pad_token_id)
        _, part_stats = loss_fn(**part, reference_chosen=ref_chosen[lo:hi], reference_rejected=ref_rejected[lo:hi])
        halves = halves + PreferenceStats.from_tensor(part_stats)
    whole = PreferenceStats.from_tensor(stats)
    assert halves.pairs == whole.pairs == pairs and halves.correct == whole.correct
    assert halves.margin_sum == pytest.approx(whole.margin_sum, abs=1e-4)
    metrics = whole.metrics()
    assert metrics is not None
    assert metrics.reward_accuracy == pytest.approx(float((chosen > rejected).float().mean()))
    assert metrics.reward_margin == pytest.approx(float((chosen - rejected).mean()), abs=1e-5)
    assert metrics.chosen_reward == pytest.approx(float(chosen.mean()), abs=1e-5)
    assert metrics.rejected_reward == pytest.approx(float(rejected.mean()), abs=1e-5)


def test_the_batch_must_hold_one_row_per_pair(policy: LlamaForCausalLM, batch: dict[str, torch.Tensor]) -> None:
    loss_fn = PreferenceLoss(policy, beta=0.1, label_smoothing=0.0)
    with pytest.raises(ValueError, match="pairs"):
        loss_fn(**batch, reference_chosen=torch.zeros(2), reference_rejected=torch.zeros(2))


def test_stats_without_pairs_have_no_metrics() -> None:
    assert PreferenceStats().metrics() is None
    with pytest.raises(ValueError, match="expected 5 stats"):
        PreferenceStats.from_tensor(torch.zeros(3))


@pytest.fixture
def lora_pair(reference: LlamaForCausalLM) -> tuple[Any, LlamaForCausalLM]:
    """(a LoRA model with random, non-zero adapters on a copy of the reference, that untouched copy)."""
    from peft import LoraConfig, get_peft_model

    base = copy.deepcopy(reference)
    torch.manual_seed(2)
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0, init_lora_weights=False
    )
    return get_peft_model(copy.deepcopy(reference), config), base


def test_gradients_reach_only_the_trainable_adapter_weights(
    lora_pair: tuple[Any, LlamaForCausalLM], batch: dict[str, torch.Tensor]
) -> None:
    model, _ = lora_pair
    ref_chosen, ref_rejected = reference_logps(model, [batch], disable_adapters=True)
    assert not ref_chosen.requires_grad
    model.train()
    loss, _ = PreferenceLoss(model, beta=0.1, label_smoothing=0.0)(
        **batch, reference_chosen=ref_chosen, reference_rejected=ref_rejected
    )
    loss.backward()
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert param.grad is not None and torch.isfinite(param.grad).all() and param.grad.abs().sum() > 0, name
        else:
            assert param.grad is None, name


def test_gradients_through_shared_prompt_rows_equal_those_of_separate_rows(
    lora_pair: tuple[Any, LlamaForCausalLM], batch: dict[str, torch.Tensor], rows: dict[str, torch.Tensor]
) -> None:
    """The prompt is computed once but feeds both answers: its gradient is the sum of both, as if apart."""
    model, _ = lora_pair
    ref_chosen, ref_rejected = reference_logps(model, [batch], disable_adapters=True)
    model.train()
    loss, _ = PreferenceLoss(model, beta=0.1, label_smoothing=0.0)(
        **batch, reference_chosen=ref_chosen, reference_rejected=ref_rejected
    )
    loss.backward()
    shared = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    logps = manual_logps(model, rows)
    pairs = len(PAIRS)
    terms = dpo_terms(logps[:pairs], logps[pairs:], ref_chosen, ref_rejected, beta=0.1, label_smoothing=0.0)
    terms.losses.sum().backward()
    separate = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    assert shared.keys() == separate.keys() and shared
    for name, grad in shared.items():
        torch.testing.assert_close(grad, separate[name], rtol=1e-4, atol=1e-6, msg=name)


def test_the_reference_with_adapters_off_is_the_base_model(
    lora_pair: tuple[Any, LlamaForCausalLM], batch: dict[str, torch.Tensor]
) -> None:
    model, base = lora_pair
    model.train()
    chosen, rejected = reference_logps(model, [batch], disable_adapters=True)
    with torch.no_grad():
        expected = torch.cat(pair_logps(base.eval(), batch))
        adapted = torch.cat(pair_logps(model, batch))
    torch.testing.assert_close(torch.cat([chosen, rejected]), expected, rtol=1e-5, atol=1e-5)
    # The adapters are back on after, and they do change the answers' probabilities.
    assert (adapted - expected).abs().max() > 1e-2
    # The model's mode is restored, module by module.
    assert model.training and all(module.training for module in model.modules())


def test_reference_logps_follow_the_batches_in_order_and_need_a_peft_model_to_disable_adapters(
    reference: LlamaForCausalLM, tokenized: list[TokenizedPair], tokenizer: Any, batch: dict[str, torch.Tensor]
) -> None:
    pad = tokenizer.pad_token_id
    split = [collate_pairs(tokenized[:2], pad_token_id=pad), collate_pairs(tokenized[2:], pad_token_id=pad)]
    chosen, rejected = reference_logps(reference, split, disable_adapters=False)
    whole_chosen, whole_rejected = reference_logps(reference, [batch], disable_adapters=False)
    torch.testing.assert_close(chosen, whole_chosen, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(rejected, whole_rejected, rtol=1e-5, atol=1e-4)
    assert chosen.shape == (len(PAIRS),)
    empty_chosen, empty_rejected = reference_logps(reference, [], disable_adapters=False)
    assert empty_chosen.shape == empty_rejected.shape == (0,)
    with pytest.raises(TypeError, match="PEFT"):
        reference_logps(reference, [batch], disable_adapters=True)
