"""Admission: one dispatch execution per job, named by the job id, so a start happens exactly once.

The first attempt is routed and opened here, before the start (the same Route step the state machine
runs after each failed attempt): the execution starts at the choice of the pool, so a job that
succeeds first time costs two state transitions.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from aws_lambda_powertools import Logger

from spillway.models import DispatchInput, ExecutionLimits
from spillway.priorities import job_clock
from spillway.routing.policy import Route, RouteAction

logger = Logger(child=True)


class Admission:
    def __init__(self, sfn: Any, state_machine_arn: str, attempt_timeout_seconds: int,
                 first_route: Callable[[str], Route], clock: Callable[[], float] = time.time):
        self._sfn = sfn
        self._first_route = first_route  # routes and opens the job's first attempt (idempotent)
        self._state_machine_arn = state_machine_arn
        self._attempt_timeout_seconds = attempt_timeout_seconds
        self._clock = clock

    def execution_arn(self, job_id: str) -> str:
        return self._state_machine_arn.replace(":stateMachine:", ":execution:") + f":{job_id}"

    def start(self, job: DispatchInput) -> str:
        """Start the job's dispatch execution, exactly once; returns its ARN.

        A repeated start (SQS delivers at least once) is harmless: Step Functions answers a start with
        the same name and input as a running execution with that execution, and refuses one whose
        namesake has finished (ExecutionAlreadyExists). The first route is decided once: a redelivery
        finds the attempt it opened.
        """
        execution_input = job.model_dump(mode="json") | {"limits": self.limits(job).model_dump(),
                                                         "route": self.first_route(job.job_id).model_dump(mode="json")}
        try:
            return self._sfn.start_execution(
                stateMachineArn=self._state_machine_arn, name=job.job_id, input=json.dumps(execution_input)
            )["executionArn"]
        except self._sfn.exceptions.ExecutionAlreadyExists:
            return self.execution_arn(job.job_id)

    def first_route(self, job_id: str) -> Route:
        """The first attempt routed and opened; if that fails, the execution's Route step tries (with its
        retries, and a job that cannot be routed fails there with why: it never stays open)."""
        try:
            return self._first_route(job_id)
        except Exception as exc:
            logger.exception("could not route the first attempt: the execution's Route step will", job_id=job_id)
            return Route(action=RouteAction.ROUTE, attempt=0, reason=f"admission could not route it: {exc!r}"[:500])

    def limits(self, job: DispatchInput) -> ExecutionLimits:
        """A Try* state's backstop: the longest a task may wait (the job's deadline) plus the longest
        run. The control plane's own clocks (wait bound, liveness) end an attempt well before it."""
        now = self._clock()
        _, deadline = job_clock(job.priority, job.submitted_at, job.deadline_at, now)
        return ExecutionLimits(task_timeout_seconds=int(max(deadline - now, 0)) + self._attempt_timeout_seconds)
