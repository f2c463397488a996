"""The ValidatingAdmissionPolicy that enforces FineTuneProfile limits: what it matches, its parameter, its binding.

Whether its CEL admits and refuses what kubetune.api.profile.limit_violations does, word for word, is asked of
the real API server in tests/integration/test_profile_admission.py.
"""

from __future__ import annotations

from typing import Any

from helm_render import Manifest, Render, by_kind, one
from pydantic.alias_generators import to_camel

from kubetune.api.profile import PROFILE_KIND, PROFILE_LABEL, ProfileLimits
from kubetune.api.resource import API_VERSION, GROUP, PLURAL, VERSION

POLICY = "ValidatingAdmissionPolicy"
BINDING = "ValidatingAdmissionPolicyBinding"


def policy_spec(manifests: list[Manifest]) -> dict[str, Any]:
    spec: dict[str, Any] = one(manifests, POLICY)["spec"]
    return spec


def test_the_policy_takes_finetuneprofiles_as_its_parameter_and_admits_while_it_cannot_be_evaluated(
    default_manifests: list[Manifest],
) -> None:
    policy = one(default_manifests, POLICY, "kubetune-profile-limits")
    assert policy["apiVersion"] == "admissionregistration.k8s.io/v1"
    assert policy["spec"]["paramKind"] == {"apiVersion": API_VERSION, "kind": PROFILE_KIND}
    # The operator checks the same limits before it creates anything; the API server's restart window
    # (tests/integration/test_profile_admission.py) must not refuse valid jobs.
    assert policy["spec"]["failurePolicy"] == "Ignore"


def test_the_policy_can_be_made_to_fail_closed(render: Render) -> None:
    manifests = render({"admissionPolicy": {"failurePolicy": "Fail"}})
    assert one(manifests, POLICY, "kubetune-profile-limits")["spec"]["failurePolicy"] == "Fail"


def test_the_policy_matches_only_creates_and_updates_of_finetunejobs(default_manifests: list[Manifest]) -> None:
    constraints = policy_spec(default_manifests)["matchConstraints"]
    assert constraints == {
        "resourceRules": [
            {"apiGroups": [GROUP], "apiVersions": [VERSION], "operations": ["CREATE", "UPDATE"], "resources": [PLURAL]}
        ]
    }
    # Updates count only when they change the spec: the operator's metadata patches are never refused.
    (condition,) = policy_spec(default_manifests)["matchConditions"]
    assert "object.metadata.generation != oldObject.metadata.generation" in condition["expression"]


def test_one_binding_takes_every_profile_and_allows_when_there_is_none(default_manifests: list[Manifest]) -> None:
    binding = one(default_manifests, BINDING, "kubetune-profile-limits")
    assert binding["apiVersion"] == "admissionregistration.k8s.io/v1"
    assert binding["spec"] == {
        "policyName": one(default_manifests, POLICY)["metadata"]["name"],
        "validationActions": ["Deny"],
        "paramRef": {"selector": {}, "parameterNotFoundAction": "Allow"},
    }


def test_the_switch_removes_policy_and_binding(render: Render) -> None:
    manifests = render({"admissionPolicy": {"enabled": False}})
    assert by_kind(manifests, POLICY) == [] and by_kind(manifests, BINDING) == []


def test_every_validation_names_its_field_and_every_limit_is_checked(default_manifests: list[Manifest]) -> None:
    validations = policy_spec(default_manifests)["validations"]
    assert all(v.get("messageExpression") and "message" not in v for v in validations)
    fields = [v["messageExpression"].split("'")[1].split(":")[0] for v in validations]
    # The namespace's binding first, then the limits in limit_violations' order (the API server reports
    # the first refusal only, the operator all of them).
    assert fields == [
        "spec.profile",
        "spec.resources.gpusPerNode",
        "spec.resources.nodes",
        "spec.resources.gpuProduct",
        "spec.model.source",
        "spec.method.type",
        "spec.runPolicy.activeDeadlineSeconds",
        "spec.trainer.image",
    ]
    checked = " ".join(v["expression"] for v in validations)
    for limit in ProfileLimits.model_fields:
        assert f"params.spec.limits.{to_camel(limit)}" in checked, limit


def test_the_profile_is_chosen_by_the_namespace_label_the_api_names(default_manifests: list[Manifest]) -> None:
    variables = {v["name"]: v["expression"] for v in policy_spec(default_manifests)["variables"]}
    assert f"namespaceObject.metadata.labels['{PROFILE_LABEL}']" in variables["namespaceProfile"]
    assert variables["specProfile"] == "has(object.spec.profile) ? object.spec.profile : ''"
    assert "params.spec.default" in variables["applies"]
    binding_rule = policy_spec(default_manifests)["validations"][0]["messageExpression"]
    assert f"(label {PROFILE_LABEL})" in binding_rule
