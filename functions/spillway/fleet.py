"""The fleet: GPUs as their agents report them, and slot leases packed by free VRAM.

A lease is one DynamoDB transaction that takes VRAM from the GPU, writes the task (with its token)
and notes the GPU on the job, each under its own condition: a GPU is never oversubscribed, a
duplicate delivery never leases twice, and a task for an attempt that has moved on never runs.
"""

from __future__ import annotations

from typing import Any

from boto3.dynamodb.conditions import Key
from boto3.dynamodb.types import TypeSerializer
from botocore.exceptions import ClientError
from pydantic import BaseModel

from spillway.aws import error_code, from_item, to_item
from spillway.models import AgentHeartbeat, JobStatus, Pool


class Gpu(BaseModel):
    gpu_id: str
    pool: Pool
    url: str
    vram_total_mb: int
    vram_free_mb: int
    running: int = 0
    services: list[str]
    draining: bool = False
    last_heartbeat: float  # epoch seconds

    def can_take(self, service: str, vram_mb: int, now: float, stale_after: float) -> bool:
        return (
            not self.draining
            and now - self.last_heartbeat <= stale_after
            and service in self.services
            and self.vram_free_mb >= vram_mb
        )


class Task(BaseModel):
    """One attempt of one job on one GPU. The token never leaves this record."""

    task_id: str
    job_id: str
    attempt: int
    pool: Pool
    gpu_id: str
    gpu_url: str
    service: str
    input_key: str
    result_key: str
    vram_mb: int
    task_token: str
    state: str = "running"  # running -> done, once
    outcome: str | None = None
    error_type: str | None = None
    created_at: float
    expires_at: int  # TTL: the token is useless after the attempt's timeout anyway


