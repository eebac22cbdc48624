"""A job's record never contradicts its execution.

The dispatch execution writes the job's end itself (RecordSuccess / RecordFailure). If that write
is lost — the execution failed on an error nothing caught, was stopped by an operator, timed out,
or the write itself failed past its retries — the record would stay QUEUED or RUNNING forever.
The reconciler brings it to the execution's end state with the execution's reason. It runs on
each execution status change (an EventBridge rule on AWS) and on a schedule over every open job
(the safety net, and the only path offline, where moto emits no such events). A job still QUEUED
with no execution (its intake message was lost) is admitted again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from aws_lambda_powertools import Logger

from spillway.admission import Admission
from spillway.aws import error_code
from spillway.jobs import JobRecord, JobStore
from spillway.models import DispatchInput, JobStatus

logger = Logger(child=True)

# An open job younger than this is left alone: its execution may simply not have written yet.
GRACE_SECONDS = 60


class Reconciler:
    def __init__(self, jobs: JobStore, sfn: Any, admission: Admission, clock: Callable[[], float] = time.time):
        self._jobs = jobs
        self._sfn = sfn
        self._admission = admission
        self._clock = clock

    def reconcile(self, job: JobRecord) -> str:
        """Bring one open job in line with its execution; returns what was done."""
        if job.status.final:
            return "final"
        try:
            execution = self._sfn.describe_execution(executionArn=self._admission.execution_arn(job.job_id))
        except Exception as exc:
            if error_code(exc) != "ExecutionDoesNotExist":
                raise
            if job.status is JobStatus.QUEUED:
                self._admission.start(_dispatch_input(job))
                logger.warning("admitted again: its intake message was lost", job_id=job.job_id)
                return "admitted"
            return "no_execution"
        status = execution["status"]
        if status in ("RUNNING", "PENDING_REDRIVE"):
            return "running"
        ended_at = _iso(execution.get("stopDate"))
        if status == "SUCCEEDED":
            output = json.loads(execution.get("output") or "{}")
            result_key = (output.get("result") or {}).get("result_key")
            closed = self._jobs.close(job.job_id, JobStatus.SUCCEEDED, ended_at, result_key=result_key)
        else:
            reason = execution.get("error") or f"Execution{status.title().replace('_', '')}"
            cause = execution.get("cause") or f"the dispatch execution ended {status}"
            closed = self._jobs.close(job.job_id, JobStatus.FAILED, ended_at, error=f"{reason}: {cause}"[:2000])
        if not closed:
            return "final"
        logger.warning("job record brought in line with its execution", job_id=job.job_id, execution_status=status)
        return "reconciled"

    def reconcile_id(self, job_id: str) -> str:
        job = self._jobs.get(job_id)
        return self.reconcile(job) if job else "unknown"

    def sweep(self) -> dict[str, int]:
        """Every job open for longer than the grace period."""
        older_than = datetime.fromtimestamp(self._clock() - GRACE_SECONDS, UTC).isoformat(timespec="milliseconds")
        counts: dict[str, int] = {}
        for status in (JobStatus.QUEUED, JobStatus.RUNNING):
            for job in self._jobs.with_status(status, created_before=older_than):
                outcome = self.reconcile(job)
                counts[outcome] = counts.get(outcome, 0) + 1
        return counts


def _dispatch_input(job: JobRecord) -> DispatchInput:
    return DispatchInput.model_validate(job.model_dump(include=set(DispatchInput.model_fields)))


def _iso(moment: datetime | None) -> str:
    return (moment or datetime.now(UTC)).astimezone(UTC).isoformat(timespec="milliseconds")
