"""The chart's monitoring: the trainers' PodMonitor, the PrometheusRule and the Grafana dashboard.

The alerts live in charts/kubetune/rules/kubetune.rules.yaml: promtool checks that file and runs the unit
tests of rules_test.yaml on it. promtool comes with Debian's `prometheus` package; without it these tests
fail, they never skip.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from helm_render import CHART, Manifest, Render, by_kind, one, selects, trainer_pod_template
from kubetune_operator.builders.names import FINETUNEJOB_LABEL
from kubetune_operator.metrics import OperatorMetrics

from kubetune.api.reports import TRAINER_METRICS_PORT

RULES = CHART / "rules" / "kubetune.rules.yaml"
RULES_TEST = Path(__file__).with_name("rules_test.yaml")
DASHBOARD = CHART / "dashboards" / "kubetune.json"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# Grafana's interval variables, replaced by durations so that promtool can parse the expressions.
GRAFANA_INTERVALS = {"$__rate_interval": "5m", "$__range": "6h", "$__interval": "1m"}
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
MONITORING = {"serviceMonitor": {"enabled": True}, "podMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}}
EVERYTHING = {"metrics": MONITORING, "dashboards": {"enabled": True}, "networkPolicy": {"enabled": True}}


@pytest.fixture(scope="session")
def promtool() -> Path:
    found = os.environ.get("PROMTOOL") or shutil.which("promtool")
    if found is None:
        pytest.fail(
            "promtool not found: install Debian's `prometheus` package (apt-get install prometheus, as "
            ".ci/install.sh does), or set $PROMTOOL to a promtool binary",
            pytrace=False,
        )
    return Path(found)


def run_promtool(promtool: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(promtool), *args], capture_output=True, text=True, timeout=60, check=False)


def rules_file() -> dict[str, Any]:
    rules: dict[str, Any] = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return rules


def alerts(groups: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for group in groups for rule in group["rules"] if "alert" in rule}


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return loaded


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])  # a collapsed row holds its panels


def dashboard_queries(board: dict[str, Any]) -> dict[str, str]:
    """Every PromQL expression of the dashboard, by a record name: the panels' and the variables' selectors."""
    queries = {
        f"dashboard:panel_{p['id']}_{t['refId']}": t["expr"] for p in panels(board) for t in p.get("targets", [])
    }
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            match = re.fullmatch(r"label_values\((.+), *\w+\)", variable["query"]["query"])
            assert match is not None, variable["query"]
            queries[f"dashboard:variable_{variable['name']}"] = match.group(1)
    return queries


def as_promql(expression: str) -> str:
    for variable, duration in GRAFANA_INTERVALS.items():
        expression = expression.replace(variable, duration)
    return re.sub(r"\$\{?\w+\}?", "x", expression)


def exported_series() -> set[str]:
    """The series names of the operator's metrics: counters with _total, histograms as _bucket, _sum, _count."""
    suffixes = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}
    families = OperatorMetrics().registry.collect()
    return {family.name + suffix for family in families for suffix in suffixes[family.type]}


def metric_names(text: str) -> set[str]:
    return set(re.findall(r"kubetune_[a-z_]+", text))


def test_default_install_has_no_monitoring_objects(default_manifests: list[Manifest]) -> None:
    kinds = {m["kind"] for m in default_manifests}
    assert kinds.isdisjoint({"ServiceMonitor", "PodMonitor", "PrometheusRule", "ConfigMap"})


def test_everything_enabled_renders_each_monitoring_object_once(render: Render) -> None:
    manifests = render(EVERYTHING)
    for kind, name in [
        ("ServiceMonitor", "kubetune"),
        ("PodMonitor", "kubetune-trainers"),
        ("PrometheusRule", "kubetune"),
        ("ConfigMap", "kubetune-dashboards"),
        ("NetworkPolicy", "kubetune"),
    ]:
        assert one(manifests, kind, name)["metadata"]["namespace"] == "kubetune-system"


def test_pod_monitor_scrapes_the_metrics_port_of_rank_0_of_every_trainer(render: Render) -> None:
    monitor = one(render({"metrics": {"podMonitor": {"enabled": True, "interval": "15s"}}}), "PodMonitor")
    trainer = trainer_pod_template()
    labels = trainer["metadata"]["labels"]
    # The Job controller adds the completion index label to each pod of the Indexed Job.
    assert selects(monitor["spec"]["selector"], labels | {COMPLETION_INDEX: "0"})
    assert not selects(monitor["spec"]["selector"], labels | {COMPLETION_INDEX: "1"})
    assert monitor["spec"]["namespaceSelector"] == {"any": True}
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert {k: endpoint[k] for k in ("port", "path", "interval", "scrapeTimeout")} == {
        "port": "metrics",
        "path": "/metrics",
        "interval": "15s",
        "scrapeTimeout": "10s",
    }
    # Prometheus names a pod label __meta_kubernetes_pod_label_<name with non-alphanumerics as _>.
    pod_label = "__meta_kubernetes_pod_label_" + re.sub(r"[^a-zA-Z0-9]", "_", FINETUNEJOB_LABEL)
    assert endpoint["relabelings"] == [{"sourceLabels": [pod_label], "targetLabel": "name"}]
    ports = {p["name"]: p["containerPort"] for c in trainer["spec"]["containers"] for p in c.get("ports", [])}
    assert ports["metrics"] == TRAINER_METRICS_PORT


