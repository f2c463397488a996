"""``launch``: run ``torchrun`` for a multi-process pod and give the pod the *trainer's* exit code.

``torchrun`` exits 1 whenever a worker fails or the agent gets SIGTERM (measured: workers checkpointed
and exited 75, torchrun exited 1), which would hide the exit-code contract from the Job's
``podFailurePolicy``. This wrapper forwards SIGTERM/SIGINT to torchrun, lets every worker record its
exit code in a directory, and exits with the most telling one: a fatal code (65, 78, 79) over 75 over
torchrun's own.

    python -m kubetune_trainer launch --nnodes 2 --nproc-per-node 8 --node-rank 0 \\
        --master-addr job-0.svc --master-port 29500 -- train --config /etc/kubetune/trainer-config.yaml
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from kubetune.api.exit_codes import FATAL_EXIT_CODES, ExitCode

# Workers write "<dir>/rank-<RANK>.exit" holding their exit code (and "rank-<RANK>.message" holding
# why they failed) when this variable is set.
EXIT_DIR_ENV = "KUBETUNE_EXIT_DIR"
# Kubernetes reads a container's termination message from this file (the pod's terminationMessagePath,
# /dev/termination-log by default) and puts it in the container status, where the operator reads it.
TERMINATION_LOG_ENV = "KUBETUNE_TERMINATION_LOG"
DEFAULT_TERMINATION_LOG = "/dev/termination-log"
# The kubelet keeps at most 4096 bytes of a termination message.
TERMINATION_MESSAGE_MAX_BYTES = 4096


def record_exit_code(code: int) -> None:
    """Called by a worker just before it exits (no-op when not under :func:`launch`)."""
    directory = os.environ.get(EXIT_DIR_ENV)
    if directory:
        rank = os.environ.get("RANK", "0")
        (Path(directory) / f"rank-{rank}.exit").write_text(str(code), encoding="utf-8")


def record_failure_message(message: str) -> None:
    """Why this process failed: for :func:`launch` to pick from, or straight into the termination log.

    Without it the pod's termination message is the tail of its log, where torchrun's own traceback
    buries the trainer's reason.
    """
    directory = os.environ.get(EXIT_DIR_ENV)
    if directory:
        rank = os.environ.get("RANK", "0")
        (Path(directory) / f"rank-{rank}.message").write_text(message, encoding="utf-8")
    else:
        write_termination_message(message)


def write_termination_message(message: str) -> None:
    """Write ``message`` where Kubernetes reads the termination message; nothing outside a container."""
    path = Path(os.environ.get(TERMINATION_LOG_ENV) or DEFAULT_TERMINATION_LOG)
    if not path.exists():  # the kubelet creates it in every container; elsewhere there is no reader
        return
    data = message.encode("utf-8")[:TERMINATION_MESSAGE_MAX_BYTES]
    path.write_bytes(data.decode("utf-8", errors="ignore").encode("utf-8"))


def failure_message(exit_dir: Path, *, code: int) -> str | None:
    """The message of the lowest rank that exited with ``code`` and said why."""
    for exit_file in sorted(exit_dir.glob("rank-*.exit"), key=lambda p: int(p.stem.split("-")[1])):
        message_file = exit_file.with_suffix(".message")
        if int(exit_file.read_text()) == code and message_file.exists():
            return message_file.read_text(encoding="utf-8")
    return None


def pod_exit_code(*, worker_codes: Sequence[int], launcher_code: int) -> int:
    """The code the pod should exit with, given what the workers and torchrun reported."""
    for code in worker_codes:
        if code in FATAL_EXIT_CODES:
            return code
    if ExitCode.CHECKPOINTED_ON_SIGTERM in worker_codes:
        return int(ExitCode.CHECKPOINTED_ON_SIGTERM)
    return launcher_code


def launch(argv: Sequence[str]) -> int:
    """``argv``: torchrun options, ``--``, then the trainer's arguments (``train --config ...``)."""
    args = list(argv)
    if "--" not in args:
        print("usage: kubetune_trainer launch [torchrun options] -- train --config FILE", file=sys.stderr)
        return 2
    split = args.index("--")
    torchrun_args, trainer_args = args[:split], args[split + 1 :]
    with tempfile.TemporaryDirectory(prefix="kubetune-exit-") as exit_dir:
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            *torchrun_args,
            "-m",
            "kubetune_trainer",
            *trainer_args,
        ]
        proc = subprocess.Popen(command, env={**os.environ, EXIT_DIR_ENV: exit_dir})

        def forward(signum: int, frame: FrameType | None) -> None:
            proc.send_signal(signum)

        previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            launcher_code = proc.wait()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        worker_codes = [int(p.read_text()) for p in sorted(Path(exit_dir).glob("rank-*.exit"))]
        code = pod_exit_code(worker_codes=worker_codes, launcher_code=launcher_code)
        message = failure_message(Path(exit_dir), code=code) if code != ExitCode.OK else None
    if message is not None:
        write_termination_message(message)
    return code
