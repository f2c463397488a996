"""The evaluation report: per-example losses add up to the training loss, buckets partition the examples,
the worst come first, the markdown shows them safely, and the JSON reads back as the same report."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from kubetune_trainer.data import TokenizedExample, collate
from kubetune_trainer.eval_report import (
    REPORT_JSON,
    REPORT_MD,
    EvalReport,
    ExampleScore,
    ExampleText,
    build_eval_report,
    example_scores,
    length_buckets,
    render_markdown,
    worst_indices,
    write_eval_report,
)
from kubetune_trainer.loss import LabelTokenLoss, label_token_count, per_example_losses
from kubetune_trainer.output import GenerationSample
from transformers import LlamaConfig, LlamaForCausalLM

# -- per-example losses -------------------------------------------------------------------------------


def tiny_llama(**config: Any) -> Any:
    torch.manual_seed(0)
    model: Any = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=128,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
            **config,
        )
    )
    return model.eval()


def padded_batch() -> dict[str, torch.Tensor]:
    """Three examples of different lengths, one without any label (its answer truncated away)."""
    generator = torch.Generator().manual_seed(1)

    def example(prompt: int, answer: int) -> TokenizedExample:
        ids = torch.randint(1, 128, (prompt + answer,), generator=generator).tolist()
        return TokenizedExample(input_ids=ids, labels=[-100] * prompt + ids[prompt:])

    examples = [example(4, 6), example(2, 3), example(5, 0)]
    return collate([[e] for e in examples], packing=False, pad_token_id=0)


# Llama ignores final_logit_softcapping, so the full-forward path computes the same numbers: both paths run.
@pytest.mark.parametrize("config", [{}, {"final_logit_softcapping": 30.0}], ids=["head-on-labels", "full-forward"])
def test_per_example_losses_add_up_to_the_label_token_loss(config: dict[str, Any]) -> None:
    model = tiny_llama(**config)
    batch = padded_batch()
    with torch.no_grad():
        sums, counts = per_example_losses(model, batch)
        total = LabelTokenLoss(model)(**batch)

    assert counts.tolist() == [6, 3, 0]
    assert int(counts.sum()) == label_token_count(batch["labels"])
    assert sums[2].item() == 0.0
    torch.testing.assert_close(sums.sum(), total, rtol=1e-5, atol=1e-5)


def test_each_rows_loss_is_the_models_own_loss_on_that_example_alone() -> None:
    model = tiny_llama()
    batch = padded_batch()
    with torch.no_grad():
        sums, counts = per_example_losses(model, batch)
        for row in range(2):
            length = int(batch["attention_mask"][row].sum())
            alone = model(
                input_ids=batch["input_ids"][row : row + 1, :length], labels=batch["labels"][row : row + 1, :length]
            )
            torch.testing.assert_close(sums[row] / counts[row], alone.loss, rtol=1e-4, atol=1e-5)


def test_a_packed_batch_is_refused() -> None:
    examples = [TokenizedExample(input_ids=[1, 2, 3], labels=[-100, 2, 3])] * 2
    batch = collate([examples], packing=True, pad_token_id=0)
    with pytest.raises(ValueError, match="unpacked"):
        per_example_losses(tiny_llama(), batch)


# -- the pure report ----------------------------------------------------------------------------------


@st.composite
def score_lists(draw: st.DrawFn, *, with_before: bool | None = None) -> list[ExampleScore]:
    count = draw(st.integers(min_value=0, max_value=40))
    before = draw(st.booleans()) if with_before is None else with_before
    losses = st.floats(min_value=0.0, max_value=8.0, allow_nan=False)
    scores = []
    for index in range(count):
        tokens = draw(st.integers(min_value=1, max_value=50))
        scores.append(
            ExampleScore(
                index=index,
                tokens=tokens,
                label_tokens=draw(st.integers(min_value=1, max_value=tokens)),
                loss_after=draw(losses),
                loss_before=draw(losses) if before else None,
            )
        )
    return draw(st.permutations(scores))


def score(index: int, *, tokens: int = 10, after: float = 1.0, before: float | None = 2.0) -> ExampleScore:
    return ExampleScore(index=index, tokens=tokens, label_tokens=tokens // 2, loss_after=after, loss_before=before)


@settings(max_examples=100, deadline=None)
@given(scores=score_lists(), count=st.integers(min_value=1, max_value=8))
def test_length_buckets_partition_the_examples_by_length(scores: list[ExampleScore], count: int) -> None:
    buckets = length_buckets(scores, count=count)

    assert 0 < len(buckets) <= count if scores else buckets == []
    assert sum(b.examples for b in buckets) == len(scores)
    assert all(b.examples > 0 and b.min_tokens <= b.max_tokens for b in buckets)
    # Ranges are in order and disjoint, so every example lies in exactly one bucket.
    assert all(a.max_tokens < b.min_tokens for a, b in itertools.pairwise(buckets))
    for s in scores:
        assert sum(b.min_tokens <= s.tokens <= b.max_tokens for b in buckets) == 1
    assert length_buckets(list(reversed(scores)), count=count) == buckets


def test_length_buckets_split_distinct_lengths_into_quarters() -> None:
    scores = [score(i, tokens=t) for i, t in enumerate([5, 5, 8, 9, 20, 21, 60, 64])]
    assert [(b.label, b.examples) for b in length_buckets(scores)] == [
        ("5 tokens", 2),
        ("8-9 tokens", 2),
        ("20-21 tokens", 2),
        ("60-64 tokens", 2),
    ]


@settings(max_examples=100, deadline=None)
@given(scores=score_lists(), n=st.integers(min_value=0, max_value=60))
def test_worst_indices_are_the_highest_losses_first(scores: list[ExampleScore], n: int) -> None:
    worst = worst_indices(scores, n)

    assert len(worst) == min(n, len(scores))
    by_index = {s.index: s for s in scores}
    keys = [(-by_index[i].loss_after, i) for i in worst]
    assert keys == sorted(keys)
    rest = [s.loss_after for s in scores if s.index not in worst]
    assert all(by_index[i].loss_after >= max(rest, default=0.0) for i in worst)


def test_worst_ties_are_ordered_by_index() -> None:
    scores = [score(3, after=2.0), score(1, after=2.0), score(2, after=5.0), score(0, after=0.5)]
    assert worst_indices(scores, 3) == [2, 1, 3]


@settings(max_examples=100, deadline=None)
@given(scores=score_lists(with_before=True))
def test_improved_and_worsened_count_the_examples_whose_loss_moved(scores: list[ExampleScore]) -> None:
    report = build_eval_report(objective="sft", step=1, scores=scores, worst_count=3)

    assert report.improved == sum(s.loss_after < (s.loss_before or 0.0) for s in scores)
    assert report.worsened == sum(s.loss_after > (s.loss_before or 0.0) for s in scores)
    assert [s.index for s in report.examples] == sorted(s.index for s in scores)


def test_means_weigh_answer_tokens_like_the_eval_loss() -> None:
    scores = example_scores(tokens=[10, 30, 8], label_tokens=[2, 6, 0], loss_sums_after=[2.0, 3.0, 0.0])

    assert [s.index for s in scores] == [0, 1]  # no labels, no loss
    report = build_eval_report(objective="sft", step=4, scores=scores, worst_count=5)
    assert report.mean_loss_after == pytest.approx(5.0 / 8)
    assert report.example_count == 2 and len(report.worst) == 2


def test_without_before_losses_the_before_figures_are_none() -> None:
    scores = [score(0, before=None), score(1, before=None, after=3.0)]
    report = build_eval_report(objective="sft", step=7, scores=scores, worst_count=1)

    assert report.mean_loss_before is None and report.improved is None and report.worsened is None
    assert all(b.mean_loss_before is None for b in report.buckets)
    assert report.worst[0].index == 1 and report.worst[0].loss_before is None
    assert "Mean loss - before training, 2.000 after" in render_markdown(report)


def test_an_empty_report_has_no_means_and_renders() -> None:
    report = build_eval_report(objective="dpo", step=0, scores=[], worst_count=3)
    assert report.mean_loss_after is None and report.buckets == [] and report.worst == []
    assert "0 held-out examples" in render_markdown(report)


def test_duplicate_indices_are_refused() -> None:
    with pytest.raises(ValueError, match="twice"):
        build_eval_report(objective="sft", step=0, scores=[score(1), score(1)], worst_count=1)


def sample_report() -> EvalReport:
    scores = [score(0, after=0.5), score(1, tokens=40, after=4.25, before=1.5), score(2, after=1.0, before=1.0)]
    return build_eval_report(
        objective="sft",
        step=12,
        scores=scores,
        worst_count=2,
        texts={
            1: ExampleText(prompt="Which is bigger, a|b or c?", reference="a|b", answer="<think>c</think>\nc"),
        },
        generations=[GenerationSample(prompt="Say hi", reference="hi", before=None, after="hi | there")],
    )


def test_markdown_shows_the_worst_prompt_with_pipes_escaped() -> None:
    markdown = render_markdown(sample_report())

    assert "Which is bigger, a\\|b or c?" in markdown
    assert "&lt;think&gt;c&lt;/think&gt;<br>c" in markdown
    assert "hi \\| there" in markdown
    assert "a|b" not in markdown
    assert "3 held-out examples" in markdown and "lower after training on 1 examples, higher on 1" in markdown
    table_rows = [line for line in markdown.splitlines() if line.startswith("| 1 |")]
    assert len(table_rows) == 1 and table_rows[0].count(" | ") == 5  # six cells: no pipe leaked


def test_long_texts_are_cut_in_the_middle() -> None:
    question = "system prompt " * 100 + "What is the capital of France?"
    report = build_eval_report(
        objective="sft",
        step=1,
        scores=[score(0)],
        worst_count=1,
        texts={0: ExampleText(prompt=question, reference="Paris", answer="Lyon")},
    )
    markdown = render_markdown(report)
    assert "What is the capital of France?" in markdown and "characters cut" in markdown
    assert len(markdown) < 1500


def test_the_json_reads_back_as_the_same_report(tmp_path: Path) -> None:
    report = sample_report()
    write_eval_report(report, tmp_path)

    text = (tmp_path / REPORT_JSON).read_text(encoding="utf-8")
    assert EvalReport.model_validate_json(text) == report
    wire = json.loads(text)
    assert wire["worst"][0]["lossAfter"] == 4.25 and wire["exampleCount"] == 3
    assert wire["generations"][0]["before"] is None and wire["worst"][1]["prompt"] is None
    assert (tmp_path / REPORT_MD).read_text(encoding="utf-8") == render_markdown(report)
