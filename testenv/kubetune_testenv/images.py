"""Build kubetune's container images without a registry: buildah, cached OCI archives, containerd import.

Four images, each pushed to ``<cache>/images/<name>-<key16>.oci.tar``, where the key is a hash of every
input of that image, so an unchanged image is never rebuilt and a changed input always is:

- ``pause``: the kubelet's pod sandbox, a static C program of our own (``pause.c``) in an empty image.
- ``python``: the local base, Debian bookworm (minbase) with python3 3.11, python3-venv and
  ca-certificates, made by mmdebstrap from the host's Debian mirror. No registry has to be reachable.
- ``operator`` and ``trainer``: the repository's Dockerfiles, built by ``buildah bud`` on that base; the
  trainer gets torch and its CUDA library wheels from PyPI (``TORCH=pypi``).

An archive is written under a ``.partial`` name and renamed when complete. ``import_image`` loads an
archive into a containerd; its names are the ones a kubelet resolves (``kubetune/trainer:0.1.0`` is
``docker.io/kubetune/trainer:0.1.0`` to containerd's CRI), so pods find them with ``imagePullPolicy``
``Never`` or ``IfNotPresent``. Needs root and Debian's buildah, mmdebstrap and gcc (static libc).
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from .build import _locked
from .versions import cache_root

REPO = Path(__file__).resolve().parents[2]
PAUSE_SOURCE = Path(__file__).with_name("pause.c")

VERSION = "0.1.0"  # pyproject.toml's version and the chart's appVersion, which tag the images
PAUSE_IMAGE = "localhost/kubetune/pause:3.10"
BASE_IMAGE = "localhost/kubetune/python:3.11-bookworm"
# Fully qualified as containerd stores them: the operator's default trainer image and the chart's
# repositories are the short names kubetune/operator and kubetune/trainer, which mean docker.io/...
OPERATOR_IMAGE = f"docker.io/kubetune/operator:{VERSION}"
TRAINER_IMAGE = f"docker.io/kubetune/trainer:{VERSION}"

DEBIAN_SUITE = "bookworm"  # its python3 is 3.11, the version the Dockerfiles' registry bases have
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
# Documentation and translations are dropped; the packages' copyright files stay.
BASE_DPKG_OPTIONS = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/locale/*",
)
# Where Debian (the host and the local base) keeps the CA certificates that OpenSSL and Debian's pip trust.
DEBIAN_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# How ``push_command`` writes archives; part of every cache key.
ARCHIVE_FORMAT = "oci-archive, zstd layers"
PAUSE_CFLAGS = ("-static", "-O2", "-s", "-Wall", "-Wextra", "-Werror")
PAUSE_UID = 65535  # the nobody-like user the upstream pause image runs as
# torch 2.15.0 from PyPI with its CUDA library wheels: it loads them at import even without a GPU.
TRAINER_TORCH = "pypi"
# Names and files the Dockerfiles' builds never read (.dockerignore says the same to docker and buildah).
IGNORED_NAMES = frozenset({"__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache"})
IGNORED_SUFFIXES = (".pyc", ".egg-info")


class ImagesError(RuntimeError):
    """An image build or import failed; the message says which command and why."""


@dataclass(frozen=True, kw_only=True)
class Image:
    """One built image: its name as containerd lists it, its archive and manifest digest."""

    name: str
    reference: str
    archive: Path
    digest: str
    rebuilt: bool  # False when the cached archive was reused
    seconds: float

    @property
    def archive_bytes(self) -> int:
        return self.archive.stat().st_size


def _log(message: str) -> None:
    print(f"[kubetune-testenv images] {message}", file=sys.stderr, flush=True)


# -- inputs and cache keys (pure) ---------------------------------------------------------------------


def content_key(*, files: Iterable[tuple[str, Path]], params: Mapping[str, str]) -> str:
    """SHA-256 over ``params`` and each file's name and bytes (the order of ``files`` does not matter), and
    over ``ARCHIVE_FORMAT``: an archive written another way is another file."""
    digest = hashlib.sha256()
    digest.update(json.dumps({**params, "<archive>": ARCHIVE_FORMAT}, sort_keys=True).encode())
    for name, path in sorted(files):
        digest.update(f"\0{name}\0{path.stat().st_size}\0".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _ignored(name: str) -> bool:
    return name in IGNORED_NAMES or name.endswith(IGNORED_SUFFIXES)


def context_files(*, root: Path, sources: Iterable[str]) -> list[tuple[str, Path]]:
    """The files under ``sources`` (paths relative to the build context ``root``) that a build copies,
    as (relative name, path), without caches and build leftovers (``IGNORED_NAMES``/``IGNORED_SUFFIXES``)."""
    found: dict[str, Path] = {}
    for source in sources:
        top = root / source
        if top.is_file():
            found[top.relative_to(root).as_posix()] = top
            continue
        if not top.is_dir():
            raise ImagesError(f"the Dockerfile copies {source}, which is not in {root}")
        for directory, subdirs, names in os.walk(top):
            subdirs[:] = sorted(d for d in subdirs if not _ignored(d))
            for name in names:
                if not _ignored(name):
                    path = Path(directory) / name
                    found[path.relative_to(root).as_posix()] = path
    return sorted(found.items())


def _logical_lines(dockerfile: str) -> Iterator[str]:
    """Instructions with their backslash continuations joined and comment lines dropped."""
    pending = ""
    for raw in dockerfile.splitlines():
        line = raw.strip()
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        if pending + line:
            yield pending + line
        pending = ""
    if pending:
        yield pending


def copied_sources(dockerfile: str) -> list[str]:
    """Build-context paths that COPY/ADD instructions read (``--from`` copies read another stage)."""
    sources: list[str] = []
    for line in _logical_lines(dockerfile):
        if line.split(None, 1)[0].upper() not in ("COPY", "ADD"):
            continue
        words = shlex.split(line)
        flags = [word for word in words[1:] if word.startswith("--")]
        if any(flag.startswith("--from=") for flag in flags):
            continue
        paths = [word for word in words[1:] if not word.startswith("--")]
        sources.extend(path.rstrip("/") or "." for path in paths[:-1])
    return sources


def dockerfile_key(*, root: Path, dockerfile: Path, build_args: Mapping[str, str], base_digest: str) -> str:
    """Key of a Dockerfile build: the Dockerfile, .dockerignore, every copied file, the base image's
    manifest digest and the build arguments."""
    sources = copied_sources(dockerfile.read_text())
    files = [*context_files(root=root, sources=sources), ("<Dockerfile>", dockerfile)]
    ignore = root / ".dockerignore"
    if ignore.is_file():
        files.append(("<.dockerignore>", ignore))
    return content_key(files=files, params={"base": base_digest, **{f"arg:{k}": v for k, v in build_args.items()}})


def archive_path(*, directory: Path, name: str, key: str) -> Path:
    """``<directory>/<name>-<first 16 hex digits of key>.oci.tar``."""
    return directory / f"{name}-{key[:16]}.oci.tar"


def debian_mirrors(sources: Iterable[str], *, suite: str = DEBIAN_SUITE) -> list[str]:
    """One-line ``deb URI SUITE COMPONENTS`` entries of ``suite`` and its -updates/-security suites, from
    apt sources in either format (``sources.list`` lines or deb822 ``.sources`` stanzas). Other
    repositories (third-party apt sources on the host) are left out."""
    entries: list[tuple[str, str, str]] = []
    for text in sources:
        for stanza in text.split("\n\n"):
            fields = _deb822_fields(stanza)
            if fields and "deb" in fields.get("types", "").split():
                for uri in fields.get("uris", "").split():
                    for each in fields.get("suites", "").split():
                        entries.append((uri, each, fields.get("components", "main")))
        for line in text.splitlines():
            words = line.split("#", 1)[0].split()
            if len(words) >= 3 and words[0] == "deb":
                words = [w for w in words if not (w.startswith("[") or w.endswith("]") or "=" in w)]
                if len(words) >= 3:
                    entries.append((words[1], words[2], " ".join(words[3:]) or "main"))
    wanted = {suite, f"{suite}-updates", f"{suite}-security", f"{suite}/updates"}
    mirrors = [f"deb {uri} {each} {components}" for uri, each, components in entries if each in wanted]
    return list(dict.fromkeys(mirrors))


def _deb822_fields(stanza: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in stanza.splitlines():
        if line.startswith("#") or not line.strip() or line[0].isspace() or ":" not in line:
            continue
        key, value = line.split(":", 1)
        fields[key.strip().lower()] = value.strip()
    return fields


def host_apt_sources(etc_apt: Path = Path("/etc/apt")) -> list[str]:
    paths = [etc_apt / "sources.list", *sorted((etc_apt / "sources.list.d").glob("*.list"))]
    paths += sorted((etc_apt / "sources.list.d").glob("*.sources"))
    return [path.read_text() for path in paths if path.is_file()]


# -- commands (pure) ----------------------------------------------------------------------------------


def mmdebstrap_command(*, output: Path, mirrors: Iterable[str]) -> list[str]:
    return [
        "mmdebstrap",
        "--variant=minbase",
        f"--include={','.join(BASE_PACKAGES)}",
        "--skip=output/dev",  # no device nodes in the tar: the container runtime provides /dev
        *(f"--dpkgopt={option}" for option in BASE_DPKG_OPTIONS),
        "--format=tar",
        DEBIAN_SUITE,
        str(output),
        *mirrors,
    ]


def bud_command(
    *,
    context: Path,
    dockerfile: Path,
    reference: str,
    build_args: Mapping[str, str],
    ca_bundle: Path | None,
    no_cache: bool = False,
) -> list[str]:
    """``buildah bud`` of one Dockerfile: the base must already be local (no registry) and RUN steps use the
    host's network (PyPI). Rebuilds reuse unchanged steps from buildah's layer cache, so a source change
    does not repeat the trainer's pip install; pip's own cache is a ``--mount=type=cache`` of the
    Dockerfiles (buildah keeps it under /var/tmp), though it caches nothing from a proxy that drops
    Cache-Control headers.

    ``ca_bundle``, the host's CA certificates, replaces the base's during RUN steps (never in the image):
    where the host reaches PyPI through a TLS-inspecting proxy it trusts, the build must trust it too.
    Debian's pip reads that file."""
    trust = [f"--volume={ca_bundle}:{DEBIAN_CA_BUNDLE}:ro"] if ca_bundle is not None else []
    return [
        "buildah",
        "bud",
        "--pull=never",
        "--layers",  # unchanged steps (the big pip install) are reused from buildah's layer cache
        "--force-rm",  # a failed step's working container is removed too
        *(["--no-cache"] if no_cache else []),
        "--network=host",
        "--format=oci",
        *trust,
        *(f"--build-arg={key}={value}" for key, value in build_args.items()),
        f"--file={dockerfile}",
        f"--tag={reference}",
        str(context),
    ]


