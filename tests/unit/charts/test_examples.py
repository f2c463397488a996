"""Every manifest under examples/ is a valid FineTuneJob (or a supporting object it references), and the
platform example (examples/platform/: profiles, team namespaces, quotas, queues) fits together with the
tenant's minimal job.

Parsed through the same models the operator uses, so an API change that breaks an example fails here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from helm_render import REPO

from kubetune.api.profile import (
    PROFILE_KIND,
    PROFILE_LABEL,
    FineTuneProfileSpec,
    ProfileRef,
    choose_profile,
    effective_spec,
    limit_violations,
)
from kubetune.api.resource import API_VERSION, KIND, FineTuneJob
from kubetune.api.spec import FineTuneJobSpec
from kubetune.api.uris import parse_uri
from kubetune.api.validation import validate_manifest_file

EXAMPLES = REPO / "examples"
EXAMPLE_FILES = sorted(EXAMPLES.glob("*.yaml"))
PLATFORM = EXAMPLES / "platform"
PLATFORM_FILES = sorted(PLATFORM.glob("*.yaml"))
# Kinds an example may hold beside FineTuneJobs, for the objects a FineTuneJob needs.
SUPPORTING_KINDS = {"Secret", "PersistentVolumeClaim", "LocalQueue"}
# What a platform team sets up; the cluster-scoped ones have no namespace.
PLATFORM_KINDS = {"FineTuneProfile", "Namespace", "ResourceQuota", "RoleBinding", "PersistentVolumeClaim"}
PLATFORM_KINDS |= {"ClusterRoleBinding", "ResourceFlavor", "ClusterQueue", "LocalQueue"}
CLUSTER_SCOPED = {"FineTuneProfile", "Namespace", "ClusterRoleBinding", "ResourceFlavor", "ClusterQueue"}


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def all_documents() -> list[dict[str, Any]]:
    return [doc for path in EXAMPLE_FILES + PLATFORM_FILES for doc in documents(path)]


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
        "tenant-minimal.yaml",
        "dpo-lora.yaml",
    }
    assert {p.name for p in PLATFORM_FILES} == {"profiles.yaml", "namespaces.yaml", "profile-access.yaml", "kueue.yaml"}


@pytest.mark.parametrize("path", EXAMPLE_FILES + PLATFORM_FILES, ids=lambda p: p.relative_to(EXAMPLES).as_posix())
def test_every_example_passes_kubetune_validate(path: Path) -> None:
    assert validate_manifest_file(path) == []


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
            uris = [spec.model.source, *spec.dataset.train]
            uris += [u for u in (spec.dataset.validation, spec.output.destination) if u is not None]
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


# The platform example: examples/platform/ and the tenant's job in examples/tenant-minimal.yaml.


def platform_documents(kind: str) -> list[dict[str, Any]]:
    return [doc for path in PLATFORM_FILES for doc in documents(path) if doc["kind"] == kind]


def profiles() -> dict[str, ProfileRef]:
    return {
        doc["metadata"]["name"]: ProfileRef(
            name=doc["metadata"]["name"], spec=FineTuneProfileSpec.model_validate(doc["spec"])
        )
        for doc in platform_documents(PROFILE_KIND)
    }


def namespace_profiles() -> dict[str, str | None]:
    return {
        doc["metadata"]["name"]: doc["metadata"].get("labels", {}).get(PROFILE_LABEL)
        for doc in platform_documents("Namespace")
    }


def under_namespace_profile(spec: FineTuneJobSpec, *, namespace: str, name: str) -> tuple[FineTuneJobSpec, list[str]]:
    """The spec the operator builds from and the limit problems, with the profile the namespace binds."""
    refs = profiles()
    choice = choose_profile(
        spec_profile=spec.profile, namespace_profile=namespace_profiles()[namespace], profiles=list(refs.values())
    )
    assert choice.name is not None and choice.problem is None
    ref = refs[choice.name]
    effective, _ = effective_spec(spec, ref.spec.defaults, ref.spec.limits, namespace=namespace, name=name)
    return effective, limit_violations(spec, effective, profile=ref.name, limits=ref.spec.limits)


@pytest.mark.parametrize("path", PLATFORM_FILES, ids=lambda p: p.name)
def test_platform_files_hold_only_what_a_platform_team_sets_up(path: Path) -> None:
    for doc in documents(path):
        assert doc["kind"] in PLATFORM_KINDS, f"{path.name}: unexpected kind {doc['kind']}"
        namespaced = doc["kind"] not in CLUSTER_SCOPED
        assert bool(doc["metadata"].get("namespace")) == namespaced, f"{path.name}: {doc['metadata']['name']}"


def test_kueue_objects_are_in_their_own_file_so_the_rest_applies_without_kueue() -> None:
    for path in PLATFORM_FILES:
        kueue = {doc["apiVersion"].startswith("kueue.x-k8s.io/") for doc in documents(path)}
        assert kueue == {path.name == "kueue.yaml"}, path.name


def test_small_is_the_one_default_profile_and_each_team_namespace_is_bound_to_an_existing_profile() -> None:
    refs = profiles()
    assert set(refs) == {"small", "large"}
    assert [name for name, ref in refs.items() if ref.spec.default] == ["small"]
    assert namespace_profiles() == {"team-a": "small", "team-b": "large"}


def test_the_profiles_are_the_documented_small_and_large() -> None:
    small, large = profiles()["small"].spec, profiles()["large"].spec
    assert (small.limits.max_nodes, small.limits.max_gpus_per_node) == (1, 2)
    assert small.limits.allowed_gpu_products == ["NVIDIA-L4", "NVIDIA-A10G"]
    assert small.limits.allowed_model_sources == ["hf://HuggingFaceTB/", "pvc://models/"]
    assert small.limits.allowed_methods == ["lora", "qlora"]
    assert small.limits.max_active_deadline_seconds == 24 * 3600
    assert small.limits.allow_image_override is False and small.defaults.trainer_image is None
    assert (large.limits.max_nodes, large.limits.max_gpus_per_node) == (4, 8)
    assert large.limits.allowed_gpu_products == ["NVIDIA-H100-80GB-HBM3"]
    assert large.limits.allowed_methods == [] and large.limits.allowed_model_sources == []
    assert small.defaults.output_base is not None and large.defaults.output_base is not None


def test_each_team_quota_holds_one_job_at_its_profile_limits() -> None:
    quotas = {doc["metadata"]["namespace"]: doc["spec"]["hard"] for doc in platform_documents("ResourceQuota")}
    for namespace, profile in namespace_profiles().items():
        assert profile is not None
        limits = profiles()[profile].spec.limits
        assert limits.max_nodes is not None and limits.max_gpus_per_node is not None
        assert int(quotas[namespace]["requests.nvidia.com/gpu"]) >= limits.max_nodes * limits.max_gpus_per_node


def test_each_team_group_may_run_finetunejobs_in_its_namespace_only() -> None:
    bindings = {
        (doc["metadata"]["namespace"], doc["roleRef"]["name"]): [s["name"] for s in doc["subjects"]]
        for doc in platform_documents("RoleBinding")
    }
    for namespace in namespace_profiles():
        assert bindings[(namespace, "kubetune-edit")] == [namespace]


def test_profiles_are_written_by_the_platform_team_and_read_by_every_team() -> None:
    bindings = {
        doc["roleRef"]["name"]: {s["name"] for s in doc["subjects"]} for doc in platform_documents("ClusterRoleBinding")
    }
    assert bindings == {
        "kubetune-platform-admin": {"ml-platform"},
        "kubetune-profile-reader": set(namespace_profiles()),
    }


def test_every_kueue_queue_and_flavor_is_defined_and_flavors_are_gpus_the_profile_allows() -> None:
    flavors = {
        doc["metadata"]["name"]: doc["spec"]["nodeLabels"]["nvidia.com/gpu.product"]
        for doc in platform_documents("ResourceFlavor")
    }
    cluster_queues = {doc["metadata"]["name"]: doc["spec"] for doc in platform_documents("ClusterQueue")}
    local = {doc["metadata"]["namespace"]: doc["spec"]["clusterQueue"] for doc in platform_documents("LocalQueue")}
    assert {doc["metadata"]["name"] for doc in platform_documents("LocalQueue")} == {"gpu"}
    for namespace, profile in namespace_profiles().items():
        queue = cluster_queues[local[namespace]]
        assert queue["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": namespace}
        assert profile is not None
        allowed = profiles()[profile].spec.limits.allowed_gpu_products
        for group in queue["resourceGroups"]:
            assert "nvidia.com/gpu" in group["coveredResources"]
            assert {flavors[f["name"]] for f in group["flavors"]} <= set(allowed)


def test_the_tenant_job_names_a_model_and_data_only() -> None:
    (doc,) = documents(EXAMPLES / "tenant-minimal.yaml")
    assert set(doc["spec"]) == {"model", "dataset"}
    assert doc["metadata"]["namespace"] in namespace_profiles()


@pytest.mark.parametrize("namespace", ["team-a", "team-b"])
def test_the_tenant_job_is_within_each_profile_and_writes_under_its_output_base(namespace: str) -> None:
    ftj = job("tenant-minimal.yaml")
    effective, problems = under_namespace_profile(ftj.spec, namespace=namespace, name=ftj.metadata.name)
    assert problems == []
    profile = namespace_profiles()[namespace]
    assert profile is not None
    base = profiles()[profile].spec.defaults.output_base
    assert base is not None
    expected = f"{base.replace('{namespace}', namespace)}/{ftj.metadata.name}"
    assert ftj.spec.output.destination is None and effective.output.destination == expected
    assert effective.resources.gpu_product is not None


def test_the_tenant_jobs_claims_exist_in_its_namespace_with_the_profile_defaults() -> None:
    ftj = job("tenant-minimal.yaml")
    namespace = ftj.metadata.namespace
    effective, _ = under_namespace_profile(ftj.spec, namespace=namespace, name=ftj.metadata.name)
    claims = {
        doc["metadata"]["name"]
        for doc in all_documents()
        if doc["kind"] == "PersistentVolumeClaim" and doc["metadata"]["namespace"] == namespace
    }
    uris = [effective.model.source, *effective.dataset.train, effective.output.destination]
    assert {parse_uri(u).pvc_claim for u in uris if u is not None} - {None} <= claims


def test_eight_gpus_in_the_small_namespace_are_refused_naming_field_and_limit() -> None:
    ftj = job("tenant-minimal.yaml")
    assert namespace_profiles()[ftj.metadata.namespace] == "small"
    spec = ftj.spec.model_copy(update={"resources": ftj.spec.resources.model_copy(update={"gpus_per_node": 8})})
    _, problems = under_namespace_profile(spec, namespace=ftj.metadata.namespace, name=ftj.metadata.name)
    assert problems == ["spec.resources.gpusPerNode: 8 is over the limit of profile small (maxGpusPerNode 2)"]
