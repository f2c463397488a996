"""The chart ships the CRDs (FineTuneJob, FineTuneProfile) the API models generate, byte for byte."""

from __future__ import annotations

import pytest
from helm_render import CHART, REPO, Manifest, Render

from kubetune.api.crd import KINDS, CrdKind, build_crd


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_chart_crd_is_an_exact_copy_of_the_repository_crd(kind: CrdKind) -> None:
    chart_crd, repo_crd = CHART / "crds" / kind.file_name, REPO / "crds" / kind.file_name
    assert chart_crd.read_text(encoding="utf-8") == repo_crd.read_text(encoding="utf-8"), (
        f"charts/kubetune/crds/{kind.file_name} differs from crds/{kind.file_name}: "
        "run `kubetune crd -o crds/` and `kubetune crd -o charts/kubetune/crds/`"
    )


def test_the_crds_folder_holds_exactly_the_generated_crds() -> None:
    # Helm installs every file under crds/; a stray one would be installed into every cluster.
    assert sorted(p.name for p in (CHART / "crds").iterdir()) == sorted(kind.file_name for kind in KINDS)


def test_rendering_with_crds_emits_each_generated_crd_once(render: Render) -> None:
    crds = [m for m in render(include_crds=True) if m["kind"] == "CustomResourceDefinition"]
    assert sorted(c["metadata"]["name"] for c in crds) == ["finetunejobs.kubetune.io", "finetuneprofiles.kubetune.io"]
    by_name = {c["metadata"]["name"]: c for c in crds}
    for kind in KINDS:
        assert by_name[f"{kind.plural}.kubetune.io"] == build_crd(kind)


def test_templates_do_not_render_the_crd(default_manifests: list[Manifest]) -> None:
    # crds/ is installed before the templates on first install and never templated or deleted by Helm.
    assert not [m for m in default_manifests if m["kind"] == "CustomResourceDefinition"]