def push_command(*, reference: str, archive: Path) -> list[str]:
    """``buildah push`` to an OCI archive whose index names the image ``reference``, layers zstd-compressed:
    for the trainer (6.4 GB unpacked) faster to write than gzip (62 s against about 90 s here) and to
    import (54 s against 64 s), and 12% smaller. containerd reads zstd layers since 1.5. (Buildah 1.28's
    ``--disable-compression`` still writes gzip layers to an oci-archive.)"""
    return [
        "buildah",
        "push",
        "--quiet",
        "--compression-format=zstd",
        reference,
        f"oci-archive:{archive}:{reference}",
    ]


def import_command(*, archive: Path, containerd_address: Path, namespace: str = "k8s.io") -> list[str]:
    return ["ctr", "--address", str(containerd_address), "--namespace", namespace, "images", "import", str(archive)]


def archive_manifests(archive: Path) -> dict[str, str]:
    """Image name -> manifest digest, as the OCI archive's index.json names them."""
    with tarfile.open(archive) as tar:
        member = tar.extractfile("index.json")
        if member is None:
            raise ImagesError(f"{archive} has no index.json: not an OCI archive")
        index = json.load(member)
    return {
        manifest["annotations"]["org.opencontainers.image.ref.name"]: manifest["digest"]
        for manifest in index.get("manifests", [])
        if "org.opencontainers.image.ref.name" in (manifest.get("annotations") or {})
    }


