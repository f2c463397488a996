"""``python -m kubetune_testenv build|up|paths|images``: build the binaries or images, run a local control plane."""

from __future__ import annotations

import argparse
import sys


def _build(args: argparse.Namespace) -> int:
    from .build import BuildError, build, prune_go_caches

    try:
        out = build(force=args.force)
    except BuildError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if args.prune:
        prune_go_caches()
    if args.print_dir:
        print(out.directory)
    return 0


def _up(args: argparse.Namespace) -> int:
    from .up import run_until_interrupted

    return run_until_interrupted(workdir=args.workdir, real_node=args.real_node, all_images=args.images)


def _paths(args: argparse.Namespace) -> int:
    from .versions import binaries

    out = binaries()
    for path in out.all():
        print(f"{path} {'ok' if path not in out.missing() else 'MISSING'}")
    return 0 if not out.missing() else 1


def _images(args: argparse.Namespace) -> int:
    from .images import ImagesError, build_images

    try:
        images = build_images(force=args.force)
    except ImagesError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for image in images:
        what = f"built in {image.seconds:.0f}s" if image.rebuilt else "cached"
        print(f"{image.reference} {image.archive} {image.archive_bytes / 2**20:.0f}MiB {what}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kubetune_testenv", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="build or reuse the pinned binaries (cold: minutes)")
    build.add_argument("--force", action="store_true", help="rebuild even if the binaries exist")
    build.add_argument("--print-dir", action="store_true", help="print the binaries' directory")
    build.add_argument(
        "--prune",
        action="store_true",
        help="afterwards delete the Go module and build caches (~5 GiB), keep the binaries",
    )
    build.set_defaults(func=_build)
    up = commands.add_parser("up", help="start a control plane with fake GPU nodes until Ctrl-C")
    up.add_argument("--workdir", default=None, help="keep state here instead of a temp dir")
    up.add_argument(
        "--real-node",
        action="store_true",
        help="also start a kubelet node that runs pods for real (root; containerd, runc, CNI plugins)",
    )
    up.add_argument(
        "--images",
        action="store_true",
        help="with --real-node: build (or reuse) and import kubetune's operator and trainer images too",
    )
    up.set_defaults(func=_up)
    paths = commands.add_parser("paths", help="list the binaries and whether they exist")
    paths.set_defaults(func=_paths)
    images = commands.add_parser(
        "images", help="build or reuse the pause, base, operator and trainer images (root, buildah; cold: minutes)"
    )
    images.add_argument("--force", action="store_true", help="rebuild even if the cached archives are current")
    images.set_defaults(func=_images)
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
