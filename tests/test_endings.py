"""A job's end: only the write that ended the job counts it and queues its webhook, whichever way it ended."""

from __future__ import annotations

from spillway import aws
from spillway.handlers.wiring import endings as job_endings
from spillway.models import JobStatus

from conftest import Cloud
from helpers import job_id_for, running_job

AT = "2026-01-01T00:01:00.000+00:00"


def test_only_the_writer_that_ends_a_job_counts_it_and_queues_its_webhook(cloud: Cloud, finished: list) -> None:
    table = aws.table(cloud.settings.jobs_table)
    endings = job_endings()  # as the functions build it
    told, untold = job_id_for(1), job_id_for(2)
    for job_id in (told, untold):
        running_job(cloud.settings, job_id)
    table.update_item(Key={"job_id": told}, UpdateExpression="SET webhook_url = :u",
                      ExpressionAttributeValues={":u": "https://hooks.example.com/spillway"})

    closed = endings.close(told, JobStatus.CANCELLED, AT, error="Spillway.Cancelled: a typo")
    assert closed is not None and closed.status is JobStatus.CANCELLED, "the job as the write left it"
    assert endings.succeed(told, 1, "results/x.png", "local-0", AT) is None, "a late success: ended already"
    assert endings.close(told, JobStatus.FAILED, AT) is None, "a second ending: ended already"
    assert endings.close(untold, JobStatus.FAILED, AT, attempt=2) is None, "fenced: the job is on attempt 1"
    assert endings.succeed(untold, 1, "results/y.png", "local-0", AT) is not None

    assert finished == [(told, JobStatus.CANCELLED), (untold, JobStatus.SUCCEEDED)], "each counted once"
    assert cloud.queue_messages("WebhookQueue") == [{"job_id": told}], "told once; a job without webhook_url is not"