def test_pod_monitor_looks_only_in_the_watched_namespaces(render: Render) -> None:
    values = {"metrics": {"podMonitor": {"enabled": True}}, "operator": {"watchNamespaces": ["ml", "nlp"]}}
    assert one(render(values), "PodMonitor")["spec"]["namespaceSelector"] == {"matchNames": ["ml", "nlp"]}


def test_pod_monitor_does_not_need_the_operators_metrics(render: Render) -> None:
    manifests = render({"metrics": {"enabled": False, "podMonitor": {"enabled": True, "labels": {"team": "ml"}}}})
    assert one(manifests, "PodMonitor")["metadata"]["labels"]["team"] == "ml"


def test_prometheus_rule_and_dashboard_need_the_operators_metrics(render: Render) -> None:
    manifests = render({**EVERYTHING, "metrics": {**MONITORING, "enabled": False}})
    assert by_kind(manifests, "PrometheusRule") == []
    assert by_kind(manifests, "ConfigMap") == []


def test_prometheus_rule_carries_the_rules_file(render: Render) -> None:
    values = {"metrics": {"prometheusRule": {"enabled": True, "labels": {"release": "prometheus"}}}}
    rule = one(render(values), "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "prometheus"
    assert rule["spec"] == rules_file()


def test_prometheus_rule_thresholds_come_from_the_values(render: Render, promtool: Path, tmp_path: Path) -> None:
    values = {"metrics": {"prometheusRule": {"enabled": True, "pendingFor": "1h", "noProgressFor": "20m"}}}
    rendered = one(render(values), "PrometheusRule")["spec"]
    expected = alerts(rules_file()["groups"])
    expected["KubetuneJobStuckPending"]["expr"] = expected["KubetuneJobStuckPending"]["expr"].replace(
        "> 1800", "> 3600"
    )
    expected["KubetuneJobNoProgress"]["expr"] = expected["KubetuneJobNoProgress"]["expr"].replace("> 900", "> 1200")
    assert alerts(rendered["groups"]) == expected
    (tmp_path / "rendered.rules.yaml").write_text(yaml.safe_dump(rendered))
    result = run_promtool(promtool, "check", "rules", str(tmp_path / "rendered.rules.yaml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_accepts_the_rules_file(promtool: Path) -> None:
    result = run_promtool(promtool, "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alerts(rules_file()['groups']))} rules found" in result.stdout


def test_alerts_fire_when_they_should_and_not_otherwise(promtool: Path) -> None:
    result = run_promtool(promtool, "test", "rules", str(RULES_TEST))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_rule_unit_tests_cover_every_alert() -> None:
    tests = yaml.safe_load(RULES_TEST.read_text(encoding="utf-8"))
    assert tests["rule_files"] == [os.path.relpath(RULES, RULES_TEST.parent)]
    tested = {case["alertname"] for test in tests["tests"] for case in test["alert_rule_test"] if case["exp_alerts"]}
    assert tested == set(alerts(rules_file()["groups"]))


def test_dashboard_config_map_carries_the_json_file(render: Render) -> None:
    values = {"dashboards": {"enabled": True, "labels": {"team": "platform"}, "annotations": {"grafana_folder": "ML"}}}
    config_map = one(render(values), "ConfigMap", "kubetune-dashboards")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["labels"]["team"] == "platform"
    assert config_map["metadata"]["annotations"] == {"grafana_folder": "ML"}
    assert config_map["data"] == {"kubetune.json": DASHBOARD.read_text(encoding="utf-8")}


def test_dashboard_panels_have_unique_ids_and_query_the_datasource_variable() -> None:
    board = dashboard()
    ids = [p["id"] for p in panels(board)]
    assert len(ids) == len(set(ids)), ids
    for panel in panels(board):
        if panel["type"] == "row":
            assert "targets" not in panel, panel["title"]
            continue
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        assert all(t["datasource"] == DATASOURCE for t in panel["targets"]), panel["title"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["namespace"]["datasource"] == variables["name"]["datasource"] == DATASOURCE


def test_dashboard_panels_do_not_overlap() -> None:
    taken: dict[tuple[int, int], str] = {}
    for panel in dashboard()["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in taken, f"{panel['title']} overlaps {taken[(x, y)]}"
                taken[(x, y)] = panel["title"]


def test_every_dashboard_expression_parses(promtool: Path, tmp_path: Path) -> None:
    # promtool 2.42 has no expression checker; `check rules` parses the expressions of recording rules.
    queries = dashboard_queries(dashboard())
    rules = [{"record": name, "expr": as_promql(expression)} for name, expression in queries.items()]
    path = tmp_path / "dashboard.rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run_promtool(promtool, "check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_expressions_query_only_series_the_operator_exports() -> None:
    expressions = [*dashboard_queries(dashboard()).values()]
    expressions += [rule["expr"] for rule in alerts(rules_file()["groups"]).values()]
    used = set().union(*(metric_names(expression) for expression in expressions))
    assert used - exported_series() == set()


@pytest.mark.parametrize("path", [RULES, DASHBOARD], ids=["rules", "dashboard"])
def test_descriptions_name_only_metrics_the_operator_exports(path: Path) -> None:
    # Prose may name a histogram by its own name as well as by its series.
    histograms = {f.name for f in OperatorMetrics().registry.collect() if f.type == "histogram"}
    used = metric_names(path.read_text(encoding="utf-8"))
    assert used
    assert used - exported_series() - histograms == set()
