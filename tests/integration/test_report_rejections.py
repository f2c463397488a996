"""Reports that must not count: refused with a reason, counted, and the FineTuneJob left as it was.

The tokens are real: issued by the API server for the pods' ServiceAccount and bound to a pod, or made
from such a token with one thing wrong (signed by another key; signed by the cluster's own key but
expired). The operator checks them through the API server's TokenReview.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from kube_objects import FineTuneJobs, status_of
from kubetune_operator.k8s import Kube, object_path
from kubetune_testenv.cluster import Cluster, ControlPlane
from operator_harness import OperatorProcess, metric_sum
from trainer_harness import PodInputs, bound_claims, pod_inputs, post_report, request_token

from kubetune.api.progress import StepEvent, event_to_json
from kubetune.api.reports import MAX_REPORT_BYTES, audience

pytestmark = pytest.mark.cluster

RUN_FOR = "kubetune.test/run-for"


def spec() -> dict[str, Any]:
    return {
        "model": {"source": "pvc://models/tiny"},
        "dataset": {"train": ["pvc://datasets/lamini.jsonl"], "preflight": "skip"},
        "resources": {"gpusPerNode": 1},
        "output": {"destination": "pvc://outputs/x"},
    }


def body(step: int = 1) -> bytes:
    event = StepEvent(
        step=step, total_steps=10, epoch=0.1, loss=2.0, learning_rate=1e-4, tokens_per_second=1.0, trained_tokens=1
    )
    return json.dumps({"events": [json.loads(event_to_json(event))]}).encode()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def resigned(token: str, *, key: ec.EllipticCurvePrivateKey, **claims: Any) -> str:
    """``token`` with ``claims`` changed, signed ES256 by ``key`` (the API server's keys are P-256 here)."""
    header, payload, _ = token.split(".")
    body = {**json.loads(_unb64(payload)), **claims}
    signing_input = f"{header}.{_b64(json.dumps(body).encode())}"
    r, s = decode_dss_signature(key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
    return f"{signing_input}.{_b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def test_forged_expired_foreign_misaddressed_malformed_oversized_and_late_reports_are_refused(
    cluster: Cluster, admin: Kube, ftjs: FineTuneJobs, operator: OperatorProcess, tmp_path: Path
) -> None:
    assert isinstance(cluster, ControlPlane) and cluster.pki is not None, "the test control plane's signing key"
    with cluster.api_client() as api:
        bound_claims(api, namespace=ftjs.namespace, root=tmp_path / "pvc")
    ftjs.create("target", spec=spec(), annotations={RUN_FOR: "3600s"})
    ftjs.create("other", spec=spec(), annotations={RUN_FOR: "3600s"})
    target, other = pod_inputs(ftjs, "target"), pod_inputs(ftjs, "other")

    def token_for(pod: PodInputs, *, aud: str) -> str:
        return request_token(admin, pod, audience=aud)

    good = token_for(target, aud=target.audience)
    assert post_report(target.report_url, token=good, body=body(1), ca_pem=target.ca_pem)[0] == 202
    ftjs.wait("target", lambda o: (status_of(o).get("progress") or {}).get("step") == 1, what="step 1")

    cluster_key = serialization.load_pem_private_key(cluster.pki.service_account_key.read_bytes(), password=None)
    assert isinstance(cluster_key, ec.EllipticCurvePrivateKey)
    past = int(time.time()) - 7200
    expired = resigned(good, key=cluster_key, iat=past, nbf=past, exp=past + 600)
    cases = {
        "forged": (resigned(good, key=ec.generate_private_key(ec.SECP256R1())), body(2), 401, "unauthenticated"),
        "expired": (expired, body(2), 401, "unauthenticated"),
        "another job's pod": (token_for(other, aud=target.audience), body(2), 403, "wrong_job"),
        "another job's token": (token_for(other, aud=other.audience), body(2), 401, "unauthenticated"),
        "wrong audience": (
            token_for(target, aud=audience(namespace=ftjs.namespace, name="elsewhere")), body(2), 401, "unauthenticated"
        ),
        "no token": (None, body(2), 401, "unauthenticated"),
        "malformed": (good, b'{"events": [{"event": "step"}]}', 400, "malformed"),
        "not json": (good, b"\x00\xff{", 400, "malformed"),
        "oversized": (good, b" " * (MAX_REPORT_BYTES + 1), 413, "too_large"),
    }  # fmt: skip
    for case, (token, payload, status, reason) in cases.items():
        before = ftjs.get("target")
        counted = metric_sum(operator.metrics(), "kubetune_progress_reports_total", result="rejected", reason=reason)
        answer = post_report(target.report_url, token=token, body=payload, ca_pem=target.ca_pem)
        assert answer[0] == status and answer[1]["reason"] == reason, (case, answer)
        after = ftjs.get("target")
        assert before is not None and after is not None
        assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"], case
        now = metric_sum(operator.metrics(), "kubetune_progress_reports_total", result="rejected", reason=reason)
        assert now == counted + 1, case
    assert (
        "expired"
        in json.dumps(post_report(target.report_url, token=expired, body=body(2), ca_pem=target.ca_pem)[1]).lower()
    ), "the API server's own reason reaches the trainer"

    # A finished job takes no more reports, even from its own pod with a valid token.
    for name in ("target", "other"):  # the kwok pods exit 0 now
        (pod,) = ftjs.children("pods", name)
        admin.request(
            "PATCH",
            object_path(api_version="v1", plural="pods", namespace=ftjs.namespace, name=pod["metadata"]["name"]),
            body={"metadata": {"annotations": {RUN_FOR: "0s"}}},
            content_type="application/merge-patch+json",
        )
    final = ftjs.wait_phase("target", "Succeeded", timeout=60)
    status, answer = post_report(target.report_url, token=good, body=body(9), ca_pem=target.ca_pem)
    assert (status, answer["reason"]) == (409, "finished")
    after = ftjs.get("target")
    assert after is not None and status_of(after) == status_of(final)
