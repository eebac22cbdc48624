"""The FaaS pool's dispatcher on the template's tables (moto): one submit per attempt, every end told once,
the budget reservation settled to what the provider billed (or kept whole when that is unknowable).

The provider is a scripted stand-in for the port (`FaasProvider`); the RunPod adapter itself is tested
against a real HTTP server in test_runpod.py, and the whole path end to end in test_routing_end_to_end.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from spillway import aws
from spillway.budget import BudgetLedger, Cap, ReservationState
from spillway.credentials import faas_task_id as task_id_for
from spillway.faas.dispatcher import SUBMIT_STALE_S, FaasDispatcher, FaasTaskState
from spillway.faas.provider import FaasRefused, FaasRejected, FaasRequest, FaasState, FaasStatus, FaasUnavailable
from spillway.jobs import JobStore
from spillway.models import JobStatus, Pool, Priority, TimerKind
from spillway.routing.rules import default_rules

from conftest import Cloud
from helpers import Clock, FakeTimers, RecordingStepFunctions, job_id_for, pool_task, running_job

NOW = 1_800_000_000.0
RULES = default_rules()
RESERVED = RULES.faas.reservation_micro


class ScriptedProvider:
    """Answers as told: `submit_error` raised by the next submit; `statuses` by job id."""

    def __init__(self) -> None:
        self.submitted: list[FaasRequest] = []
        self.submit_error: Exception | None = None
        self.statuses: dict[str, FaasStatus | Exception] = {}
        self.cancelled: list[str] = []
        self.cancel_error: Exception | None = None

    def submit(self, request: FaasRequest) -> str:
        if self.submit_error is not None:
            raise self.submit_error
        self.submitted.append(request)
        return f"rp-{len(self.submitted)}"

    def status(self, job_id: str) -> FaasStatus:
        answer = self.statuses.get(job_id, FaasStatus(job_id=job_id, state=FaasState.IN_QUEUE))
        if isinstance(answer, Exception):
            raise answer
        return answer

    def cancel(self, job_id: str) -> FaasStatus:
        if self.cancel_error is not None:
            raise self.cancel_error
        self.cancelled.append(job_id)
        return FaasStatus(job_id=job_id, state=FaasState.CANCELLED)


class World:
    def __init__(self, cloud: Cloud):
        s = cloud.settings
        self.cloud = cloud
        self.clock = Clock(NOW)
        self.provider = ScriptedProvider()
        self.sfn = RecordingStepFunctions()
        self.timers = FakeTimers()
        self.budget = BudgetLedger(aws.table(s.budget_table), aws.client("dynamodb"), clock=self.clock)
        self.jobs = aws.table(s.jobs_table)
        self.dispatcher = FaasDispatcher(
            tasks=aws.table(s.tasks_table), jobs=self.jobs, provider=self.provider, budget=self.budget,
            timers=self.timers, s3=aws.client("s3"), sfn=self.sfn, bucket=s.images_bucket, rules=lambda: RULES,
            endpoint_id="ep", public_api_url="https://api.test", webhook_key=lambda: b"k" * 32, clock=self.clock)

    def arrive(self, n: int = 1) -> str:
        """The Route step reserved the budget; the state machine opened the attempt and sent it."""
        job_id = job_id_for(n)
        running_job(self.cloud.settings, job_id, pool=Pool.FAAS)
        assert self.budget.reserve(task_id_for(job_id, 1), RESERVED, [Cap(cap_micro=10**9)]) is not None
        self.dispatcher.enqueue_batch([pool_task(job_id, NOW, pool=Pool.FAAS, priority=Priority.HIGH)])
        return task_id_for(job_id, 1)

    def ends(self, task_id: str, **status: Any) -> None:
        task = self.dispatcher.task(task_id)
        self.provider.statuses[task.provider_job_id] = FaasStatus(job_id=task.provider_job_id, **status)

    def reservation(self, task_id: str) -> tuple[ReservationState, int | None]:
        reservation = self.budget.reservation(task_id)
        return reservation.state, reservation.actual_micro

    def attempt(self, n: int = 1) -> dict[str, Any]:
        return self.jobs.get_item(Key={"job_id": job_id_for(n)})["Item"]["attempts"][0]


@pytest.fixture
def world(shared_cloud: Cloud) -> World:
    return World(shared_cloud)


def test_an_attempt_is_submitted_once_with_its_webhook_and_a_poll_timer(world: World) -> None:
    task_id = world.arrive()
    world.dispatcher.enqueue_batch([pool_task(job_id_for(1), NOW, pool=Pool.FAAS)])  # SQS delivers it again
    (request,) = world.provider.submitted
    assert request.task_id == task_id and request.execution_timeout_s == RULES.faas.max_seconds
    assert str(request.webhook_url).startswith(f"https://api.test/v1/faas/webhook/{task_id}?token=")
    assert 10 <= request.ttl_s <= 600, "still queued at the job's deadline, the provider drops it"
    assert world.dispatcher.task(task_id).state is FaasTaskState.SUBMITTED
    assert [t.kind for t in world.timers.of(task_id)] == [TimerKind.FAAS_STATUS]
    assert world.attempt()["gpu_id"] == "faas:ep"


def test_a_completed_job_is_told_once_and_its_budget_settled_to_the_billed_cost(world: World) -> None:
    task_id = world.arrive()
    world.ends(task_id, state=FaasState.COMPLETED, delay_ms=2_100, execution_ms=2_500, output={"result_bytes": 10})
    assert world.dispatcher.check(task_id) == "succeeded"
    assert world.dispatcher.check(task_id) == "over", "the webhook and the poll timer race: one end"
    ((name, call),) = world.sfn.calls
    assert name == "success" and '"result_key":"results/' in call["output"]
    billed = 5 * 760  # ceil(2.5 s run + 2 s cold start, seen in its delay) x $0.00076/s, in micro-dollars
    assert world.reservation(task_id) == (ReservationState.SETTLED, billed)
    assert float(world.attempt()["cost_usd"]) == pytest.approx(billed / 1e6)


@pytest.mark.parametrize("status, error, settled", [
    (dict(state=FaasState.FAILED, error="BadInput: not an image", execution_ms=300), "Spillway.BadInput", 1 * 760),
    (dict(state=FaasState.FAILED, error="boom", delay_ms=40, execution_ms=300), "Spillway.ModelError", 1 * 760),
    (dict(state=FaasState.TIMED_OUT, delay_ms=2_000, execution_ms=120_000), "Spillway.ModelError", 122 * 760),
    (dict(state=FaasState.TIMED_OUT), "Spillway.PoolRefused", None),  # never ran: a spill, nothing billed
], ids=["bad-input", "model-error", "ran-past-its-timeout", "never-started"])
def test_a_failed_job_is_told_by_kind(world: World, status: dict, error: str, settled: int | None) -> None:
    task_id = world.arrive()
    world.ends(task_id, **status)
    world.dispatcher.check(task_id)
    assert world.sfn.failures() == [(f"token-{job_id_for(1)}-1", error)]
    expected = (ReservationState.RELEASED, None) if settled is None else (ReservationState.SETTLED, settled)
    assert world.reservation(task_id) == expected


@pytest.mark.parametrize("refusal", [FaasRefused("429", 429), FaasUnavailable("down", request_sent=False),
                                     FaasRejected("401 bad key", 401)], ids=["throttled", "down", "misconfigured"])
def test_a_provider_that_does_not_take_the_job_is_a_spill_and_costs_nothing(world: World, refusal: Exception) -> None:
    world.provider.submit_error = refusal
    task_id = world.arrive()
    assert world.sfn.failures() == [(f"token-{job_id_for(1)}-1", "Spillway.PoolRefused")]
    assert world.reservation(task_id) == (ReservationState.RELEASED, None)


def test_a_submit_sent_but_unanswered_keeps_its_whole_reservation(world: World) -> None:
    world.provider.submit_error = FaasUnavailable("read timeout", request_sent=True)
    task_id = world.arrive()
    assert world.sfn.failures() == [(f"token-{job_id_for(1)}-1", "Spillway.GpuUnreachable")]
    assert world.reservation(task_id) == (ReservationState.SETTLED, RESERVED), "it may run: the worst case counts"


def test_a_claimed_submit_is_never_sent_twice_and_a_stale_claim_ends_the_attempt(world: World) -> None:
    job_id = job_id_for(1)
    running_job(world.cloud.settings, job_id, pool=Pool.FAAS)
    world.budget.reserve(task_id_for(job_id, 1), RESERVED, [Cap(cap_micro=10**9)])
    task = world.dispatcher._record(pool_task(job_id, NOW, pool=Pool.FAAS))
    assert world.dispatcher._claim(task), "an invocation claims it, then dies calling the provider"
    assert world.dispatcher.check(task.task_id) == "submitting", "the sweep does not send it again"
    assert world.dispatcher.submit(task) == "submitted already"
    assert world.provider.submitted == []
    world.clock.advance(SUBMIT_STALE_S)
    assert world.dispatcher.check(task.task_id) == "GpuUnreachable"
    assert world.reservation(task.task_id) == (ReservationState.SETTLED, RESERVED)


def test_a_job_the_provider_lost_ends_and_one_bad_task_does_not_stop_the_sweep(world: World) -> None:
    lost, fine = world.arrive(1), world.arrive(2)
    world.provider.statuses[world.dispatcher.task(lost).provider_job_id] = FaasRejected("404 not found", 404)
    world.ends(fine, state=FaasState.COMPLETED, execution_ms=1_000)
    world.provider.statuses["rp-3"] = RuntimeError("unexpected")  # a third task whose check blows up
    world.arrive(3)
    counts = world.dispatcher.sweep()
    assert counts == {"GpuUnreachable": 1, "succeeded": 1, "error": 1}
    assert len(world.timers.of(fine)) == 1, "the sweep sets no extra poll timer: each task has its one"
    assert world.reservation(lost) == (ReservationState.SETTLED, RESERVED)


def test_a_cancelled_job_is_cancelled_at_the_provider_and_its_budget_released(world: World) -> None:
    task_id = world.arrive()
    provider_job = world.dispatcher.task(task_id).provider_job_id
    assert world.dispatcher.cancel(task_id) == "PoolRefused", "it never ran: not an attempt, nothing billed"
    assert world.provider.cancelled == [provider_job]
    assert world.dispatcher.task(task_id).state is FaasTaskState.DONE
    assert world.reservation(task_id) == (ReservationState.RELEASED, None)
    assert world.dispatcher.cancel(task_id) == "over" and world.provider.cancelled == [provider_job]


def cancelled(world: World, n: int = 1) -> None:
    """The job's record ends CANCELLED: what a cancel writes first, before it ends the task (cancel.py)."""
    JobStore(world.jobs).close(job_id_for(n), JobStatus.CANCELLED, "2027-01-15T08:00:00.000+00:00")


