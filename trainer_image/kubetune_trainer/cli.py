"""``kubetune train --config FILE`` / ``python -m kubetune_trainer train --config FILE``, and the data
check ``python -m kubetune_trainer validate --config FILE``.

Exit codes are the contract in :mod:`kubetune.api.exit_codes`: 0 done, 65 bad data, 78 bad config,
75 checkpointed on SIGTERM, 79 diverged; anything else (a crash) is retried by the Job.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import TextIO

from kubetune.api.exit_codes import ExitCode, reason_for_exit_code
from kubetune.api.preflight import PreflightOutcome, PreflightResult, encode_result
from kubetune.api.progress import FailedEvent, StoppedEvent
from kubetune.api.trainer_config import TrainerConfig, TrainerConfigError, load_trainer_config
from kubetune.api.uris import PVC_MOUNT_ROOT
from kubetune_trainer.launcher import record_exit_code, record_failure_message, write_termination_message
from kubetune_trainer.push import PushReporter, PushSettings, PushSettingsError
from kubetune_trainer.reporting import JsonLinesReporter, Reporter, TeeReporter
from kubetune_trainer.signals import StopRequest
from kubetune_trainer.trainer_metrics import MetricsReporter, MetricsSettingsError, metrics_port_from_env

log = logging.getLogger("kubetune_trainer")

# Local scratch for downloads and GGUF conversions; an emptyDir in the pod.
CACHE_DIR_ENV = "KUBETUNE_CACHE_DIR"
# The data check's exit code for each outcome: the Job fails at once on bad data or config.
PREFLIGHT_EXIT_CODES: dict[PreflightOutcome, ExitCode] = {
    "Passed": ExitCode.OK,
    "BadData": ExitCode.BAD_DATA,
    "BadConfig": ExitCode.BAD_CONFIG,
}
# Problems the data check prints on stderr (the result itself lists at most 10).
PRINTED_PROBLEMS = 10


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kubetune-trainer", description="The kubetune fine-tuning trainer.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser(
        "launch",
        help="run torchrun with the options before '--' and the trainer with those after, "
        "exiting with the workers' exit code (see docs/trainer.md)",
        add_help=False,
    )
    train = sub.add_parser("train", help="fine-tune as the trainer config says")
    train.add_argument("--config", required=True, type=Path, help="trainer config (YAML or JSON)")
    train.add_argument(
        "--pvc-root",
        type=PurePosixPath,
        default=PVC_MOUNT_ROOT,
        help=f"where pvc://claim/path URIs are mounted (default {PVC_MOUNT_ROOT})",
    )
    train.add_argument("--events-file", type=Path, help="also append progress events (JSON lines) here")
    train.add_argument("--threads", type=int, help="torch intra-op threads (default: one per core)")
    train.add_argument("--no-stdout-events", action="store_true", help="do not print progress events to stdout")
    validate = sub.add_parser(
        "validate",
        help="the data check: validate and tokenize the data, resolve the hyperparameters, estimate the cost; "
        "the result (JSON) goes to the termination message",
    )
    validate.add_argument("--config", required=True, type=Path, help="trainer config (YAML or JSON)")
    validate.add_argument(
        "--pvc-root",
        type=PurePosixPath,
        default=PVC_MOUNT_ROOT,
        help=f"where pvc://claim/path URIs are mounted (default {PVC_MOUNT_ROOT})",
    )
    validate.add_argument("--result-file", type=Path, help="also write the result (JSON) to this file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["launch"]:
        from kubetune_trainer.launcher import launch

        return launch(arguments[1:])
    args = build_parser().parse_args(arguments)
    if args.command == "validate":
        return _validate(args)
    code = _train(args)
    record_exit_code(code)
    return code


def _validate(args: argparse.Namespace) -> int:
    """The data check: its result to the termination message (and ``--result-file``), a summary to stderr."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from kubetune_trainer.preflight import bad_config, run_preflight

    try:
        config = load_trainer_config(args.config)
    except TrainerConfigError as err:
        result = bad_config(str(err))
    else:
        cache_dir = Path(os.environ.get(CACHE_DIR_ENV) or tempfile.mkdtemp(prefix="kubetune-cache-"))
        result = run_preflight(config, pvc_root=args.pvc_root, cache_dir=cache_dir)
    encoded = encode_result(result)
    write_termination_message(encoded)
    if args.result_file is not None:
        args.result_file.write_text(encoded, encoding="utf-8")
    for line in preflight_summary(result):
        print(f"kubetune-trainer validate: {line}", file=sys.stderr, flush=True)
    return int(PREFLIGHT_EXIT_CODES[result.outcome])


