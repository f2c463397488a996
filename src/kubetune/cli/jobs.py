"""The cluster commands: ``submit``, ``status``, ``logs``, ``list``, ``cancel``, ``suspend``, ``resume``.

Each one connects, makes its API calls (:mod:`kubetune.cli.finetunejobs`) and prints what
:mod:`kubetune.cli.render` makes of the answer.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from kubetune.api.resource import KIND
from kubetune.cli import finetunejobs
from kubetune.cli.connection import Connection, Target, connect
from kubetune.cli.errors import CliError, CliExit
from kubetune.cli.manifests import read_finetunejobs
from kubetune.cli.options import ContextOption, KubeconfigOption, NamespaceOption, OutputOption
from kubetune.cli.render import (
    JobView,
    OutputFormat,
    as_list,
    dump,
    list_headers,
    list_rows,
    natural_width,
    object_ref,
    plain_table,
    status_renderable,
)
from kubetune.cli.watch import DEFAULT_INTERVAL, utc_now, watch

NameArgument = Annotated[str, typer.Argument(metavar="NAME", help=f"The {KIND}'s name.", show_default=False)]


def _console() -> Console:
    # Created per command, so it writes to whatever sys.stdout is now (pytest swaps it).
    return Console(highlight=False)


def _print_data(obj: Mapping[str, Any], output: OutputFormat) -> None:
    sys.stdout.write(dump(obj, output=output))


def _namespace_of(document: Mapping[str, Any], *, flag: str | None, conn: Connection) -> str:
    """The document's own namespace, which ``-n`` may repeat but not contradict (as kubectl decides)."""
    own = (document.get("metadata") or {}).get("namespace")
    if own and flag and own != flag:
        name = document["metadata"]["name"]
        raise CliError(f"{KIND} {name}: metadata.namespace is {own!r} but --namespace is {flag!r}", code=CliExit.USAGE)
    return str(own or conn.namespace)


def submit(
    file: Annotated[Path, typer.Option("-f", "--file", help="FineTuneJob manifest (YAML, one or more documents).")],
    apply: Annotated[
        bool, typer.Option("--apply", help="Server-side apply: create, or update the fields the file sets.")
    ] = False,
    force_conflicts: Annotated[
        bool, typer.Option("--force-conflicts", help="With --apply: take over fields another manager set.")
    ] = False,
    output: OutputOption = OutputFormat.text,
    namespace: NamespaceOption = None,
    kubeconfig: KubeconfigOption = None,
    context: ContextOption = None,
) -> int:
    """Validate a FineTuneJob manifest offline, then create (or --apply) it."""
    documents = read_finetunejobs(file)
    conn = connect(Target(kubeconfig=kubeconfig, context=context, namespace=namespace))
    created: list[dict[str, Any]] = []
    for document in documents:
        where = _namespace_of(document, flag=namespace, conn=conn)
        body = {**document, "metadata": {**document["metadata"], "namespace": where}}
        if apply:
            obj = finetunejobs.apply(conn, manifest=body, namespace=where, force_conflicts=force_conflicts)
        else:
            obj = finetunejobs.create(conn, manifest=body, namespace=where)
        created.append(obj)
        if output is OutputFormat.text:
            verb = "applied" if apply else "created"
            print(f"{object_ref(obj['metadata']['name'])} {verb} in namespace {where}")
    if output is not OutputFormat.text:
        _print_data(created[0] if len(created) == 1 else as_list(created), output)
    return CliExit.OK


def status(
    name: NameArgument,
    watch_: Annotated[
        bool, typer.Option("-w", "--watch", help="Follow the job until it succeeds (exit 0) or fails (exit 4).")
    ] = False,
    interval: Annotated[float, typer.Option("--interval", min=0.5, help="Seconds between reads with --watch.")] = (
        DEFAULT_INTERVAL
    ),
    output: OutputOption = OutputFormat.text,
    namespace: NamespaceOption = None,
    kubeconfig: KubeconfigOption = None,
    context: ContextOption = None,
) -> int:
    """Phase, progress, loss, throughput, ETA, conditions, failure and output of a FineTuneJob."""
    conn = connect(Target(kubeconfig=kubeconfig, context=context, namespace=namespace))

    def read() -> dict[str, Any]:
        return finetunejobs.get(conn, name=name, namespace=conn.namespace)

    if watch_:
        return watch(read, output=output, console=_console(), interval=interval)
    obj = read()
    if output is OutputFormat.text:
        _console().print(status_renderable(JobView.from_object(obj), now=utc_now()))
    else:
        _print_data(obj, output)
    return CliExit.OK


