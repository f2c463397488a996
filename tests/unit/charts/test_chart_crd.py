"""The chart ships the FineTuneJob CRD the API models generate, byte for byte."""

from __future__ import annotations

from helm_render import CHART, REPO, Manifest, Render

from kubetune.api.crd import build_crd

CHART_CRD = CHART / "crds" / "finetunejobs.yaml"
REPO_CRD = REPO / "crds" / "finetunejobs.yaml"


def test_chart_crd_is_an_exact_copy_of_the_repository_crd() -> None:
    assert CHART_CRD.read_text(encoding="utf-8") == REPO_CRD.read_text(encoding="utf-8"), (
        "charts/kubetune/crds/finetunejobs.yaml differs from crds/finetunejobs.yaml: "
        "cp crds/finetunejobs.yaml charts/kubetune/crds/"
    )


def test_chart_crd_is_the_only_file_in_the_crds_folder() -> None:
    # Helm installs every file under crds/; a stray one would be installed into every cluster.
    assert sorted(p.name for p in (CHART / "crds").iterdir()) == ["finetunejobs.yaml"]


def test_rendering_with_crds_emits_the_generated_crd_once(render: Render) -> None:
    crds = [m for m in render(include_crds=True) if m["kind"] == "CustomResourceDefinition"]
    assert [c["metadata"]["name"] for c in crds] == ["finetunejobs.kubetune.io"]
    assert crds[0] == build_crd()


def test_templates_do_not_render_the_crd(default_manifests: list[Manifest]) -> None:
    # crds/ is installed before the templates on first install and never templated or deleted by Helm.
    assert not [m for m in default_manifests if m["kind"] == "CustomResourceDefinition"]
