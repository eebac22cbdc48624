"""Every metric has one dimension set, the one `spillway.metrics` lists, and only that list is emitted."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from spillway import metrics
from spillway.metrics import CATALOG, Metric, emit
from spillway.models import JobFields, JobStatus, Pool, Priority, Segment
from spillway.waiting_room import RoomLine

FUNCTIONS = Path(__file__).resolve().parents[1] / "functions" / "spillway"


@pytest.fixture
def published(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", "spillway")
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "Spillway")

    def read() -> list[dict]:
        return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith('{"_aws"')]
    return read


def dimension_sets(records: list[dict]) -> dict[str, set[tuple[str, ...]]]:
    sets: dict[str, set[tuple[str, ...]]] = {}
    for record in records:
        for directive in record["_aws"]["CloudWatchMetrics"]:
            for metric in directive["Metrics"]:
                for dimensions in directive["Dimensions"]:
                    sets.setdefault(metric["Name"], set()).add(tuple(sorted(dimensions)))
    return sets


def test_each_metric_is_published_with_exactly_its_listed_dimensions(published) -> None:
    for metric, spec in CATALOG.items():
        emit(metric, 2, **{d.value: "x" for d in spec.dimensions})
    sets = dimension_sets(published())
    assert sets == {m.value: {tuple(sorted(d.value for d in spec.dimensions))} for m, spec in CATALOG.items()}


def test_other_dimensions_are_refused() -> None:
    with pytest.raises(ValueError, match="takes dimensions"):
        emit(Metric.ATTEMPTS_ENDED, Pool="local")  # no Outcome
    with pytest.raises(ValueError, match="takes dimensions"):
        emit(Metric.JOBS_ADMITTED, Priority="high", service="spillway")


def test_the_domain_helpers_keep_one_dimension_set_per_metric(published) -> None:
    job = JobFields(job_id="j-1", status=JobStatus.RUNNING, service="remove_furniture", priority=Priority.HIGH,
                    segment=Segment(), input_key="uploads/x.png", width=1, height=1, vram_mb=1,
                    created_at="2026-01-01T00:00:00+00:00", updated_at="2026-01-01T00:00:00+00:00")
    start = 1767225600.0  # created_at
    metrics.job_finished(job, JobStatus.SUCCEEDED, start + 12.5)
    metrics.job_finished(job, JobStatus.FAILED, start + 99)
    for pool, outcome in ((Pool.LOCAL, "GpuUnreachable"), (Pool.CLOUD, "succeeded"), (Pool.FAAS, "ModelError")):
        metrics.attempt_ended(pool, outcome)
    metrics.room_gauges(Pool.LOCAL, {Priority.LOW: RoomLine(count=3, oldest_s=40.0)})
    records = published()

    assert all(len(s) == 1 for s in dimension_sets(records).values())
    time_to_result = next(r for r in records if "TimeToResult" in r)
    assert time_to_result["TimeToResult"] == [12.5] and time_to_result["Priority"] == "high"
    depth = {(r["Pool"], r["Priority"]): r["WaitingRoomDepth"] for r in records if "WaitingRoomDepth" in r}
    assert depth == {("local", "low"): [3.0], ("local", "normal"): [0.0], ("local", "high"): [0.0]}


def test_metrics_are_emitted_only_through_the_catalog() -> None:
    """A bare add_metric or single_metric could publish a name or dimension set the catalog (and so the
    dashboard) does not know."""
    bare = re.compile(r"\b(add_metric|single_metric|log_metrics|Metrics\()")
    offenders = [str(p.relative_to(FUNCTIONS)) for p in FUNCTIONS.rglob("*.py")
                 if p.name != "metrics.py" and bare.search(p.read_text())]
    assert offenders == []


def test_nothing_is_published_when_metrics_are_disabled(capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    emit(Metric.TASKS_STARTED, 1)
    assert capsys.readouterr().out == ""
