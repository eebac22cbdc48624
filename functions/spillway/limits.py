"""Per-tenant limits on submits: a rate with bursts, and a cap on jobs in flight.

One item per tenant in the tenants table: `tat`, and `in_flight`, the set of its jobs not yet ended.
The rate is a token bucket kept as GCRA does: `tat` (the theoretical arrival time) is when the bucket
would be full again; a submit takes one emission interval (1/rate) and is allowed while `tat` is at
most `burst - 1` intervals ahead of now. A submit reads the item, refuses at once (429 with
Retry-After) when the bucket is empty or the set full, and otherwise creates the job in ONE transaction
with the item's update (`tat` one interval on, the job id added to the set), on condition that the
bucket still allows it and the set is still under the cap. Those conditions are on the item's values
when it is written, not on the version read: a burst of one tenant's submits, running on many API
containers at once, each moves `tat` on (`SET tat = tat + :interval`) without making the others read
again; two racing submits still cannot both take the last token or the last slot, and a refused
submit writes nothing.

A slot is released by removing the job id from the set, which is idempotent: `release` may be called
by every path that sees a job end. The reconciler does so for every job it finds ended (on AWS, on each
execution's end event: success, failure, timeout, cancel); a submit that finds the set full first
releases the ids whose jobs have ended (the safety net, and the only path offline, where moto emits no
execution events).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aws_lambda_powertools import Logger
from botocore.exceptions import ClientError
from pydantic import BaseModel, Field

from spillway.aws import cancellation_codes, from_item, typed
from spillway.errors import SpillwayError
from spillway.models import JobStatus

logger = Logger(child=True)

IN_FLIGHT_RETRY_AFTER = 5  # seconds: when a slot frees is not known; a short, honest guess
# A submit whose write's condition failed (the bucket went idle or filled up, the set filled, since it
# read the item) reads again and decides again, after a short random pause that doubles each time, so
# that racing submits spread out. At worst ~1.3 s of pauses before an honest 429.
RACE_RETRIES = 8
RACE_BACKOFF_S = 0.005


class TenantLimitSettings(BaseModel, frozen=True):
    """The same for every tenant; the template's parameters (see README: Tenants and limits)."""

    submits_per_second: float = Field(gt=0)
    submit_burst: int = Field(ge=1)
    jobs_in_flight: int = Field(ge=1)


class RateLimited(SpillwayError):
    status = 429

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class Standing:
    """The tenant's bucket as read, when a submit may take from it (its slots are judged by the write's own
    condition)."""

    tat: float | None  # None: an idle bucket (no item yet, or an item written before `tat`)


