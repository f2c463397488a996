"""The fine-tuning recipe, read top-down: config → data → plan → model → loop → checkpoint → output → report.

``setup`` prepares the data (SFT examples or DPO pairs), resolves the hyperparameters from the examples'
lengths (plain numbers in, no callbacks), builds the model, resumes from the newest checkpoint and, for
DPO, fixes the reference log-probabilities. ``train`` runs the loop (evaluating and checkpointing on
schedule), ``write_output`` stages the artifact with its evaluation report and publishes it, manifest last.
What differs between SFT and DPO lives in :mod:`kubetune_trainer.objectives`; the checkpoint layout in
:mod:`kubetune_trainer.checkpoint`.

One optimizer step = ``gradient_accumulation_steps`` micro-batches on each of ``world_size`` ranks. The
loss of a step is the summed loss of all its units (label tokens for SFT, pairs for DPO) divided by their
number across all micro-batches and ranks, so accumulation and data parallelism give the same gradient as
one big batch.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import numpy as np
import torch

from kubetune.api.progress import (
    CheckpointSavedEvent,
    EvalEvent,
    FinishedEvent,
    PreferenceMetrics,
    StartedEvent,
    StepEvent,
)
from kubetune.api.trainer_config import TrainerConfig
from kubetune.api.uris import PVC_MOUNT_ROOT
from kubetune_trainer import modeling
from kubetune_trainer.checkpoint import CheckpointStore, TrainingPosition, TrainingState, rng_file
from kubetune_trainer.data import REPORT_FILE_NAME, PreparedData, prepare_data
from kubetune_trainer.data.prepare import prepare_preference_data
from kubetune_trainer.data.report import render_report
from kubetune_trainer.data.types import PreparedPairs
from kubetune_trainer.dpo import STATS_FIELDS
from kubetune_trainer.errors import ConfigError, DivergedError, StoppedOnSignal
from kubetune_trainer.eval_report import (
    EvalReport,
    ExampleText,
    build_eval_report,
    example_scores,
    worst_indices,
    write_eval_report,
)
from kubetune_trainer.generation import SamplePrompt, generate, sample_prompts
from kubetune_trainer.objectives import DpoObjective, ItemScores, ReferenceMode, SftObjective, Split
from kubetune_trainer.optim import build_optimizer, build_scheduler
from kubetune_trainer.output import (
    FinalMetrics,
    GenerationSample,
    PrecisionRecord,
    build_manifest,
    publish_output,
    write_generations,
)
from kubetune_trainer.preflight import differences_from_check
from kubetune_trainer.reporting import Reporter
from kubetune_trainer.runtime import Runtime, bf16_supported, cuda_available, start_runtime, stop_runtime
from kubetune_trainer.settings import (
    DeviceType,
    Precision,
    epoch_batches,
    resolve_hyperparameters,
    resolve_precision,
)
from kubetune_trainer.signals import StopRequest
from kubetune_trainer.storage import resolve_location, staging_dir

log = logging.getLogger(__name__)

Batch = dict[str, torch.Tensor]
CheckpointReason = Literal["periodic", "sigterm", "final"]


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """How this process runs, beyond the config: local paths and the size of the before/after samples."""

    # Local scratch: downloads (s3://), a plain copy of a GGUF model for QLoRA, fetched checkpoints.
    cache_dir: Path
    pvc_root: PurePosixPath = PVC_MOUNT_ROOT
    # Held-out prompts answered before and after training (greedy), and their answer length in tokens.
    sample_prompts: int = 3
    sample_max_new_tokens: int = 48
    # DPO's reference log-probabilities: computed once before training, or in every step (PEFT only).
    dpo_reference: ReferenceMode = "precomputed"
    # Held-out examples with the highest loss after training, answered in the eval report.
    report_worst: int = 5
    # Torch intra-op threads; None keeps torch's default (one per core).
    threads: int | None = None
    stop: StopRequest = field(default_factory=StopRequest)


@dataclass(frozen=True, kw_only=True)
class TrainResult:
    steps: int
    trained_tokens: int
    loss: float | None
    eval_loss: float | None
    initial_eval_loss: float | None
    output_uri: str
    manifest_sha256: str


@dataclass(frozen=True, kw_only=True)
class _StepResult:
    # Mean loss per unit (label token, or pair for dpo) over all ranks and micro-batches.
    loss: float
    # Non-padding tokens on all ranks.
    tokens: int
    seconds: float
    grad_norm: float | None
    preference: PreferenceMetrics | None


@dataclass(kw_only=True)
class _State:
    """What changes as training runs (the rest of the recipe is fixed after setup)."""

    position: TrainingPosition
    resumed_from: int | None = None
    last_checkpoint_step: int | None = None
    initial_eval_loss: float | None = None
    eval_loss: float | None = None
    eval_step: int | None = None
    # The first evaluation at step 0 (the base model) and the latest one, per example, for the eval report.
    initial_scores: ItemScores | None = None
    eval_scores: ItemScores | None = None
    before_samples: list[str] | None = None


class FineTuneRecipe:
    def __init__(self, config: TrainerConfig, *, options: RunOptions, reporter: Reporter) -> None:
        self.config = config
        self.options = options
        self._reporter = reporter

    # -- setup ------------------------------------------------------------------------------------

    def setup(self) -> None:
        if self.options.threads is not None:
            torch.set_num_threads(self.options.threads)
        device_type: DeviceType = "cuda" if cuda_available() else "cpu"
        self.precision_choice = resolve_precision(
            self.config.hyperparameters.precision, device=device_type, bf16_supported=bf16_supported()
        )
        self.precision: Precision = self.precision_choice.used
        if self.precision_choice.reason:
            log.warning(
                "hyperparameters.precision %s: training in %s (%s); the output manifest records it",
                self.precision_choice.requested,
                self.precision,
                self.precision_choice.reason,
            )
        self.runtime: Runtime = start_runtime(precision=self.precision)
        # cli.build_reporter already writes nowhere on ranks other than 0.
        self.reporter: Reporter = self._reporter
        self.output = resolve_location(
            self.config.destination, field="output.destination", pvc_root=self.options.pvc_root
        )
        self.source = modeling.resolve_model_source(
            self.config.model, pvc_root=self.options.pvc_root, cache_dir=self.options.cache_dir
        )
        self.tokenizer = modeling.load_tokenizer(self.source)
        self.data = self._prepare_data()
        self.objective = self._objective()
        self._lengths = self.objective.lengths("train")
        self.hp = resolve_hyperparameters(
            self.config.hyperparameters,
            method=self.config.method.type,
            objective=self.config.method.objective,
            dataset=self.config.dataset,
            lengths=self._lengths,
            world_size=self.runtime.world_size,
            device=self.runtime.device_type,
        )
        self._compare_with_check()
        self._seed_everything(self.hp.seed)
        self.model = self._build_model()
        optimizer = build_optimizer(self.model, hp=self.hp, device=self.runtime.device)
        self.scheduler = build_scheduler(optimizer, hp=self.hp)
        # Through Accelerate so fp16's loss scaler unscales before clipping and skips overflowing steps;
        # the scheduler stays ours (Accelerate's would step once per process).
        self.optimizer = self.runtime.accelerator.prepare_optimizer(optimizer)
        self.loss_module = self.runtime.accelerator.prepare(self.objective.loss_module(self.model))
        self.checkpoints = CheckpointStore(
            self.output.child("checkpoints"),
            keep_last=self.config.checkpointing.keep_last,
            cache_dir=self.options.cache_dir,
        )
        self.state = _State(position=self._fresh_position())
        self._resume()
        self._reference()
        split: Split = "validation" if self.data.validation else "train"
        self.prompts: list[SamplePrompt] = sample_prompts(
            self.objective.examples_for_prompts(split), tokenizer=self.tokenizer, count=self.options.sample_prompts
        )

    def _prepare_data(self) -> PreparedData | PreparedPairs:
        prepare = prepare_preference_data if self.config.method.objective == "dpo" else prepare_data
        return prepare(
            self.config.dataset,
            tokenizer=self.tokenizer,
            seed=self.config.hyperparameters.seed,
            pvc_root=self.options.pvc_root,
        )

    def _objective(self) -> SftObjective | DpoObjective:
        pad = self.tokenizer.pad_token_id
        if isinstance(self.data, PreparedPairs):
            settings = self.config.method.dpo_settings
            return DpoObjective(
                self.data,
                beta=settings.beta,
                label_smoothing=settings.label_smoothing,
                pad_token_id=pad,
                peft=self.config.method.type != "full",
                reference_mode=self.options.dpo_reference,
            )
        return SftObjective(self.data, packing=self.config.dataset.packing, pad_token_id=pad)

    def _compare_with_check(self) -> None:
        """The data check planned for the data it read; data changed since then is worth a warning."""
        validated = self.config.validated
        if validated is None or not self.runtime.is_main:
            return
        differences = differences_from_check(
            validated,
            train_examples=len(self.data.train),
            dataset_sha256=self.data.dataset_sha256,
            total_steps=self.hp.total_steps,
        )
        if differences:
            log.warning(
                "the data changed since the data check (status.dataset, status.hyperparameters describe the "
                "old data): %s; training goes on with what it read",
                "; ".join(differences),
            )

    def _plan(self, epoch: int) -> list[list[list[int]]]:
        return epoch_batches(
            self._lengths,
            dataset=self.config.dataset,
            batch_size=self.hp.per_device_batch_size,
            seed=self.hp.seed,
            epoch=epoch,
        )

    def _seed_everything(self, seed: int) -> None:
        # Same seed on every rank: adapters start identical everywhere (DDP also broadcasts them).
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

    def _build_model(self) -> Any:
        dtype = modeling.weight_dtype(self.config.model, precision=self.precision)
        if self.config.method.type == "full" and self.precision == "fp16" and self.config.model.dtype == "auto":
            dtype = torch.float32  # fp16 autocast needs fp32 master weights for the loss scaler
        quantization = None
        if self.config.method.type == "qlora":
            from kubetune.api.spec import QuantizationSpec

            quantization = self.config.method.quantization or QuantizationSpec()
        compute = quantization.compute_dtype if quantization is not None else "auto"
        compute_dtype = modeling.PRECISION_DTYPES[self.precision] if compute == "auto" else modeling.DTYPES[compute]
        base = modeling.load_model(
            self.source,
            dtype=dtype,
            device=self.runtime.device,
            quantization=quantization,
            compute_dtype=compute_dtype,
            cache_dir=self.options.cache_dir,
        )
        model = modeling.apply_method(
            base, method=self.config.method, gradient_checkpointing=self.hp.gradient_checkpointing
        )
        model.train()
        if self.config.method.objective == "dpo":
            # The reference log-probabilities are taken without dropout; with it, the policy would differ
            # from the reference at step 0 by noise alone, and the rewards with it.
            for module in model.modules():
                if isinstance(module, torch.nn.Dropout):
                    module.p = 0.0
        trainable, total = modeling.count_parameters(model)
        log.info("model: %s trainable of %s parameters (%.2f%%)", trainable, total, 100 * trainable / total)
        return model

    def _fresh_position(self) -> TrainingPosition:
        return TrainingPosition(
            step=0,
            epoch=0,
            step_in_epoch=0,
            trained_tokens=0,
            world_size=self.runtime.world_size,
            gradient_accumulation_steps=self.hp.gradient_accumulation_steps,
        )

    def _resume(self) -> None:
        restored = self.checkpoints.restore(
            model=self.model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            rank=self.runtime.rank,
            device=self.runtime.device,
        )
        if restored is None:
            return
        if isinstance(self.objective, DpoObjective):
            self.objective.restore_extra(restored.extra)
        if not restored.rng_restored:
            log.warning("%s has no %s; reseeding", restored.uri, rng_file(self.runtime.rank))
            self._seed_everything(self.hp.seed + restored.position.step + self.runtime.rank)
        saved = restored.position
        if (saved.world_size, saved.gradient_accumulation_steps) != (
            self.runtime.world_size,
            self.hp.gradient_accumulation_steps,
        ):
            log.warning(
                "resuming with world size %d x accumulation %d (checkpoint: %d x %d): the rest of the epoch's "
                "data order shifts",
                self.runtime.world_size,
                self.hp.gradient_accumulation_steps,
                saved.world_size,
                saved.gradient_accumulation_steps,
            )
        self.state.position = saved
        self.state.resumed_from = saved.step
        self.state.last_checkpoint_step = saved.step
        log.info("resumed from %s (step %d, epoch %d)", restored.uri, saved.step, saved.epoch)

    def _reference(self) -> None:
        """DPO: the reference model's log-probabilities of every pair, from the checkpoint resumed from or
        computed now (all ranks take part). The model has not trained yet unless a checkpoint was loaded."""
        objective = self.objective
        if not isinstance(objective, DpoObjective) or objective.reference_mode == "live":
            return
        if objective.reference:
            return
        if self.state.resumed_from is not None and self.config.method.type == "full":
            raise ConfigError(
                f"the checkpoint of step {self.state.resumed_from} has no reference log-probabilities, and after "
                "full fine-tuning steps the model is no longer the reference; start the job again without it"
            )
        started = time.perf_counter()
        with self.runtime.accelerator.autocast():
            shares = objective.compute_reference(
                self.model,
                batch_size=self.hp.per_device_batch_size,
                device=self.runtime.device,
                rank=self.runtime.rank,
                world_size=self.runtime.world_size,
            )
        objective.set_reference(self.runtime.sum_tensors(*shares))
        log.info(
            "reference log-probabilities of %d + %d pairs computed in %.1f s",
            objective.size("train"),
            objective.size("validation"),
            time.perf_counter() - started,
        )

    # -- training ---------------------------------------------------------------------------------

    def train(self) -> None:
        hp = self.hp
        self.reporter.emit(
            StartedEvent(
                step=self.state.position.step,
                total_steps=hp.total_steps,
                epochs=hp.epochs,
                world_size=self.runtime.world_size,
                train_examples=self.objective.size("train"),
                validation_examples=self.objective.size("validation"),
                resumed_from_step=self.state.resumed_from,
            )
        )
        self._sample_before()
        if self.state.position.step == 0 and self.data.validation:
            self.state.initial_eval_loss = self.evaluate()
            self.state.initial_scores = self.state.eval_scores
        for step_batches, epoch, step_in_epoch in self._remaining_steps():
            result = self._optimizer_step(step_batches)
            pos = self.state.position
            self.state.position = TrainingPosition(
                step=pos.step + 1,
                epoch=epoch,
                step_in_epoch=step_in_epoch + 1,
                trained_tokens=pos.trained_tokens + result.tokens,
                world_size=self.runtime.world_size,
                gradient_accumulation_steps=hp.gradient_accumulation_steps,
                last_loss=result.loss,
            )
            self._report_step(result)
            self._after_step()
        if self.state.last_checkpoint_step != self.state.position.step:
            # Writing the output can fail or be killed; the final checkpoint saves retraining.
            self.save_checkpoint(reason="final")
        if self.data.validation and self.state.eval_step != self.state.position.step:
            self.evaluate()
        log.info(
            "rank %d of %d: trained to step %d (%d tokens on all ranks)",
            self.runtime.rank,
            self.runtime.world_size,
            self.state.position.step,
            self.state.position.trained_tokens,
        )

    def _remaining_steps(self) -> Iterator[tuple[list[list[list[int]]], int, int]]:
        """(this rank's micro-batches, epoch, step in epoch) for every step still to run."""
        pos = self.state.position
        step = pos.step
        per_step = self.runtime.world_size * self.hp.gradient_accumulation_steps
        for epoch in range(pos.epoch, self.hp.epochs):
            plan = self._plan(epoch)
            first = pos.step_in_epoch if epoch == pos.epoch else 0
            for step_in_epoch in range(first, self.hp.epoch_steps[epoch]):
                if step >= self.hp.total_steps:
                    return
                chunk = plan[step_in_epoch * per_step : (step_in_epoch + 1) * per_step]
                yield self._rank_share(chunk), epoch, step_in_epoch
                step += 1

    def _rank_share(self, chunk: list[list[list[int]]]) -> list[list[list[int]]]:
        """This rank's micro-batches of a step: contiguous slices, equal in number on every rank."""
        world, rank = self.runtime.world_size, self.runtime.rank
        per_rank = math.ceil(len(chunk) / world)
        return chunk[rank * per_rank : (rank + 1) * per_rank]

    def _optimizer_step(self, micro_batches: list[list[list[int]]]) -> _StepResult:
        """Forward/backward over this rank's micro-batches, then one optimizer step."""
        started = time.perf_counter()
        runtime, accelerator = self.runtime, self.runtime.accelerator
        world = runtime.world_size
        objective = self.objective
        batches = [objective.batch(rows, split="train", device=runtime.device) for rows in micro_batches]
        label_tokens = sum(objective.units(b) for b in batches)
        input_tokens = sum(objective.input_tokens(rows, split="train") for rows in micro_batches)
        # Ranks may hold different numbers of micro-batches in an epoch's short last step; every rank
        # must run the same number of backward passes (DDP all-reduces on the last one), so the short
        # ones repeat a batch with weight 0.
        micro_steps = len(batches) if world == 1 else self._max_over_ranks(len(batches))
        total_label_tokens, total_input_tokens = runtime.sum(float(label_tokens), float(input_tokens))
        scale = world / max(total_label_tokens, 1.0)  # DDP averages over ranks; undo that, divide by units
        loss_sum = torch.zeros((), dtype=torch.float64, device=runtime.device)
        stats_sum: torch.Tensor | None = None
        for index in range(micro_steps):
            batch = batches[index] if index < len(batches) else (batches[0] if batches else self._filler_batch())
            weight = scale if index < len(batches) else 0.0
            sync = index == micro_steps - 1
            context = contextlib.nullcontext() if sync or world == 1 else accelerator.no_sync(self.loss_module)
            with context:
                loss, stats = objective.forward(self.loss_module, batch)
                accelerator.backward(loss * weight)
            if index < len(batches):
                loss_sum += loss.detach().double()
                if stats is not None:
                    stats_sum = stats if stats_sum is None else stats_sum + stats
        grad_norm = self._clip_gradients()
        global_loss = runtime.sum(float(loss_sum.item()))[0] / max(total_label_tokens, 1.0)
        # fp16 runs use a loss scaler that skips overflowing steps itself: an inf norm is normal there.
        norm_diverged = grad_norm is not None and not math.isfinite(grad_norm) and self.precision != "fp16"
        if not math.isfinite(global_loss) or norm_diverged:
            what = "loss" if not math.isfinite(global_loss) else "gradient norm"
            raise DivergedError(
                f"{what} became {global_loss if what == 'loss' else grad_norm} at step "
                f"{self.state.position.step + 1}; lower hyperparameters.learningRate or check the data and model"
            )
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        preference = None
        if objective.name == "dpo":
            # Every rank takes part in the sum, a rank without pairs in a short last step too.
            total = stats_sum if stats_sum is not None else torch.zeros(len(STATS_FIELDS), device=runtime.device)
            preference = objective.metrics(runtime.sum_tensors(total.clone())[0])
        return _StepResult(
            loss=global_loss,
            tokens=int(total_input_tokens),
            seconds=time.perf_counter() - started,
            grad_norm=grad_norm,
            preference=preference,
        )

    def _max_over_ranks(self, value: int) -> int:
        tensor = torch.tensor([value], dtype=torch.int64, device=self.runtime.device)
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
        return int(tensor.item())

    def _filler_batch(self) -> Batch:
        """A batch for a rank that has no data in a short last step (its loss is weighted 0)."""
        return self.objective.batch([[0]], split="train", device=self.runtime.device)

    def _clip_gradients(self) -> float | None:
        params = [p for p in self.model.parameters() if p.requires_grad]
        norm = self.runtime.accelerator.clip_grad_norm_(params, self.hp.max_grad_norm)
        return None if norm is None else float(norm)

    def _report_step(self, result: _StepResult) -> None:
        pos = self.state.position
        epoch_progress = pos.epoch + pos.step_in_epoch / self.hp.epoch_steps[pos.epoch]
        self.reporter.emit(
            StepEvent(
                step=pos.step,
                total_steps=self.hp.total_steps,
                epoch=round(epoch_progress, 4),
                loss=result.loss,
                learning_rate=self.scheduler.get_last_lr()[0],
                grad_norm=result.grad_norm,
                tokens_per_second=result.tokens / result.seconds if result.seconds > 0 else 0.0,
                trained_tokens=pos.trained_tokens,
                preference=result.preference,
            )
        )

    def _after_step(self) -> None:
        step = self.state.position.step
        every_eval = self.hp.eval_every_steps
        if self.data.validation and every_eval and step % every_eval == 0:
            self.evaluate()
        stop = self.runtime.any(self.options.stop.requested)
        if stop or (step % self.config.checkpointing.every_steps == 0 and step < self.hp.total_steps):
            uri = self.save_checkpoint(reason="sigterm" if stop else "periodic")
            if stop:
                raise StoppedOnSignal(step=step, checkpoint_uri=uri)

    # -- evaluation and samples ---------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean loss per unit (label token; pair for dpo) over the validation data, sharded across ranks."""
        scores = self._validation_scores()
        eval_loss = sum(scores.loss_sums) / max(sum(scores.units), 1.0)
        self.state.eval_loss = eval_loss
        self.state.eval_step = self.state.position.step
        self.state.eval_scores = scores
        self.reporter.emit(
            EvalEvent(
                step=self.state.position.step,
                eval_loss=eval_loss,
                perplexity=math.exp(min(eval_loss, 50.0)),
                preference=scores.preference(),
            )
        )
        return eval_loss

    @torch.no_grad()
    def _validation_scores(self) -> ItemScores:
        """Every held-out item's scores, on every rank: each rank scores every world_size-th item of the
        length-sorted list, in unpacked batches, and the results are all-reduced."""
        runtime, objective = self.runtime, self.objective
        lengths = objective.lengths("validation")
        count = len(lengths)
        mine = sorted(range(count), key=lengths.__getitem__)[runtime.rank :: runtime.world_size]
        # Rows: loss sums, units, chosen rewards, rejected rewards (the last two stay 0 for sft).
        table = torch.zeros((4, count), dtype=torch.float64, device=runtime.device)
        was_training = self.model.training
        self.model.eval()
        try:
            with runtime.accelerator.autocast():
                for start in range(0, len(mine), self.hp.per_device_batch_size):
                    rows = mine[start : start + self.hp.per_device_batch_size]
                    scored = objective.score(self.model, rows, device=runtime.device)
                    index = torch.tensor(rows, device=runtime.device)
                    table[0, index] = torch.tensor(scored.loss_sums, dtype=torch.float64, device=runtime.device)
                    table[1, index] = torch.tensor(scored.units, dtype=torch.float64, device=runtime.device)
                    if scored.chosen_rewards is not None and scored.rejected_rewards is not None:
                        table[2, index] = torch.tensor(
                            scored.chosen_rewards, dtype=torch.float64, device=runtime.device
                        )
                        table[3, index] = torch.tensor(
                            scored.rejected_rewards, dtype=torch.float64, device=runtime.device
                        )
        finally:
            self.model.train(was_training)
        (table,) = runtime.sum_tensors(table)
        values = table.tolist()
        dpo = objective.name == "dpo"
        return ItemScores(
            loss_sums=values[0],
            units=values[1],
            chosen_rewards=values[2] if dpo else None,
            rejected_rewards=values[3] if dpo else None,
        )

    def _sample_before(self) -> None:
        """Base-model answers: adapters can be switched off, so this works after a resume too."""
        if not self.runtime.is_main or not self.prompts:
            return
        if self.config.method.type != "full":
            with self.model.disable_adapter():
                self.state.before_samples = self._generate()
        elif self.state.position.step == 0:
            self.state.before_samples = self._generate()

    def _generate(self, prompts: list[SamplePrompt] | None = None) -> list[str]:
        return generate(
            self.model,
            self.prompts if prompts is None else prompts,
            tokenizer=self.tokenizer,
            max_new_tokens=self.options.sample_max_new_tokens,
            device=self.runtime.device,
        )

    # -- checkpoints ----------------------------------------------------------------------------------

    def save_checkpoint(self, *, reason: CheckpointReason) -> str | None:
        """Write a complete checkpoint (all ranks take part); returns its URI on the main rank."""
        state = TrainingState(
            position=self.state.position,
            weights=modeling.trainable_state_dict(self.model),
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            extra=self.objective.checkpoint_extra() if isinstance(self.objective, DpoObjective) else {},
        )
        uri = self.checkpoints.save(state, ranks=self.runtime)
        if uri is not None:
            self.reporter.emit(CheckpointSavedEvent(step=state.position.step, uri=uri, reason=reason))
        self.state.last_checkpoint_step = state.position.step
        return uri

    # -- output ----------------------------------------------------------------------------------

    def write_output(self) -> TrainResult:
        """Main rank writes the artifact; every rank returns the same result."""
        result_sha = ""
        merged = False
        before = self._scores_before_training()  # all ranks take part
        if self.runtime.is_main:
            result_sha, merged = self._write_artifact(before)
        self.runtime.barrier()
        pos = self.state.position
        self.reporter.emit(
            FinishedEvent(
                step=pos.step,
                output_uri=self.output.uri,
                manifest_sha256=result_sha,
                loss=pos.last_loss,
                eval_loss=self.state.eval_loss,
                trained_tokens=pos.trained_tokens,
                merged=merged,
            )
        )
        return TrainResult(
            steps=pos.step,
            trained_tokens=pos.trained_tokens,
            loss=pos.last_loss,
            eval_loss=self.state.eval_loss,
            initial_eval_loss=self.state.initial_eval_loss,
            output_uri=self.output.uri,
            manifest_sha256=result_sha,
        )

    def _write_artifact(self, before: ItemScores | None) -> tuple[str, bool]:
        staged = staging_dir(self.output, "output")
        after = self._generate() if self.prompts else []
        if self.config.method.type == "full":
            self.model.save_pretrained(staged / "model", safe_serialization=True)
        else:
            self.model.save_pretrained(staged / "adapter", safe_serialization=True)
        self.tokenizer.save_pretrained(staged / "tokenizer")
        samples = [
            GenerationSample(
                prompt=p.prompt,
                reference=p.reference,
                before=self.state.before_samples[i] if self.state.before_samples else None,
                after=after[i],
            )
            for i, p in enumerate(self.prompts)
        ]
        write_generations(staged / "generations.json", samples)
        if self.state.eval_scores is not None:
            write_eval_report(self._eval_report(before, samples), staged)
        (staged / REPORT_FILE_NAME).write_text(render_report(self.data.report), encoding="utf-8")
        merged = self.config.output.merge_adapter and self.config.method.type != "full"
        if merged:
            self._write_merged(staged)
        eval_loss = self.state.eval_loss
        manifest = build_manifest(
            config=self.config,
            staged=staged,
            dataset_sha256=self.data.dataset_sha256,
            steps=self.state.position.step,
            epochs=self.hp.epochs,
            trained_tokens=self.state.position.trained_tokens,
            metrics=FinalMetrics(
                loss=self.state.position.last_loss,
                eval_loss=eval_loss,
                perplexity=None if eval_loss is None else math.exp(min(eval_loss, 50.0)),
                initial_eval_loss=self.state.initial_eval_loss,
            ),
            merged=merged,
            revision=self.source.revision,
            precision=PrecisionRecord(
                requested=self.precision_choice.requested,
                used=self.precision_choice.used,
                reason=self.precision_choice.reason,
            ),
        )
        return publish_output(staged, self.output, manifest=manifest), merged

    def _write_merged(self, staged: Path) -> None:
        """The base in 16 bits (bf16; fp16 when the base was trained in fp16) with the adapter merged."""
        dtype = torch.float16 if self.precision == "fp16" else torch.bfloat16
        merged = modeling.build_merged_model(self.source, adapter_dir=staged / "adapter", dtype=dtype)
        merged.save_pretrained(staged / "merged", safe_serialization=True)
        self.tokenizer.save_pretrained(staged / "merged")
        del merged

    # -- report ---------------------------------------------------------------------------------

    @torch.no_grad()
    def _scores_before_training(self) -> ItemScores | None:
        """The base model's per-example scores: from step 0's evaluation, or, after a resume, with the
        adapters switched off (a resumed full fine-tune has no base model left to score)."""
        if not self.objective.size("validation") or self.state.initial_scores is not None:
            return self.state.initial_scores
        if self.config.method.type == "full":
            return None
        with self.model.disable_adapter():
            return self._validation_scores()

    def _eval_report(self, before: ItemScores | None, samples: list[GenerationSample]) -> EvalReport:
        """Per held-out example before and after, the worst ones answered by the trained model."""
        after = self.state.eval_scores
        assert after is not None
        validation = self.objective.examples_for_prompts("validation")
        scores = example_scores(
            tokens=self.objective.lengths("validation"),
            label_tokens=[round(u) for u in after.units],
            loss_sums_after=after.loss_sums,
            loss_sums_before=None if before is None else before.loss_sums,
            margins_after=after.margins,
            margins_before=None if before is None else before.margins,
        )
        count = self.options.report_worst
        texts: dict[int, ExampleText] = {}
        for index in worst_indices(scores, count):
            prompts = sample_prompts([validation[index]], tokenizer=self.tokenizer, count=1)
            if prompts:
                answer = self._generate(prompts)[0]
                texts[index] = ExampleText(prompt=prompts[0].prompt, reference=prompts[0].reference, answer=answer)
        return build_eval_report(
            objective=self.config.method.objective,
            step=self.state.position.step,
            scores=scores,
            worst_count=count,
            texts=texts,
            generations=samples,
        )

    def cleanup(self) -> None:
        self._reporter.close()
        stop_runtime()
