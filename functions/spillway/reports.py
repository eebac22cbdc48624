"""What agents report about their tasks, turned into Step Functions callbacks.

The token stays here: the agent names a task id, this code looks the token up. A result ends the
task exactly once (a conditional write), a success is recorded on the job (the execution ends on it
without another write), and only then is the callback sent; a repeated report
re-sends the first outcome, so a lost answer to the agent costs nothing. A task whose attempt
has moved on (AWS says TaskTimedOut) answers `current: False` and the agent stops.

A task heartbeat keeps the task's liveness clock (in the tasks table, see `dispatch`) going; it
is not relayed to Step Functions, whose own clock would also count the wait for a GPU.
A result frees a slot: `freed` is told, so the pool's waiting room moves on at once.

Every report presents the task's secret, which only the signed push to its GPU carried: a report
without it, for another GPU's task, or for no task at all gets the same 404 and changes nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from aws_lambda_powertools import Logger

from spillway import credentials, metrics
from spillway.callbacks import Callbacks
from spillway.endings import JobEndings
from spillway.errors import NotFound
from spillway.fleet import Fleet, Task
from spillway.jobs import JobStore, iso_at
from spillway.models import AttemptOutput, CallbackAck, ErrorType, TaskHeartbeat, TaskResult, TaskState

logger = Logger(child=True)


class TaskReports:
    def __init__(self, fleet: Fleet, sfn: Any, jobs: JobStore, freed: Callable[[Task], object] = lambda task: None,
                 clock: Callable[[], float] = time.time, endings: JobEndings | None = None):
        self._fleet = fleet
        self._endings = endings or JobEndings(jobs, clock=clock)
        self._callbacks = Callbacks(sfn)
        self._freed = freed
        self._clock = clock

    def heartbeat(self, task_id: str, beat: TaskHeartbeat, secret: str) -> CallbackAck:
        self._task(task_id, beat.gpu_id, secret)
        return CallbackAck(current=self._fleet.beat(task_id, beat.gpu_id, self._clock()))

    def result(self, task_id: str, result: TaskResult, secret: str) -> CallbackAck:
        task = self._task(task_id, result.gpu_id, secret)
        if result.outcome == "failed" and result.error_type is None:
            result = result.model_copy(update={"error_type": ErrorType.MODEL_ERROR})
        error_type = result.error_type.value if result.error_type else None
        ended_here = self._fleet.release(task, result.outcome, error_type, now=self._clock())
        if ended_here:
            metrics.attempt_ended(task.pool, error_type or "succeeded")
        else:
            task = self._fleet.task(task_id) or task
            if task.state is not TaskState.DONE or task.outcome not in ("succeeded", "failed") \
                    or task.gpu_id != result.gpu_id:
                return CallbackAck(current=False)  # given back, expired or abandoned: it never ran here
            logger.info("repeated result: re-sending the first outcome", task_id=task_id, outcome=task.outcome)
            result = result.model_copy(update={"outcome": task.outcome, "error_type": task.error_type})
        logger.info(
            "task ended", job_id=task.job_id, task_id=task_id, gpu_id=task.gpu_id,
            outcome=result.outcome, error_type=result.error_type, duration_ms=result.duration_ms,
        )
        try:
            if result.outcome == "succeeded":
                self._job_succeeded(task, result.gpu_id)  # repeated: writes what a crash may have lost, or nothing
                output = AttemptOutput(task_id=task.task_id, gpu_id=result.gpu_id, result_key=task.result_key,
                                       duration_ms=result.duration_ms)
                current = self._callbacks.succeeded(task.task_token, output)
            else:
                error = ErrorType(result.error_type or ErrorType.MODEL_ERROR)
                current = self._callbacks.failed(task.task_token, error, result.message or error.value)
        finally:
            # The slot is free whatever the callback did (a retried report finds it released already).
            # The report is recorded either way: a failed pump leaves the room to the next one or the sweep.
            try:
                self._freed(task)
            except Exception:
                logger.exception("pumping after a freed slot failed", job_id=task.job_id, task_id=task.task_id)
        if not current:
            logger.info("attempt has moved on", job_id=task.job_id, task_id=task.task_id)
        return CallbackAck(current=current)

    def _job_succeeded(self, task: Task, gpu_id: str) -> None:
        """The job is done, recorded before its execution is told (the success ends the execution there):
        fenced by the attempt, so it is written, counted and told once."""
        self._endings.succeed(task.job_id, task.attempt, task.result_key, gpu_id, iso_at(self._clock()))

    def _task(self, task_id: str, gpu_id: str, secret: str) -> Task:
        """The task, if it runs on that GPU and the secret is its own; else one answer for all, which
        reveals nothing (not whether the task exists, nor where it runs)."""
        task = self._fleet.task(task_id)
        if task is None or task.gpu_id != gpu_id or not credentials.matches(secret, task.secret_hash):
            raise NotFound(f"no task {task_id} on {gpu_id} with that secret")
        return task
