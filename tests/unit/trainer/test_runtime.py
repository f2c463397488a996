"""The trainer's runtime as a CPU job's pods start it: no CUDA device, one process per pod, gloo between pods."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from kubetune_testenv.processes import free_port

# What each rank reports about the runtime it got; printed on one line the test can find in the logs.
PROBE = """
import torch.distributed as dist
from kubetune_trainer.runtime import start_runtime, stop_runtime
from kubetune_trainer.settings import resolve_precision

runtime = start_runtime(precision="fp32")
backend = dist.get_backend() if dist.is_initialized() else "none"
total = runtime.sum(float(runtime.rank + 1))[0]
precision = resolve_precision("auto", device=runtime.device_type, bf16_supported=False).used
print(f"PROBE rank={runtime.rank} world={runtime.world_size} device={runtime.device_type} "
      f"backend={backend} sum={total:g} precision={precision}", flush=True)
stop_runtime()
"""


def test_two_cpu_pods_rendezvous_over_gloo_with_one_process_each(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE, encoding="utf-8")
    port = free_port()
    # The pod's env for gpusPerNode 0: the GPUs hidden, NPROC_PER_NODE=1, NNODES = nodes.
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    pods = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes=2",
                "--nproc-per-node=1",
                f"--node-rank={rank}",
                "--master-addr=127.0.0.1",
                f"--master-port={port}",
                str(probe),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    logs = [pod.communicate(timeout=120)[0] for pod in pods]
    for pod, log in zip(pods, logs, strict=True):
        assert pod.returncode == 0, log[-3000:]
    reports = sorted(line for log in logs for line in log.splitlines() if line.startswith("PROBE "))
    expected = [f"PROBE rank={rank} world=2 device=cpu backend=gloo sum=3 precision=fp32" for rank in (0, 1)]
    assert reports == expected, logs
