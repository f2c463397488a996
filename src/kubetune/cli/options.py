"""Options several commands share, declared once so they read and behave the same everywhere."""

from __future__ import annotations

from typing import Annotated

import typer

from kubetune.cli.render import OutputFormat

NamespaceOption = Annotated[
    str | None,
    typer.Option("-n", "--namespace", help="Namespace (default: the kubeconfig context's, else 'default')."),
]
KubeconfigOption = Annotated[
    str | None,
    typer.Option("--kubeconfig", help="Kubeconfig file (default: $KUBECONFIG, else ~/.kube/config, else in-cluster)."),
]
ContextOption = Annotated[str | None, typer.Option("--context", help="Kubeconfig context (default: its current one).")]
OutputOption = Annotated[
    OutputFormat,
    typer.Option("-o", "--output", case_sensitive=False, help="text for people; json or yaml for scripts."),
]
