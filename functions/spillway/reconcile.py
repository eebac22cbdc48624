"""A job's record never contradicts its execution.

The job's end is written by whoever ends it: a success by the agent's report (before it tells the
execution, which ends on it), a failure by the Route step that decides it. If that write is lost — the
report's crashed, the execution failed on an error nothing caught, was stopped by an operator, timed
out, or the write failed past its retries — the record would stay QUEUED or RUNNING forever.
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
from spillway.endings import JobEndings
from spillway.jobs import JobRecord, JobStore
from spillway.limits import TenantLimits
from spillway.models import DispatchInput, JobStatus

logger = Logger(child=True)

# An open job younger than this is left alone: its execution may simply not have written yet (on
# AWS the EventBridge rule reconciles an ended execution within seconds; this is the safety net).
GRACE_SECONDS = 5 * 60
# A job still QUEUED this long after submit lost its intake message (an intake backlog is not that).
INTAKE_GRACE_SECONDS = 15 * 60
MAX_PER_SWEEP = 200  # oldest first; the next sweep goes on


class Reconciler:
    def __init__(self, jobs: JobStore, sfn: Any, admission: Admission, limits: TenantLimits,
                 clock: Callable[[], float] = time.time, endings: JobEndings | None = None):
        self._jobs = jobs
        self._limits = limits
        self._sfn = sfn
        self._admission = admission
        self._clock = clock
        self._endings = endings or JobEndings(jobs, clock=clock)

    def reconcile(self, job: JobRecord) -> str:
        """Bring one open job in line with its execution, and give an ended job's slot back to its tenant
        (idempotent: on AWS every execution's end comes here); returns what was done."""
        outcome = self._reconcile(job)
        if outcome in ("final", "reconciled"):
            self._limits.release(job.tenant, job.job_id)
        return outcome

    def _reconcile(self, job: JobRecord) -> str:
        if job.status.final:
            return "final"
        try:
            execution = self._sfn.describe_execution(executionArn=self._admission.execution_arn(job.job_id))
        except Exception as exc:
            if error_code(exc) != "ExecutionDoesNotExist":
                raise
            if job.status is JobStatus.QUEUED and self._age(job) > INTAKE_GRACE_SECONDS:
                if self._admission.start(_dispatch_input(job)) is None:
                    return "ended_at_admission"  # its first route ended it; admission gave its slot back
                logger.warning("admitted again: its intake message was lost", job_id=job.job_id)
                return "admitted"
            return "no_execution"  # yet: its intake message is on its way
        status = execution["status"]
        if status in ("RUNNING", "PENDING_REDRIVE"):
            return "running"
        ended_at = _iso(execution.get("stopDate"))
        # Answered here, counted and told nowhere else: the write that would have counted it is the one that was lost.
        if status == "SUCCEEDED":
            ended = JobStatus.SUCCEEDED
            output = json.loads(execution.get("output") or "{}")
            result_key = (output.get("result") or {}).get("result_key")
            closed = self._endings.close(job.job_id, ended, ended_at, result_key=result_key)
        else:
            # Stopped (ABORTED: a cancel whose own write was lost, or an operator's StopExecution) is a cancel;
            # timed out or failed uncaught is a failure.
            ended = JobStatus.CANCELLED if status == "ABORTED" else JobStatus.FAILED
            reason = execution.get("error") or f"Execution{status.title().replace('_', '')}"
            cause = execution.get("cause") or f"the dispatch execution ended {status}"
            closed = self._endings.close(job.job_id, ended, ended_at, error=f"{reason}: {cause}"[:2000])
        if not closed:
            return "final"
        logger.warning("job record brought in line with its execution", job_id=job.job_id, execution_status=status)
        return "reconciled"

    def reconcile_id(self, job_id: str) -> str:
        job = self._jobs.get(job_id)
        return self.reconcile(job) if job else "unknown"

    def sweep(self) -> dict[str, int]:
        """Every job open for longer than the grace period, oldest first, each on its own: one that
        cannot be reconciled now (throttled, say) is left to the next sweep."""
        older_than = _iso(datetime.fromtimestamp(self._clock() - GRACE_SECONDS, UTC))
        counts: dict[str, int] = {}
        jobs = [job for status in (JobStatus.QUEUED, JobStatus.RUNNING)
                for job in self._jobs.with_status(status, created_before=older_than)]
        for job in sorted(jobs, key=lambda j: j.created_at)[:MAX_PER_SWEEP]:
            try:
                outcome = self.reconcile(job)
            except Exception:
                logger.exception("could not reconcile the job now", job_id=job.job_id)
                outcome = "error"
            counts[outcome] = counts.get(outcome, 0) + 1
        return counts

    def _age(self, job: JobRecord) -> float:
        return self._clock() - datetime.fromisoformat(job.created_at).timestamp()


def _dispatch_input(job: JobRecord) -> DispatchInput:
    fields = job.model_dump(include=set(DispatchInput.model_fields))
    return DispatchInput.model_validate(fields | {"submitted_at": job.created_at})


def _iso(moment: datetime | None) -> str:
    return (moment or datetime.now(UTC)).astimezone(UTC).isoformat(timespec="milliseconds")
