"""The FaaS pool's dispatcher: from an attempt on the faas queue to a job at the provider, and back.

An attempt becomes a task in the tasks table (its token stays there, as for every pool), then a job
at the provider with a webhook bound to a per-task secret. The provider has no waiting room of ours:
it queues and scales itself, or refuses (`PoolRefused`: the attempt never ran and is not counted).

The end of a job is learned three ways, all through `check`: the webhook (a poke: its body is not
trusted, the provider's status is asked), a status-poll timer (webhooks get lost), and the sweep.
A final status ends the task exactly once: the budget reservation the Route step made is settled to
the billed cost, the cost is written on the job's attempt, and the execution is told. A cancelled job's
task ends too (`cancel`): at the provider, or, not sent yet, never sent and free.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from enum import StrEnum
from typing import Any

from aws_lambda_powertools import Logger
from boto3.dynamodb.conditions import Key
from pydantic import BaseModel

from spillway import metrics
from spillway.aws import from_item, paged_items, to_item, version_param
from spillway.budget import BudgetLedger, ReservationState
from spillway.callbacks import Callbacks
from spillway.credentials import faas_task_id
from spillway.dispatch import INPUT_URL_SECONDS, result_key_for
from spillway.endings import JobEndings
from spillway.faas import billing, webhook
from spillway.faas.billing import MICRO
from spillway.faas.provider import (
    FaasError,
    FaasFailureKind,
    FaasProvider,
    FaasRefused,
    FaasRejected,
    FaasRequest,
    FaasState,
    FaasStatus,
    FaasUnavailable,
)
from spillway.jobs import JobStore, iso_at
from spillway.models import AttemptOutput, ErrorType, JobStatus, Pool, PoolTask, Timer, TimerKind
from spillway.priorities import job_clock
from spillway.routing.rules import RoutingRules
from spillway.timers import TimerQueue

logger = Logger(child=True)

POLL_EVERY_S = 15  # a job whose webhook never came is asked for this often
GIVE_UP_AFTER_S = 120  # past its timeout (and a cold start) by this much, a job that never ends is cancelled
SUBMIT_STALE_S = 60  # a submit claimed this long ago and never recorded died half-way (the provider may have it)


class FaasTaskState(StrEnum):
    NEW = "new"  # recorded; the provider has not got it
    SUBMITTING = "submitting"  # one invocation claimed it and is calling the provider (`claimed_at`)
    SUBMITTED = "submitted"  # the provider has it: `provider_job_id`
    DONE = "done"  # over, the cost settled; `open_pool` stays until the execution has been told


class FaasTask(BaseModel):
    task_id: str
    job_id: str
    attempt: int
    pool: Pool = Pool.FAAS
    service: str
    input_key: str
    input_version: str | None = None
    result_key: str
    task_token: str
    state: FaasTaskState = FaasTaskState.NEW
    provider_job_id: str | None = None
    deadline: float  # the job's, epoch seconds: the provider drops it if still queued then
    claimed_at: float | None = None
    submitted_at: float | None = None
    outcome: str | None = None
    error_type: str | None = None
    cause: str | None = None
    cost_micro: int | None = None
    open_pool: str | None = None  # the sweeper's index (`faas`), until the execution has been told
    expires_at: int


class FaasDispatcher:
    def __init__(self, tasks: Any, jobs: Any, provider: FaasProvider, budget: BudgetLedger, timers: TimerQueue,
                 s3: Any, sfn: Any, bucket: str, rules: Callable[[], RoutingRules], endpoint_id: str,
                 public_api_url: str, webhook_key: Callable[[], bytes], clock: Callable[[], float] = time.time,
                 endings: JobEndings | None = None):
        self._tasks = tasks
        self._jobs = jobs
        self._provider = provider
        self._budget = budget
        self._timers = timers
        self._s3 = s3
        self._callbacks = Callbacks(sfn)
        self._bucket = bucket
        self._rules = rules
        self._endpoint_id = endpoint_id
        self._public_api_url = public_api_url
        self._webhook_key = webhook_key
        self._clock = clock
        self._endings = endings or JobEndings(JobStore(jobs), clock=clock)

    # ---- arrivals

    def enqueue_batch(self, batch: list[PoolTask]) -> dict[str, str]:
        """Submit each attempt to the provider, once (idempotent by attempt). Returns task id -> outcome."""
        outcomes = {}
        for queued in batch:
            task = self._record(queued)
            outcomes[task.task_id] = self.submit(task)
        return outcomes

    def _record(self, queued: PoolTask) -> FaasTask:
        now = self._clock()
        task = FaasTask(
            task_id=faas_task_id(queued.job_id, queued.attempt), job_id=queued.job_id, attempt=queued.attempt,
            service=queued.service, input_key=queued.input_key, input_version=queued.input_version,
            result_key=result_key_for(queued.job_id, queued.attempt), task_token=queued.task_token,
            deadline=job_clock(queued.priority, queued.submitted_at, queued.deadline_at, now)[1],
            open_pool=Pool.FAAS.value, expires_at=int(now) + 7 * 86_400,
        )
        try:
            self._tasks.put_item(Item=to_item(task.model_dump(mode="json", exclude_none=True)),
                                 ConditionExpression="attribute_not_exists(task_id)")
            return task
        except self._tasks.meta.client.exceptions.ConditionalCheckFailedException:
            known = self.task(task.task_id)  # a redelivery: the send may have been retried with a new token
            assert known is not None
            if known.task_token != queued.task_token and known.state is not FaasTaskState.DONE:
                self._tasks.update_item(Key={"task_id": known.task_id}, UpdateExpression="SET task_token = :t",
                                        ExpressionAttributeValues={":t": queued.task_token})
                known.task_token = queued.task_token
            return known

    def submit(self, task: FaasTask) -> str:
        """Send the task to the provider, once: it is claimed first, and only the claimer calls (the provider's
        /run has no idempotency key: two calls would be two billed jobs)."""
        if task.state is not FaasTaskState.NEW or not self._claim(task):
            return "submitted already"
        if not self._wanted(task):  # cancelled (or moved on) before it was sent: nothing is sent, nothing spent
            return self._end(task, None, ErrorType.POOL_REFUSED, "its job ended before it was sent", cost=0)
        rules = self._rules()
        now = self._clock()
        request = FaasRequest(
            task_id=task.task_id, service=task.service,
            input_url=self._presign("get_object", task.input_key, **version_param(task.input_version)),
            output_url=self._presign("put_object", task.result_key, ContentType="image/png"),
            webhook_url=webhook.webhook_url(self._public_api_url, task.task_id, self._webhook_key())
            if self._public_api_url else None,
            execution_timeout_s=rules.faas.max_seconds,
            ttl_s=max(10, int(task.deadline - now)),  # still queued at the job's deadline: the provider drops it
        )
        try:
            job_id = self._provider.submit(request)
        except FaasRefused as refused:  # at capacity or throttled: it never ran, another pool takes it
            return self._end(task, None, ErrorType.POOL_REFUSED, f"the FaaS provider refused it: {refused}", cost=0)
        except FaasUnavailable as down:
            if not down.request_sent:  # nothing ran: another pool takes it
                return self._end(task, None, ErrorType.POOL_REFUSED, f"the FaaS provider is down: {down}", cost=0)
            # Sent but unanswered: a job may run that we cannot follow; its reservation is kept (the worst
            # case), so the cap still holds.
            return self._end(task, None, ErrorType.GPU_UNREACHABLE, f"the FaaS provider did not answer: {down}",
                             cost=None)
        except FaasRejected as rejected:  # our request or our configuration (key, endpoint) is wrong
            logger.error("the FaaS provider rejected a request: check its endpoint and key", error=str(rejected))
            return self._end(task, None, ErrorType.POOL_REFUSED, f"the FaaS provider rejected it: {rejected}", cost=0)
        now = self._clock()
        self._tasks.update_item(
            Key={"task_id": task.task_id}, UpdateExpression="SET #state = :submitted, provider_job_id = :job, "
                                                            "submitted_at = :now",
            ConditionExpression="#state = :submitting", ExpressionAttributeNames={"#state": "state"},
            ExpressionAttributeValues=to_item({":submitted": FaasTaskState.SUBMITTED.value, ":job": job_id,
                                               ":now": now, ":submitting": FaasTaskState.SUBMITTING.value}))
        self._note_on_job(task, "SET attempts[{n}].assigned_at = :at, attempts[{n}].gpu_id = :gpu",
                          {":at": iso_at(now), ":gpu": self.gpu_label})
        self._poll_later(task.task_id, now, first=True)
        logger.info("submitted to faas", job_id=task.job_id, task_id=task.task_id, provider_job_id=job_id)
        if not self._wanted(task):  # cancelled while the provider was called: that cancel had no job id to stop
            return self.cancel(task.task_id)
        return "submitted"

    def _claim(self, task: FaasTask) -> bool:
        try:
            self._tasks.update_item(
                Key={"task_id": task.task_id}, UpdateExpression="SET #state = :submitting, claimed_at = :now",
                ConditionExpression="#state = :new", ExpressionAttributeNames={"#state": "state"},
                ExpressionAttributeValues=to_item({":submitting": FaasTaskState.SUBMITTING.value,
                                                   ":new": FaasTaskState.NEW.value, ":now": self._clock()}))
        except self._tasks.meta.client.exceptions.ConditionalCheckFailedException:
            return False
        return True

    @property
    def gpu_label(self) -> str:
        return f"faas:{self._endpoint_id}"

    # ---- its end: webhook, poll timer, sweep

    def check(self, task_id: str, rearm: bool = True) -> str:
        """Ask the provider how the task's job stands; end the task if the job is over. `rearm`: poll again
        later if it is not (the sweep does not: each task has its one poll timer)."""
        task = self.task(task_id)
        if task is None:
            return "unknown"
        now = self._clock()
        if task.state is FaasTaskState.DONE:
            if task.open_pool:  # ended, but its budget or its execution not told yet (a crash in between)
                self._settle(task, task.cost_micro)
                self._tell(task)
            return "over"
        if task.state is FaasTaskState.NEW:
            return self.submit(task)  # the first delivery died before it claimed the task
        if task.state is FaasTaskState.SUBMITTING:
            if now - (task.claimed_at or now) < SUBMIT_STALE_S:
                return "submitting"
            # The invocation that claimed it died calling the provider: it may run there, unfollowed.
            return self._end(task, None, ErrorType.GPU_UNREACHABLE, "the call to the FaaS provider was cut off",
                             cost=None)
        assert task.provider_job_id is not None and task.submitted_at is not None
        try:
            status = self._provider.status(task.provider_job_id)
        except (FaasUnavailable, FaasRefused) as exc:
            logger.warning("faas status unavailable", task_id=task_id, error=str(exc))
            if rearm:
                self._poll_later(task_id, now)
            return "unanswered"
        except FaasRejected as lost:  # the provider no longer knows the job (it keeps results 30 min)
            return self._end(task, None, ErrorType.GPU_UNREACHABLE, f"the FaaS provider lost the job: {lost}",
                             cost=None)
        if not status.final and not self._wanted(task):  # cancelled, and the provider still has it: a cancel failed
            status = self._cancelled_at_provider(task) or status
        if status.final:
            return self._finish(task, status)
        rules = self._rules()
        if now - task.submitted_at > rules.faas.max_seconds + rules.faas.cold_start_seconds + GIVE_UP_AFTER_S:
            with contextlib.suppress(FaasError):  # stop paying for a job the provider seems to have lost
                self._provider.cancel(task.provider_job_id)
            return self._end(task, None, ErrorType.GPU_UNREACHABLE,
                             f"the FaaS job never ended ({status.state.value} after {now - task.submitted_at:.0f} s)",
                             cost=None)
        if rearm:
            self._poll_later(task_id, now)
        return status.state.value

    def on_timer(self, timer: Timer) -> str:
        return self.check(timer.task_id)

    def cancel(self, task_id: str) -> str:
        """Its job was cancelled (the job's record says so first): stop paying for it, and end the task as the
        provider says it ended (billed for what it ran; nothing if it never started). An attempt not sent yet
        never is: `submit` reads the job before it calls the provider and again after, so a cancel before
        the call ends the task unsent and free, and one during it is passed on by the submitter. A cancel the
        provider did not take is tried again by the task's next poll."""
        task = self.task(task_id)
        if task is None:  # its attempt has not arrived: when it does, it is not sent; its reservation is free now
            self._budget.release(task_id)
            return "not_sent"
        if task.state is FaasTaskState.DONE:
            return "over"
        if task.state is FaasTaskState.NEW:
            return self.submit(task)  # which sees the job cancelled: the task ends unsent
        if task.state is FaasTaskState.SUBMITTING:
            return "submitting"  # its submitter sees the cancel once the provider answers, and cancels there
        status = self._cancelled_at_provider(task)
        if status is None:
            return "cancel_failed"
        return self._finish(task, status) if status.final else status.state.value

    def _cancelled_at_provider(self, task: FaasTask) -> FaasStatus | None:
        """Cancel the task's job at the provider: how it stands then, or None if the provider did not answer."""
        assert task.provider_job_id is not None
        try:
            return self._provider.cancel(task.provider_job_id)
        except FaasError as exc:
            logger.warning("faas cancel failed: the task's next poll tries again", job_id=task.job_id,
                           task_id=task.task_id, error=str(exc))
            return None

    def sweep(self) -> dict[str, int]:
        """The safety net: every FaaS task not over, or over but its execution not told, is checked."""
        counts: dict[str, int] = {}
        items = paged_items(self._tasks.query, IndexName="open-by-pool",
                            KeyConditionExpression=Key("open_pool").eq(Pool.FAAS.value))
        for item in items:
            try:
                outcome = self.check(item["task_id"], rearm=False)
            except Exception:  # one task's trouble must not keep the sweep from the others
                logger.exception("checking a FaaS task failed", task_id=item["task_id"])
                outcome = "error"
            counts[outcome] = counts.get(outcome, 0) + 1
        return counts

    def _finish(self, task: FaasTask, status: FaasStatus) -> str:
        rules = self._rules()
        # A cold start is billed too; the provider reports it only inside the job's delay (with any queueing),
        # so a delay at least that long is counted as one.
        cold = (status.delay_ms or 0) >= rules.faas.cold_start_seconds * 1000
        cost = billing.cost_micro(status, rules.faas.price_per_second_usd,
                                  overhead_s=rules.faas.cold_start_seconds if cold else 0)
        if status.state is FaasState.COMPLETED:
            return self._end(task, status, None, "", cost)
        if status.state in (FaasState.TIMED_OUT, FaasState.CANCELLED) and status.execution_ms is None:
            # It never ran (it waited in the provider's queue past its ttl): not an attempt, nothing billed.
            return self._end(task, status, ErrorType.POOL_REFUSED,
                             f"the FaaS job never started ({status.state.value})", cost=0)
        kind = status.failure_kind
        error = ErrorType(kind.value) if kind and kind is not FaasFailureKind.MODEL_ERROR else ErrorType.MODEL_ERROR
        why = {FaasState.TIMED_OUT: f"the FaaS run passed its {rules.faas.max_seconds} s timeout",
               FaasState.CANCELLED: "the FaaS job was cancelled"}.get(status.state, status.error or "failed")
        return self._end(task, status, error, why, cost)

    def _end(self, task: FaasTask, status: FaasStatus | None, error: ErrorType | None, cause: str,
             cost: int | None) -> str:
        """End the task exactly once: settle its budget, note its cost on the job, tell its execution."""
        outcome = "succeeded" if error is None else "failed"
        values: dict[str, Any] = {":done": FaasTaskState.DONE.value, ":outcome": outcome}
        update = "SET #state = :done, outcome = :outcome"
        if cost is not None:
            update += ", cost_micro = :cost"
            values[":cost"] = cost
        if error is not None:
            update += ", error_type = :error, cause = :cause"
            values |= {":error": error.value, ":cause": cause[:2000]}
        try:
            self._tasks.update_item(
                Key={"task_id": task.task_id}, UpdateExpression=update, ConditionExpression="#state <> :done",
                ExpressionAttributeNames={"#state": "state"}, ExpressionAttributeValues=to_item(values))
        except self._tasks.meta.client.exceptions.ConditionalCheckFailedException:
            return "over"  # ended by another check meanwhile
        metrics.attempt_ended(Pool.FAAS, error.value if error else "succeeded")
        settled = self._settle(task, cost)
        if status is not None and status.execution_ms is not None:
            ended = self._clock()
            self._note_on_job(task, "SET attempts[{n}].running_at = :run, attempts[{n}].cost_usd = :cost",
                              {":run": iso_at(ended - status.execution_ms / 1000), ":cost": settled / MICRO})
        elif settled:
            self._note_on_job(task, "SET attempts[{n}].cost_usd = :cost", {":cost": settled / MICRO})
        task = task.model_copy(update={"state": FaasTaskState.DONE, "outcome": outcome,
                                       "error_type": error.value if error else None, "cause": cause})
        logger.info("faas task ended", job_id=task.job_id, task_id=task.task_id, outcome=outcome,
                    error_type=error and error.value, cost_usd=settled / MICRO)
        self._tell(task)
        return outcome if error is None else error.value

    def _settle(self, task: FaasTask, cost: int | None) -> int:
        """Settle the Route step's reservation (made under the task id) to the billed cost; unknown cost
        keeps the whole reservation. Returns what the attempt is taken to have cost, micro-dollars."""
        reservation = self._budget.reservation(task.task_id)
        if reservation is None:
            return cost or 0
        if reservation.state is not ReservationState.RESERVED:  # settled already (a retried check)
            return reservation.actual_micro or 0
        actual = reservation.amount_micro if cost is None else cost
        if actual == 0:
            self._budget.release(reservation)
        else:
            self._budget.settle(reservation, actual)
        return actual

    def _tell(self, task: FaasTask) -> None:
        if task.outcome == "succeeded":
            # The job's record first (fenced by the attempt, so written, counted and told once): the success
            # ends its execution, with no write of its own.
            self._endings.succeed(task.job_id, task.attempt, task.result_key, self.gpu_label, iso_at(self._clock()))
            self._callbacks.succeeded(task.task_token, AttemptOutput(
                task_id=task.task_id, gpu_id=self.gpu_label, result_key=task.result_key, duration_ms=0))
        else:
            self._callbacks.failed(task.task_token, ErrorType(task.error_type or ErrorType.MODEL_ERROR),
                                   task.cause or "failed")
        self._tasks.update_item(Key={"task_id": task.task_id}, UpdateExpression="REMOVE open_pool")

    # ---- plumbing

    def task(self, task_id: str) -> FaasTask | None:
        item = self._tasks.get_item(Key={"task_id": task_id}, ConsistentRead=True).get("Item")
        return FaasTask.model_validate(from_item(item)) if item and item.get("pool") == Pool.FAAS.value else None

    def _wanted(self, task: FaasTask) -> bool:
        """Whether the task's job still waits for it: open, on this attempt (a cancel closes it first)."""
        job = self._jobs.get_item(Key={"job_id": task.job_id}, ConsistentRead=True,
                                  ProjectionExpression="#status, attempt",
                                  ExpressionAttributeNames={"#status": "status"}).get("Item") or {}
        return job.get("status") == JobStatus.RUNNING.value and job.get("attempt") == task.attempt

    def _note_on_job(self, task: FaasTask, update: str, values: dict[str, Any]) -> None:
        """What the attempt's record learns (its start, its cost), fenced by the attempt number."""
        try:
            self._jobs.update_item(
                Key={"job_id": task.job_id}, UpdateExpression=update.format(n=task.attempt - 1),
                ConditionExpression="attempt = :n AND #status = :running",
                ExpressionAttributeNames={"#status": "status"},
                ExpressionAttributeValues=to_item(values | {":n": task.attempt, ":running": JobStatus.RUNNING.value}))
        except self._jobs.meta.client.exceptions.ConditionalCheckFailedException:
            logger.info("attempt moved on: not noted", job_id=task.job_id, task_id=task.task_id)

    def _poll_later(self, task_id: str, now: float, first: bool = False) -> None:
        delay = max(POLL_EVERY_S, 2 * self._rules().faas.expected_seconds) if first else POLL_EVERY_S
        self._timers.set(Timer(kind=TimerKind.FAAS_STATUS, task_id=task_id, due_at=now + delay), now)

    def _presign(self, operation: str, key: str, **extra: str) -> str:
        return self._s3.generate_presigned_url(
            operation, Params={"Bucket": self._bucket, "Key": key, **extra}, ExpiresIn=INPUT_URL_SECONDS)
