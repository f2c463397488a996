"""The whole contract between operator and trainer, without a cluster.

A FineTuneJob with pvc:// URIs → the operator's ConfigMap → the file the pod mounts → the trainer's CLI
with the claims laid out as the pod mounts them → an artifact, and events (pushed to the operator, and
printed as the lines checked here) the operator folds into ``status.progress``, ``status.metrics`` and
``status.output``. A field renamed on one side only, or a path resolved differently, breaks this test.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path, PurePosixPath

import pytest
from kubetune_operator.builders.config_map import build_config_map
from kubetune_operator.progress import fold_events
from kubetune_trainer.cli import main as trainer_main

from kubetune.api.exit_codes import ExitCode
from kubetune.api.progress import EVENT_LINE_PREFIX, parse_event
from kubetune.api.resource import FineTuneJob
from kubetune.api.trainer_config import CONFIG_FILE_NAME, load_trainer_config


def _ftj() -> FineTuneJob:
    return FineTuneJob.from_object(
        {
            "apiVersion": "kubetune.io/v1alpha1",
            "kind": "FineTuneJob",
            "metadata": {"name": "contract", "namespace": "team-a", "uid": "u-1"},
            "spec": {
                "model": {"source": "pvc://models/tiny"},
                "dataset": {
                    "train": ["pvc://datasets/lamini.jsonl"],
                    "validationSplit": 0.25,
                    "maxSeqLength": 256,
                },
                "method": {"type": "lora", "rank": 4, "alpha": 8},
                "hyperparameters": {"maxSteps": 3, "perDeviceBatchSize": 4, "learningRate": 1e-3},
                "checkpointing": {"everySteps": 2, "keepLast": 1},
                "output": {"destination": "pvc://outputs/contract"},
            },
        }
    )


def test_operator_config_runs_the_trainer_and_its_events_become_status(
    tmp_path: Path,
    tiny_model_dir: Path,
    lamini_subset: Callable[[int], Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    ftj = _ftj()
    config_map = build_config_map(ftj=ftj)
    config_file = tmp_path / "etc" / CONFIG_FILE_NAME
    config_file.parent.mkdir()
    config_file.write_text(config_map["data"][CONFIG_FILE_NAME], encoding="utf-8")
    config = load_trainer_config(config_file)
    assert config.run.name == "contract" and config.run.uid == "u-1"

    # The claims as the pod mounts them: <pvc root>/<claim>/<path>.
    pvc_root = tmp_path / "pvc"
    shutil.copytree(tiny_model_dir, pvc_root / "models" / "tiny")
    (pvc_root / "datasets").mkdir(parents=True)
    shutil.copy(lamini_subset(40), pvc_root / "datasets" / "lamini.jsonl")

    code = trainer_main(["train", "--config", str(config_file), "--pvc-root", str(PurePosixPath(pvc_root))])
    log = capsys.readouterr().out
    assert code == ExitCode.OK, log[-2000:]

    output_dir = pvc_root / "outputs" / "contract"
    manifest = json.loads((output_dir / "manifest.json").read_text(encoding="utf-8"))
    assert manifest, "the artifact's manifest is written last and must exist after a successful run"

    # The events the trainer also pushes to the operator, as printed on stdout for `kubectl logs`.
    events = [
        parse_event(line.removeprefix(EVENT_LINE_PREFIX))
        for line in log.splitlines()
        if line.startswith(EVENT_LINE_PREFIX)
    ]
    reported = fold_events(events, progress=None, metrics=None, output=None)
    assert reported.progress is not None and reported.progress.step == 3
    assert reported.progress.total_steps == 3 and reported.progress.percent == "100%"
    assert reported.metrics is not None and reported.metrics.loss is not None
    assert reported.metrics.eval_loss is not None and reported.metrics.trained_tokens
    assert reported.output is not None and reported.output.uri == "pvc://outputs/contract"
    manifest_bytes = (output_dir / "manifest.json").read_bytes()
    assert reported.output.manifest_sha256 == hashlib.sha256(manifest_bytes).hexdigest()
