"""The dashboard in template.yaml is drawn from the one metrics list, and shows exactly what the code emits."""

from __future__ import annotations

import json
from typing import Any

from spillway.metrics import CATALOG
from spillway_ops import dashboard


def resources(translated: dict[str, Any]) -> dict[str, Any]:
    return translated["Resources"]


def test_the_templates_dashboard_is_the_one_drawn_from_the_metrics_list(translated: dict[str, Any]) -> None:
    body = resources(translated)["OpsDashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]
    assert json.loads(body) == dashboard.body(), "run: python -m spillway_ops.dashboard --write"


def test_the_dashboard_shows_exactly_the_metrics_the_code_emits_with_their_dimensions() -> None:
    emitted = {(metric.value, tuple(d.value for d in spec.dimensions)) for metric, spec in CATALOG.items()}
    assert dashboard.referenced_metrics(dashboard.body()) == emitted


def test_the_dashboard_namespace_is_the_one_the_functions_publish_to(translated: dict[str, Any]) -> None:
    functions = [r for r in resources(translated).values() if r["Type"] == "AWS::Lambda::Function"]
    namespaces = {f["Properties"]["Environment"]["Variables"]["POWERTOOLS_METRICS_NAMESPACE"] for f in functions}
    assert namespaces == {dashboard.NAMESPACE}


def test_every_alarm_on_a_spillway_metric_watches_it_with_its_listed_dimensions(translated: dict[str, Any]) -> None:
    listed = {metric.value: {d.value for d in spec.dimensions} for metric, spec in CATALOG.items()}
    watched = []
    for logical, resource in resources(translated).items():
        if resource["Type"] != "AWS::CloudWatch::Alarm":
            continue
        props = resource["Properties"]
        metrics = [props] + [m["MetricStat"]["Metric"] for m in props.get("Metrics", []) if "MetricStat" in m]
        for metric in metrics:
            if metric.get("Namespace") == dashboard.NAMESPACE:
                watched.append(logical)
                assert metric["MetricName"] in listed, logical
                assert {d["Name"] for d in metric.get("Dimensions", [])} == listed[metric["MetricName"]], logical
    assert {"FaasBudgetSpentAlarm", "FaasBudgetNearlySpentAlarm"} <= set(watched)
    assert set(dashboard.ALARMS) <= {k for k, r in resources(translated).items() if r["Type"].endswith("Alarm")}
