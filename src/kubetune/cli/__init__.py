"""The ``kubetune`` command (``kubetune.cli:main``). Commands and exit codes: ``docs/cli.md``.

``train`` and ``launch`` go straight to the trainer, which parses its own arguments; every other command
needs the ``cli`` extra (typer, rich) and, for the cluster commands, the kubernetes client. Heavy
dependencies are imported by the commands that use them: ``kubetune crd`` does not pay for torch.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from kubetune.cli.errors import CliExit
from kubetune.cli.trainer import run_trainer


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] in (["train"], ["launch"]):
        return run_trainer(arguments[0], arguments[1:])
    try:
        from kubetune.cli.app import run
    except ImportError as err:
        print(f"kubetune: error: {err}; install the command line with: pip install 'kubetune[cli]'", file=sys.stderr)
        return int(CliExit.ERROR)
    return run(arguments)
