"""A job's end, wherever it is decided (a result, a route that ends it, the reconciler, a cancel): written by one
conditional write, and only by the writer whose write ended the job, counted once and, for a job with a
`webhook_url`, its webhook queued. Every write that closes a job goes through here, so no ending path can
forget its metric or its webhook."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from spillway import metrics
from spillway.jobs import JobRecord, JobStore
from spillway.models import JobStatus, WebhookNotice


class JobEndings:
    def __init__(self, jobs: JobStore, sqs: Any = None, webhook_queue_url: str | None = None,
                 clock: Callable[[], float] = time.time):
        self._jobs = jobs
        self._sqs = sqs
        self._queue_url = webhook_queue_url  # None: count only (unit tests of code that ends jobs)
        self._clock = clock

    def close(self, job_id: str, status: JobStatus, at: str, *, result_key: str | None = None,
              error: str | None = None, attempt: int | None = None) -> JobRecord | None:
        """End an open job (see `JobStore.close`); the job as written if this write ended it, else None."""
        job = self._jobs.close(job_id, status, at, result_key=result_key, error=error, attempt=attempt)
        return self._ended(job, status)

    def succeed(self, job_id: str, attempt: int, result_key: str, gpu_id: str, at: str) -> JobRecord | None:
        """The job done on `attempt` (see `JobStore.succeed`); the job as written if this write ended it, else None."""
        return self._ended(self._jobs.succeed(job_id, attempt, result_key, gpu_id, at), JobStatus.SUCCEEDED)

    def _ended(self, job: JobRecord | None, status: JobStatus) -> JobRecord | None:
        if job is None:  # another writer ended it (or it moved on): that one counts and tells
            return None
        metrics.job_finished(job, status, self._clock())
        if job.webhook_url and self._queue_url:
            # The sender reads the record itself (its end is the record's): the message only names the job.
            self._sqs.send_message(QueueUrl=self._queue_url,
                                   MessageBody=WebhookNotice(job_id=job.job_id).model_dump_json())
        return job
