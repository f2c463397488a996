"""The ``kubetune`` command: its subcommands, and the one place errors become a line and an exit code."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import typer
from typer.main import get_command

from kubetune.cli import data, estimate, jobs, local, manifests
from kubetune.cli.errors import CliError, CliExit
from kubetune.cli.trainer import run_trainer

app = typer.Typer(
    name="kubetune",
    help="Fine-tune LLMs on Kubernetes.",
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

app.command("submit")(jobs.submit)
app.command("status")(jobs.status)
app.command("logs")(jobs.logs)
app.command("list")(jobs.list_)
app.command("cancel")(jobs.cancel)
app.command("suspend")(jobs.suspend)
app.command("resume")(jobs.resume)
app.command("validate")(manifests.validate)
app.command("validate-data")(data.validate_data)
app.command("estimate")(estimate.estimate)
app.command("crd")(manifests.crd)
app.command("docs")(manifests.docs)
app.command("quickstart-data")(manifests.quickstart_data)
app.add_typer(local.app, name="local")

# The trainer parses its own arguments; kubetune.cli.main hands them over before this app runs, so these
# two entries only list the commands in --help.
_PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


@app.command("train", context_settings=_PASS_THROUGH, add_help_option=False)
def train(ctx: typer.Context) -> int:
    """Run the trainer locally: kubetune train --config FILE (see kubetune train --help)."""
    return run_trainer("train", ctx.args)


@app.command("launch", context_settings=_PASS_THROUGH, add_help_option=False)
def launch(ctx: typer.Context) -> int:
    """Run the trainer under torchrun, exiting with the workers' code (used in trainer pods)."""
    return run_trainer("launch", ctx.args)


def run(arguments: Sequence[str]) -> int:
    """Run one command; errors are one line on stderr (no traceback) and a documented exit code."""
    command = get_command(app)
    try:
        result = command.main(args=list(arguments) or ["--help"], prog_name="kubetune", standalone_mode=False)
    except CliError as err:
        for line in err.details:
            print(line, file=sys.stderr)
        print(f"kubetune: error: {err.message}", file=sys.stderr)
        return int(err.code)
    except typer.TyperException as err:  # bad arguments: click's UsageError and friends
        ctx = getattr(err, "ctx", None)
        where = ctx.command_path if ctx is not None else "kubetune"
        # Typer validates values with pydantic, whose messages start with this.
        message = err.format_message().replace("Value error, ", "")
        print(f"{where}: error: {message} (see '{where} --help')", file=sys.stderr)
        return int(err.exit_code)
    except typer.Abort:  # end of input at a prompt
        return int(CliExit.ERROR)
    return int(result or 0)