# -- running -------------------------------------------------------------------------------------------


def _run(argv: list[str], *, log: Path, capture: bool = False, timeout: float = 3600) -> str:
    """Run one command with its output appended to ``log`` as it comes; with ``capture``, its stdout is
    returned instead (and only stderr logged)."""
    with open(log, "ab") as sink:
        sink.write(f"\n$ {shlex.join(argv)}\n".encode())
        sink.flush()
        try:
            done = subprocess.run(
                argv, stdout=subprocess.PIPE if capture else sink, stderr=sink, timeout=timeout, check=False
            )
        except FileNotFoundError as error:
            raise ImagesError(f"{argv[0]} is not installed (see docs/testing.md, Images)") from error
        except subprocess.TimeoutExpired as error:
            raise ImagesError(f"timed out after {timeout:.0f}s: {shlex.join(argv)}\nlog: {log}") from error
    if done.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
        raise ImagesError(f"exit {done.returncode}: {shlex.join(argv)}\n{tail}\nfull log: {log}")
    return done.stdout.decode(errors="replace").strip() if capture else ""


def _commit_scratch(*, reference: str, log: Path, add: tuple[str, ...], config: list[str]) -> None:
    """``buildah from scratch`` + ``add`` (a file, or a tar that buildah unpacks) + ``config`` + ``commit``."""
    container = _run(["buildah", "from", "scratch"], log=log, capture=True)
    try:
        _run(["buildah", "add", container, *add], log=log)
        _run(["buildah", "config", *config, container], log=log)
        _run(["buildah", "commit", "--quiet", "--format=oci", container, reference], log=log)
    finally:
        _run(["buildah", "rm", container], log=log)