def test_a_cancel_before_the_attempt_arrives_sends_nothing_and_frees_its_reservation(world: World) -> None:
    job_id = job_id_for(1)
    running_job(world.cloud.settings, job_id, pool=Pool.FAAS)
    task_id = task_id_for(job_id, 1)
    world.budget.reserve(task_id, RESERVED, [Cap(cap_micro=10**9)])
    cancelled(world)
    assert world.dispatcher.cancel(task_id) == "not_sent"
    assert world.reservation(task_id) == (ReservationState.RELEASED, None)
    world.dispatcher.enqueue_batch([pool_task(job_id, NOW, pool=Pool.FAAS)])  # the attempt's message, late
    assert world.provider.submitted == [] and world.dispatcher.task(task_id).state is FaasTaskState.DONE
    assert world.reservation(task_id) == (ReservationState.RELEASED, None)


def test_a_cancel_of_an_attempt_recorded_but_not_sent_ends_it_unsent(world: World) -> None:
    job_id = job_id_for(1)
    running_job(world.cloud.settings, job_id, pool=Pool.FAAS)
    world.budget.reserve(task_id_for(job_id, 1), RESERVED, [Cap(cap_micro=10**9)])
    task = world.dispatcher._record(pool_task(job_id, NOW, pool=Pool.FAAS))  # its delivery died here
    cancelled(world)
    assert world.dispatcher.cancel(task.task_id) == "PoolRefused"
    assert world.dispatcher.check(task.task_id) == "over", "the sweep does not send it later"
    assert world.provider.submitted == []
    assert world.reservation(task.task_id) == (ReservationState.RELEASED, None)


