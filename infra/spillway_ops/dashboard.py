"""The CloudWatch dashboard in template.yaml, drawn from the one metrics list (`spillway.metrics`).

Each graph is a SEARCH over one metric's listed dimensions, so a new service, pool or failure kind
shows up without a change here. `python -m spillway_ops.dashboard --write` puts the body into
template.yaml (tests/test_dashboard.py fails while they differ).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from spillway.metrics import CATALOG, Metric

NAMESPACE = "Spillway"  # the template's POWERTOOLS_METRICS_NAMESPACE (checked by the test)
TEMPLATE = Path(__file__).resolve().parents[2] / "template.yaml"
PERIOD = 300


def search(metric: Metric, stat: str = "Sum", label: str = "") -> dict[str, Any]:
    """Every series of one metric, one line per combination of its dimensions' values."""
    schema = ",".join([NAMESPACE, *(d.value for d in CATALOG[metric].dimensions)])
    expression = f"SEARCH('{{{schema}}} MetricName=\"{metric.value}\"', '{stat}', {PERIOD})"
    return {"expression": expression, "label": label or metric.value, "id": f"{metric.name.lower()}_{stat.lower()}"}


def graph(title: str, *series: dict[str, Any], stacked: bool = False) -> dict[str, Any]:
    return {"type": "metric", "width": 12, "height": 6, "properties": {
        "title": title, "region": "${AWS::Region}", "view": "timeSeries", "stacked": stacked, "period": PERIOD,
        "metrics": [[s] for s in series]}}


def widgets() -> list[dict[str, Any]]:
    m = Metric
    return [
        {"type": "text", "width": 24, "height": 2, "properties": {"markdown":
            "## Spillway\nJobs, attempts by pool and failure kind, the waiting rooms, FaaS spend and GPU health. "
            "A job's own story: its execution graph in the Step Functions console, or `spillway graph JOB_ID`."}},
        graph("Jobs submitted (by service, priority)", search(m.JOBS_SUBMITTED)),
        graph("Jobs admitted (by priority)", search(m.JOBS_ADMITTED)),
        graph("Jobs succeeded (by service, priority)", search(m.JOBS_SUCCEEDED)),
        graph("Jobs failed; jobs cancelled by their client (by service, priority)", search(m.JOBS_FAILED),
              search(m.JOBS_CANCELLED)),
        graph("Time to result, s (p50, p95 by priority)", search(m.TIME_TO_RESULT, "p50", "p50"),
              search(m.TIME_TO_RESULT, "p95", "p95")),
        graph("Attempts routed (by pool; none = the job ended)", search(m.ATTEMPTS_ROUTED), stacked=True),
        graph("Attempts ended (by pool, outcome or failure kind)", search(m.ATTEMPTS_ENDED), stacked=True),
        graph("Attempts entering a waiting room, and started at once", search(m.TASKS_ENQUEUED),
              search(m.TASKS_STARTED)),
        graph("Waiting room depth (by pool, priority)", search(m.WAITING_ROOM_DEPTH, "Maximum")),
        graph("Waiting room: oldest wait, s (by pool, priority)", search(m.WAITING_ROOM_OLDEST_AGE, "Maximum")),
        graph("FaaS spend today against its budget, USD", search(m.FAAS_SPEND, "Maximum"),
              search(m.FAAS_BUDGET, "Maximum")),
        graph("FaaS budget spent (jobs sent elsewhere); job records reconciled", search(m.FAAS_BUDGET_SPENT),
              search(m.JOBS_RECONCILED)),
        graph("Webhook deliveries (by outcome: delivered, failed and retried, dropped)",
              search(m.WEBHOOK_DELIVERIES), stacked=True),
        graph("GPUs by health (by pool, health)", search(m.GPUS, "Maximum"), stacked=True),
        graph("GPU health transitions (by pool, state entered); quarantines", search(m.GPU_HEALTH_TRANSITIONS),
              search(m.GPUS_QUARANTINED)),
        graph("GPU faults: time to detect, s (by pool, state entered)", search(m.GPU_TIME_TO_DETECT, "Maximum")),
        {"type": "alarm", "width": 24, "height": 3, "properties": {"title": "Alarms", "alarms": [
            f"${{{alarm}.Arn}}" for alarm in ALARMS]}},
    ]


# The template's alarms, shown on the dashboard (their logical ids).
ALARMS = ("DeadLettersAlarm", "PoolDeadLettersAlarm", "FailedExecutionsAlarm", "FaasBudgetSpentAlarm",
          "FaasBudgetNearlySpentAlarm", "NoHealthyLocalGpuAlarm", "NoHealthyCloudGpuAlarm", "LocalGpuQuarantinedAlarm",
          "CloudGpuQuarantinedAlarm")


def body() -> dict[str, Any]:
    return {"widgets": widgets()}


def body_text() -> str:
    """One widget a line: diffs of template.yaml stay readable."""
    lines = ",\n".join("  " + json.dumps(widget, ensure_ascii=False) for widget in widgets())
    return '{"widgets": [\n' + lines + "\n]}"


_BLOCK = re.compile(r"(?m)^(?P<head>      DashboardBody: !Sub \|\n)(?P<body>(?:        .*\n|\n)+)")


def write(template: Path = TEMPLATE) -> None:
    text = template.read_text()
    indented = "".join(f"        {line}\n" for line in body_text().splitlines())
    found = _BLOCK.search(text)
    if found is None:
        raise SystemExit(f"{template}: no `DashboardBody: !Sub |` block to write into")
    template.write_text(text[:found.start("body")] + indented + text[found.end("body"):])


def referenced_metrics(dashboard: dict[str, Any]) -> set[tuple[str, tuple[str, ...]]]:
    """(metric name, its dimension names) of every SEARCH on the dashboard."""
    found = set()
    for widget in dashboard["widgets"]:
        for (series,) in widget.get("properties", {}).get("metrics", []):
            match = re.search(r"\{(?P<schema>[^}]*)\} MetricName=\"(?P<name>\w+)\"", series["expression"])
            namespace, *dimensions = match["schema"].split(",")
            if namespace == NAMESPACE:
                found.add((match["name"], tuple(dimensions)))
    return found


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        write()
    else:
        print(body_text())
