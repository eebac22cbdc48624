"""A job's end, wherever it is seen (a result, a route that ends it, the reconciler, a cancel): counted once, and,
for a job with a `webhook_url`, its webhook queued. Only the writer that ended the job calls `ended`."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from spillway import metrics
from spillway.models import JobFields, JobStatus, WebhookNotice


class JobEndings:
    def __init__(self, sqs: Any = None, webhook_queue_url: str | None = None,
                 clock: Callable[[], float] = time.time):
        self._sqs = sqs
        self._queue_url = webhook_queue_url  # None: count only (unit tests of code that ends jobs)
        self._clock = clock

    def ended(self, job: JobFields, status: JobStatus) -> None:
        metrics.job_finished(job, status, self._clock())
        if job.webhook_url and self._queue_url:
            # The sender reads the record itself (its end is the record's): the message only names the job.
            self._sqs.send_message(QueueUrl=self._queue_url,
                                   MessageBody=WebhookNotice(job_id=job.job_id).model_dump_json())
