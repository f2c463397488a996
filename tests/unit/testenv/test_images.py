"""Image build inputs, cache keys and commands: pure parts of kubetune_testenv.images, no buildah needed."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
import yaml
from kubetune_operator.settings import OperatorSettings
from kubetune_testenv import images

REPO = Path(__file__).resolve().parents[3]


def make_context(root: Path) -> Path:
    (root / "src" / "pkg" / "__pycache__").mkdir(parents=True)
    (root / "src" / "pkg" / "mod.py").write_text("x = 1\n")
    (root / "src" / "pkg" / "__pycache__" / "mod.cpython-311.pyc").write_bytes(b"\0compiled")
    (root / "src" / "kubetune.egg-info").mkdir()
    (root / "src" / "kubetune.egg-info" / "PKG-INFO").write_text("Name: kubetune\n")
    (root / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    (root / "unrelated.txt").write_text("not copied\n")
    dockerfile = root / "Dockerfile"
    dockerfile.write_text(
        "ARG BASE_IMAGE=python:3.11-slim\n"
        "FROM ${BASE_IMAGE} AS build\n"
        "# COPY commented/ out/\n"
        "COPY pyproject.toml \\\n"
        "     ./\n"
        "COPY --chown=1000:1000 src/ src/\n"
        "FROM ${BASE_IMAGE}\n"
        "COPY --from=build /opt/venv /opt/venv\n"
    )
    return dockerfile


def key(root: Path, dockerfile: Path, *, args: dict[str, str] | None = None, base: str = "sha256:aa") -> str:
    return images.dockerfile_key(root=root, dockerfile=dockerfile, build_args=args or {}, base_digest=base)


def test_copied_sources_are_read_from_copy_instructions_without_other_stages() -> None:
    text = 'FROM x\nCOPY a b ./\nADD --chmod=644 c.tar /\nCOPY --from=build /opt /opt\nRUN echo "it\'s" && cp d e\n'
    assert images.copied_sources(text) == ["a", "b", "c.tar"]


def test_both_dockerfiles_copy_only_paths_that_exist() -> None:
    for dockerfile in (REPO / "Dockerfile", REPO / "trainer_image" / "Dockerfile"):
        sources = images.copied_sources(dockerfile.read_text())
        assert "pyproject.toml" in sources
        assert images.context_files(root=REPO, sources=sources)


def test_key_changes_when_a_copied_file_changes(tmp_path: Path) -> None:
    dockerfile = make_context(tmp_path)
    before = key(tmp_path, dockerfile)
    (tmp_path / "src" / "pkg" / "mod.py").write_text("x = 2\n")
    assert key(tmp_path, dockerfile) != before


def test_key_changes_when_a_file_is_added_or_renamed(tmp_path: Path) -> None:
    dockerfile = make_context(tmp_path)
    before = key(tmp_path, dockerfile)
    (tmp_path / "src" / "pkg" / "mod.py").rename(tmp_path / "src" / "pkg" / "other.py")
    renamed = key(tmp_path, dockerfile)
    (tmp_path / "src" / "pkg" / "new.py").write_text("")
    assert len({before, renamed, key(tmp_path, dockerfile)}) == 3


def test_key_ignores_bytecode_egg_info_and_files_the_dockerfile_does_not_copy(tmp_path: Path) -> None:
    dockerfile = make_context(tmp_path)
    before = key(tmp_path, dockerfile)
    (tmp_path / "src" / "pkg" / "__pycache__" / "mod.cpython-311.pyc").write_bytes(b"\0recompiled")
    (tmp_path / "src" / "pkg" / "stray.pyc").write_bytes(b"\0")
    (tmp_path / "src" / "kubetune.egg-info" / "PKG-INFO").write_text("Name: changed\n")
    (tmp_path / "unrelated.txt").write_text("changed\n")
    assert key(tmp_path, dockerfile) == before


def test_key_changes_with_the_dockerfile_the_base_and_the_build_args(tmp_path: Path) -> None:
    dockerfile = make_context(tmp_path)
    before = key(tmp_path, dockerfile)
    assert key(tmp_path, dockerfile, base="sha256:bb") != before
    assert key(tmp_path, dockerfile, args={"TORCH": "pypi"}) != before
    (tmp_path / ".dockerignore").write_text(".git\n")
    with_ignore = key(tmp_path, dockerfile)
    assert with_ignore != before
    dockerfile.write_text(dockerfile.read_text() + "USER 1000\n")
    assert key(tmp_path, dockerfile) != with_ignore


def test_a_copied_path_missing_from_the_context_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM x\nCOPY missing/ /m/\n")
    with pytest.raises(images.ImagesError, match="missing"):
        key(tmp_path, tmp_path / "Dockerfile")


def test_archive_name_is_the_image_and_sixteen_hex_digits_of_its_key(tmp_path: Path) -> None:
    path = images.archive_path(directory=tmp_path, name="trainer", key="0123456789abcdef" + "f" * 48)
    assert path == tmp_path / "trainer-0123456789abcdef.oci.tar"


def test_pause_and_base_keys_are_stable_and_distinct() -> None:
    assert images.pause_key() == images.pause_key()
    assert images.base_key() == images.base_key()
    assert images.pause_key() != images.base_key()


def test_image_names_are_what_the_operator_and_the_chart_ask_containerd_for() -> None:
    values = yaml.safe_load((REPO / "charts" / "kubetune" / "values.yaml").read_text())
    chart = yaml.safe_load((REPO / "charts" / "kubetune" / "Chart.yaml").read_text())
    assert chart["appVersion"] == images.VERSION
    # containerd's CRI resolves a short name as docker.io/<name>: the archives must carry that name.
    operator = f"docker.io/{values['image']['repository']}:{chart['appVersion']}"
    trainer = f"docker.io/{values['trainer']['image']['repository']}:{chart['appVersion']}"
    assert (operator, trainer) == (images.OPERATOR_IMAGE, images.TRAINER_IMAGE)
    assert f"docker.io/{OperatorSettings().trainer_image}" == trainer


def test_bud_command_builds_on_the_local_base_with_host_network_and_the_hosts_ca_bundle() -> None:
    command = images.bud_command(
        context=Path("/repo"),
        dockerfile=Path("/repo/trainer_image/Dockerfile"),
        reference=images.TRAINER_IMAGE,
        build_args={"BASE_IMAGE": images.BASE_IMAGE, "TORCH": "pypi"},
        ca_bundle=Path("/host/ca.crt"),
    )
    assert command[:2] == ["buildah", "bud"]
    assert "--pull=never" in command
    assert "--force-rm" in command
    assert "--network=host" in command
    assert "--no-cache" not in command
    assert f"--build-arg=BASE_IMAGE={images.BASE_IMAGE}" in command
    assert "--build-arg=TORCH=pypi" in command
    assert "--volume=/host/ca.crt:/etc/ssl/certs/ca-certificates.crt:ro" in command
    assert command[-3:] == ["--file=/repo/trainer_image/Dockerfile", f"--tag={images.TRAINER_IMAGE}", "/repo"]


def test_a_forced_build_skips_the_layer_cache() -> None:
    command = images.bud_command(
        context=Path("/r"),
        dockerfile=Path("/r/Dockerfile"),
        reference="x",
        build_args={},
        ca_bundle=None,
        no_cache=True,
    )
    assert "--no-cache" in command
    assert not any(word.startswith("--volume") for word in command)


def test_push_names_the_image_inside_the_archive_with_zstd_layers() -> None:
    archive = Path("/cache/images/operator-0123456789abcdef.oci.tar.partial")
    assert images.push_command(reference=images.OPERATOR_IMAGE, archive=archive) == [
        "buildah",
        "push",
        "--quiet",
        "--compression-format=zstd",
        images.OPERATOR_IMAGE,
        f"oci-archive:{archive}:{images.OPERATOR_IMAGE}",
    ]


def test_import_goes_to_the_namespace_the_kubelet_reads() -> None:
    command = images.import_command(archive=Path("/a.oci.tar"), containerd_address=Path("/run/c.sock"))
    assert command == ["ctr", "--address", "/run/c.sock", "--namespace", "k8s.io", "images", "import", "/a.oci.tar"]


def test_mmdebstrap_makes_a_minbase_tar_with_python_and_the_given_mirrors(tmp_path: Path) -> None:
    command = images.mmdebstrap_command(output=tmp_path / "rootfs.tar", mirrors=["deb http://m/debian bookworm main"])
    assert command[0] == "mmdebstrap"
    assert "--variant=minbase" in command
    assert "--include=python3,python3-venv,ca-certificates" in command
    assert command[-3:] == ["bookworm", str(tmp_path / "rootfs.tar"), "deb http://m/debian bookworm main"]


def test_debian_mirrors_come_from_deb822_and_one_line_sources_without_third_party_ones() -> None:
    deb822 = (
        "Types: deb\n"
        "# a comment\n"
        "URIs: http://mirror.example/debian\n"
        "Suites: bookworm bookworm-updates\n"
        "Components: main\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
        "\n"
        "Types: deb\n"
        "URIs: http://mirror.example/debian-security\n"
        "Suites: bookworm-security\n"
        "Components: main contrib\n"
        "\n"
        "Types: deb\n"
        "URIs: https://vendor.example/node\n"
        "Suites: nodistro\n"
        "Components: main\n"
    )
    one_line = (
        "deb https://vendor.example/apt cloud-sdk-bookworm main\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://other.example/debian bookworm main non-free\n"
        "# deb http://commented.example/debian bookworm main\n"
        "deb-src http://mirror.example/debian bookworm main\n"
    )
    assert images.debian_mirrors([deb822, one_line]) == [
        "deb http://mirror.example/debian bookworm main",
        "deb http://mirror.example/debian bookworm-updates main",
        "deb http://mirror.example/debian-security bookworm-security main contrib",
        "deb http://other.example/debian bookworm main non-free",
    ]


def test_archive_manifests_reads_names_and_digests_from_the_index(tmp_path: Path) -> None:
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": "sha256:abc",
                "size": 1,
                "annotations": {"org.opencontainers.image.ref.name": images.TRAINER_IMAGE},
            }
        ],
    }
    archive = tmp_path / "trainer.oci.tar"
    data = json.dumps(index).encode()
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo("index.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    assert images.archive_manifests(archive) == {images.TRAINER_IMAGE: "sha256:abc"}


def test_the_pause_source_ships_as_package_data() -> None:
    pyproject = (REPO / "pyproject.toml").read_text()
    assert '"*.c"' in pyproject
    assert images.PAUSE_SOURCE.is_file()
