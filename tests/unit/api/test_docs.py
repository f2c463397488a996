"""docs/api.md is rendered from the CRD; these tests pin what the reference must say and that it is fresh."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest

from kubetune.api.crd import FINETUNEPROFILE, build_crd
from kubetune.api.docs import render_api_markdown, render_crd_markdown

REPO = Path(__file__).resolve().parents[3]
COMMITTED = REPO / "docs" / "api.md"


@pytest.fixture(scope="module")
def markdown() -> str:
    return render_api_markdown()


def _section(markdown: str, path: str) -> str:
    match = re.search(rf"^## `{re.escape(path)}`\n(.*?)(?=^## |\Z)", markdown, flags=re.M | re.S)
    assert match, f"no section for {path}"
    return match.group(1)


def _row(section: str, field: str) -> list[str]:
    for line in section.splitlines():
        if line.startswith(f"| `{field}` |"):
            # Split on unescaped pipes only: patterns contain "\|".
            return [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
    raise AssertionError(f"no row for {field}")


def test_committed_api_reference_is_up_to_date(markdown: str) -> None:
    assert COMMITTED.exists(), "docs/api.md is missing: run `kubetune docs -o docs/api.md`"
    assert COMMITTED.read_text(encoding="utf-8") == markdown, (
        "docs/api.md is stale: regenerate it with `kubetune docs -o docs/api.md` and commit it"
    )


def _object_paths(node: dict[str, Any], path: str) -> list[str]:
    """Every object path with properties, computed independently of the renderer."""
    if node.get("type") == "array":
        return _object_paths(node.get("items", {}), f"{path}[]")
    if "properties" not in node:
        return []
    found = [path]
    for name, prop in node["properties"].items():
        found += _object_paths(prop, f"{path}.{name}")
    return found


@pytest.mark.parametrize(
    ("crd", "prefix", "tops"),
    [
        pytest.param(build_crd(), "", ("spec", "status"), id="FineTuneJob"),
        pytest.param(build_crd(FINETUNEPROFILE), "FineTuneProfile.", ("spec",), id="FineTuneProfile"),
    ],
)
def test_every_object_in_the_crd_has_a_section_and_every_field_a_row(
    markdown: str, crd: dict[str, Any], prefix: str, tops: tuple[str, ...]
) -> None:
    root = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for top in tops:
        for path in _object_paths(root["properties"][top], top):
            section = _section(markdown, prefix + path)
            node = root
            for part in path.split("."):
                node = node["properties"][part.removesuffix("[]")]
                if part.endswith("[]"):
                    node = node["items"]
            for field in node["properties"]:
                _row(section, field)


def test_rows_show_type_default_bounds_and_enum(markdown: str) -> None:
    method = _section(markdown, "spec.method")
    _, type_, required, default, validation, description = _row(method, "rank")
    assert (type_, required, default) == ("integer", "", "`16`")
    assert validation == "≥ 1; ≤ 1024"
    assert description == "Adapter rank r (lora, qlora, dora)."
    assert "one of `lora`, `qlora`, `dora`, `full`" in _row(method, "type")[4]
    assert _row(method, "dropout")[4] == "≥ 0; < 1"
    assert _row(_section(markdown, "spec.hyperparameters"), "learningRate")[4] == "> 0; ≤ 1"


def test_required_fields_and_nested_objects_link_to_their_sections(markdown: str) -> None:
    spec = _section(markdown, "spec")
    assert _row(spec, "model")[1:3] == ["[object](#specmodel)", "yes"]
    assert _row(spec, "method")[1:4] == ["[object](#specmethod)", "", "`{}`"]
    tolerations = _row(_section(markdown, "spec.resources"), "tolerations")
    assert tolerations[1] == "\\[\\][object](#specresourcestolerations)"
    assert "- [`spec.resources.tolerations[]`](#specresourcestolerations)" in markdown


def test_cel_rules_are_listed_with_their_messages(markdown: str) -> None:
    dataset = _section(markdown, "spec.dataset")
    assert (
        "- set either dataset.validation or dataset.validationSplit, not both — "
        "`!(has(self.validation) && has(self.validationSplit))`"
    ) in dataset
    assert "- immutable once created: spec.dataset is immutable; create a new FineTuneJob" in dataset
    epochs = _row(_section(markdown, "spec.hyperparameters"), "epochs")
    assert epochs[1] == "integer or string"
    assert epochs[4].startswith("epochs must be 'auto' or an integer from 1 to 100 — `type(self) == string")


def test_pipes_in_patterns_are_escaped_so_the_table_keeps_its_columns(markdown: str) -> None:
    row = _row(_section(markdown, "spec.model"), "source")
    assert len(row) == 6
    assert "matches `^(hf\\|pvc\\|s3\\|file)://\\S+$`" in row[4]


def test_renderer_follows_the_schema_it_is_given() -> None:
    crd = copy.deepcopy(build_crd())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    spec["properties"]["checkpointing"]["properties"]["keepLast"]["maximum"] = 7
    spec["properties"]["checkpointing"]["properties"]["keepLast"]["description"] = "Changed | here."
    rendered = render_crd_markdown(crd=crd)
    row = _row(_section(rendered, "spec.checkpointing"), "keepLast")
    assert row[4] == "≥ 1; ≤ 7"
    assert row[5] == "Changed \\| here."
    assert rendered != render_api_markdown()


def test_header_names_the_resource_and_how_to_regenerate(markdown: str) -> None:
    assert markdown.startswith("<!-- Generated by `kubetune docs`")
    assert "`apiVersion: kubetune.io/v1alpha1` · `kind: FineTuneJob` · namespaced" in markdown
    assert "short name `ftj`" in markdown
    assert "| Method | `.spec.method.type` | with `-o wide` |" in markdown


def test_the_profile_reference_follows_the_job_reference(markdown: str) -> None:
    assert markdown.index("# FineTuneJob API reference") < markdown.index("# FineTuneProfile API reference")
    assert "`apiVersion: kubetune.io/v1alpha1` · `kind: FineTuneProfile` · cluster-scoped" in markdown
    assert "short name `ftprofile`" in markdown
    assert "| Max GPUs/node | `.spec.limits.maxGpusPerNode` | always |" in markdown
    root = _section(markdown, "FineTuneProfile")
    assert _row(root, "spec")[1:3] == ["[object](#finetuneprofilespec)", "yes"]
    assert "no namespace" in _row(root, "metadata")[5]
    limits = _section(markdown, "FineTuneProfile.spec.limits")
    assert _row(limits, "maxGpusPerNode")[4] == "≥ 0; ≤ 16"
    assert "one of `lora`, `qlora`, `dora`, `full`" in _row(limits, "allowedMethods")[4]
    assert _row(limits, "allowImageOverride")[3] == "`true`"


def test_no_two_headings_share_an_anchor(markdown: str) -> None:
    anchors = [
        re.sub(r"[^a-z0-9 _-]", "", h.lower()).strip().replace(" ", "-")
        for h in re.findall(r"^#+ (.*)$", markdown, flags=re.M)
    ]
    assert len(anchors) == len(set(anchors)), sorted(a for a in anchors if anchors.count(a) > 1)
    for link in set(re.findall(r"\]\(#([^)]*)\)", markdown)):
        assert link in anchors, link