def _build_pause(*, work: Path, log: Path) -> None:
    binary = work / "pause"
    _run(["gcc", *PAUSE_CFLAGS, "-o", str(binary), str(PAUSE_SOURCE)], log=log)
    _commit_scratch(
        reference=PAUSE_IMAGE,
        log=log,
        add=(str(binary), "/pause"),
        config=["--entrypoint", '["/pause"]', "--user", f"{PAUSE_UID}:{PAUSE_UID}"],
    )


def _build_base(*, work: Path, log: Path) -> None:
    mirrors = debian_mirrors(host_apt_sources())
    if not mirrors:
        raise ImagesError(f"no Debian {DEBIAN_SUITE} source in /etc/apt/sources.list*: mmdebstrap needs a mirror")
    rootfs = work / "rootfs.tar"
    _run(mmdebstrap_command(output=rootfs, mirrors=mirrors), log=log)
    _commit_scratch(
        reference=BASE_IMAGE,
        log=log,
        add=(str(rootfs), "/"),
        config=[
            "--env",
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "--env",
            "LANG=C.UTF-8",
            "--cmd",
            '["python3"]',
        ],
    )


def _load(image: Image, *, log: Path) -> None:
    """Put an archived image into buildah's storage (a later build's base); cheap when its layers are there."""
    _run(["buildah", "pull", "--quiet", f"oci-archive:{image.archive}"], log=log)


def _push(*, name: str, reference: str, archive: Path, log: Path) -> None:
    """Push ``reference`` to ``archive`` atomically, then drop this image's older archives but the newest
    one (a test session that built it a moment ago may be about to import it)."""
    partial = archive.with_name(archive.name + ".partial")
    partial.unlink(missing_ok=True)
    _run(push_command(reference=reference, archive=partial), log=log)
    os.replace(partial, archive)
    older = sorted(
        (path for path in archive.parent.glob(f"{name}-*.oci.tar") if path != archive),
        key=lambda path: path.stat().st_mtime,
    )
    for stale in older[:-1]:
        stale.unlink(missing_ok=True)


def _cached_or_built(*, name: str, reference: str, key: str, force: bool, build: Callable[[Path, Path], None]) -> Image:
    """The archive of ``key`` if it exists (and not ``force``), else ``build(work_dir, log)`` and push."""
    directory = cache_root() / "images"
    directory.mkdir(parents=True, exist_ok=True)
    archive = archive_path(directory=directory, name=name, key=key)
    with _locked(directory / f"{name}.lock"):
        started = time.monotonic()
        rebuilt = force or not archive.is_file()
        if rebuilt:
            log = directory / f"{name}.log"
            log.write_text("")
            _log(f"{name}: building {reference} (log: {log})")
            with tempfile.TemporaryDirectory(dir=directory, prefix=f".{name}-work-") as work:
                build(Path(work), log)
            _push(name=name, reference=reference, archive=archive, log=log)
        digest = archive_manifests(archive).get(reference)
        if digest is None:
            raise ImagesError(f"{archive} does not name {reference}; delete it and build again")
    image = Image(
        name=name,
        reference=reference,
        archive=archive,
        digest=digest,
        rebuilt=rebuilt,
        seconds=round(time.monotonic() - started, 1),
    )
    what = f"built in {image.seconds:.0f}s" if rebuilt else "cached"
    _log(f"{name}: {archive.name} {what}, {image.archive_bytes / 2**20:.0f} MiB")
    return image


