"""Admission: one dispatch execution per job, named by the job id, so a start happens exactly once.

The first attempt is routed and opened here, before the start (the same Route step the state machine
runs after each failed attempt): the execution starts at RunAttempt, so a job that succeeds first time
costs one state transition. A job its first route ends (no GPU could ever run it, say) is answered here
and gets no execution. A routing that raises is tried again with the intake message; its last receive
fails the job with why instead of dead-lettering it (a job submitted is a job answered).
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
from spillway.routing.router import SharedFleet

logger = Logger(child=True)


class Admission:
    def __init__(self, sfn: Any, state_machine_arn: str, attempt_timeout_seconds: int,
                 first_route: Callable[[str, SharedFleet | None], Route], fail: Callable[[str, str], bool],
                 ended: Callable[[str], object] = lambda job_id: None, clock: Callable[[], float] = time.time):
        self._sfn = sfn
        self._first_route = first_route  # routes and opens the job's first attempt, or ends the job (idempotent)
        self._fail = fail  # the job FAILED with why, its end counted and told (Router.fail)
        # A job that ends here: its tenant's slot back (Reconciler.reconcile), as an execution's end gives it
        # back on AWS, since no execution will ever end for it.
        self._ended = ended
        self._state_machine_arn = state_machine_arn
        self._attempt_timeout_seconds = attempt_timeout_seconds
        self._clock = clock

    def execution_arn(self, job_id: str) -> str:
        return self._state_machine_arn.replace(":stateMachine:", ":execution:") + f":{job_id}"

    def start(self, job: DispatchInput, last_try: bool = False, fleet: SharedFleet | None = None) -> str | None:
        """Route the job's first attempt and start its dispatch execution, exactly once; returns the
        execution's ARN, or None if the route ended the job (its record says why). `fleet`: the fleet as read
        for the whole batch of jobs being admitted (see `SharedFleet`).

        A repeated start (SQS delivers at least once) is harmless: the first route is decided once (a
        redelivery finds the attempt it opened), and Step Functions answers a start with the same name and
        input as a running execution with that execution, and refuses one whose namesake has finished
        (ExecutionAlreadyExists). A failure raises, for the message to come again — unless this is its
        `last_try`: then the job fails with why, as no execution will ever run it.
        """
        try:
            route = self._first_route(job.job_id, fleet)
            if route.action is RouteAction.RUN:
                return self._start(job, route)
        except Exception as exc:
            if not last_try:
                raise
            logger.exception("admission's last try failed: the job fails", job_id=job.job_id)
            self._fail(job.job_id, f"admission could not start it: {exc!r}"[:500])
        self._ended(job.job_id)
        return None

    def _start(self, job: DispatchInput, route: Route) -> str:
        execution_input = job.model_dump(mode="json") | {"limits": self.limits(job).model_dump(),
                                                         "route": route.model_dump(mode="json")}
        try:
            return self._sfn.start_execution(
                stateMachineArn=self._state_machine_arn, name=job.job_id, input=json.dumps(execution_input)
            )["executionArn"]
        except self._sfn.exceptions.ExecutionAlreadyExists:
            return self.execution_arn(job.job_id)

    def limits(self, job: DispatchInput) -> ExecutionLimits:
        """RunAttempt's backstop: the longest a task may wait (the job's deadline) plus the longest
        run. The control plane's own clocks (wait bound, liveness) end an attempt well before it."""
        now = self._clock()
        _, deadline = job_clock(job.priority, job.submitted_at, job.deadline_at, now)
        return ExecutionLimits(task_timeout_seconds=int(max(deadline - now, 0)) + self._attempt_timeout_seconds)
