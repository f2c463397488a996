"""Commands that need no cluster: ``crd``, ``docs``, ``quickstart-data``, ``validate``; and reading manifests for
``submit``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from kubetune.api.resource import KIND
from kubetune.api.validation import validate_manifest_file
from kubetune.cli.errors import CliError, CliExit
from kubetune.files import write_file_atomically

OutputFileOption = Annotated[
    str | None, typer.Option("-o", "--output", help="Write to this file (atomically) instead of stdout.")
]


def _emit(text: str, output: str | None) -> None:
    if output is None or output == "-":
        sys.stdout.write(text)
    else:
        write_file_atomically(Path(output), text)


def crd(
    output: Annotated[
        str | None,
        typer.Option(
            "-o",
            "--output",
            help=(
                "Write to this file (atomically) instead of stdout; a directory (existing, or ending in /) gets one "
                "file per kind, <plural>.yaml, e.g. crds/finetunejobs.yaml and crds/finetuneprofiles.yaml."
            ),
        ),
    ] = None,
    kind: Annotated[
        str | None,
        typer.Option(
            "--kind", help="Only this kind: FineTuneJob or FineTuneProfile (or a plural, singular or short name)."
        ),
    ] = None,
) -> int:
    """Print the CustomResourceDefinitions (FineTuneJob, FineTuneProfile), generated from the API models."""
    from kubetune.api.crd import KINDS, kind_named, render_crd_yaml

    try:
        kinds = KINDS if kind is None else (kind_named(kind),)
    except KeyError as err:
        raise CliError(str(err.args[0]), code=CliExit.USAGE) from None
    if output is not None and (output.endswith("/") or Path(output).is_dir()):
        directory = Path(output)
        directory.mkdir(parents=True, exist_ok=True)
        for each in kinds:
            write_file_atomically(directory / each.file_name, render_crd_yaml(each))
    else:
        # One YAML stream: each document starts with the generator's header comment and "---".
        _emit("---\n".join(render_crd_yaml(each) for each in kinds), output)
    return CliExit.OK


def docs(output: OutputFileOption = None) -> int:
    """Print the API reference (Markdown) of FineTuneJob and FineTuneProfile, generated from the API models."""
    from kubetune.api.docs import render_api_markdown

    _emit(render_api_markdown(), output)
    return CliExit.OK


def quickstart_data(
    output: OutputFileOption = None,
    held_out: Annotated[
        str | None,
        typer.Option("--held-out", metavar="FILE", help="Also write the held-out questions (JSONL) to this file."),
    ] = None,
) -> int:
    """Print the quickstart's dataset: question/answer pairs about the FineTuneJob API (JSONL)."""
    from kubetune.api.qa_dataset import build_dataset, render_jsonl

    dataset = build_dataset()
    _emit(render_jsonl(dataset.train), output)
    if held_out is not None:
        _emit(render_jsonl(dataset.held_out), held_out)
    return CliExit.OK


def validate(
    file: Annotated[Path, typer.Argument(metavar="FILE", help="A YAML file with one or more FineTuneJob documents.")],
) -> int:
    """Check FineTuneJob manifests offline, naming each bad field. Exits 1 when one is invalid."""
    problems = validate_manifest_file(file)
    for problem in problems:
        print(problem, file=sys.stderr)
    if not problems:
        print(f"{file}: valid")
    # 1, not INVALID: this command's exit code predates the others' and scripts rely on it.
    return CliExit.ERROR if problems else CliExit.OK


def read_finetunejobs(path: Path) -> list[dict[str, Any]]:
    """The FineTuneJob documents of a file, validated as ``kubetune validate`` does; every problem is named
    (one line each) in the ``CliError`` raised before anything could be sent."""
    if not path.is_file():
        raise CliError(f"{path}: no such file")
    problems = validate_manifest_file(path)
    documents: list[Any] = []
    if not problems:
        documents = [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]
        problems = [
            f"{path} document {index}: kind: expected {KIND}, got {doc.get('kind')!r}"
            for index, doc in enumerate(documents)
            if doc.get("kind") != KIND
        ]
        if not documents:
            problems = [f"{path}: no {KIND} documents"]
    if problems:
        noun = "problem" if len(problems) == 1 else "problems"
        raise CliError(f"{path}: {len(problems)} {noun}; nothing was submitted", code=CliExit.INVALID, details=problems)
    return [dict(doc) for doc in documents]
