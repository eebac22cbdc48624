"""A waiting room per pool: the tasks that wait for a GPU, in the order they are to start.

A DynamoDB table keyed by pool and rank, where the rank is the task's virtual arrival time (see
`priorities`), so a query in key order reads the room front to back, strongly consistent. An
entry holds what placement needs (service, VRAM, compute) and no task token: tokens stay in the tasks table.
An entry leaves the room in the same transaction that leases its GPU (see `Fleet.assign`), or
when its wait bound passes; either happens once.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from boto3.dynamodb.conditions import Key
from pydantic import BaseModel

from spillway.aws import from_item, paged_items, to_item
from spillway.models import Pool, Priority
from spillway.priorities import virtual_arrival


class WaitingEntry(BaseModel):
    pool: Pool
    rank: str  # the sort key: virtual arrival time, then the task id (unique, stable)
    task_id: str
    job_id: str
    attempt: int
    service: str
    vram_mb: int
    compute: int = 0  # absent from entries queued before compute was packed: they take none
    priority: Priority
    arrived_at: float  # epoch seconds
    wait_until: float  # epoch seconds: the wait bound
    avoid: list[str] = []  # GPUs that failed this job: it never goes to them again
    spill_to: Pool | None = None  # where it goes past its wait bound (none: it waits until its deadline)

    def may_use(self, gpu_id: str) -> bool:
        return gpu_id not in self.avoid

    @staticmethod
    def rank_for(priority: Priority, arrived_at: float, task_id: str) -> str:
        # Fixed width so that text order is number order (epoch seconds stay below 10^13).
        return f"{virtual_arrival(priority, arrived_at):017.3f}#{task_id}"

    @property
    def key(self) -> dict[str, str]:
        return {"pool": self.pool.value, "rank": self.rank}


class RoomLine(BaseModel):
    count: int = 0
    oldest_s: float = 0.0  # the longest any of them has waited, seconds


class WaitingRoom:
    def __init__(self, table: Any):
        self._table = table

    @property
    def table_name(self) -> str:
        return self._table.name

    def front(self, pool: Pool, page: int = 25) -> Iterator[WaitingEntry]:
        """The pool's room, front to back, read a page at a time as the caller goes on."""
        items = paged_items(self._table.query, KeyConditionExpression=Key("pool").eq(pool.value),
                            ConsistentRead=True, Limit=page)
        return (WaitingEntry.model_validate(from_item(i)) for i in items)

    def get(self, pool: Pool, rank: str) -> WaitingEntry | None:
        item = self._table.get_item(Key={"pool": pool.value, "rank": rank}, ConsistentRead=True).get("Item")
        return WaitingEntry.model_validate(from_item(item)) if item else None

    def depth(self, pool: Pool, at_most: int = 1_000) -> int:
        """How many wait in the pool's room, counted up to `at_most` (one page: routing asks "is there
        a queue", not its exact length)."""
        return self._table.query(KeyConditionExpression=Key("pool").eq(pool.value), Select="COUNT",
                                 Limit=at_most)["Count"]

    def summary(self, pool: Pool, now: float) -> dict[Priority, RoomLine]:
        """Who waits in the pool's room, by priority: how many, and the oldest's wait (whole room read)."""
        lines: dict[Priority, RoomLine] = {}
        for entry in self.front(pool, page=100):
            line = lines.get(entry.priority, RoomLine())
            lines[entry.priority] = RoomLine(count=line.count + 1,
                                             oldest_s=max(line.oldest_s, now - entry.arrived_at))
        return lines

    def put_request(self, entry: WaitingEntry) -> dict[str, Any]:
        """The entry as a transaction item (plain resource types; the caller serializes)."""
        return {"TableName": self.table_name, "Item": to_item(entry.model_dump(mode="json"))}

    def remove(self, entry: WaitingEntry) -> bool:
        """Take the entry out of the room; False if someone else already did."""
        try:
            self._table.delete_item(Key=entry.key, ConditionExpression="attribute_exists(task_id)")
        except self._table.meta.client.exceptions.ConditionalCheckFailedException:
            return False
        return True
