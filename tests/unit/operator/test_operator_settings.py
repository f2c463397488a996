"""Operator settings come from KUBETUNE_* variables and are validated at start-up."""

from __future__ import annotations

import pytest
from kubetune_operator.settings import OperatorSettings, SettingsError


def test_defaults_apply_without_any_environment() -> None:
    settings = OperatorSettings.from_env(environ={})
    assert settings == OperatorSettings()
    assert settings.pending_timeout_seconds == 600 and settings.master_port == 29500


def test_environment_variables_override_defaults_with_types_converted() -> None:
    settings = OperatorSettings.from_env(
        environ={
            "KUBETUNE_TRAINER_IMAGE": "example/trainer:9",
            "KUBETUNE_PENDING_TIMEOUT_SECONDS": "30",
            "KUBETUNE_NAMESPACES": "team-a, team-b",
            "KUBETUNE_POD_ANNOTATION_PREFIXES": "",
            "KUBETUNE_UNRELATED": "ignored",
        }
    )
    assert settings.trainer_image == "example/trainer:9"
    assert settings.pending_timeout_seconds == 30
    assert settings.namespaces == ("team-a", "team-b")
    assert settings.pod_annotation_prefixes == ()


def test_an_invalid_value_is_rejected_naming_the_variable() -> None:
    with pytest.raises(SettingsError, match="KUBETUNE_PENDING_TIMEOUT_SECONDS"):
        OperatorSettings.from_env(environ={"KUBETUNE_PENDING_TIMEOUT_SECONDS": "soon"})
    with pytest.raises(SettingsError, match="KUBETUNE_TERMINATION_GRACE_PERIOD_SECONDS"):
        OperatorSettings.from_env(environ={"KUBETUNE_TERMINATION_GRACE_PERIOD_SECONDS": "5"})


def test_settings_are_immutable() -> None:
    with pytest.raises(ValueError, match="frozen"):
        OperatorSettings().master_port = 1  # type: ignore[misc]
