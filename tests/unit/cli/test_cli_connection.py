"""Finding the cluster and namespace the way kubectl does: --kubeconfig, $KUBECONFIG, ~/.kube/config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune.cli.connection import Target, connect
from kubetune.cli.errors import CliError


def kubeconfig(path: Path, *, current: str, contexts: dict[str, dict[str, Any]]) -> Path:
    """A kubeconfig with one cluster per context (server https://<context>.example) and a token user."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": current,
        "clusters": [{"name": name, "cluster": {"server": f"https://{name}.example"}} for name in contexts],
        "users": [{"name": "me", "user": {"token": "t0ken"}}],
        "contexts": [
            {"name": name, "context": {"cluster": name, "user": "me", **extra}} for name, extra in contexts.items()
        ],
    }
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


@pytest.fixture
def no_home_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)


def test_the_current_context_gives_the_server_and_namespace(tmp_path: Path, no_home_config: None) -> None:
    path = kubeconfig(tmp_path / "config", current="prod", contexts={"prod": {"namespace": "ml"}, "dev": {}})
    conn = connect(Target(kubeconfig=str(path)))
    assert (conn.server, conn.namespace) == ("https://prod.example", "ml")


def test_context_and_namespace_flags_override_the_kubeconfig(tmp_path: Path, no_home_config: None) -> None:
    path = kubeconfig(tmp_path / "config", current="prod", contexts={"prod": {"namespace": "ml"}, "dev": {}})
    assert connect(Target(kubeconfig=str(path), context="dev")).namespace == "default"
    conn = connect(Target(kubeconfig=str(path), context="dev", namespace="team"))
    assert (conn.server, conn.namespace) == ("https://dev.example", "team")


def test_kubeconfig_env_lists_files_that_are_merged(
    tmp_path: Path, no_home_config: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = kubeconfig(tmp_path / "a", current="a", contexts={"a": {}})
    second = kubeconfig(tmp_path / "b", current="a", contexts={"b": {"namespace": "bee"}})
    monkeypatch.setenv("KUBECONFIG", f"{tmp_path / 'missing'}:{first}:{second}")
    assert connect(Target(context="b")).namespace == "bee"


def test_home_kubeconfig_is_the_default(tmp_path: Path, no_home_config: None) -> None:
    (tmp_path / "home" / ".kube").mkdir(parents=True)
    kubeconfig(tmp_path / "home" / ".kube" / "config", current="home", contexts={"home": {}})
    assert connect(Target()).server == "https://home.example"


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (Target(), "no kubeconfig: set --kubeconfig or $KUBECONFIG, or create ~/.kube/config"),
        (Target(kubeconfig="/nonexistent/config"), "--kubeconfig: /nonexistent/config is not a file"),
    ],
)
def test_a_missing_kubeconfig_is_one_line(target: Target, message: str, no_home_config: None) -> None:
    with pytest.raises(CliError) as err:
        connect(target)
    assert err.value.message == message


def test_an_unknown_context_is_named(tmp_path: Path, no_home_config: None) -> None:
    path = kubeconfig(tmp_path / "config", current="prod", contexts={"prod": {}})
    with pytest.raises(CliError) as err:
        connect(Target(kubeconfig=str(path), context="staging"))
    assert err.value.message == f"--context: no context named 'staging' in {path}"


def test_in_a_pod_without_kubeconfig_the_service_account_and_its_namespace_are_used(
    tmp_path: Path, no_home_config: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kubetune.cli import connection

    def load_incluster_config(*, client_configuration: Any) -> None:
        client_configuration.host = "https://10.96.0.1:443"

    namespace_file = tmp_path / "namespace"
    namespace_file.write_text("ml-team\n")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setattr(connection.kube_config, "load_incluster_config", load_incluster_config)
    monkeypatch.setattr(connection, "IN_CLUSTER_NAMESPACE_FILE", namespace_file)
    conn = connect(Target())
    assert (conn.server, conn.namespace) == ("https://10.96.0.1:443", "ml-team")
