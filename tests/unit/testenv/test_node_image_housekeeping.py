"""The real node's image housekeeping (pure): which earlier builds go."""

from __future__ import annotations

from kubetune_testenv.real_node import superseded_images


def test_earlier_builds_of_imported_images_and_their_id_aliases_are_superseded() -> None:
    listed = {
        "docker.io/kubetune/trainer:0.1.0": "sha256:old",
        "sha256:trainer-old-config": "sha256:old",
        "localhost/kubetune/pause:3.10": "sha256:pause",
        "sha256:pause-config": "sha256:pause",
        "docker.io/kubetune/operator:0.1.0": "sha256:op",  # not imported this time: kept
    }
    current = {"docker.io/kubetune/trainer:0.1.0": "sha256:new", "localhost/kubetune/pause:3.10": "sha256:pause"}
    assert superseded_images(listed, current=current) == [
        "docker.io/kubetune/trainer:0.1.0",
        "sha256:trainer-old-config",
    ]