class TenantLimits:
    def __init__(self, table: Any, dynamodb: Any, jobs_table: str, limits: TenantLimitSettings,
                 clock: Callable[[], float] = time.time, pause: Callable[[float], None] = time.sleep):
        self._table = table
        self._ddb = dynamodb  # the low-level client, for the transaction
        self._jobs_table = jobs_table
        self._limits = limits
        self._clock = clock
        self._pause = pause

    def create_within_limits(self, tenant_id: str, job_id: str, job_item: dict[str, Any],
                             seen: Standing | None = None) -> None:
        """Put the job (absent before) and take a token and a slot for it, or raise RateLimited. `seen`:
        the tenant's standing as `check` just read it (else it is read here)."""
        interval = 1 / self._limits.submits_per_second
        for attempt in range(RACE_RETRIES):
            if attempt:
                self._pause(random.uniform(0, RACE_BACKOFF_S * 2 ** attempt))
            seen = seen or self.check(tenant_id)
            now = self._clock()
            values: dict[str, Any] = {":now": now, ":job": {job_id}, ":cap": self._limits.jobs_in_flight}
            if seen.tat is None or seen.tat <= now:  # a full bucket: it starts emptying now
                update, condition = "SET tat = :next", "(attribute_not_exists(tat) OR tat <= :now)"
                values[":next"] = now + interval
            else:  # taking from a bucket others are taking from too: no read of theirs is invalidated
                update, condition = "SET tat = tat + :interval", "tat > :now AND tat <= :limit"
                values |= {":interval": interval, ":limit": now + (self._limits.submit_burst - 1) * interval}
            try:
                self._ddb.transact_write_items(TransactItems=[
                    {"Put": {"TableName": self._jobs_table, "Item": typed(job_item),
                             "ConditionExpression": "attribute_not_exists(job_id)"}},
                    {"Update": {"TableName": self._table.name, "Key": typed({"tenant": tenant_id}),
                                "UpdateExpression": update + " ADD in_flight :job",
                                "ConditionExpression": condition + " AND (attribute_not_exists(in_flight) OR "
                                                                   "size(in_flight) < :cap)",
                                "ExpressionAttributeValues": typed(values)}},
                ])
                return
            except ClientError as exc:
                reasons = cancellation_codes(exc)
                if len(reasons) != 2 or reasons[0] == "ConditionalCheckFailed" or reasons[1] not in (
                        "ConditionalCheckFailed", "TransactionConflict"):
                    raise
                seen = None  # the item changed since it was read: read again, decide again
        raise RateLimited("too many submits at once for this tenant; retry shortly", 1)

    def check(self, tenant_id: str) -> Standing:
        """The tenant's bucket and slots now; RateLimited if a submit now would be refused. A full set
        first gives back the slots of jobs that have ended."""
        item = self._table.get_item(Key={"tenant": tenant_id}, ConsistentRead=True).get("Item")
        item = from_item(item) if item else {}
        now = self._clock()
        rate, burst = self._limits.submits_per_second, self._limits.submit_burst
        tat = float(item["tat"]) if "tat" in item else None
        too_soon = max(tat or now, now) - now - (burst - 1) / rate  # how far past its burst a submit now is
        if too_soon > 0:
            raise RateLimited(f"over the rate limit of {rate:g} submits per second (bursts of {burst}): "
                              "retry after the time given in Retry-After", math.ceil(round(too_soon, 6)))
        in_flight = frozenset(item.get("in_flight") or ())
        if len(in_flight) >= self._limits.jobs_in_flight:
            ended = self._ended(in_flight)
            self.release(tenant_id, *ended)
            in_flight -= ended
            if len(in_flight) >= self._limits.jobs_in_flight:
                raise RateLimited(f"{len(in_flight)} jobs in flight, the most this tenant may have: submit more "
                                  "when one ends", IN_FLIGHT_RETRY_AFTER)
        return Standing(tat=tat)

    def release(self, tenant_id: str | None, *job_ids: str) -> None:
        """Give back the slots of these jobs; idempotent (a slot already given back stays given back)."""
        if not tenant_id or not job_ids:
            return
        self._table.update_item(Key={"tenant": tenant_id}, UpdateExpression="DELETE in_flight :jobs",
                                ExpressionAttributeValues={":jobs": set(job_ids)})

    def _ended(self, job_ids: frozenset[str]) -> frozenset[str]:
        """Those of these jobs that have ended, or whose record is gone (a create undone)."""
        open_jobs: set[str] = set()
        ids = sorted(job_ids)
        for start in range(0, len(ids), 100):  # BatchGetItem's limit
            request = {self._jobs_table: {"Keys": [typed({"job_id": i}) for i in ids[start:start + 100]],
                                          "ProjectionExpression": "job_id, #status",
                                          "ExpressionAttributeNames": {"#status": "status"},
                                          "ConsistentRead": True}}
            while request:
                answer = self._ddb.batch_get_item(RequestItems=request)
                for item in answer["Responses"].get(self._jobs_table, []):
                    if not JobStatus(item["status"]["S"]).final:
                        open_jobs.add(item["job_id"]["S"])
                request = answer.get("UnprocessedKeys") or {}
        return job_ids - open_jobs

