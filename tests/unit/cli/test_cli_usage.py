"""The command's contract: subcommands, usage errors in one line with exit code 2, --help, the trainer
pass-through, and the live view and log streaming the fake API server cannot show."""

from __future__ import annotations

import io
import sys
from typing import Any

import pytest
from cli_fixtures import RUNNING_STATUS, SUCCEEDED_STATUS, ftj
from rich.console import Console

from kubetune.cli import finetunejobs, main
from kubetune.cli.connection import Connection
from kubetune.cli.errors import CliExit
from kubetune.cli.render import OutputFormat
from kubetune.cli.watch import watch

COMMANDS = ["submit", "status", "logs", "list", "cancel", "suspend", "resume", "validate", "validate-data", "estimate"]


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(f" {command} " in out for command in [*COMMANDS, "crd", "docs", "train", "launch"])


def test_no_arguments_shows_the_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 0
    assert "Usage: kubetune" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("arguments", "start"),
    [
        (["bogus"], "kubetune: error: No such command 'bogus'."),
        (["status"], "kubetune status: error: Missing argument 'NAME'."),
        (["list", "-o", "xml"], "kubetune list: error: Invalid value for '-o' / '--output': 'xml' is not one of"),
        (["logs", "x", "--tail", "-1"], "kubetune logs: error: Invalid value for '--tail'"),
        (["status", "x", "--frobnicate"], "kubetune status: error: No such option: --frobnicate"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(
    arguments: list[str], start: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(arguments) == CliExit.USAGE == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(start)


def test_documented_exit_codes() -> None:
    assert [(code.name, int(code)) for code in CliExit] == [
        ("OK", 0),
        ("ERROR", 1),
        ("USAGE", 2),
        ("INVALID", 3),
        ("JOB_FAILED", 4),
        ("INTERRUPTED", 130),
    ]


def test_launch_arguments_reach_the_trainers_launcher_untouched(capsys: pytest.CaptureFixture[str]) -> None:
    # Without "--" the launcher prints its own usage line: proof that kubetune did not parse "--help".
    assert main(["launch", "--help"]) == 2
    assert capsys.readouterr().err.startswith("usage: kubetune_trainer launch")


def test_watch_in_a_terminal_shows_a_live_view_until_the_end() -> None:
    reads = iter([ftj("demo", status=RUNNING_STATUS), ftj("demo", status=SUCCEEDED_STATUS)])
    console = Console(file=io.StringIO(), force_terminal=True, width=100, color_system=None)
    code = watch(lambda: next(reads), output=OutputFormat.text, console=console, sleep=lambda seconds: None)
    assert code == CliExit.OK
    shown = console.file.getvalue()  # type: ignore[attr-defined]
    assert "120/400 (30%)" in shown and "Succeeded" in shown and "pvc://out/demo" in shown


class FakeLogResponse:
    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.released = False

    def stream(self, amount: int) -> Any:
        return iter(self.chunks)

    def release_conn(self) -> None:
        self.released = True


def test_follow_streams_the_log_and_keeps_characters_split_across_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    response = FakeLogResponse([b"loss 1.2 \xe2\x9c", b"\x93\n", b"done\n"])
    asked: dict[str, Any] = {}

    class FakeCoreV1Api:
        def __init__(self, api_client: Any) -> None:
            pass

        def read_namespaced_pod_log(self, **kwargs: Any) -> FakeLogResponse:
            asked.update(kwargs)
            return response

    monkeypatch.setattr("kubernetes.client.CoreV1Api", FakeCoreV1Api)
    conn = Connection(kube=None, api_client=None, namespace="team", server="https://api.example")  # type: ignore[arg-type]
    text = "".join(finetunejobs.follow_log(conn, pod="demo-train-0-x", namespace="team", tail=None))
    assert text == "loss 1.2 ✓\ndone\n" and response.released
    assert asked["container"] == "trainer" and asked["follow"] is True and asked["_preload_content"] is False


def test_without_the_cli_extra_the_error_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in [m for m in sys.modules if m.startswith("kubetune.cli.") and m != "kubetune.cli.errors"]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "typer", None)
    assert main(["list"]) == CliExit.ERROR
    assert capsys.readouterr().err.endswith("install the command line with: pip install 'kubetune[cli]'\n")