class LeaseRefused(Exception):
    """The lease did not happen; `reason` says which condition stopped it."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason  # "gpu_taken" | "task_exists" | "attempt_moved_on"


class Fleet:
    def __init__(self, fleet_table: Any, tasks_table: Any, jobs_table_name: str, dynamodb: Any):
        self._gpus = fleet_table
        self._tasks = tasks_table
        self._jobs_table_name = jobs_table_name
        self._ddb = dynamodb  # the low-level client, for transactions

    # ---- agents report in

    def heartbeat(self, beat: AgentHeartbeat, now: float) -> None:
        """Register a GPU on its first heartbeat; refresh it on every later one."""
        self._gpus.update_item(
            Key={"gpu_id": beat.gpu_id},
            UpdateExpression=(
                "SET #pool = :pool, #url = :url, vram_total_mb = :total, services = :services, "
                "draining = :draining, last_heartbeat = :now, "
                "vram_free_mb = if_not_exists(vram_free_mb, :total), #running = if_not_exists(#running, :zero)"
            ),
            ExpressionAttributeNames={"#pool": "pool", "#url": "url", "#running": "running"},
            ExpressionAttributeValues=to_item(
                {
                    ":pool": beat.pool.value,
                    ":url": str(beat.url).rstrip("/"),
                    ":total": beat.vram_total_mb,
                    ":services": beat.services,
                    ":draining": beat.draining,
                    ":now": now,
                    ":zero": 0,
                }
            ),
        )

    def gpus(self, pool: Pool) -> list[Gpu]:
        items = self._gpus.query(IndexName="by-pool", KeyConditionExpression=Key("pool").eq(pool.value))["Items"]
        return [Gpu.model_validate(from_item(i)) for i in items]

    def get(self, gpu_id: str) -> Gpu | None:
        item = self._gpus.get_item(Key={"gpu_id": gpu_id}, ConsistentRead=True).get("Item")
        return Gpu.model_validate(from_item(item)) if item else None

    def candidates(self, pool: Pool, service: str, vram_mb: int, now: float, stale_after: float) -> list[Gpu]:
        """GPUs that can take the task now, best fit first: the least free VRAM that still fits,
        so big free GPUs stay free for big images."""
        fit = [g for g in self.gpus(pool) if g.can_take(service, vram_mb, now, stale_after)]
        return sorted(fit, key=lambda g: (g.vram_free_mb, g.running, g.gpu_id))

    # ---- leases

    def lease(self, gpu: Gpu, task: Task) -> None:
        """Take VRAM on `gpu` for `task`, write the task, and note it on the job: all or nothing."""
        items = [
            {
                "Update": {
                    "TableName": self._gpus.name,
                    "Key": {"gpu_id": {"S": gpu.gpu_id}},
                    "UpdateExpression": "SET vram_free_mb = vram_free_mb - :need, #running = #running + :one",
                    "ConditionExpression": "vram_free_mb >= :need AND draining = :false",
                    "ExpressionAttributeNames": {"#running": "running"},
                    "ExpressionAttributeValues": {
                        ":need": {"N": str(task.vram_mb)}, ":one": {"N": "1"}, ":false": {"BOOL": False},
                    },
                }
            },
            {
                "Put": {
                    "TableName": self._tasks.name,
                    "Item": _typed(task.model_dump(mode="json", exclude_none=True)),
                    "ConditionExpression": "attribute_not_exists(task_id)",
                }
            },
            {
                "Update": {
                    "TableName": self._jobs_table_name,
                    "Key": {"job_id": {"S": task.job_id}},
                    "UpdateExpression": f"SET attempts[{task.attempt - 1}].gpu_id = :gpu, "
                                        f"attempts[{task.attempt - 1}].task_id = :task",
                    "ConditionExpression": "attempt = :n AND #status = :running",
                    "ExpressionAttributeNames": {"#status": "status"},
                    "ExpressionAttributeValues": {
                        ":gpu": {"S": gpu.gpu_id}, ":task": {"S": task.task_id},
                        ":n": {"N": str(task.attempt)}, ":running": {"S": JobStatus.RUNNING.value},
                    },
                }
            },
        ]
        try:
            self._ddb.transact_write_items(TransactItems=items)
        except ClientError as exc:
            if error_code(exc) != "TransactionCanceledException":
                raise
            reasons = [r.get("Code", "None") for r in exc.response.get("CancellationReasons", [])]
            if len(reasons) == 3 and reasons[1] == "ConditionalCheckFailed":
                raise LeaseRefused("task_exists") from None
            if len(reasons) == 3 and reasons[2] == "ConditionalCheckFailed":
                raise LeaseRefused("attempt_moved_on") from None
            raise LeaseRefused("gpu_taken") from None

    def release(self, task: Task, outcome: str, error_type: str | None = None) -> bool:
        """End the task and give its VRAM back, exactly once. False if it had ended already."""
        values: dict[str, Any] = {":running": {"S": "running"}, ":done": {"S": "done"}, ":outcome": {"S": outcome}}
        update = "SET #state = :done, outcome = :outcome"
        if error_type:
            update += ", error_type = :error_type"
            values[":error_type"] = {"S": error_type}
        end_task = {
            "Update": {
                "TableName": self._tasks.name,
                "Key": {"task_id": {"S": task.task_id}},
                "UpdateExpression": update,
                "ConditionExpression": "#state = :running",
                "ExpressionAttributeNames": {"#state": "state"},
                "ExpressionAttributeValues": values,
            }
        }
        return self._return_vram(task, end_task)

    def give_back(self, task: Task) -> bool:
        """Undo a lease the agent refused (draining, full): the attempt may lease again elsewhere."""
        drop_task = {
            "Delete": {
                "TableName": self._tasks.name,
                "Key": {"task_id": {"S": task.task_id}},
                "ConditionExpression": "#state = :running",
                "ExpressionAttributeNames": {"#state": "state"},
                "ExpressionAttributeValues": {":running": {"S": "running"}},
            }
        }
        return self._return_vram(task, drop_task)

    def _return_vram(self, task: Task, task_write: dict[str, Any]) -> bool:
        free_vram = {
            "Update": {
                "TableName": self._gpus.name,
                "Key": {"gpu_id": {"S": task.gpu_id}},
                "UpdateExpression": "SET vram_free_mb = vram_free_mb + :need, #running = #running - :one",
                "ExpressionAttributeNames": {"#running": "running"},
                "ExpressionAttributeValues": {":need": {"N": str(task.vram_mb)}, ":one": {"N": "1"}},
            }
        }
        try:
            self._ddb.transact_write_items(TransactItems=[task_write, free_vram])
        except ClientError as exc:
            if error_code(exc) == "TransactionCanceledException":
                return False
            raise
        return True

    # ---- tasks

    def task(self, task_id: str) -> Task | None:
        item = self._tasks.get_item(Key={"task_id": task_id}, ConsistentRead=True).get("Item")
        return Task.model_validate(from_item(item)) if item else None


def _typed(item: dict[str, Any]) -> dict[str, Any]:
    """Plain JSON -> DynamoDB's typed wire format, for the low-level transaction API."""
    return {k: _SERIALIZER.serialize(to_item(v)) for k, v in item.items()}


_SERIALIZER = TypeSerializer()
