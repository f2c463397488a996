"""The fine-tuning recipe: ``setup → train (evaluate, save_checkpoint) → write_output → cleanup``.

One optimizer step = ``gradient_accumulation_steps`` micro-batches on each of ``world_size`` ranks. The
loss of a step is the summed cross-entropy of all its label tokens divided by their number across all
micro-batches and ranks, so accumulation and data parallelism give the same gradient as one big batch.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import shutil
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
    StartedEvent,
    StepEvent,
)
from kubetune.api.trainer_config import TrainerConfig
from kubetune.api.uris import PVC_MOUNT_ROOT
from kubetune_trainer import modeling
from kubetune_trainer.checkpoint import CheckpointStore, TrainingPosition, load_checkpoint, rng_file
from kubetune_trainer.data import PreparedData, TokenizedExample, collate, prepare_data
from kubetune_trainer.errors import DivergedError, StoppedOnSignal
from kubetune_trainer.generation import SamplePrompt, generate, sample_prompts
from kubetune_trainer.loss import LabelTokenLoss, label_token_count
from kubetune_trainer.optim import build_optimizer, build_scheduler
from kubetune_trainer.output import (
    FinalMetrics,
    GenerationSample,
    build_manifest,
    publish_output,
    write_generations,
)
from kubetune_trainer.preflight import differences_from_check
from kubetune_trainer.reporting import NullReporter, Reporter
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


@dataclass(kw_only=True)
class _State:
    """What changes as training runs (the rest of the recipe is fixed after setup)."""

    position: TrainingPosition
    resumed_from: int | None = None
    last_checkpoint_step: int | None = None
    initial_eval_loss: float | None = None
    eval_loss: float | None = None
    eval_step: int | None = None
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
        self.precision: Precision = resolve_precision(
            self.config.hyperparameters.precision, device=device_type, bf16_supported=bf16_supported()
        )
        self.runtime: Runtime = start_runtime(precision=self.precision)
        self.reporter: Reporter = self._reporter if self.runtime.is_main else NullReporter()
        self.output = resolve_location(
            self.config.destination, field="output.destination", pvc_root=self.options.pvc_root
        )
        self.source = modeling.resolve_model_source(
            self.config.model, pvc_root=self.options.pvc_root, cache_dir=self.options.cache_dir
        )
        self.tokenizer = modeling.load_tokenizer(self.source)
        self.data = self._prepare_data()
        self._lengths = [len(e.input_ids) for e in self.data.train]
        self.hp = resolve_hyperparameters(
            self.config.hyperparameters,
            method=self.config.method.type,
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
        self.loss_module = self.runtime.accelerator.prepare(LabelTokenLoss(self.model))
        self.checkpoints = CheckpointStore(
            self.output.child("checkpoints"),
            keep_last=self.config.checkpointing.keep_last,
            cache_dir=self.options.cache_dir,
        )
        self.state = _State(position=self._fresh_position())
        self._resume()
        self.prompts: list[SamplePrompt] = sample_prompts(
            self.data.validation or self.data.train, tokenizer=self.tokenizer, count=self.options.sample_prompts
        )

    def _prepare_data(self) -> PreparedData:
        report_dir = self.output.local if self.runtime.is_main else None
        return prepare_data(
            self.config.dataset,
            tokenizer=self.tokenizer,
            seed=self.config.hyperparameters.seed,
            report_dir=report_dir,
            pvc_root=self.options.pvc_root,
        )

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
        info = self.checkpoints.latest()
        if info is None:
            return
        restored_rng = load_checkpoint(
            info,
            model=self.model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            rank=self.runtime.rank,
            device=self.runtime.device,
        )
        if not restored_rng:
            log.warning("%s has no %s; reseeding", info.uri, rng_file(self.runtime.rank))
            self._seed_everything(self.hp.seed + info.position.step + self.runtime.rank)
        saved = info.position
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
        log.info("resumed from %s (step %d, epoch %d)", info.uri, saved.step, saved.epoch)

    # -- training ---------------------------------------------------------------------------------

    def train(self) -> None:
        hp = self.hp
        self.reporter.emit(
            StartedEvent(
                step=self.state.position.step,
                total_steps=hp.total_steps,
                epochs=hp.epochs,
                world_size=self.runtime.world_size,
                train_examples=len(self.data.train),
                validation_examples=len(self.data.validation),
                resumed_from_step=self.state.resumed_from,
            )
        )
        self._sample_before()
        if self.state.position.step == 0 and self.data.validation:
            self.state.initial_eval_loss = self.evaluate()
        for step_batches, epoch, step_in_epoch in self._remaining_steps():
            loss, tokens, seconds, grad_norm = self._optimizer_step(step_batches)
            pos = self.state.position
            self.state.position = TrainingPosition(
                step=pos.step + 1,
                epoch=epoch,
                step_in_epoch=step_in_epoch + 1,
                trained_tokens=pos.trained_tokens + tokens,
                world_size=self.runtime.world_size,
                gradient_accumulation_steps=hp.gradient_accumulation_steps,
                last_loss=loss,
            )
            self._report_step(loss=loss, tokens=tokens, seconds=seconds, grad_norm=grad_norm)
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

    def _collate(self, rows: list[list[int]], examples: list[TokenizedExample]) -> Batch:
        batch = collate(
            [[examples[i] for i in row] for row in rows],
            packing=self.config.dataset.packing,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        return {k: v.to(self.runtime.device, non_blocking=True) for k, v in batch.items()}

    def _optimizer_step(self, micro_batches: list[list[list[int]]]) -> tuple[float, int, float, float | None]:
        """Forward/backward over this rank's micro-batches, then one optimizer step.

        Returns (mean loss per label token over all ranks, non-padding tokens on all ranks, seconds, grad norm).
        """
        started = time.perf_counter()
        runtime, accelerator = self.runtime, self.runtime.accelerator
        world = runtime.world_size
        batches = [self._collate(rows, self.data.train) for rows in micro_batches]
        label_tokens = sum(label_token_count(b["labels"]) for b in batches)
        input_tokens = sum(self._lengths[i] for rows in micro_batches for row in rows for i in row)
        # Ranks may hold different numbers of micro-batches in an epoch's short last step; every rank
        # must run the same number of backward passes (DDP all-reduces on the last one), so the short
        # ones repeat a batch with weight 0.
        micro_steps = len(batches) if world == 1 else self._max_over_ranks(len(batches))
        total_label_tokens, total_input_tokens = runtime.sum(float(label_tokens), float(input_tokens))
        scale = world / max(total_label_tokens, 1.0)  # DDP averages over ranks; undo that, divide by tokens
        loss_sum = torch.zeros((), dtype=torch.float64, device=runtime.device)
        for index in range(micro_steps):
            batch = batches[index] if index < len(batches) else (batches[0] if batches else self._filler_batch())
            weight = scale if index < len(batches) else 0.0
            sync = index == micro_steps - 1
            context = contextlib.nullcontext() if sync or world == 1 else accelerator.no_sync(self.loss_module)
            with context:
                loss = self.loss_module(**batch)
                accelerator.backward(loss * weight)
            if index < len(batches):
                loss_sum += loss.detach().double()
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
        return global_loss, int(total_input_tokens), time.perf_counter() - started, grad_norm

    def _max_over_ranks(self, value: int) -> int:
        tensor = torch.tensor([value], dtype=torch.int64, device=self.runtime.device)
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
        return int(tensor.item())

    def _filler_batch(self) -> Batch:
        """A batch for a rank that has no data in a short last step (its loss is weighted 0)."""
        return self._collate([[0]], self.data.train)

    def _clip_gradients(self) -> float | None:
        params = [p for p in self.model.parameters() if p.requires_grad]
        norm = self.runtime.accelerator.clip_grad_norm_(params, self.hp.max_grad_norm)
        return None if norm is None else float(norm)

    def _report_step(self, *, loss: float, tokens: int, seconds: float, grad_norm: float | None) -> None:
        pos = self.state.position
        epoch_progress = pos.epoch + pos.step_in_epoch / self.hp.epoch_steps[pos.epoch]
        self.reporter.emit(
            StepEvent(
                step=pos.step,
                total_steps=self.hp.total_steps,
                epoch=round(epoch_progress, 4),
                loss=loss,
                learning_rate=self.scheduler.get_last_lr()[0],
                grad_norm=grad_norm,
                tokens_per_second=tokens / seconds if seconds > 0 else 0.0,
                trained_tokens=pos.trained_tokens,
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
        """Mean loss per label token over the validation data (sharded across ranks)."""
        module = self.runtime.accelerator.unwrap_model(self.loss_module)
        was_training = module.training
        module.eval()
        lengths = [len(e.input_ids) for e in self.data.validation]
        plan = epoch_batches(
            lengths, dataset=self.config.dataset, batch_size=self.hp.per_device_batch_size, seed=self.hp.seed, epoch=0
        )
        loss_sum = 0.0
        tokens = 0
        with self.runtime.accelerator.autocast():
            for rows in plan[self.runtime.rank :: self.runtime.world_size]:
                batch = self._collate(rows, self.data.validation)
                loss_sum += float(module(**batch).item())
                tokens += label_token_count(batch["labels"])
        module.train(was_training)
        total_loss, total_tokens = self.runtime.sum(loss_sum, float(tokens))
        eval_loss = total_loss / max(total_tokens, 1.0)
        self.state.eval_loss = eval_loss
        self.state.eval_step = self.state.position.step
        self.reporter.emit(
            EvalEvent(
                step=self.state.position.step,
                eval_loss=eval_loss,
                perplexity=math.exp(min(eval_loss, 50.0)),
            )
        )
        return eval_loss

    def _sample_before(self) -> None:
        """Base-model answers: adapters can be switched off, so this works after a resume too."""
        if not self.runtime.is_main or not self.prompts:
            return
        if self.config.method.type != "full":
            with self.model.disable_adapter():
                self.state.before_samples = self._generate()
        elif self.state.position.step == 0:
            self.state.before_samples = self._generate()

    def _generate(self) -> list[str]:
        return generate(
            self.model,
            self.prompts,
            tokenizer=self.tokenizer,
            max_new_tokens=self.options.sample_max_new_tokens,
            device=self.runtime.device,
        )

    # -- checkpoints ----------------------------------------------------------------------------------

    def save_checkpoint(self, *, reason: CheckpointReason) -> str | None:
        """Write a complete checkpoint (all ranks take part); returns its URI on the main rank."""
        runtime, store, step = self.runtime, self.checkpoints, self.state.position.step
        staged = store.stage(step) if runtime.is_main else None
        runtime.barrier()
        if store.location.local is not None:
            store.write_rank(store.staged_path(step), rank=runtime.rank)
        elif runtime.is_main:
            assert staged is not None
            store.write_rank(staged, rank=runtime.rank)
        else:
            own = staging_dir(store.location, f"rank{runtime.rank}")
            store.write_rank(own, rank=runtime.rank)
            name = f"step-{step:08d}/{rng_file(runtime.rank)}"
            store.location.fs.put_file(str(own / rng_file(runtime.rank)), f"{store.location.path}/{name}")
            shutil.rmtree(own, ignore_errors=True)
        runtime.barrier()
        uri = None
        if runtime.is_main:
            assert staged is not None
            store.write_shared(
                staged,
                weights=modeling.trainable_state_dict(self.model),
                optimizer=self.optimizer,
                scheduler=self.scheduler,
            )
            uri = store.publish(staged, position=self.state.position)
            self.reporter.emit(CheckpointSavedEvent(step=step, uri=uri, reason=reason))
        runtime.barrier()
        self.state.last_checkpoint_step = step
        return uri

    # -- output ----------------------------------------------------------------------------------

    def write_output(self) -> TrainResult:
        """Main rank writes the artifact; every rank returns the same result."""
        result_sha = ""
        merged = False
        if self.runtime.is_main:
            result_sha, merged = self._write_artifact()
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

    def _write_artifact(self) -> tuple[str, bool]:
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
        if self.output.local is not None and (self.output.local / "data-report.json").is_file():
            shutil.copy2(self.output.local / "data-report.json", staged / "data-report.json")
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
        )
        return publish_output(staged, self.output, manifest=manifest), merged

    def _write_merged(self, staged: Path) -> None:
        """The base in 16 bits (bf16; fp16 when the base was trained in fp16) with the adapter merged."""
        dtype = torch.float16 if self.precision == "fp16" else torch.bfloat16
        merged = modeling.build_merged_model(self.source, adapter_dir=staged / "adapter", dtype=dtype)
        merged.save_pretrained(staged / "merged", safe_serialization=True)
        self.tokenizer.save_pretrained(staged / "merged")
        del merged

    def cleanup(self) -> None:
        self._reporter.close()
        stop_runtime()
