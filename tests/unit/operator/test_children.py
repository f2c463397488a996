"""ConfigMap and Service builders: the trainer's config file and the rendezvous DNS."""

from __future__ import annotations

from collections.abc import Callable

import yaml
from kubetune_operator.builders import build_children
from kubetune_operator.builders.names import FINETUNEJOB_LABEL, child_names, name_problems
from kubetune_operator.settings import OperatorSettings

from kubetune.api.resource import FineTuneJob
from kubetune.api.trainer_config import CONFIG_FILE_NAME, TrainerConfig

MakeFtj = Callable[..., FineTuneJob]


def test_children_have_deterministic_names_derived_from_the_finetunejob(
    make_ftj: MakeFtj, settings: OperatorSettings
) -> None:
    children = build_children(ftj=make_ftj(name="llama-run"), settings=settings)
    assert [c["metadata"]["name"] for c in children.in_order()] == [
        "llama-run-config",
        "llama-run-workers",
        "llama-run-train",
    ]
    assert build_children(ftj=make_ftj(name="llama-run"), settings=settings) == children


def test_every_child_is_controlled_by_the_finetunejob_and_blocks_its_deletion(
    make_ftj: MakeFtj, settings: OperatorSettings
) -> None:
    for child in build_children(ftj=make_ftj(), settings=settings).in_order():
        (owner,) = child["metadata"]["ownerReferences"]
        assert owner == {
            "apiVersion": "kubetune.io/v1alpha1",
            "kind": "FineTuneJob",
            "name": "demo",
            "uid": "1f0c-uid",
            "controller": True,
            "blockOwnerDeletion": True,
        }
        assert child["metadata"]["labels"][FINETUNEJOB_LABEL] == "demo"
        assert child["metadata"]["namespace"] == "team-a"


def test_config_map_holds_the_trainer_config_that_the_trainer_can_load(make_ftj: MakeFtj) -> None:
    ftj = make_ftj(method={"type": "qlora", "rank": 8})
    config_map = build_children(ftj=ftj, settings=OperatorSettings()).config_map
    parsed = TrainerConfig.model_validate(yaml.safe_load(config_map["data"][CONFIG_FILE_NAME]))
    assert parsed.run.name == "demo" and parsed.run.namespace == "team-a" and parsed.run.uid == "1f0c-uid"
    assert parsed.method.type == "qlora" and parsed.method.rank == 8
    assert parsed.model == ftj.spec.model and parsed.output == ftj.spec.output


def test_service_is_headless_and_publishes_pods_before_they_are_ready(make_ftj: MakeFtj) -> None:
    service = build_children(ftj=make_ftj(), settings=OperatorSettings(master_port=23456)).service
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"] == {FINETUNEJOB_LABEL: "demo"}
    assert service["spec"]["ports"][0]["port"] == 23456


def test_longest_allowed_name_keeps_pod_hostnames_within_a_dns_label() -> None:
    names = child_names(name="a" * 50)
    assert len(f"{names.job}-127") <= 63 and len(names.service) <= 63


def test_a_name_starting_with_a_digit_is_reported_because_service_names_must_start_with_a_letter() -> None:
    assert name_problems(name="7b-run") and "metadata.name" in name_problems(name="7b-run")[0]
    assert name_problems(name="run-7b") == []


def test_a_name_with_dots_is_reported_because_service_names_hold_none() -> None:
    (problem,) = name_problems(name="llama.v2")
    assert problem.startswith("metadata.name:") and "dots" in problem
