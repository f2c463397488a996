from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kubetune.api.crd import FINETUNEJOB, FINETUNEPROFILE, build_crd, render_crd_yaml
from kubetune.cli import main

GOOD = """\
apiVersion: kubetune.io/v1alpha1
kind: FineTuneJob
metadata: {name: demo}
spec:
  model: {source: "hf://HuggingFaceTB/SmolLM2-135M-Instruct@main"}
  dataset: {train: ["pvc://data/train.jsonl"]}
  output: {destination: "pvc://out/demo"}
"""


def test_crd_command_writes_one_kind_to_a_file_atomically(tmp_path: Path) -> None:
    target = tmp_path / "crd.yaml"
    assert main(["crd", "--kind", "FineTuneJob", "-o", str(target)]) == 0
    assert target.read_text() == render_crd_yaml(FINETUNEJOB)
    assert [p.name for p in tmp_path.iterdir()] == ["crd.yaml"]


def test_crd_command_writes_every_kind_into_a_folder(tmp_path: Path) -> None:
    assert main(["crd", "-o", f"{tmp_path / 'crds'}/"]) == 0
    written = {p.name: p.read_text() for p in (tmp_path / "crds").iterdir()}
    assert written == {
        "finetunejobs.yaml": render_crd_yaml(FINETUNEJOB),
        "finetuneprofiles.yaml": render_crd_yaml(FINETUNEPROFILE),
    }


def test_crd_command_prints_every_kind_as_one_yaml_stream(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["crd"]) == 0
    documents = list(yaml.safe_load_all(capsys.readouterr().out))
    assert documents == [build_crd(FINETUNEJOB), build_crd(FINETUNEPROFILE)]


def test_crd_command_refuses_an_unknown_kind(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["crd", "--kind", "jobs"]) == 2
    assert "FineTuneJob, FineTuneProfile" in capsys.readouterr().err


def test_validate_accepts_a_good_manifest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(GOOD)
    assert main(["validate", str(path)]) == 0
    assert "valid" in capsys.readouterr().out


def test_validate_names_the_bad_field_and_document(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "job.yaml"
    path.write_text("---\n" + GOOD + "---\n" + GOOD.replace("{name: demo}", "{name: two}") + "  method: {rank: 0}\n")
    assert main(["validate", str(path)]) == 1
    err = capsys.readouterr().err
    assert "document 1: spec.method.rank" in err and "document 0" not in err


def test_train_and_launch_pass_their_arguments_to_the_trainer(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    assert "--config" in capsys.readouterr().out
