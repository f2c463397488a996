"""How kubetune is installed on the real node (the e2e tests and ``kubetune local`` alike): pure parts."""

from __future__ import annotations

from pathlib import Path

from kubetune_testenv.release import RESTRICTED, TRAINER_UID, release_values, restricted_namespace_manifest
from kubetune_testenv.volumes import CLAIMS, HostPathClaims


def test_chart_values_use_the_local_images_and_the_real_node() -> None:
    values = release_values(watch_namespaces=["jobs"])
    assert values["image"] == {"repository": "kubetune/operator", "pullPolicy": "Never"}
    assert values["trainer"]["image"] == {"repository": "kubetune/trainer"}
    assert values["trainer"]["imagePullPolicy"] == "Never"
    assert values["operator"]["watchNamespaces"] == ["jobs"]
    assert values["nodeSelector"] == {"kubetune.io/node": "cpu"}
    (toleration,) = values["tolerations"]
    assert toleration == {"key": "kubetune.io/node", "operator": "Equal", "value": "cpu", "effect": "NoSchedule"}


def test_namespaces_enforce_the_restricted_pod_security_standard() -> None:
    manifest = restricted_namespace_manifest("team")
    assert manifest["metadata"] == {"name": "team", "labels": RESTRICTED}
    assert RESTRICTED["pod-security.kubernetes.io/enforce"] == "restricted"


def test_each_claim_and_its_hostpath_volume_name_each_other() -> None:
    claims = HostPathClaims(root=Path("/v"), namespace="jobs", pv_prefix="e2e-", storage_class="e2e-hostpath")
    assert claims.claims == CLAIMS == ("models", "datasets", "outputs")
    for claim in CLAIMS:
        pv, pvc = claims.pv_manifest(claim), claims.pvc_manifest(claim)
        assert pv["metadata"]["name"] == pvc["spec"]["volumeName"] == f"e2e-{claim}"
        assert pv["spec"]["claimRef"] == {"namespace": "jobs", "name": claim}
        assert pvc["metadata"] == {"name": claim, "namespace": "jobs"}
        assert pv["spec"]["storageClassName"] == pvc["spec"]["storageClassName"] == "e2e-hostpath"
        assert pv["spec"]["hostPath"] == {"path": f"/v/{claim}", "type": "Directory"}
        assert pv["spec"]["persistentVolumeReclaimPolicy"] == "Retain"


def test_outputs_belong_to_the_trainer_user_of_the_chart() -> None:
    chart_values = (Path(__file__).resolve().parents[3] / "charts" / "kubetune" / "values.yaml").read_text()
    assert f"runAsUser: {TRAINER_UID}" in chart_values
