"""``kubetune local up|down|status|kubeconfig|results``: kubetune on this machine, for the quickstart.

The work is :mod:`kubetune_testenv.local` (a control plane and a real kubelet node from the repository's
test environment, kubetune installed by its Helm chart); this module shows its progress and results. The
test environment is imported when one of these commands runs, so the other commands never need it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from kubetune.cli.errors import CliError, CliExit

if TYPE_CHECKING:
    from kubetune_testenv.local import LocalInfo, LocalStatus, Results

app = typer.Typer(
    help="A local cluster with kubetune installed, for the quickstart (root; see quickstart.sh).",
    no_args_is_help=True,
)


def _local() -> Any:
    try:
        from kubetune_testenv import local
    except ImportError as err:
        raise CliError(
            f"kubetune local runs the repository's test environment, which is not installed ({err}); "
            "run it from a checkout after .ci/install.sh"
        ) from None
    return local


@contextmanager
def _local_errors(module: Any) -> Iterator[None]:
    try:
        yield
    except module.LocalError as err:
        raise CliError(str(err)) from None


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}:{secs:02d}"


def info_lines(info: LocalInfo) -> list[str]:
    """How to use the cluster ``local up`` started (or found running)."""
    how = "already running" if info.already_running else "ready"
    return [
        f"local cluster {how}; kubetune watches namespace {info.namespace}",
        f"kubeconfig: {info.kubeconfig}",
        f"export KUBECONFIG={info.kubeconfig}",
        f"kubectl:    {info.kubectl}",
        f"log:        {info.log}",
        f"next:       kubetune submit -f examples/quickstart.yaml -n {info.namespace}",
    ]


def status_lines(status: LocalStatus) -> list[str]:
    if status.pid is None:
        return ["not running (kubetune local up starts it)"]
    state = "ready" if status.ready else f"starting: {status.progress.step}"
    return [
        f"running (pid {status.pid}), {state}",
        f"kubeconfig: {status.state.kubeconfig}",
        f"log:        {status.state.log_file}",
    ]


def results_lines(results: Results) -> list[str]:
    """Where the adapter is, the final metrics, and each held-out question's answer before and after."""
    lines = [f"output:  {results.directory}" + ("" if results.complete else " (incomplete: no manifest.json)")]
    if results.adapter is not None:
        lines.append(f"adapter: {results.adapter}")
    metrics = {"loss": "loss", "evalLoss": "eval loss", "initialEvalLoss": "eval loss before training"}
    shown = [f"{label} {results.metrics[key]:.3f}" for key, label in metrics.items() if results.metrics.get(key)]
    if shown:
        lines.append("metrics: " + ", ".join(shown))
    for sample in results.samples:
        lines += [
            "",
            f"question:  {sample.question}",
            f"reference: {sample.reference}",
            f"before:    {sample.before if sample.before is not None else '(not generated)'}",
            f"after:     {sample.after}",
        ]
    if not results.samples:
        lines.append("no generations.json: the trainer wrote no before/after samples")
    return lines


@contextmanager
def _progress(console: Console) -> Iterator[Callable[[str, float], None]]:
    """Each new step as a line; in a terminal also a spinner with the current step and the time so far."""
    last = [""]

    def line(step: str, elapsed: float) -> None:
        if step != last[0]:
            last[0] = step
            console.print(f"[{_clock(elapsed)}] {step}", markup=False, highlight=False)

    if not console.is_terminal:
        yield line
        return
    with console.status("starting") as spinner:

        def live(step: str, elapsed: float) -> None:
            line(step, elapsed)
            spinner.update(f"{step}  ({_clock(elapsed)})")

        yield live


def up(
    data: Annotated[
        str | None,
        typer.Option(
            "--data",
            metavar="FILE",
            help="Question/answer JSON Lines for datasets/quickstart.jsonl (default: the shipped kubetune API pairs).",
        ),
    ] = None,
) -> int:
    """Start a control plane and a real node, install kubetune, fill the claims models, datasets and outputs."""
    local = _local()
    progress = Console(stderr=True, highlight=False)
    with _local_errors(local):
        try:
            with _progress(progress) as report:
                info = local.local_up(data=Path(data) if data else None, report=report)
        except KeyboardInterrupt:
            raise CliError(
                "interrupted; a cluster being started keeps starting in the background: "
                "'kubetune local up' waits for it again, 'kubetune local down' stops it",
                code=CliExit.INTERRUPTED,
            ) from None
    for line in info_lines(info):
        print(line)
    return CliExit.OK


def down() -> int:
    """Stop the local cluster (node, control plane) and remove its files, the claims' contents too."""
    local = _local()
    with _local_errors(local):
        stopped = local.local_down()
    print("local cluster stopped and removed" if stopped else "no local cluster was running")
    return CliExit.OK


def status() -> int:
    """Whether the local cluster runs and is ready. Exits 0 when it is ready, 1 otherwise."""
    local = _local()
    current: LocalStatus = local.local_status()
    for line in status_lines(current):
        print(line)
    return CliExit.OK if current.ready else CliExit.ERROR


def kubeconfig() -> int:
    """Print the local cluster's kubeconfig path (for KUBECONFIG=...). Exits 1 when it is not ready."""
    local = _local()
    current: LocalStatus = local.local_status()
    if not current.ready:
        raise CliError("the local cluster is not ready: kubetune local up")
    print(current.state.kubeconfig)
    return CliExit.OK


def results(
    name: Annotated[
        str, typer.Argument(metavar="NAME", help="The output's path in the outputs claim (pvc://outputs/NAME).")
    ] = "quickstart",
) -> int:
    """Where a finished job's adapter is, and its answers to held-out questions before and after training."""
    local = _local()
    with _local_errors(local):
        found: Results = local.local_results(name)
    console = Console(highlight=False, soft_wrap=True)
    for line in results_lines(found):
        console.print(line, markup=False)
    return CliExit.OK


app.command("up")(up)
app.command("down")(down)
app.command("status")(status)
app.command("kubeconfig")(kubeconfig)
app.command("results")(results)
