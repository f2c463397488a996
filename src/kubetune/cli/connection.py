"""Which cluster and namespace a command talks to, found the way kubectl finds them.

The kubeconfig is ``--kubeconfig``, else ``$KUBECONFIG`` (a ``:``-separated list, merged), else
``~/.kube/config``; without any of them, inside a pod, the pod's ServiceAccount (in-cluster config). The
namespace is ``-n``, else the context's namespace, else the pod's own namespace in-cluster, else ``default``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import config as kube_config
from kubernetes.client import ApiClient, Configuration
from kubetune_operator.k8s import Kube

from kubetune.cli.errors import CliError

DEFAULT_KUBECONFIG = "~/.kube/config"
# Set in every pod by the kubelet; its presence is how client-go decides it runs in-cluster.
IN_CLUSTER_ENV = "KUBERNETES_SERVICE_HOST"
IN_CLUSTER_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


@dataclass(frozen=True, kw_only=True)
class Target:
    """What the user asked for on the command line; ``None`` means "the kubeconfig's choice"."""

    kubeconfig: str | None = None
    context: str | None = None
    namespace: str | None = None


@dataclass(frozen=True, kw_only=True)
class Connection:
    kube: Kube
    api_client: ApiClient
    namespace: str
    # The API server's URL, for error messages.
    server: str


def kubeconfig_paths(target: Target, *, environ: dict[str, str] | None = None) -> str | None:
    """The kubeconfig file list to read, or ``None`` when there is none (then: in-cluster config)."""
    env = os.environ if environ is None else environ
    if target.kubeconfig:
        if not Path(target.kubeconfig).expanduser().is_file():
            raise CliError(f"--kubeconfig: {target.kubeconfig} is not a file")
        return target.kubeconfig
    listed = env.get("KUBECONFIG", "")
    if listed:
        existing = [p for p in listed.split(os.pathsep) if p and Path(p).expanduser().is_file()]
        if not existing:
            raise CliError(f"KUBECONFIG: none of {listed} is a file")
        return os.pathsep.join(existing)
    if Path(DEFAULT_KUBECONFIG).expanduser().is_file():
        return DEFAULT_KUBECONFIG
    return None


def context_namespace(contexts: list[dict[str, Any]], *, name: str) -> str | None:
    """The namespace a kubeconfig context names, if any."""
    for entry in contexts:
        if entry.get("name") == name:
            namespace = (entry.get("context") or {}).get("namespace")
            return str(namespace) if namespace else None
    return None


def connect(target: Target) -> Connection:
    """An authenticated client and the namespace to use; a kubeconfig problem is a one-line CliError."""
    paths = kubeconfig_paths(target)
    configuration = Configuration()
    try:
        if paths is not None:
            contexts, current = kube_config.list_kube_config_contexts(config_file=paths)  # type: ignore[no-untyped-call]
            context = target.context or (current or {}).get("name")
            if target.context and not any(entry.get("name") == target.context for entry in contexts):
                raise CliError(f"--context: no context named {target.context!r} in {paths}")
            kube_config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=paths, context=context, client_configuration=configuration
            )
            namespace = target.namespace or context_namespace(contexts, name=str(context)) or "default"
        elif IN_CLUSTER_ENV in os.environ:
            if target.context:
                raise CliError("--context: there is no kubeconfig, only the in-cluster config")
            kube_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
            namespace = target.namespace or _in_cluster_namespace()
        else:
            raise CliError(f"no kubeconfig: set --kubeconfig or $KUBECONFIG, or create {DEFAULT_KUBECONFIG}")
    except kube_config.ConfigException as err:
        raise CliError(f"kubeconfig: {err}") from None
    api_client = ApiClient(configuration=configuration)
    return Connection(
        kube=Kube(api_client=api_client), api_client=api_client, namespace=namespace, server=configuration.host
    )


def _in_cluster_namespace() -> str:
    try:
        return IN_CLUSTER_NAMESPACE_FILE.read_text(encoding="utf-8").strip() or "default"
    except OSError:
        return "default"
