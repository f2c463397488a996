"""``python -m kubetune_operator``: validate the settings, start /metrics, run the kopf operator."""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
import urllib.parse
from pathlib import Path

import kopf
from kubernetes import client, config
from prometheus_client import start_http_server

from kubetune_operator import k8s, namespace_discovery
from kubetune_operator.errors import ApiError
from kubetune_operator.handlers import register
from kubetune_operator.metrics import OperatorMetrics
from kubetune_operator.settings import OperatorSettings, SettingsError
from kubetune_operator.tls import ServingIdentity, TlsError, issue, load_identity, make_ca, stored_ca


def api_client(*, connections: int) -> client.ApiClient:
    """In a pod: the ServiceAccount's credentials; elsewhere: $KUBECONFIG or ~/.kube/config.

    ``connections`` is the pool size: one per thread that may call at once (handlers and re-checks), so
    no connection is opened and thrown away per request under load.
    """
    configuration = client.Configuration()
    configuration.connection_pool_maxsize = connections
    try:
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config(client_configuration=configuration, persist_config=False)  # type: ignore[no-untyped-call]
    return client.ApiClient(configuration)


def operator_identity() -> str:
    """Who this replica is in kopf's peering records: the pod's name (its hostname) and the process.

    kopf's default asks the password database for the user's name, and the operator image's numeric
    non-root UID has no entry there: the operator crashed at start-up in a real pod.
    """
    return f"kubetune@{socket.gethostname()}/{os.getpid()}"


def peering_priority(*, started_at: float) -> int:
    """The replica's kopf peering priority: the earlier it started, the higher, so the running replica keeps
    acting and a new one waits as a standby.

    kopf pauses *every* replica that sees a live peer of equal priority, so replicas of one Deployment
    (same settings) must not share one: milliseconds since the epoch make a tie practically impossible.
    """
    return -int(started_at * 1000)


def report_identity(settings: OperatorSettings, *, kube: k8s.Kube) -> ServingIdentity | None:
    """The report endpoint's certificate: the given one, or one issued now for the report address's host by
    the CA kept in ``reports_ca_secret`` (or by a CA made now)."""
    if not settings.reports_port:
        return None
    if settings.reports_tls_dir is not None:
        return load_identity(Path(settings.reports_tls_dir))
    hosts = list(settings.report_cert_hosts)
    if settings.report_url_base is not None:
        host = urllib.parse.urlsplit(settings.report_url_base).hostname
        if host:
            hosts.insert(0, host)
    if settings.reports_ca_secret is not None:
        namespace, _, name = settings.reports_ca_secret.partition("/")
        ca = stored_ca(kube, namespace=namespace, name=name)
    else:
        ca = make_ca()
    return issue(ca, hosts=tuple(dict.fromkeys(hosts or ["localhost"])))


def main() -> int:
    try:
        settings = OperatorSettings.from_env(environ=os.environ)
    except SettingsError as err:
        print(f"kubetune-operator: {err}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    metrics = OperatorMetrics()
    try:
        kube = k8s.Kube(api_client=api_client(connections=2 * settings.max_workers), on_response=metrics.api_response)
    except config.ConfigException as err:
        print(f"kubetune-operator: no cluster credentials: {err}", file=sys.stderr)
        return 2
    try:
        identity = report_identity(settings, kube=kube)
    except (TlsError, ApiError) as err:
        print(f"kubetune-operator: {err}", file=sys.stderr)
        return 2
    if settings.metrics_port:
        start_http_server(settings.metrics_port, registry=metrics.registry)
    registry = kopf.OperatorRegistry()
    register(registry=registry, settings=settings, kube=kube, metrics=metrics, identity=identity)
    # kopf alone misses a namespace that matches settings.namespaces and is created as it starts.
    namespace_discovery.install()
    kopf.run(
        registry=registry,
        identity=operator_identity(),  # type: ignore[arg-type]  # kopf.Identity, a NewType of str, is not exported
        clusterwide=not settings.namespaces,
        namespaces=settings.namespaces,
        standalone=settings.peering_name is None,
        peering_name=settings.peering_name,
        priority=peering_priority(started_at=time.time()),
        liveness_endpoint=f"http://0.0.0.0:{settings.health_port}/healthz" if settings.health_port else None,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
