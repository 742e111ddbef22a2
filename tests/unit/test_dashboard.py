"""The Grafana dashboard shipped by the chart only draws metrics the components export."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from prometheus_client import REGISTRY

import trailingstop.telemetry  # noqa: F401 - registers every metric
from tests.conftest import Tool

CHART = Path(__file__).resolve().parents[2] / "charts" / "trailingstop-operator"
DASHBOARD = CHART / "files" / "grafana-dashboard.json"
SUFFIXES = ("_bucket", "_count", "_sum", "_created")


def exported_metrics() -> set[str]:
    names = set()
    for collector in list(REGISTRY._collector_to_names):
        for metric in collector.describe() if hasattr(collector, "describe") else []:
            names.add(metric.name)
            if metric.type == "counter":
                names.add(metric.name + "_total")
    return names


def test_every_panel_queries_an_exported_metric() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    expressions += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    used = {name for expr in expressions for name in re.findall(r"\btrailingstop_[a-z_]+", expr)}
    exported = exported_metrics()
    missing = {name for name in used if name not in exported and not any(
        name.endswith(s) and name.removesuffix(s) in exported for s in SUFFIXES)}
    assert used and not missing, f"the dashboard draws metrics nobody exports: {sorted(missing)}"


def test_dashboard_has_the_panels_operators_need() -> None:
    titles = {panel["title"] for panel in json.loads(DASHBOARD.read_text())["panels"]}
    assert {"Price, reference and stop of each TrailingStop", "TrailingStops by phase", "Tick to trigger latency",
            "Errors", "Feed lag"} <= titles


def test_chart_ships_the_dashboard_as_a_labelled_config_map(helm: Tool) -> None:
    rendered = helm("template", "t", str(CHART), "--kube-version", "1.34.4",
                    "-s", "templates/grafana-dashboard.yaml").stdout
    config_map = yaml.safe_load(rendered)
    assert config_map["kind"] == "ConfigMap"
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(config_map["data"]["trailingstop.json"]) == json.loads(DASHBOARD.read_text())
    disabled = helm("template", "t", str(CHART), "--kube-version", "1.34.4",
                    "--set", "metrics.grafanaDashboard.enabled=false").stdout
    assert "grafana_dashboard" not in disabled
