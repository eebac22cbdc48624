"""Agent reports -> Step Functions callbacks: exactly once, tokens kept, stale attempts told to stop."""

from __future__ import annotations

import json

import pytest

from spillway import aws
from spillway.dispatch import Dispatcher
from spillway.errors import NotFound
from spillway.fleet import Fleet, Task
from spillway.jobs import JobStore
from spillway.models import ErrorType, Pool, TaskHeartbeat, TaskResult, TaskState
from spillway.reports import TaskReports

from conftest import Cloud
from helpers import (
    Clock,
    FakeAgents,
    RecordingStepFunctions,
    beat,
    dispatcher_for,
    fleet_for,
    job_id_for,
    pool_task,
    running_job,
    task_secret,
    token_for,
)
from test_fleet import NOW


@pytest.fixture
def cloud(shared_cloud: Cloud) -> Cloud:
    """One stack for the module, emptied before each test (see conftest)."""
    return shared_cloud


@pytest.fixture
def sfn() -> RecordingStepFunctions:
    return RecordingStepFunctions()


@pytest.fixture
def clock() -> Clock:
    return Clock(NOW)


@pytest.fixture
def fleet(cloud: Cloud) -> Fleet:
    fleet = fleet_for(cloud.settings)
    fleet.heartbeat(beat("local-0"), now=NOW)
    return fleet


@pytest.fixture
def dispatcher(cloud: Cloud, fleet: Fleet, sfn: RecordingStepFunctions, clock: Clock) -> Dispatcher:
    return dispatcher_for(cloud.settings, FakeAgents().client(), clock=clock, sfn=sfn)


@pytest.fixture
def running(cloud: Cloud, dispatcher: Dispatcher, fleet: Fleet) -> Task:
    """A task the dispatcher has started on local-0 (3000 MB of its 8000)."""
    queued = pool_task(job_id_for(1), NOW, vram_mb=3000)
    running_job(cloud.settings, queued.job_id)
    (task_id,) = dispatcher.enqueue(queued)
    task = fleet.task(task_id)
    assert task is not None and task.state is TaskState.RUNNING
    return task


@pytest.fixture
def freed() -> list[Task]:
    return []


@pytest.fixture
def reports(cloud: Cloud, fleet: Fleet, sfn: RecordingStepFunctions, freed: list[Task], clock: Clock) -> TaskReports:
    return TaskReports(fleet, sfn, JobStore(aws.table(cloud.settings.jobs_table)), freed=freed.append, clock=clock)


def succeeded(gpu_id: str = "local-0") -> TaskResult:
    return TaskResult(gpu_id=gpu_id, outcome="succeeded", duration_ms=120)


def failed(error_type: ErrorType | None = ErrorType.MODEL_ERROR, message: str | None = None) -> TaskResult:
    return TaskResult(gpu_id="local-0", outcome="failed", error_type=error_type, message=message, duration_ms=3)


def vram_free(fleet: Fleet) -> tuple[int, int]:
    gpu = fleet.get("local-0")
    return gpu.vram_free_mb, gpu.running


def test_success_sends_the_result_key_with_the_kept_token_and_frees_the_slot(
    running: Task, reports: TaskReports, sfn: RecordingStepFunctions, fleet: Fleet, freed: list[Task]
) -> None:
    assert reports.result(running.task_id, succeeded(), task_secret(running.task_id)).current is True
    ((name, call),) = sfn.calls
    assert name == "success" and call["taskToken"] == token_for(running.job_id)
    assert json.loads(call["output"]) == {
        "task_id": running.task_id, "gpu_id": "local-0", "result_key": running.result_key, "duration_ms": 120,
    }
    assert vram_free(fleet) == (8000, 0)
    assert [t.task_id for t in freed] == [running.task_id], "the pool is told a slot freed"
    stored = fleet.task(running.task_id)
    assert (stored.state, stored.outcome) == (TaskState.DONE, "succeeded")


@pytest.mark.parametrize(
    ("first", "second", "sent"),
    [(succeeded(), failed(), "success"), (failed(), succeeded(), "failure")],
    ids=["success-then-failure", "failure-then-success"],
)
def test_a_repeated_report_resends_the_first_outcome_and_releases_once(
    running: Task, reports: TaskReports, sfn: RecordingStepFunctions, fleet: Fleet, freed: list[Task],
    first: TaskResult, second: TaskResult, sent: str,
) -> None:
    assert reports.result(running.task_id, first, task_secret(running.task_id)).current is True
    assert reports.result(running.task_id, second, task_secret(running.task_id)).current is True
    assert [name for name, _ in sfn.calls] == [sent, sent]
    assert vram_free(fleet) == (8000, 0), "the VRAM came back exactly once"
    assert len(freed) == 2, "each report pumps the room: a retried report still starts the next task"


