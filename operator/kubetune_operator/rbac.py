"""The Kubernetes API permissions the operator needs: the one list the Helm chart's ClusterRole mirrors.

Keep it minimal; each rule says which code needs it. A unit test compares this list with the chart's
``charts/kubetune/templates/rbac.yaml``, and the integration tests run the operator with exactly these rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kubetune.api.profile import PROFILE_PLURAL
from kubetune.api.resource import GROUP, PLURAL


@dataclass(frozen=True, kw_only=True)
class PolicyRule:
    api_groups: tuple[str, ...]
    resources: tuple[str, ...]
    verbs: tuple[str, ...]
    resource_names: tuple[str, ...] = ()

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {
            "apiGroups": list(self.api_groups),
            "resources": list(self.resources),
            "verbs": list(self.verbs),
        }
        if self.resource_names:
            wire["resourceNames"] = list(self.resource_names)
        return wire


RULES: tuple[PolicyRule, ...] = (
    # Watch FineTuneJobs; kopf patches away the finalizer earlier versions kept; the TTL deletes finished ones.
    PolicyRule(api_groups=(GROUP,), resources=(PLURAL,), verbs=("get", "list", "watch", "patch", "delete")),
    PolicyRule(api_groups=(GROUP,), resources=(f"{PLURAL}/status",), verbs=("get", "patch")),
    # FineTuneProfiles are read only: the platform team writes them.
    PolicyRule(api_groups=(GROUP,), resources=(PROFILE_PLURAL,), verbs=("get", "list", "watch")),
    # Owner references with blockOwnerDeletion need update on the owner's finalizers subresource
    # where the OwnerReferencesPermissionEnforcement admission plugin is on (OpenShift, hardened clusters).
    PolicyRule(api_groups=(GROUP,), resources=(f"{PLURAL}/finalizers",), verbs=("update",)),
    # The trainer Job: created once, suspended/resumed by patch, watched for status; deleted and created
    # again when spec.resources changed while it was suspended (a Job's pod template is immutable).
    PolicyRule(api_groups=("batch",), resources=("jobs",), verbs=("get", "list", "watch", "create", "patch", "delete")),
    # Trainer pods are only observed (exit codes, scheduling failures).
    PolicyRule(api_groups=("",), resources=("pods",), verbs=("get", "list", "watch")),
    # Progress reports carry the reporting pod's token; the API server reviews it (reports.TokenReviewer).
    PolicyRule(api_groups=("authentication.k8s.io",), resources=("tokenreviews",), verbs=("create",)),
    # The trainer config and the rendezvous Service: created once, adopted by patch after a restart, and
    # watched (only those carrying the FineTuneJob label: a server-side selector) for the operator's cache.
    PolicyRule(
        api_groups=("",), resources=("configmaps", "services"), verbs=("get", "list", "watch", "create", "patch")
    ),
    # Milestone and failure Events on FineTuneJobs (the operator's and kopf's own); the Job controller's
    # FailedCreate events are listed (field-selected by the Job's uid) when a Job has no pods: quota, PSA.
    PolicyRule(api_groups=("",), resources=("events",), verbs=("list", "create", "patch")),
    # kopf resolves namespace patterns in KUBETUNE_NAMESPACES (e.g. team-*) by watching namespaces.
    PolicyRule(api_groups=("",), resources=("namespaces",), verbs=("get", "list", "watch")),
    # kopf notices CRDs installed after it started (read-only).
    PolicyRule(
        api_groups=("apiextensions.k8s.io",), resources=("customresourcedefinitions",), verbs=("get", "list", "watch")
    ),
)


# In the operator's own namespace only (a Role): the Secret keeping the report endpoint's CA, read (by name)
# at every start and created by the first replica that finds none (tls.stored_ca). create cannot be
# limited to a name.
def namespace_rules(*, ca_secret: str) -> tuple[PolicyRule, ...]:
    return (
        PolicyRule(api_groups=("",), resources=("secrets",), verbs=("get",), resource_names=(ca_secret,)),
        PolicyRule(api_groups=("",), resources=("secrets",), verbs=("create",)),
    )


def role(*, name: str, namespace: str, ca_secret: str) -> dict[str, Any]:
    """The Role manifest granting :func:`namespace_rules` in the operator's namespace."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": name, "namespace": namespace},
        "rules": [rule.to_wire() for rule in namespace_rules(ca_secret=ca_secret)],
    }


def cluster_role(*, name: str) -> dict[str, Any]:
    """The ClusterRole manifest granting :data:`RULES`."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": name},
        "rules": [rule.to_wire() for rule in RULES],
    }
