"""The chart values the real node's installs use (kubetune_testenv.release) pass the chart's schema and do what
they say: local images never pulled, the operator on the real node watching only the jobs' namespace."""

from __future__ import annotations

from helm_render import Render, one
from kubetune_testenv.release import release_values


def test_real_node_values_render_an_operator_on_the_real_node_with_local_images(render: Render) -> None:
    manifests = render(release_values(watch_namespaces=["kubetune-quickstart"]))
    pod = one(manifests, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "kubetune/operator:0.1.0" and container["imagePullPolicy"] == "Never"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert "kubetune-quickstart" in env.values()
    assert pod["nodeSelector"] == {"kubetune.io/node": "cpu"}
