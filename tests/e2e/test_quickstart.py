"""The README's first command, run as the README gives it: the quickstart on a local cluster.

``./quickstart.sh`` installs what is missing, starts ``kubetune local up`` (control plane, the real node,
kubetune installed with its Helm chart, SmolLM2 and the data on claims), submits the quickstart
FineTuneJob and follows it with ``kubetune status -w``. Here the same script runs a 4-step job of the
same name (``KUBETUNE_QUICKSTART_MANIFEST``), then the user commands are checked against it. The session's
own real node must not be up yet (one per machine), so this file runs before test_real_node.py.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e_env import clean_machine, leftovers, nothing_left
from kubetune_testenv.local import LocalState
from model_files import SMOLLM2_GGUF

pytestmark = [pytest.mark.cluster, pytest.mark.real_node, pytest.mark.model]

REPO = Path(__file__).resolve().parents[2]
NAMESPACE = "kubetune-quickstart"
KUBETUNE = REPO / ".venv" / "bin" / "kubetune"
QUICKSTART_TIMEOUT_S = 1800  # includes .ci/install.sh, a no-op after .ci/run but minutes when cold


def readme_commands() -> list[str]:
    """The commands of the README's first code block (lines starting with ``$``)."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```[a-z]*\n(.*?)```", text, re.DOTALL)
    assert block is not None, "the README has no code block"
    return [line[2:].split("  #")[0].strip() for line in block.group(1).splitlines() if line.startswith("$ ")]


def kubetune(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    kubeconfig = LocalState.default().kubeconfig
    result = subprocess.run(
        [str(KUBETUNE), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "KUBECONFIG": str(kubeconfig)},
        check=False,
    )
    if check:
        assert result.returncode == 0, f"kubetune {' '.join(args)}: {result.stdout}\n{result.stderr}"
    return result


def test_the_readme_opens_with_the_quickstart_then_the_tests() -> None:
    assert readme_commands() == ["./quickstart.sh", "bash .ci/run"]
    assert (REPO / ".ci" / "run").read_text().count(".venv/bin/python -m pytest") == 1


@pytest.fixture
def quickstart(tmp_path: Path) -> Iterator[subprocess.CompletedProcess[str]]:
    """The README's first command with a 4-step job; the local cluster is stopped afterwards."""
    left = clean_machine()
    if left != nothing_left():
        pytest.fail(f"the machine is not clean before the quickstart: {left}", pytrace=False)
    manifest: dict[str, Any] = yaml.safe_load((REPO / "examples" / "quickstart.yaml").read_text())
    manifest["spec"]["hyperparameters"].update(maxSteps=4, evalEverySteps=2)
    manifest["spec"]["checkpointing"]["everySteps"] = 2
    short = tmp_path / "quickstart-short.yaml"
    short.write_text(yaml.safe_dump(manifest))
    (command,) = readme_commands()[:1]
    try:
        yield subprocess.run(
            ["bash", "-c", command],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=QUICKSTART_TIMEOUT_S,
            env={**os.environ, "KUBETUNE_QUICKSTART_MANIFEST": str(short)},
            check=False,
        )
    finally:
        subprocess.run([str(KUBETUNE), "local", "down"], capture_output=True, timeout=300, check=False)


def test_the_readme_quickstart_fine_tunes_smollm2_and_the_user_commands_show_the_job(
    quickstart: subprocess.CompletedProcess[str], tmp_path: Path
) -> None:
    output = quickstart.stdout + quickstart.stderr
    assert quickstart.returncode == 0, output[-5000:]
    assert "Succeeded" in output
    assert re.search(r"^before: +\S", output, re.MULTILINE) and re.search(r"^after: +\S", output, re.MULTILINE)

    status = json.loads(kubetune("status", "quickstart", "-n", NAMESPACE, "-o", "json").stdout)
    assert status["status"]["phase"] == "Succeeded"
    assert status["status"]["progress"]["step"] == 4 and status["status"]["output"]["uri"] == "pvc://outputs/quickstart"
    assert re.search(r"quickstart\s+Succeeded\s+100%", kubetune("list", "-n", NAMESPACE).stdout)
    assert '"event":"finished"' in kubetune("logs", "quickstart", "-n", NAMESPACE).stdout

    import torch
    from kubetune_trainer.modeling import rebuild_plain
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    volumes = LocalState.default().volumes
    out = volumes / "outputs" / "quickstart"
    base = AutoModelForCausalLM.from_pretrained(volumes / "models" / "smollm2", gguf_file=SMOLLM2_GGUF)
    model = PeftModel.from_pretrained(rebuild_plain(base), out / "adapter")
    tokenizer = AutoTokenizer.from_pretrained(out / "tokenizer")
    prompt = tokenizer("What does spec.method.rank set?", return_tensors="pt")
    with torch.no_grad():
        generated = model.generate(**prompt, max_new_tokens=4, do_sample=False)
    assert generated.shape[1] == prompt["input_ids"].shape[1] + 4

    # Bad data: the same local cluster, other data; the job fails, and `kubetune status` says why.
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "What is kubetune?", "answer": "An operator."}\n{"question": "And?"}\n')
    assert kubetune("local", "up", "--data", str(bad)).returncode == 0
    manifest: dict[str, Any] = yaml.safe_load((REPO / "examples" / "quickstart.yaml").read_text())
    manifest["metadata"]["name"] = "quickstart-bad"
    bad_manifest = tmp_path / "bad.yaml"
    bad_manifest.write_text(yaml.safe_dump(manifest))
    kubetune("submit", "-f", str(bad_manifest), "-n", NAMESPACE)
    watched = kubetune("status", "quickstart-bad", "-n", NAMESPACE, "-w", check=False)
    assert watched.returncode == 4, watched.stdout + watched.stderr  # the documented code for "ended Failed"
    shown = kubetune("status", "quickstart-bad", "-n", NAMESPACE).stdout
    assert "BadData" in shown and "quickstart.jsonl:2" in shown, shown


def test_local_down_left_nothing_behind() -> None:
    """Runs after the quickstart's fixture stopped the local cluster."""
    assert not LocalState.default().root.exists()
    assert leftovers() == nothing_left()