# -- the four images ----------------------------------------------------------------------------------


def pause_key() -> str:
    return content_key(
        files=[("pause.c", PAUSE_SOURCE)], params={"cflags": " ".join(PAUSE_CFLAGS), "uid": str(PAUSE_UID)}
    )


def base_key() -> str:
    """The recipe, not the mirror: a base is rebuilt with newer packages only on request (``force``)."""
    params = {
        "suite": DEBIAN_SUITE,
        "packages": ",".join(BASE_PACKAGES),
        "dpkg": ",".join(BASE_DPKG_OPTIONS),
        "command": shlex.join(mmdebstrap_command(output=Path("rootfs.tar"), mirrors=())),
    }
    return content_key(files=[], params=params)


def build_pause(*, force: bool = False) -> Image:
    return _cached_or_built(
        name="pause",
        reference=PAUSE_IMAGE,
        key=pause_key(),
        force=force,
        build=lambda w, log: _build_pause(work=w, log=log),
    )


def build_base(*, force: bool = False) -> Image:
    return _cached_or_built(
        name="python",
        reference=BASE_IMAGE,
        key=base_key(),
        force=force,
        build=lambda w, log: _build_base(work=w, log=log),
    )


def build_from_dockerfile(
    *, name: str, reference: str, dockerfile: Path, base: Image, build_args: Mapping[str, str], force: bool = False
) -> Image:
    """Build ``dockerfile`` (context: the repository root) on ``base``, which becomes its BASE_IMAGE."""
    args = {"BASE_IMAGE": base.reference, **build_args}
    key = dockerfile_key(root=REPO, dockerfile=dockerfile, build_args=args, base_digest=base.digest)

    def build(_work: Path, log: Path) -> None:
        _load(base, log=log)
        command = bud_command(
            context=REPO,
            dockerfile=dockerfile,
            reference=reference,
            build_args=args,
            ca_bundle=DEBIAN_CA_BUNDLE if DEBIAN_CA_BUNDLE.is_file() else None,
            no_cache=force,
        )
        _run(command, log=log)

    return _cached_or_built(name=name, reference=reference, key=key, force=force, build=build)


def build_images(*, force: bool = False, trainer_torch: str = TRAINER_TORCH) -> list[Image]:
    """Build (or reuse) pause, the local base, the operator and the trainer image; cold: minutes."""
    pause = build_pause(force=force)
    base = build_base(force=force)
    operator = build_from_dockerfile(
        name="operator", reference=OPERATOR_IMAGE, dockerfile=REPO / "Dockerfile", base=base, build_args={}, force=force
    )
    trainer = build_from_dockerfile(
        name="trainer",
        reference=TRAINER_IMAGE,
        dockerfile=REPO / "trainer_image" / "Dockerfile",
        base=base,
        build_args={"TORCH": trainer_torch},
        force=force,
    )
    if operator.rebuilt or trainer.rebuilt:
        prune_dangling_images()
    return [pause, base, operator, trainer]


def prune_dangling_images() -> None:
    """Remove buildah's untagged images: each rebuild of the trainer leaves its previous 6 GB image
    behind. The intermediate layers that ``--layers`` reuses have children and stay."""
    log = cache_root() / "images" / "prune.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    _run(["buildah", "rmi", "--prune"], log=log)


def import_image(archive: Path, *, containerd_address: Path, namespace: str = "k8s.io") -> dict[str, str]:
    """Import an OCI archive into the containerd at ``containerd_address`` (unpacked for its default
    snapshotter); returns the image names and manifest digests it brought. ``k8s.io`` is the namespace
    containerd's CRI, and so the kubelet, reads."""
    log = cache_root() / "images" / "import.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    _run(import_command(archive=archive, containerd_address=containerd_address, namespace=namespace), log=log)
    return archive_manifests(archive)
