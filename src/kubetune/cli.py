"""The ``kubetune`` command.

Subcommands import their heavy dependencies lazily: ``kubetune crd`` must not pay for torch.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _emit(text: str, output: str | None) -> None:
    if output is None or output == "-":
        sys.stdout.write(text)
    else:
        _write_atomically(Path(output), text)


def _cmd_crd(args: argparse.Namespace) -> int:
    from kubetune.api.crd import render_crd_yaml

    _emit(render_crd_yaml(), args.output)
    return 0


def _cmd_docs(args: argparse.Namespace) -> int:
    from kubetune.api.docs import render_api_markdown

    _emit(render_api_markdown(), args.output)
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from kubetune.api.validation import validate_manifest_file

    problems = validate_manifest_file(Path(args.file))
    for problem in problems:
        print(problem, file=sys.stderr)
    if not problems:
        print(f"{args.file}: valid")
    return 1 if problems else 0


def _cmd_trainer(command: str, rest: Sequence[str]) -> int:
    from kubetune_trainer.cli import main as trainer_main

    code: int = trainer_main([command, *rest])
    return code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kubetune", description="Fine-tune LLMs on Kubernetes.")
    sub = parser.add_subparsers(dest="command", required=True)

    crd = sub.add_parser("crd", help="print the FineTuneJob CustomResourceDefinition")
    crd.add_argument("-o", "--output", help="write to this file (atomically) instead of stdout")
    crd.set_defaults(func=_cmd_crd)

    docs = sub.add_parser("docs", help="print the API reference (Markdown)")
    docs.add_argument("-o", "--output", help="write to this file (atomically) instead of stdout")
    docs.set_defaults(func=_cmd_docs)

    validate = sub.add_parser("validate", help="check FineTuneJob manifests offline, naming each bad field")
    validate.add_argument("file", help="a YAML file with one or more FineTuneJob documents")
    validate.set_defaults(func=_cmd_validate)

    sub.add_parser("train", help="run the trainer locally: kubetune train --config FILE", add_help=False)
    sub.add_parser(
        "launch",
        help="run the trainer under torchrun, exiting with the workers' code (used in trainer pods)",
        add_help=False,
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] in (["train"], ["launch"]):
        # The trainer parses its own arguments; pass them through untouched.
        return _cmd_trainer(args_list[0], args_list[1:])
    args = build_parser().parse_args(args_list)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
