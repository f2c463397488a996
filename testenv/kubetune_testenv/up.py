"""``python -m kubetune_testenv up``: a control plane (and optionally the real node) until Ctrl-C."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

from .cluster import BinariesMissingError, ControlPlane
from .images import BASE_IMAGE, PAUSE_IMAGE, ImagesError, build_images, build_pause
from .node_config import NODE_ROLE_KEY, NODE_ROLE_VALUE
from .real_node import NodeBusyError, NodeUnavailableError, RealNode


def run_until_interrupted(*, workdir: str | None, real_node: bool = False, all_images: bool = False) -> int:
    """``python -m kubetune_testenv up``: start, print how to connect, wait for Ctrl-C, tear down."""
    # A command started in the background by a non-interactive shell (CI runners, nohup) inherits SIGINT
    # ignored, and Python then raises no KeyboardInterrupt: Ctrl-C (or kill -INT) must stop it all the same.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    directory = Path(workdir).resolve() if workdir else None
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
    plane = ControlPlane(workdir=directory)
    node: RealNode | None = None
    try:
        plane.start()
        if real_node:
            built = build_images() if all_images else [build_pause()]
            archives = tuple(image.archive for image in built if image.reference != BASE_IMAGE)
            node = RealNode(plane, pause_image=PAUSE_IMAGE, image_archives=archives).start()
    except (BinariesMissingError, ImagesError, NodeUnavailableError, NodeBusyError) as error:
        print(f"error: {error}", file=sys.stderr)
        plane.stop()
        return 1
    try:
        print(f"kubeconfig: {plane.kubeconfig_path}")
        print(f"export KUBECONFIG={plane.kubeconfig_path}")
        print(f"kubectl:    {plane.binaries.kube} kubectl --kubeconfig={plane.kubeconfig_path} get nodes")
        print(f"logs:       {plane.workdir / 'logs'}")
        if node is not None:
            print(f"real node: {node.name} Ready (label and taint {NODE_ROLE_KEY}={NODE_ROLE_VALUE})")
        print("Ctrl-C stops the control plane and removes its files.", flush=True)
        while not plane.dead_components() and (node is None or not node.dead_components()):
            time.sleep(1)
        dead = plane.dead_components() + (node.dead_components() if node is not None else [])
        print(f"error: {', '.join(dead)} exited; see {plane.workdir / 'logs'}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        if node is not None:
            node.stop()
        plane.stop()