def preflight_summary(result: PreflightResult) -> list[str]:
    """The outcome and message, then the first problems, one a line."""
    lines = [f"{result.outcome}: {result.message}"]
    dataset = result.dataset
    if dataset is not None:
        for problem in dataset.errors[:PRINTED_PROBLEMS]:
            where = f"{problem.file}:{problem.line}" if problem.line is not None else problem.file
            lines.append(f"  {where}: {problem.field + ': ' if problem.field else ''}{problem.reason}")
        if dataset.error_count > len(dataset.errors):
            lines.append(f"  ... {dataset.error_count} problems in all")
    return lines


def _train(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    is_main = int(os.environ.get("RANK", "0")) == 0
    reporter = build_reporter(
        stdout=None if args.no_stdout_events else sys.stdout,
        events_file=args.events_file,
        is_main=is_main,
        environ=os.environ,
    )
    # Closing flushes the pushed events (the final one included) on every way out, a crash too.
    try:
        try:
            config = load_trainer_config(args.config)
        except TrainerConfigError as err:
            return _fail(reporter, ExitCode.BAD_CONFIG, str(err))
        cache_dir = Path(os.environ.get(CACHE_DIR_ENV) or tempfile.mkdtemp(prefix="kubetune-cache-"))
        return run(config, reporter=reporter, cache_dir=cache_dir, pvc_root=args.pvc_root, threads=args.threads)
    finally:
        reporter.close()


def build_reporter(
    *, stdout: TextIO | None, events_file: Path | None, is_main: bool, environ: Mapping[str, str]
) -> Reporter:
    """Rank 0: JSON lines (stdout, ``events_file``), ``/metrics`` and, when configured, the push to the
    operator. Other ranks: a JSON-lines reporter that writes nowhere.

    A bad metrics port or report URL is logged and that reporter left out: reporting never stops training.
    """
    lines = JsonLinesReporter(stream=stdout if is_main else None, path=events_file if is_main else None)
    if not is_main:
        return lines
    reporters: list[Reporter] = [lines]
    metrics = MetricsReporter()
    try:
        port = metrics_port_from_env(environ)
        if port is not None:
            metrics.serve(port)
    except (MetricsSettingsError, OSError) as err:
        log.error("the trainer's /metrics is not served: %s", err)
    reporters.append(metrics)
    try:
        push = PushSettings.from_env(environ)
    except PushSettingsError as err:
        log.error("progress events are not pushed to the operator: %s", err)
        push = None
    if push is not None:
        reporters.append(PushReporter(push))
    return TeeReporter(reporters)


def run(
    config: TrainerConfig,
    *,
    reporter: Reporter,
    cache_dir: Path,
    pvc_root: PurePosixPath = PVC_MOUNT_ROOT,
    threads: int | None = None,
    sample_prompts: int = 3,
    stop: StopRequest | None = None,
) -> int:
    """Train and map the outcome to an exit code (the process-level entry point without argparse)."""
    from kubetune_trainer.data import DataConfigError, DataError
    from kubetune_trainer.errors import StoppedOnSignal, TrainerError
    from kubetune_trainer.recipe import FineTuneRecipe, RunOptions

    options = RunOptions(
        cache_dir=cache_dir,
        pvc_root=pvc_root,
        threads=threads,
        sample_prompts=sample_prompts,
        stop=stop or StopRequest(),
    )
    options.stop.install()
    recipe = FineTuneRecipe(config, options=options, reporter=reporter)
    try:
        recipe.setup()
        recipe.train()
        recipe.write_output()
        return ExitCode.OK
    except StoppedOnSignal as stopped:
        log.warning("%s", stopped)
        reporter.emit(StoppedEvent(step=stopped.step, checkpoint_uri=stopped.checkpoint_uri))
        return ExitCode.CHECKPOINTED_ON_SIGTERM
    except (TrainerError, DataError, DataConfigError) as err:
        return _fail(reporter, ExitCode(err.exit_code), str(err))
    finally:
        recipe.cleanup()
        options.stop.uninstall()


def _fail(reporter: Reporter, code: ExitCode, message: str) -> int:
    print(f"kubetune-trainer: {reason_for_exit_code(code)}: {message}", file=sys.stderr, flush=True)
    record_failure_message(f"{reason_for_exit_code(code)}: {message}")
    reporter.emit(FailedEvent(reason=reason_for_exit_code(code), message=message, exit_code=int(code)))
    reporter.close()
    return int(code)
