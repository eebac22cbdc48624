"""The job record in DynamoDB: one item per job, its attempts, and the fence every writer checks.

The dispatch state machine owns `status`, `attempt` and the attempt outcomes (it writes them with
its own DynamoDB integration); Lambdas only create the record and add what they learn about the
current attempt, always on condition that the attempt is still the current one.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from boto3.dynamodb.conditions import Attr, Key
from pydantic import BaseModel, Field

from spillway.aws import from_item, paged_items, to_item
from spillway.models import AttemptOutcome, AttemptView, ErrorType, JobFields, JobStatus, JobView, Pool
from spillway.routing.rules import default_rules


class Attempt(BaseModel):
    pool: Pool
    route: str | None = None  # why the routing policy sent it there
    started_at: str
    assigned_at: str | None = None
    running_at: str | None = None
    ended_at: str | None = None
    outcome: AttemptOutcome | None = None
    error: str | None = None
    failure: str | None = None  # the Catch's {"Error", "Cause"} as JSON text, as the state machine stored it
    gpu_id: str | None = None
    task_id: str | None = None
    cost_usd: float | None = None  # billed by the pool itself (FaaS); else GPU time at the pool's price
    # The rest of the route that opened it: a retried routing step (or admission) answers it again as it was.
    avoid_gpus: list[str] = Field(default_factory=list)
    spill_to: Pool | None = None
    faas_segment: str | None = None

    @property
    def reason(self) -> str | None:
        """The failure's cause in words (Step Functions' Cause), else its error name."""
        if self.failure:
            try:
                cause = json.loads(self.failure).get("Cause")
            except ValueError:
                cause = None
            if cause:
                return str(cause)
        return self.error

    @property
    def error_type(self) -> ErrorType | None:
        """The failure kind the routing policy acts on; a failure from outside Spillway (a backstop timeout,
        a Step Functions error) counts as the GPU's."""
        if self.outcome not in (AttemptOutcome.FAILED, AttemptOutcome.SPILLED) or not self.error:
            return None
        name = self.error.removeprefix("Spillway.")
        if name in ErrorType.__members__.values():
            return ErrorType(name)
        if self.assigned_at is None:  # e.g. the backstop timeout while it waited: it never reached a GPU
            return ErrorType.WAIT_EXPIRED
        return ErrorType.GPU_UNREACHABLE if self.error == "States.Timeout" else ErrorType.MODEL_ERROR

    def view(self, number: int) -> AttemptView:
        started, assigned, running, ended = (_epoch(t) for t in (self.started_at, self.assigned_at,
                                                                 self.running_at, self.ended_at))
        wait_end = assigned or running or ended
        cost = self.cost_usd
        if cost is None:
            cost = (ended - running) * default_rules().gpu_hour_usd.get(self.pool, 0) / 3600 \
                if running and ended else 0.0
        return AttemptView(
            number=number, reason=self.reason,
            **self.model_dump(exclude={"task_id", "failure", "cost_usd", "avoid_gpus", "spill_to", "faas_segment"}),
            wait_ms=_ms(wait_end - started) if started and wait_end else None,
            run_ms=_ms(ended - running) if running and ended else None, cost_usd=round(cost, 6),
        )


class JobRecord(JobFields):
    tenant: str | None = None  # its tenant's id (None: jobs from before tenants, which no caller owns)
    input_version: str | None = None  # the upload's S3 version judged at submit (the key may be written again)
    attempt: int = 0  # the number of the current attempt: the fence
    attempts: list[Attempt] = Field(default_factory=list)
    result_key: str | None = None
    error: str | None = None
    idempotency_key: str | None = None
    webhook_delivered_at: str | None = None  # its webhook took the event (webhooks.py)
    webhook_error: str | None = None  # why its webhook may not be called (webhooks.py): it never will be

    def view(self, result_url: str | None = None) -> JobView:
        attempts = [a.view(n) for n, a in enumerate(self.attempts, start=1)]
        return JobView(
            **self.model_dump(exclude={"tenant", "attempt", "attempts", "idempotency_key", "webhook_delivered_at",
                                       "input_version"}),
            attempts=attempts, cost_usd=round(sum(a.cost_usd for a in attempts), 6), result_url=result_url,
        )


def iso_at(epoch: float) -> str:
    """Epoch seconds as the job record writes times (ISO 8601, UTC, milliseconds)."""
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")


def _epoch(moment: str | None) -> float | None:
    return datetime.fromisoformat(moment).timestamp() if moment else None


def _ms(seconds: float) -> int:
    return max(0, round(seconds * 1000))


MAX_PAGES_PER_LIST = 10  # one list request reads at most this many index pages


