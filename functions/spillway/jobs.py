"""The job record in DynamoDB: one item per job, its attempts, and the fence every writer checks.

The dispatch state machine owns `status`, `attempt` and the attempt outcomes (it writes them with
its own DynamoDB integration); Lambdas only create the record and add what they learn about the
current attempt, always on condition that the attempt is still the current one.
"""

from __future__ import annotations

from typing import Any

from boto3.dynamodb.conditions import Key
from pydantic import BaseModel, Field

from spillway.aws import from_item, paged_items, to_item
from spillway.models import AttemptView, JobFields, JobStatus, JobView, Pool


class Attempt(BaseModel):
    pool: Pool
    started_at: str
    assigned_at: str | None = None
    running_at: str | None = None
    ended_at: str | None = None
    outcome: str | None = None
    error: str | None = None
    gpu_id: str | None = None
    task_id: str | None = None


class JobRecord(JobFields):
    attempt: int = 0  # the number of the current attempt: the fence
    attempts: list[Attempt] = Field(default_factory=list)
    result_key: str | None = None
    error: str | None = None
    idempotency_key: str | None = None

    def view(self, result_url: str | None = None) -> JobView:
        return JobView(
            **self.model_dump(exclude={"attempt", "attempts", "idempotency_key"}),
            attempts=[
                AttemptView(number=n, **a.model_dump(exclude={"task_id"}))
                for n, a in enumerate(self.attempts, start=1)
            ],
            result_url=result_url,
        )


class JobStore:
    def __init__(self, table: Any):
        self._table = table

    def create(self, job: JobRecord) -> None:
        self._table.put_item(
            Item=to_item(job.model_dump(mode="json", exclude_none=True)),
            ConditionExpression="attribute_not_exists(job_id)",
        )

    def delete(self, job_id: str) -> None:
        """Undo a create whose intake message could not be sent (the job never existed)."""
        self._table.delete_item(Key={"job_id": job_id})

    def get(self, job_id: str) -> JobRecord | None:
        item = self._table.get_item(Key={"job_id": job_id}, ConsistentRead=True).get("Item")
        return JobRecord.model_validate(from_item(item)) if item else None

    def with_status(self, status: JobStatus, created_before: str) -> list[JobRecord]:
        """Jobs in `status` created before the given ISO time (the `by-status` index)."""
        condition = Key("status").eq(status.value) & Key("created_at").lt(created_before)
        items = paged_items(self._table.query, IndexName="by-status", KeyConditionExpression=condition)
        return [JobRecord.model_validate(from_item(i)) for i in items]

    def close(self, job_id: str, status: JobStatus, at: str, *, result_key: str | None = None,
              error: str | None = None) -> bool:
        """End an open job (the reconciler's write); False if it was final already."""
        assert status.final
        update = "SET #status = :status, finished_at = :at, updated_at = :at"
        values: dict[str, Any] = {":status": status.value, ":at": at,
                                  ":queued": JobStatus.QUEUED.value, ":running": JobStatus.RUNNING.value}
        if result_key:
            update += ", result_key = :result_key"
            values[":result_key"] = result_key
        if error:
            update += ", #error = :error"
            values[":error"] = error
        try:
            self._table.update_item(
                Key={"job_id": job_id}, UpdateExpression=update,
                ConditionExpression="#status IN (:queued, :running)",
                ExpressionAttributeNames={"#status": "status", **({"#error": "error"} if error else {})},
                ExpressionAttributeValues=values,
            )
        except self._table.meta.client.exceptions.ConditionalCheckFailedException:
            return False
        return True