@pytest.mark.parametrize(
    ("result", "error", "cause"),
    [
        (failed(ErrorType.BAD_INPUT, "cannot decode"), "Spillway.BadInput", "cannot decode"),
        (failed(ErrorType.OUTPUT_UPLOAD, "403 on PUT"), "Spillway.OutputUpload", "403 on PUT"),
        (failed(None), "Spillway.ModelError", "ModelError"),
    ],
    ids=["bad-input", "output-upload", "no-kind-is-a-model-error"],
)
def test_failure_is_sent_under_its_kind(running: Task, reports: TaskReports, sfn: RecordingStepFunctions,
                                        fleet: Fleet, result: TaskResult, error: str, cause: str) -> None:
    reports.result(running.task_id, result, task_secret(running.task_id))
    ((name, call),) = sfn.calls
    assert (name, call["taskToken"], call["error"], call["cause"]) == ("failure", token_for(running.job_id), error,
                                                                       cause)
    assert fleet.task(running.task_id).error_type == error.removeprefix("Spillway.")


def test_a_heartbeat_keeps_the_liveness_clock_and_is_not_relayed(
    running: Task, reports: TaskReports, sfn: RecordingStepFunctions, fleet: Fleet, clock: Clock
) -> None:
    clock.advance(4)
    beat_0 = TaskHeartbeat(gpu_id="local-0")
    assert reports.heartbeat(running.task_id, beat_0, task_secret(running.task_id)).current is True
    assert fleet.task(running.task_id).beat_at == NOW + 4
    assert sfn.calls == [], "Step Functions' own heartbeat clock would count the wait for a GPU too"


def test_a_heartbeat_after_the_task_ended_tells_the_agent_to_stop(
    running: Task, reports: TaskReports, dispatcher: Dispatcher, sfn: RecordingStepFunctions
) -> None:
    dispatcher.fail(running, ErrorType.GPU_UNREACHABLE, "local-0 went silent")
    beat_0 = TaskHeartbeat(gpu_id="local-0")
    assert reports.heartbeat(running.task_id, beat_0, task_secret(running.task_id)).current is False


def test_a_late_result_after_the_attempt_timed_out_tells_the_agent_to_stop(
    running: Task, reports: TaskReports, sfn: RecordingStepFunctions, fleet: Fleet, freed: list[Task]
) -> None:
    sfn.gone = True  # AWS: TaskTimedOut
    assert reports.result(running.task_id, succeeded(), task_secret(running.task_id)).current is False
    assert vram_free(fleet) == (8000, 0), "the VRAM comes back all the same"
    assert len(freed) == 1


def test_a_late_result_after_the_task_was_failed_as_silent_changes_nothing(
    running: Task, reports: TaskReports, dispatcher: Dispatcher, sfn: RecordingStepFunctions, fleet: Fleet,
    freed: list[Task],
) -> None:
    dispatcher.fail(running, ErrorType.GPU_UNREACHABLE, "local-0 went silent")
    assert sfn.failures() == [(token_for(running.job_id), "Spillway.GpuUnreachable")]
    sfn.gone = True  # the execution has moved on to its next attempt
    assert reports.result(running.task_id, succeeded(), task_secret(running.task_id)).current is False
    assert vram_free(fleet) == (8000, 0), "freed once, by the failure"
    stored = fleet.task(running.task_id)
    assert (stored.outcome, stored.error_type) == ("failed", "GpuUnreachable"), "the first outcome stands"


def test_reports_for_unknown_tasks_from_another_gpu_or_without_the_tasks_secret_are_refused_alike(
    running: Task, reports: TaskReports, fleet: Fleet, sfn: RecordingStepFunctions
) -> None:
    unknown, secret = "t-" + "0" * 32, task_secret(running.task_id)
    for refused in (
        lambda: reports.result(unknown, succeeded(), task_secret(unknown)),
        lambda: reports.heartbeat(unknown, TaskHeartbeat(gpu_id="local-0"), task_secret(unknown)),
        lambda: reports.result(running.task_id, succeeded(gpu_id="local-9"), secret),
        lambda: reports.heartbeat(running.task_id, TaskHeartbeat(gpu_id="local-9"), secret),
        lambda: reports.result(running.task_id, succeeded(), "not-its-secret"),
        lambda: reports.heartbeat(running.task_id, TaskHeartbeat(gpu_id="local-0"), task_secret(unknown)),
    ):
        with pytest.raises(NotFound):  # one answer, whatever is wrong: it reveals nothing
            refused()
    assert sfn.calls == []
    assert vram_free(fleet) == (5000, 1)
    assert fleet.task(running.task_id).state is TaskState.RUNNING


def test_a_result_for_a_task_still_waiting_is_refused(cloud: Cloud, dispatcher: Dispatcher, fleet: Fleet,
                                                      reports: TaskReports, sfn: RecordingStepFunctions) -> None:
    fleet.heartbeat(beat("local-0", draining=True), now=NOW)  # nothing starts
    queued = pool_task(job_id_for(2), NOW)
    running_job(cloud.settings, queued.job_id)
    assert dispatcher.enqueue(queued) == {}
    (task,) = fleet.open_tasks(Pool.LOCAL)
    with pytest.raises(NotFound):
        reports.result(task.task_id, succeeded(), task_secret(task.task_id))
    assert sfn.calls == []
    assert fleet.task(task.task_id).state is TaskState.WAITING