class JobStore:
    def __init__(self, table: Any):
        self._table = table

    @staticmethod
    def item(job: JobRecord) -> dict[str, Any]:
        """The job as its item: what a create puts (the API's, in one transaction with its tenant's limits)."""
        return job.model_dump(mode="json", exclude_none=True)

    def delete(self, job_id: str) -> None:
        """Undo a create whose intake message could not be sent (the job never existed)."""
        self._table.delete_item(Key={"job_id": job_id})

    def get(self, job_id: str) -> JobRecord | None:
        item = self._table.get_item(Key={"job_id": job_id}, ConsistentRead=True).get("Item")
        return JobRecord.model_validate(from_item(item)) if item else None

    def of_tenant(self, tenant_id: str, limit: int, status: JobStatus | None = None,
                  after: tuple[str, str] | None = None) -> tuple[list[JobRecord], tuple[str, str] | None]:
        """A tenant's jobs, newest first (the `by-tenant` index), at most `limit`, from after the job named
        by `after` (its created_at, job_id); and where the next page starts (None: there is no more)."""
        request: dict[str, Any] = {"IndexName": "by-tenant", "KeyConditionExpression": Key("tenant").eq(tenant_id),
                                   "ScanIndexForward": False, "Limit": limit}
        if status:  # a filter: a page may hold fewer than `limit` of them, so pages are read on
            request["FilterExpression"] = Attr("status").eq(status.value)
        if after:
            request["ExclusiveStartKey"] = {"tenant": tenant_id, "created_at": after[0], "job_id": after[1]}
        jobs: list[JobRecord] = []
        for _ in range(MAX_PAGES_PER_LIST):
            page = self._table.query(**request)
            room = limit - len(jobs)
            jobs += [JobRecord.model_validate(from_item(i)) for i in page["Items"][:room]]
            if "LastEvaluatedKey" not in page and len(page["Items"]) <= room:
                return jobs, None
            if len(jobs) == limit:
                return jobs, (jobs[-1].created_at, jobs[-1].job_id)
            request["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        # A rare status over a long history: the caller pages on from where the reading stopped.
        last = request["ExclusiveStartKey"]
        return jobs, (last["created_at"], last["job_id"])

    def open_attempt(self, job_id: str, current: int, attempt: Attempt, max_legs: int) -> bool:
        """Open attempt `current` + 1: the counter is the fence every later write checks. False if the job
        is final, on another attempt, or out of legs (every attempt may be preceded by a spill)."""
        try:
            self._table.update_item(
                Key={"job_id": job_id},
                UpdateExpression="SET attempt = attempt + :one, attempts = list_append(attempts, :entry), "
                                 "#status = :running, updated_at = :at",
                ConditionExpression="attempt = :current AND attempt < :max AND #status IN (:queued, :running)",
                ExpressionAttributeNames={"#status": "status"},
                ExpressionAttributeValues=to_item({
                    ":one": 1, ":current": current, ":max": max_legs, ":at": attempt.started_at,
                    ":entry": [attempt.model_dump(mode="json", exclude_none=True, exclude_defaults=True)],
                    ":queued": JobStatus.QUEUED.value, ":running": JobStatus.RUNNING.value}),
            )
        except self._table.meta.client.exceptions.ConditionalCheckFailedException:
            return False
        return True

    def succeed(self, job_id: str, attempt: int, result_key: str, gpu_id: str, at: str) -> JobRecord | None:
        """The job is done on `attempt`: where its result is, fenced by the attempt. Returns the job as
        written (None: a later attempt owns it, or it is final already), so its end is counted once."""
        n = attempt - 1
        try:
            item = self._table.update_item(
                Key={"job_id": job_id},
                UpdateExpression=f"SET #status = :succeeded, result_key = :result_key, updated_at = :at, "
                                 f"finished_at = :at, attempts[{n}].ended_at = :at, "
                                 f"attempts[{n}].outcome = :ok, attempts[{n}].gpu_id = :gpu",
                ConditionExpression="attempt = :n AND #status = :running",
                ExpressionAttributeNames={"#status": "status"},
                ExpressionAttributeValues=to_item({
                    ":n": attempt, ":at": at, ":succeeded": JobStatus.SUCCEEDED.value,
                    ":running": JobStatus.RUNNING.value, ":ok": AttemptOutcome.SUCCEEDED.value,
                    ":result_key": result_key, ":gpu": gpu_id}),
                ReturnValues="ALL_NEW",
            )
        except self._table.meta.client.exceptions.ConditionalCheckFailedException:
            return None
        return JobRecord.model_validate(from_item(item["Attributes"]))

    def with_status(self, status: JobStatus, created_before: str) -> list[JobRecord]:
        """Jobs in `status` created before the given ISO time (the `by-status` index)."""
        condition = Key("status").eq(status.value) & Key("created_at").lt(created_before)
        items = paged_items(self._table.query, IndexName="by-status", KeyConditionExpression=condition)
        return [JobRecord.model_validate(from_item(i)) for i in items]

    def webhook_delivered(self, job_id: str, now: float) -> None:
        self._table.update_item(Key={"job_id": job_id}, UpdateExpression="SET webhook_delivered_at = :at",
                                ExpressionAttributeValues={":at": iso_at(now)})

    def webhook_refused(self, job_id: str, why: str) -> None:
        self._table.update_item(Key={"job_id": job_id}, UpdateExpression="SET webhook_error = :why",
                                ExpressionAttributeValues={":why": why[:500]})

    def close(self, job_id: str, status: JobStatus, at: str, *, result_key: str | None = None,
              error: str | None = None, attempt: int | None = None) -> JobRecord | None:
        """End an open job (the reconciler's, a cancel's, a route's that ends it), fenced by `attempt` if given;
        returns the job as written (None: it was final already, or on another attempt)."""
        assert status.final
        update = "SET #status = :status, finished_at = :at, updated_at = :at"
        condition = "#status IN (:queued, :running)"
        values: dict[str, Any] = {":status": status.value, ":at": at,
                                  ":queued": JobStatus.QUEUED.value, ":running": JobStatus.RUNNING.value}
        if result_key:
            update += ", result_key = :result_key"
            values[":result_key"] = result_key
        if error:
            update += ", #error = :error"
            values[":error"] = error
        if attempt is not None:
            condition += " AND attempt = :n"
            values[":n"] = attempt
        try:
            item = self._table.update_item(
                Key={"job_id": job_id}, UpdateExpression=update, ConditionExpression=condition,
                ExpressionAttributeNames={"#status": "status", **({"#error": "error"} if error else {})},
                ExpressionAttributeValues=values, ReturnValues="ALL_NEW",
            )
        except self._table.meta.client.exceptions.ConditionalCheckFailedException:
            return None
        return JobRecord.model_validate(from_item(item["Attributes"]))
