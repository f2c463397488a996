"""Secret values never leave their Secrets: canaries through a successful and a failed run.

Every Secret reference the API allows (``spec.credentials``: the Hugging Face token and both S3 keys) points
at a Secret holding a unique random canary. After one FineTuneJob succeeds and another fails, the canary is
searched for, raw and base64-encoded (how a Secret's data travels), in everything the operator writes or
shows: the FineTuneJobs, Events, ConfigMaps, Services, Jobs and pods of the namespace, the operator's log and
its /metrics. The pods reach the values only through ``secretKeyRef``; the operator cannot read Secrets.
"""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from kube_objects import FineTuneJobs, ftj_collection, minimal_spec
from kubernetes import config
from kubetune_operator.k8s import Kube, collection_path, object_path
from kubetune_operator.rbac import RULES
from operator_harness import OperatorProcess

pytestmark = pytest.mark.cluster

# Secret -> key -> the environment variable the trainer gets it as.
SECRETS = {
    "hf-token": {"token": "HF_TOKEN"},
    "object-store": {"access-key-id": "AWS_ACCESS_KEY_ID", "secret-access-key": "AWS_SECRET_ACCESS_KEY"},
}
CREDENTIALS = {
    "huggingFaceToken": {"name": "hf-token", "key": "token"},
    "s3": {
        "accessKeyId": {"name": "object-store", "key": "access-key-id"},
        "secretAccessKey": {"name": "object-store", "key": "secret-access-key"},
        "endpointUrl": "https://minio.example.invalid:9000",
        "region": "eu-west-1",
    },
}


def encodings(canary: str) -> list[str]:
    return [canary, base64.b64encode(canary.encode()).decode()]


def leaks(where: str, text: str, canaries: list[str]) -> list[str]:
    return [f"{where}: {form}" for canary in canaries for form in encodings(canary) if form in text]


def namespace_objects(ftjs: FineTuneJobs) -> dict[str, list[dict[str, Any]]]:
    found = {
        plural: ftjs.kube.request(
            "GET", collection_path(api_version=api_version, plural=plural, namespace=ftjs.namespace)
        )["items"]
        for api_version, plural in (
            ("v1", "events"),
            ("v1", "configmaps"),
            ("v1", "services"),
            ("v1", "pods"),
            ("batch/v1", "jobs"),
        )
    }
    found["finetunejobs"] = ftjs.kube.request("GET", ftj_collection(ftjs.namespace))["items"]
    return found


def test_secret_values_appear_nowhere_after_a_successful_and_a_failed_run(
    ftjs: FineTuneJobs, operator: OperatorProcess
) -> None:
    canaries: list[str] = []
    for secret, keys in SECRETS.items():
        data = {key: f"canary-{uuid.uuid4()}" for key in keys}
        canaries.extend(data.values())
        ftjs.kube.request(
            "POST",
            collection_path(api_version="v1", plural="secrets", namespace=ftjs.namespace),
            body={"metadata": {"name": secret}, "stringData": data},
        )
    stored = ftjs.kube.get(object_path(api_version="v1", plural="secrets", namespace=ftjs.namespace, name="hf-token"))
    assert leaks("the Secret itself", json.dumps(stored), canaries), "the search would not find a leak"

    spec = minimal_spec() | {"credentials": CREDENTIALS}
    ftjs.create("secretive-ok", spec=spec, annotations={"kubetune.test/run-for": "3s"})
    ftjs.create(
        "secretive-bad",
        spec=spec,
        annotations={
            "kubetune.test/run-for": "3s",
            "kubetune.test/exit-code": "65",
            "kubetune.test/message": "bad record at line 3",
        },
    )
    ftjs.wait_phase("secretive-ok", "Succeeded", timeout=90)
    ftjs.wait_phase("secretive-bad", "Failed", timeout=90)

    found = namespace_objects(ftjs)
    assert len(found["pods"]) == 2 and len(found["jobs"]) == 2
    for template in [job["spec"]["template"]["spec"] for job in found["jobs"]] + [p["spec"] for p in found["pods"]]:
        (trainer,) = template["containers"]
        env = {item["name"]: item for item in trainer["env"]}
        for secret, keys in SECRETS.items():
            for key, variable in keys.items():
                assert env[variable] == {"name": variable, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}
    problems = [leak for plural, items in found.items() for leak in leaks(plural, json.dumps(items), canaries)]
    problems += leaks("the operator's log", operator.log_path.read_text(errors="replace"), canaries)
    problems += leaks("/metrics", operator.metrics(), canaries)
    assert not problems, problems


def test_the_operator_has_no_access_to_secrets(operator_kubeconfig: Path, namespace: str) -> None:
    assert not [rule for rule in RULES if {"secrets", "*"} & set(rule.resources)]
    review = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
    with config.new_client_from_config(config_file=str(operator_kubeconfig)) as api:  # type: ignore[no-untyped-call]
        as_operator = Kube(api_client=api)

        def allowed(verb: str, resource: str) -> bool:
            attributes = {"namespace": namespace, "verb": verb, "resource": resource}
            body = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview"}
            answer = as_operator.request("POST", review, body=body | {"spec": {"resourceAttributes": attributes}})
            return bool(answer["status"]["allowed"])

        assert allowed("list", "pods"), "the review asks as the operator (which may list pods)"
        assert [verb for verb in ("get", "list", "watch") if allowed(verb, "secrets")] == []
