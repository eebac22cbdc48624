"""Admission: one dispatch execution per job, named by the job id, so a start happens exactly once."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from spillway.models import DispatchInput, ExecutionLimits
from spillway.priorities import job_clock


class Admission:
    def __init__(self, sfn: Any, state_machine_arn: str, attempt_timeout_seconds: int,
                 clock: Callable[[], float] = time.time):
        self._sfn = sfn
        self._state_machine_arn = state_machine_arn
        self._attempt_timeout_seconds = attempt_timeout_seconds
        self._clock = clock

    def execution_arn(self, job_id: str) -> str:
        return self._state_machine_arn.replace(":stateMachine:", ":execution:") + f":{job_id}"

    def start(self, job: DispatchInput) -> str:
        """Start the job's dispatch execution, exactly once; returns its ARN.

        A repeated start (SQS delivers at least once) is harmless: Step Functions answers a start with
        the same name and input as a running execution with that execution, and refuses one whose
        namesake has finished (ExecutionAlreadyExists).
        """
        execution_input = job.model_dump(mode="json") | {"limits": self.limits(job).model_dump()}
        try:
            return self._sfn.start_execution(
                stateMachineArn=self._state_machine_arn, name=job.job_id, input=json.dumps(execution_input)
            )["executionArn"]
        except self._sfn.exceptions.ExecutionAlreadyExists:
            return self.execution_arn(job.job_id)

    def limits(self, job: DispatchInput) -> ExecutionLimits:
        """A Try* state's backstop: the longest a task may wait (the job's deadline) plus the longest
        run. The control plane's own clocks (wait bound, liveness) end an attempt well before it."""
        now = self._clock()
        _, deadline = job_clock(job.priority, job.submitted_at, job.deadline_at, now)
        return ExecutionLimits(task_timeout_seconds=int(max(deadline - now, 0)) + self._attempt_timeout_seconds)
