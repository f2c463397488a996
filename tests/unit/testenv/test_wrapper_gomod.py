"""Wrapper go.mod generation: every staging module k8s.io/kubernetes replaces gets its published version."""

from __future__ import annotations

import pytest
from kubetune_testenv import gomod
from kubetune_testenv.versions import Versions

KUBERNETES_GOMOD = """\
module k8s.io/kubernetes

go 1.26.0

require (
\tgithub.com/spf13/cobra v1.10.0
\tk8s.io/api v0.0.0
\tk8s.io/client-go v0.0.0
)

replace (
\tk8s.io/api => ./staging/src/k8s.io/api
\tk8s.io/client-go => ./staging/src/k8s.io/client-go
\tk8s.io/cri-streaming => ./staging/src/k8s.io/cri-streaming
\tgithub.com/example/fork => github.com/example/fork v1.2.3
)

replace k8s.io/kms => ./staging/src/k8s.io/kms
"""


def test_staging_modules_are_read_from_the_replace_directives() -> None:
    assert gomod.staging_modules(KUBERNETES_GOMOD) == [
        "k8s.io/api",
        "k8s.io/client-go",
        "k8s.io/cri-streaming",
        "k8s.io/kms",
    ]


def test_a_gomod_without_staging_replaces_is_an_error() -> None:
    with pytest.raises(ValueError, match="staging"):
        gomod.staging_modules("module example.com/x\n\ngo 1.26\n")


def test_kube_wrapper_requires_the_release_and_pins_each_staging_module() -> None:
    versions = Versions(kubernetes="v1.37.2")
    text = gomod.kube_gomod(versions=versions, staging=gomod.staging_modules(KUBERNETES_GOMOD))
    assert "require k8s.io/kubernetes v1.37.2" in text
    for module in ("k8s.io/api", "k8s.io/client-go", "k8s.io/cri-streaming", "k8s.io/kms"):
        assert f"\t{module} => {module} v0.37.2\n" in text
    assert "github.com/example/fork" not in text


def test_version_stamp_covers_component_base_and_client_go() -> None:
    flags = gomod.kube_ldflags(Versions(kubernetes="v1.36.3"))
    for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        assert f"-X {package}.gitVersion=v1.36.3" in flags
        assert f"-X {package}.gitMajor=1" in flags
        assert f"-X {package}.gitMinor=36" in flags


def test_multicall_main_dispatches_to_every_program() -> None:
    for program in ("apiserver", "controller-manager", "scheduler", "kubectl", "kubelet", "proxy"):
        assert f'"{program}":' in gomod.KUBE_MAIN


def test_etcd_and_kwok_wrappers_require_the_pinned_versions() -> None:
    versions = Versions(etcd="v3.6.16", kwok="v0.8.0")
    assert "require go.etcd.io/etcd/server/v3 v3.6.16" in gomod.etcd_gomod(versions)
    assert "require sigs.k8s.io/kwok v0.8.0" in gomod.kwok_gomod(versions)


def test_every_linked_program_name_dispatches_to_a_program() -> None:
    from kubetune_testenv.build import PROGRAMS

    for name in PROGRAMS:
        program = name.removeprefix("kube-")
        assert f'"{program}":' in gomod.KUBE_MAIN, name


def test_coredns_wrapper_pins_coredns_and_the_control_planes_client_go() -> None:
    text = gomod.coredns_gomod(Versions(kubernetes="v1.36.3", coredns="v1.14.7"))
    assert "\tgithub.com/coredns/coredns v1.14.7\n" in text
    assert "\tk8s.io/client-go v0.36.3\n" in text
    assert '_ "github.com/coredns/coredns/plugin/kubernetes"' in gomod.COREDNS_MAIN