def logs(
    name: NameArgument,
    follow: Annotated[bool, typer.Option("-f", "--follow", help="Keep printing until the trainer exits.")] = False,
    tail: Annotated[int | None, typer.Option("--tail", min=0, help="Only the last N lines.")] = None,
    namespace: NamespaceOption = None,
    kubeconfig: KubeconfigOption = None,
    context: ContextOption = None,
) -> int:
    """The trainer log of rank 0 (the pod of completion index 0; the newest one after a retry)."""
    conn = connect(Target(kubeconfig=kubeconfig, context=context, namespace=namespace))
    pod = finetunejobs.rank0_pod(conn, name=name, namespace=conn.namespace)
    if follow:
        for text in finetunejobs.follow_log(conn, pod=pod, namespace=conn.namespace, tail=tail):
            sys.stdout.write(text)
            sys.stdout.flush()
    else:
        sys.stdout.write(finetunejobs.read_log(conn, pod=pod, namespace=conn.namespace, tail=tail))
    return CliExit.OK


def list_(
    all_namespaces: Annotated[
        bool, typer.Option("-A", "--all-namespaces", help="List every namespace's (overrides --namespace).")
    ] = False,
    output: OutputOption = OutputFormat.text,
    namespace: NamespaceOption = None,
    kubeconfig: KubeconfigOption = None,
    context: ContextOption = None,
) -> int:
    """FineTuneJobs: NAME, PHASE, PROGRESS, LOSS, AGE."""
    conn = connect(Target(kubeconfig=kubeconfig, context=context, namespace=namespace))
    objects = finetunejobs.list_all(conn, namespace=None if all_namespaces else conn.namespace)
    if output is not OutputFormat.text:
        _print_data(as_list(objects), output)
    elif not objects:
        where = "any namespace" if all_namespaces else f"namespace {conn.namespace}"
        print(f"No {KIND}s in {where}.", file=sys.stderr)
    else:
        views = [JobView.from_object(obj) for obj in objects]
        rows = list_rows(views, now=utc_now(), all_namespaces=all_namespaces)
        table = plain_table(list_headers(all_namespaces=all_namespaces), rows)
        Console(highlight=False, width=max(natural_width(table), _console().width)).print(table)
    return CliExit.OK


def cancel(
    name: NameArgument,
    namespace: NamespaceOption = None,
    kubeconfig: KubeconfigOption = None,
    context: ContextOption = None,
) -> int:
    """Delete a FineTuneJob; its Job, pods, Service and ConfigMap are garbage-collected with it."""
    conn = connect(Target(kubeconfig=kubeconfig, context=context, namespace=namespace))
    finetunejobs.delete(conn, name=name, namespace=conn.namespace)
    print(f"{object_ref(name)} deleted")
    return CliExit.OK


def _set_suspend(*, name: str, suspend: bool, to: Target) -> int:
    conn = connect(to)
    finetunejobs.set_suspend(conn, name=name, namespace=conn.namespace, suspend=suspend)
    print(f"{object_ref(name)} {'suspend' if suspend else 'resume'} requested")
    return CliExit.OK


def suspend(
    name: NameArgument,
    namespace: NamespaceOption = None,
    kubeconfig: KubeconfigOption = None,
    context: ContextOption = None,
) -> int:
    """Suspend a FineTuneJob (spec.runPolicy.suspend): its pods checkpoint and stop."""
    return _set_suspend(name=name, suspend=True, to=Target(kubeconfig=kubeconfig, context=context, namespace=namespace))


def resume(
    name: NameArgument,
    namespace: NamespaceOption = None,
    kubeconfig: KubeconfigOption = None,
    context: ContextOption = None,
) -> int:
    """Resume a suspended FineTuneJob from its newest checkpoint."""
    return _set_suspend(
        name=name, suspend=False, to=Target(kubeconfig=kubeconfig, context=context, namespace=namespace)
    )
