"""Cancelling a job: its record ends CANCELLED first (the one write that decides: a success or failure
written before it makes the cancel a 409), then its execution is stopped and its attempt's task ended —
out of the waiting room, or its GPU freed and its agent told, or its FaaS job cancelled.

Idempotent: cancelling a CANCELLED job does the stop and the freeing again (each a no-op once done), so a
cancel cut off half-way is finished by its retry; and whatever of it is lost, a CANCELLED job's task can no
longer take a GPU (a lease is conditional on the job RUNNING) and its execution's writes are refused (each
is conditional on the job being open).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from aws_lambda_powertools import Logger

from spillway.aws import error_code
from spillway.endings import JobEndings
from spillway.errors import Conflict, NotFound
from spillway.jobs import JobRecord, JobStore, iso_at
from spillway.models import JobStatus, Pool

logger = Logger(child=True)

CANCELLED_ERROR = "Spillway.Cancelled"


class Cancellation:
    def __init__(self, jobs: JobStore, sfn: Any, execution_arn: Callable[[str], str],
                 end_task: dict[Pool, Callable[[str, int], str]], endings: JobEndings,
                 clock: Callable[[], float] = time.time):
        self._jobs = jobs
        self._sfn = sfn
        self._execution_arn = execution_arn
        self._end_task = end_task  # by pool: end the task of this job's attempt now (Dispatcher/FaasDispatcher.cancel)
        self._endings = endings
        self._clock = clock

    def cancel(self, job: JobRecord, reason: str | None = None) -> JobRecord:
        """Cancel a queued or running job, as just read; returns it, CANCELLED. Conflict if it ended otherwise."""
        job_id = job.job_id
        why = f"{CANCELLED_ERROR}: {reason or 'cancelled by its client'}"
        if job.status is not JobStatus.CANCELLED:
            if job.status.final:
                raise Conflict(f"job {job_id} is {job.status.value}: only a QUEUED or RUNNING job can be cancelled")
            closed = self._endings.close(job_id, JobStatus.CANCELLED, iso_at(self._clock()), error=why)
            if closed is None:
                return self.cancel(self._job(job_id), reason)  # it ended meanwhile: answer as it stands now
            logger.info("job cancelled", job_id=job_id, reason=why)
            job = closed  # its last attempt, as of the write that closed it
        self._stop_execution(job_id, why)
        if job.attempts:
            pool = job.attempts[-1].pool
            outcome = self._end_task[pool](job_id, job.attempt)
            logger.info("cancelled job's task ended", job_id=job_id, pool=pool.value, outcome=outcome)
        return job

    def _stop_execution(self, job_id: str, why: str) -> None:
        try:
            self._sfn.stop_execution(executionArn=self._execution_arn(job_id), error=CANCELLED_ERROR,
                                     cause=why[:32_000])
        except Exception as exc:
            if error_code(exc) != "ExecutionDoesNotExist":  # not admitted yet: its first write will be refused
                raise

    def _job(self, job_id: str) -> JobRecord:
        job = self._jobs.get(job_id)
        if job is None:
            raise NotFound(f"no job {job_id}")
        return job
