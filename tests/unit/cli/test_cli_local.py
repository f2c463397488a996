"""``kubetune local`` and ``kubetune quickstart-data`` without a cluster: errors as one line, the status and
results views, and the generated files (the local cluster itself is exercised on the real node)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from kubetune_testenv import local as testenv_local
from kubetune_testenv.local import LocalError, LocalInfo

from kubetune.api.qa_dataset import HELD_OUT_FILE, TRAIN_FILE
from kubetune.cli import main
from kubetune.cli.errors import CliExit
from kubetune.cli.local import info_lines

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(autouse=True)
def cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("KUBETUNE_CACHE_DIR", str(tmp_path))
    return tmp_path


def test_quickstart_data_writes_the_committed_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    train, held_out = tmp_path / "train.jsonl", tmp_path / "held-out.jsonl"
    assert main(["quickstart-data", "-o", str(train), "--held-out", str(held_out)]) == 0
    assert train.read_text() == (REPO / TRAIN_FILE).read_text()
    assert held_out.read_text() == (REPO / HELD_OUT_FILE).read_text()
    assert main(["quickstart-data"]) == 0
    assert capsys.readouterr().out == (REPO / TRAIN_FILE).read_text()


def test_status_of_no_local_cluster_says_so_and_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["local", "status"]) == CliExit.ERROR
    assert capsys.readouterr().out == "not running (kubetune local up starts it)\n"


def test_kubeconfig_of_no_local_cluster_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["local", "kubeconfig"]) == CliExit.ERROR
    assert capsys.readouterr().err == "kubetune: error: the local cluster is not ready: kubetune local up\n"


def test_down_with_nothing_running_is_harmless(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["local", "down"]) == 0
    assert capsys.readouterr().out == "no local cluster was running\n"


def test_up_passes_the_data_file_and_prints_how_to_connect(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    calls: list[Any] = []
    info = LocalInfo(
        kubeconfig=tmp_path / "admin.kubeconfig",
        namespace="kubetune-quickstart",
        kubectl="kube kubectl get ftj",
        log=tmp_path / "up.log",
        already_running=False,
    )

    def local_up(*, data: Path | None, report: Any) -> LocalInfo:
        calls.append(data)
        report("starting", 0.0)
        return info

    monkeypatch.setattr(testenv_local, "local_up", local_up)
    assert main(["local", "up", "--data", "lamini_docs.jsonl"]) == 0
    assert main(["local", "up", "--data", ""]) == 0  # quickstart.sh passes "" for no file
    assert calls == [Path("lamini_docs.jsonl"), None]
    out = capsys.readouterr()
    assert f"export KUBECONFIG={tmp_path / 'admin.kubeconfig'}\n" in out.out
    assert "[0:00] starting" in out.err


def test_a_local_error_is_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def local_up(**kwargs: Any) -> LocalInfo:
        raise LocalError("the real node needs root")

    monkeypatch.setattr(testenv_local, "local_up", local_up)
    assert main(["local", "up"]) == CliExit.ERROR
    assert capsys.readouterr().err == "kubetune: error: the real node needs root\n"


def test_results_show_the_adapter_and_answers_before_and_after(
    cache_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = cache_dir / "local" / "volumes" / "outputs" / "quickstart"
    (out / "adapter").mkdir(parents=True)
    (out / "manifest.json").write_text(json.dumps({"complete": True, "metrics": {"loss": 0.41, "evalLoss": 0.52}}))
    sample = {
        "prompt": "<|im_start|>user\nWhat does spec.method.rank set?<|im_end|>\n<|im_start|>assistant\n",
        "reference": "spec.method.rank: Adapter rank r.",
        "before": "A rank is a position.",
        "after": "spec.method.rank: Adapter rank r.",
    }
    (out / "generations.json").write_text(json.dumps([sample]))
    assert main(["local", "results", "quickstart"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:3] == [f"output:  {out}", f"adapter: {out / 'adapter'}", "metrics: loss 0.410, eval loss 0.520"]
    assert lines[4:] == [
        "question:  What does spec.method.rank set?",
        "reference: spec.method.rank: Adapter rank r.",
        "before:    A rank is a position.",
        "after:     spec.method.rank: Adapter rank r.",
    ]


def test_results_of_a_missing_output_name_the_job_to_check(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["local", "results", "nope"]) == CliExit.ERROR
    assert "kubetune status nope -n kubetune-quickstart" in capsys.readouterr().err


def test_info_says_what_to_run_next(tmp_path: Path) -> None:
    info = LocalInfo(
        kubeconfig=tmp_path / "k",
        namespace="kubetune-quickstart",
        kubectl="k",
        log=tmp_path / "l",
        already_running=True,
    )
    lines = info_lines(info)
    assert lines[0].startswith("local cluster already running")
    assert lines[-1] == "next:       kubetune submit -f examples/quickstart.yaml -n kubetune-quickstart"