def test_a_cancel_while_the_provider_is_called_is_passed_on_to_the_provider(world: World) -> None:
    answers: list[str] = []
    submit = world.provider.submit

    def submit_then_cancel(request: FaasRequest) -> str:
        provider_job = submit(request)
        cancelled(world)  # the client cancels while /run is in flight: the task is SUBMITTING, no job id yet
        answers.append(world.dispatcher.cancel(request.task_id))
        return provider_job

    world.provider.submit = submit_then_cancel  # type: ignore[method-assign]
    task_id = world.arrive()
    assert answers == ["submitting"]
    assert world.provider.cancelled == ["rp-1"], "the submitter saw the cancel and told the provider"
    assert world.dispatcher.task(task_id).state is FaasTaskState.DONE
    assert world.reservation(task_id) == (ReservationState.RELEASED, None), "it never ran: nothing billed"


def test_a_cancel_the_provider_did_not_take_is_tried_again_by_the_next_poll(world: World) -> None:
    task_id = world.arrive()
    cancelled(world)
    world.provider.cancel_error = FaasUnavailable("connect timeout", request_sent=False)
    assert world.dispatcher.cancel(task_id) == "cancel_failed"
    world.provider.cancel_error = None
    assert world.dispatcher.check(task_id) == "PoolRefused", "its poll saw the job cancelled and cancelled it again"
    assert world.provider.cancelled == ["rp-1"]
    assert world.reservation(task_id) == (ReservationState.RELEASED, None)
