"""Agent reports -> Step Functions callbacks: exactly once, tokens kept, stale attempts told to stop."""

from __future__ import annotations

import json

import pytest
from botocore.exceptions import ClientError

from spillway.errors import Conflict, NotFound
from spillway.models import ErrorType, TaskHeartbeat, TaskResult
from spillway.reports import TaskReports

from conftest import Cloud
from helpers import beat, fleet_for
from test_fleet import NOW, running_job, task


class RecordingStepFunctions:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []
        self.gone = False

    def _record(self, name: str, kwargs: dict) -> None:
        if self.gone:
            raise ClientError({"Error": {"Code": "TaskTimedOut", "Message": "timed out"}}, name)
        self.calls.append((name, kwargs))

    def send_task_success(self, **kwargs) -> None:
        self._record("success", kwargs)

    def send_task_failure(self, **kwargs) -> None:
        self._record("failure", kwargs)

    def send_task_heartbeat(self, **kwargs) -> None:
        self._record("heartbeat", kwargs)


@pytest.fixture
def sfn() -> RecordingStepFunctions:
    return RecordingStepFunctions()


@pytest.fixture
def leased(cloud: Cloud):
    fleet = fleet_for(cloud.settings)
    fleet.heartbeat(beat("local-0"), now=NOW)
    running_job(cloud, "j-1")
    leased = task("j-1", "local-0", 3000)
    fleet.lease(fleet.get("local-0"), leased)
    return leased


@pytest.fixture
def reports(cloud: Cloud, sfn: RecordingStepFunctions) -> TaskReports:
    return TaskReports(fleet_for(cloud.settings), sfn)


def succeeded(gpu_id: str = "local-0") -> TaskResult:
    return TaskResult(gpu_id=gpu_id, outcome="succeeded", duration_ms=120)


def test_success_sends_the_result_key_with_the_kept_token(leased, reports, sfn, cloud: Cloud) -> None:
    assert reports.result(leased.task_id, succeeded()).current is True
    ((name, call),) = sfn.calls
    assert name == "success" and call["taskToken"] == "token"
    assert json.loads(call["output"]) == {
        "task_id": leased.task_id, "gpu_id": "local-0", "result_key": leased.result_key, "duration_ms": 120,
    }
    assert fleet_for(cloud.settings).get("local-0").vram_free_mb == 8000


def test_a_repeated_report_resends_the_first_outcome(leased, reports, sfn) -> None:
    reports.result(leased.task_id, succeeded())
    reports.result(leased.task_id, TaskResult(gpu_id="local-0", outcome="failed", error_type=ErrorType.MODEL_ERROR,
                                              duration_ms=1))
    assert [name for name, _ in sfn.calls] == ["success", "success"]


def test_failure_is_sent_under_its_kind(leased, reports, sfn) -> None:
    reports.result(leased.task_id, TaskResult(gpu_id="local-0", outcome="failed", error_type=ErrorType.BAD_INPUT,
                                              message="cannot decode", duration_ms=3))
    ((name, call),) = sfn.calls
    assert (name, call["error"], call["cause"]) == ("failure", "Spillway.BadInput", "cannot decode")


def test_heartbeat_is_relayed_until_the_attempt_moves_on(leased, reports, sfn) -> None:
    assert reports.heartbeat(leased.task_id, TaskHeartbeat(gpu_id="local-0")).current is True
    sfn.gone = True
    assert reports.heartbeat(leased.task_id, TaskHeartbeat(gpu_id="local-0")).current is False


def test_a_late_result_after_a_timeout_tells_the_agent_to_stop(leased, reports, sfn, cloud: Cloud) -> None:
    sfn.gone = True
    assert reports.result(leased.task_id, succeeded()).current is False
    assert fleet_for(cloud.settings).get("local-0").vram_free_mb == 8000, "the VRAM comes back all the same"


def test_reports_for_unknown_tasks_or_from_another_gpu_are_refused(leased, reports) -> None:
    with pytest.raises(NotFound):
        reports.result("t-" + "0" * 32, succeeded())
    with pytest.raises(Conflict):
        reports.result(leased.task_id, succeeded(gpu_id="local-9"))
