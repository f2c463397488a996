"""Running the Argo CD health check (``deploy/argocd/finetunejob-health.lua``) the way Argo CD runs it.

Argo CD evaluates the script with gopher-lua (Lua 5.1): the object is the global ``obj``, only the base,
table and os libraries are open, and the script returns a table ``{status, message}``. Here the real
``lua5.4`` binary (Debian package ``lua5.4``, installed by ``.ci/install.sh``) runs it through
``tests/argocd_harness.lua`` in an environment limited to those libraries, with the string library and the
strings' methods taken away, so a script that would fail in Argo CD fails here too. The object reaches Lua
as a table constructor written from Python.

Shared by the unit tests (recorded fixtures) and the integration tests (live objects); ``EXPECTED`` says
what each recorded observation must give.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
HEALTH_SCRIPT = REPO / "deploy" / "argocd" / "finetunejob-health.lua"
CM_PATCH = REPO / "deploy" / "argocd" / "argocd-cm-patch.yaml"
CM_KEY = "resource.customizations.health.kubetune.io_FineTuneJob"
HARNESS = REPO / "tests" / "argocd_harness.lua"
FIXTURES = REPO / "tests" / "fixtures" / "argocd"
LUA = "lua5.4"
# Argo CD accepts these and turns anything else into Unknown ("Lua returned an invalid health status").
HEALTH_STATUSES = ("Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown")


@dataclass(frozen=True)
class Expected:
    status: str
    message: str  # a part of hs.message


# Each recorded observation (tests/fixtures/argocd/<name>.json) and the health Argo CD must show for it.
EXPECTED: dict[str, Expected] = {
    "created": Expected("Progressing", "waiting for the operator"),
    "pending-unschedulable": Expected("Progressing", "nodes are available"),
    "running": Expected("Progressing", "1/1 pods running"),
    "suspend-requested": Expected("Progressing", "waiting for the operator to observe generation 2"),
    "suspended": Expected("Suspended", "spec.runPolicy.suspend is true"),
    "resume-requested": Expected("Progressing", "waiting for the operator to observe generation 3"),
    "succeeded": Expected("Healthy", "training succeeded"),
    "succeeded-then-edited": Expected("Healthy", "training succeeded"),
    "failed-bad-data": Expected("Degraded", "BadData: fatal: container trainer of pod"),
    "failed-unschedulable": Expected("Degraded", "Unschedulable: pod"),
    "failed-invalid-spec": Expected("Degraded", "InvalidSpec: spec.output.destination"),
}


@dataclass(frozen=True)
class Health:
    status: str
    message: str


def lua_literal(value: Any) -> str:
    """A JSON value as a Lua table constructor (objects keyed by string, arrays 1-based, null as nil)."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        # Decimal escapes of the UTF-8 bytes: the same in Lua 5.1 and 5.4.
        body = "".join(chr(b) if 32 <= b < 127 and chr(b) not in '"\\' else f"\\{b:03d}" for b in value.encode())
        return f'"{body}"'
    if isinstance(value, list):
        return "{" + ", ".join(lua_literal(item) for item in value) + "}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"[{lua_literal(str(k))}] = {lua_literal(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"not a JSON value: {value!r}")


def lua_binary() -> str:
    binary = shutil.which(LUA)
    if binary is None:
        pytest.fail(f"{LUA} not found: apt-get install lua5.4 (.ci/install.sh installs it)", pytrace=False)
    return binary


def health_of(obj: dict[str, Any], *, script: Path = HEALTH_SCRIPT) -> Health:
    """What Argo CD's health assessment says about ``obj`` (a FineTuneJob as JSON)."""
    result = subprocess.run(
        [lua_binary(), str(HARNESS), str(script)],
        input=lua_literal(obj),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, f"the health script failed:\n{result.stderr}"
    status, _, message = result.stdout.partition("\0")
    assert status in HEALTH_STATUSES, f"Argo CD would report Unknown for hs.status {status!r}"
    return Health(status=status, message=message)


def trimmed(obj: dict[str, Any]) -> dict[str, Any]:
    """What a fixture keeps of an observed FineTuneJob: metadata.generation and status."""
    kept: dict[str, Any] = {"metadata": {"generation": obj["metadata"]["generation"]}}
    if obj.get("status") is not None:
        kept["status"] = obj["status"]
    return kept
