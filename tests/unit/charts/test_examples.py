"""Every manifest under examples/ is a valid FineTuneJob (or a supporting object it references).

Parsed through the same models the operator uses, so an API change that breaks an example fails here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from helm_render import REPO

from kubetune.api.resource import API_VERSION, KIND, FineTuneJob
from kubetune.api.uris import parse_uri
from kubetune.api.validation import validate_manifest_file

EXAMPLES = REPO / "examples"
EXAMPLE_FILES = sorted(EXAMPLES.glob("*.yaml"))
# Kinds an example may hold beside FineTuneJobs, for the objects a FineTuneJob needs.
SUPPORTING_KINDS = {"Secret", "PersistentVolumeClaim", "LocalQueue"}


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def all_documents() -> list[dict[str, Any]]:
    return [doc for path in EXAMPLE_FILES for doc in documents(path)]


def jobs_in(path: Path) -> list[FineTuneJob]:
    return [FineTuneJob.from_object(doc) for doc in documents(path) if doc["kind"] == KIND]


def job(name: str) -> FineTuneJob:
    (found,) = jobs_in(EXAMPLES / name)
    return found


def test_the_documented_examples_exist() -> None:
    assert {p.name for p in EXAMPLE_FILES} >= {
        "lora-single-gpu.yaml",
        "qlora.yaml",
        "multi-node.yaml",
        "kueue.yaml",
        "secret-hf-token.yaml",
        "cpu-tiny.yaml",
        "quickstart.yaml",
        "quickstart-storage.yaml",
    }


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.name)
def test_example_parses_and_passes_offline_validation(path: Path) -> None:
    docs = documents(path)
    assert docs, f"{path.name} is empty"
    for doc in docs:
        assert doc["kind"] in SUPPORTING_KINDS | {KIND}, f"{path.name}: unexpected kind {doc['kind']}"
        assert doc["metadata"]["name"] and doc["metadata"]["namespace"], f"{path.name}: name and namespace"
        if doc["kind"] == KIND:
            assert doc["apiVersion"] == API_VERSION
            FineTuneJob.from_object(doc)
    assert validate_manifest_file(path) == []


def test_every_referenced_secret_key_is_defined_by_an_example() -> None:
    secrets = {
        (d["metadata"]["namespace"], d["metadata"]["name"]): set(d.get("stringData", {})) | set(d.get("data", {}))
        for d in all_documents()
        if d["kind"] == "Secret"
    }
    for path in EXAMPLE_FILES:
        for ftj in jobs_in(path):
            creds = ftj.spec.credentials
            refs = [creds.hugging_face_token] if creds.hugging_face_token else []
            if creds.s3:
                refs += [creds.s3.access_key_id, creds.s3.secret_access_key]
            for ref in refs:
                keys = secrets.get((ftj.metadata.namespace, ref.name))
                assert keys is not None, f"{path.name}: Secret {ref.name} is in no example"
                assert ref.key in keys, f"{path.name}: Secret {ref.name} has no key {ref.key}"


def test_every_referenced_claim_is_defined_by_an_example() -> None:
    claims = {
        (d["metadata"]["namespace"], d["metadata"]["name"])
        for d in all_documents()
        if d["kind"] == "PersistentVolumeClaim"
    }
    for path in EXAMPLE_FILES:
        for ftj in jobs_in(path):
            spec = ftj.spec
            uris = [spec.model.source, *spec.dataset.train, spec.output.destination]
            uris += [spec.dataset.validation] if spec.dataset.validation else []
            for uri in map(parse_uri, uris):
                if uri.pvc_claim:
                    assert (ftj.metadata.namespace, uri.pvc_claim) in claims, f"{path.name}: no claim {uri.raw}"


def test_hugging_face_models_name_a_revision() -> None:
    for path in EXAMPLE_FILES:
        for ftj in jobs_in(path):
            source = parse_uri(ftj.spec.model.source)
            if source.scheme == "hf":
                assert source.revision, f"{path.name}: pin {source.raw} with @revision"


def test_single_gpu_example_is_lora_on_one_l4() -> None:
    spec = job("lora-single-gpu.yaml").spec
    assert spec.method.type == "lora"
    assert (spec.resources.nodes, spec.resources.gpus_per_node, spec.resources.gpu_product) == (1, 1, "NVIDIA-L4")
    assert spec.dataset.field_mapping is not None
    assert (spec.dataset.field_mapping.prompt, spec.dataset.field_mapping.completion) == ("question", "answer")


def test_qlora_example_quantizes_an_8b_model_to_nf4_on_an_h100() -> None:
    spec = job("qlora.yaml").spec
    assert spec.method.type == "qlora"
    assert spec.method.quantization is not None and spec.method.quantization.quant_type == "nf4"
    assert "8B" in spec.model.source
    assert spec.resources.gpu_product is not None and "H100" in spec.resources.gpu_product
    assert spec.credentials.hugging_face_token is not None


def test_multi_node_example_spans_two_nodes_of_eight_gpus() -> None:
    spec = job("multi-node.yaml").spec
    assert (spec.resources.nodes, spec.resources.gpus_per_node) == (2, 8)
    assert spec.resources.shared_memory is not None


def test_cpu_example_asks_for_no_gpu_and_is_steered_to_cpu_nodes() -> None:
    spec = job("cpu-tiny.yaml").spec
    assert (spec.resources.gpus_per_node, spec.resources.gpu_product) == (0, None)
    assert spec.hyperparameters.precision == "auto" and spec.hyperparameters.max_steps is not None
    assert spec.resources.node_selector == {"kubetune.io/node": "cpu"}
    assert [(t.key, t.value, t.effect) for t in spec.resources.tolerations] == [
        ("kubetune.io/node", "cpu", "NoSchedule")
    ]


def test_quickstart_is_a_short_lora_of_smollm2_from_its_gguf_on_a_cpu_node() -> None:
    (ftj,) = jobs_in(EXAMPLES / "quickstart.yaml")
    spec = ftj.spec
    assert (spec.model.source, spec.model.gguf_file) == ("pvc://models/smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
    assert (spec.method.type, spec.method.rank, spec.method.alpha) == ("lora", 16, 32)
    assert spec.dataset.train == ["pvc://datasets/quickstart.jsonl"]
    assert (spec.dataset.validation_split, spec.dataset.max_seq_length) == (0.1, 256)
    hyper = spec.hyperparameters
    assert (hyper.max_steps, hyper.per_device_batch_size, hyper.learning_rate) == (80, 8, 2e-4)
    assert spec.checkpointing.every_steps == 20
    assert spec.output.destination == "pvc://outputs/quickstart"
    assert spec.resources.gpus_per_node == 0
    cpu_tiny = job("cpu-tiny.yaml").spec.resources
    assert (spec.resources.node_selector, spec.resources.tolerations) == (cpu_tiny.node_selector, cpu_tiny.tolerations)


def test_quickstart_file_holds_only_the_finetunejob_so_kubetune_submit_takes_it() -> None:
    assert [doc["kind"] for doc in documents(EXAMPLES / "quickstart.yaml")] == [KIND]


def test_kueue_example_queues_on_the_local_queue_it_defines() -> None:
    path = EXAMPLES / "kueue.yaml"
    queues = [d["metadata"]["name"] for d in documents(path) if d["kind"] == "LocalQueue"]
    assert job("kueue.yaml").spec.run_policy.queue_name in queues
