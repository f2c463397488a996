"""The ``fake_api`` fixture: the fake API server of ``cli_fixtures`` behind every cluster command."""

from __future__ import annotations

import pytest
from cli_fixtures import NAMESPACE, SERVER, FakeKube

from kubetune.cli import jobs
from kubetune.cli.connection import Connection, Target


@pytest.fixture
def fake_api(monkeypatch: pytest.MonkeyPatch) -> FakeKube:
    """A fake API server behind every cluster command; ``-n`` picks the namespace, else "team"."""
    kube = FakeKube()

    def connect(target: Target) -> Connection:
        return Connection(kube=kube, api_client=None, namespace=target.namespace or NAMESPACE, server=SERVER)  # type: ignore[arg-type]

    monkeypatch.setattr(jobs, "connect", connect)
    monkeypatch.setattr("time.sleep", lambda seconds: None)
    return kube
