"""Per-tenant limits (spillway.limits) on the template's tables in moto: the token bucket, the cap on jobs
in flight, their release on every end, and races for the last token or slot."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from spillway import aws
from spillway.jobs import JobRecord, JobStore
from spillway.limits import (
    IN_FLIGHT_RETRY_AFTER,
    RACE_BACKOFF_S,
    RACE_RETRIES,
    RateLimited,
    TenantLimits,
    TenantLimitSettings,
)
from spillway.reconcile import Reconciler

from conftest import Cloud
from helpers import Clock

TENANT = "tn-" + "a" * 24


def limits(cloud: Cloud, clock: Clock, rate: float = 100.0, burst: int = 100, in_flight: int = 100,
           ddb: Any = None, **options: Any) -> TenantLimits:
    return TenantLimits(aws.table(cloud.settings.tenants_table), ddb or aws.client("dynamodb"),
                        cloud.settings.jobs_table,
                        TenantLimitSettings(submits_per_second=rate, submit_burst=burst, jobs_in_flight=in_flight),
                        clock=clock, **options)


def job(n: int, status: str = "QUEUED") -> dict[str, Any]:
    return {"job_id": f"j-{n:032x}", "tenant": TENANT, "status": status, "service": "upscale_2x",
            "priority": "normal", "segment": {}, "input_key": "inputs/x.png", "width": 1, "height": 1, "vram_mb": 1,
            "created_at": f"2026-11-26T12:00:{n:02d}.000+00:00", "updated_at": "2026-11-26T12:00:00.000+00:00"}


def submit(limits: TenantLimits, n: int) -> None:
    limits.create_within_limits(TENANT, job(n)["job_id"], job(n))


def in_flight(cloud: Cloud) -> set[str]:
    item = aws.table(cloud.settings.tenants_table).get_item(Key={"tenant": TENANT}).get("Item") or {}
    return set(item.get("in_flight") or ())


def end(cloud: Cloud, n: int, status: str = "SUCCEEDED") -> None:
    aws.table(cloud.settings.jobs_table).update_item(
        Key={"job_id": job(n)["job_id"]}, UpdateExpression="SET #s = :s", ExpressionAttributeNames={"#s": "status"},
        ExpressionAttributeValues={":s": status})


def jobs_written(cloud: Cloud) -> int:
    return aws.table(cloud.settings.jobs_table).scan(Select="COUNT")["Count"]


def test_the_bucket_allows_its_burst_then_its_rate_and_says_when_to_retry(cloud: Cloud) -> None:
    clock = Clock(1000.0)
    bucket = limits(cloud, clock, rate=0.5, burst=3)
    for n in range(3):
        submit(bucket, n)
    with pytest.raises(RateLimited) as refused:
        submit(bucket, 3)
    assert refused.value.status == 429 and refused.value.retry_after == 2  # one token at 0.5 per second
    assert "0.5 submits per second" in str(refused.value)
    assert jobs_written(cloud) == 3, "a refused submit writes nothing"
    clock.advance(2.0)
    submit(bucket, 3)
    assert jobs_written(cloud) == 4


def test_the_cap_on_jobs_in_flight_refuses_with_a_reason_and_writes_nothing(cloud: Cloud) -> None:
    capped = limits(cloud, Clock(1000.0), in_flight=2)
    submit(capped, 0)
    submit(capped, 1)
    with pytest.raises(RateLimited) as refused:
        submit(capped, 2)
    assert refused.value.retry_after == IN_FLIGHT_RETRY_AFTER and "2 jobs in flight" in str(refused.value)
    assert jobs_written(cloud) == 2 and in_flight(cloud) == {job(0)["job_id"], job(1)["job_id"]}


@pytest.mark.parametrize("status", ["SUCCEEDED", "FAILED"])
def test_a_full_tenant_gets_back_the_slots_of_its_ended_jobs_whoever_ended_them(cloud: Cloud, status: str) -> None:
    """The safety net: the state machine, the reconciler or a cancel ended the job and no release came."""
    capped = limits(cloud, Clock(1000.0), in_flight=2)
    submit(capped, 0)
    submit(capped, 1)
    end(cloud, 0, status)
    submit(capped, 2)
    assert in_flight(cloud) == {job(1)["job_id"], job(2)["job_id"]}


def test_release_is_idempotent_and_the_reconciler_releases_every_ended_job_it_sees(cloud: Cloud) -> None:
    capped = limits(cloud, Clock(1000.0), in_flight=2)
    submit(capped, 0)
    submit(capped, 1)
    end(cloud, 0)
    record = JobStore(aws.table(cloud.settings.jobs_table)).get(job(0)["job_id"])
    assert isinstance(record, JobRecord) and record.status.final
    # An ended job asks nothing of Step Functions: no client, no admission.
    reconciler = Reconciler(JobStore(aws.table(cloud.settings.jobs_table)), None, None, capped)  # type: ignore[arg-type]
    assert reconciler.reconcile(record) == "final"
    assert reconciler.reconcile(record) == "final"
    capped.release(TENANT, job(0)["job_id"])
    assert in_flight(cloud) == {job(1)["job_id"]}


def test_two_submits_racing_for_the_last_slot_cannot_both_take_it(cloud: Cloud) -> None:
    capped = limits(cloud, Clock(1000.0), in_flight=2)
    submit(capped, 0)
    first, second = capped.check(TENANT), capped.check(TENANT)  # both read one free slot
    capped.create_within_limits(TENANT, job(1)["job_id"], job(1), first)
    with pytest.raises(RateLimited, match="jobs in flight"):  # its item changed: read again, and refused
        capped.create_within_limits(TENANT, job(2)["job_id"], job(2), second)
    assert jobs_written(cloud) == 2 and len(in_flight(cloud)) == 2


def test_two_submits_racing_for_the_last_token_cannot_both_take_it(cloud: Cloud) -> None:
    bucket = limits(cloud, Clock(1000.0), rate=0.1, burst=2)
    submit(bucket, 0)
    first, second = bucket.check(TENANT), bucket.check(TENANT)
    bucket.create_within_limits(TENANT, job(1)["job_id"], job(1), first)
    with pytest.raises(RateLimited, match="submits per second"):
        bucket.create_within_limits(TENANT, job(2)["job_id"], job(2), second)
    assert jobs_written(cloud) == 2


class Contended:
    """The DynamoDB client, with `interfere(n)` run just before each of its first `times` transactions (n: how many
    came before), as another submit of the tenant on another API container would land."""

    def __init__(self, ddb: Any, interfere: Any, times: int):
        self._ddb, self._interfere, self._times, self.calls = ddb, interfere, times, 0

    def transact_write_items(self, **request: Any) -> Any:
        if self.calls < self._times:
            self._interfere(self.calls)
        self.calls += 1
        return self._ddb.transact_write_items(**request)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ddb, name)


def contended(cloud: Cloud, clock: Clock, interfere: Any, times: int, pause: Any) -> tuple[TenantLimits, Contended]:
    ddb = Contended(aws.client("dynamodb"), interfere, times)
    return limits(cloud, clock, ddb=ddb, pause=pause), ddb


def test_a_burst_of_one_tenants_submits_do_not_make_each_other_read_again(cloud: Cloud) -> None:
    """Each moves the bucket on from where it is when written: another submit landing between a submit's read
    and its write does not refuse it (only the very first, which found the bucket idle, must read again)."""
    clock, pauses = Clock(1000.0), []
    rival = limits(cloud, clock)
    unlucky, ddb = contended(cloud, clock, lambda n: submit(rival, 100 + n), times=5, pause=pauses.append)
    submit(unlucky, 0)  # found the bucket full; a rival took from it first: read again, then in
    submit(unlucky, 1)
    submit(unlucky, 2)
    assert ddb.calls == 4 and len(pauses) == 1, "one write again, for the idle bucket's one start"
    assert in_flight(cloud) >= {job(n)["job_id"] for n in range(3)} and jobs_written(cloud) == 3 + 4


def test_a_submit_whose_every_write_finds_the_bucket_changed_is_told_to_retry_shortly(cloud: Cloud) -> None:
    clock, pauses = Clock(1000.0), []
    table = aws.table(cloud.settings.tenants_table)

    def flip(n: int) -> None:  # idle when it read busy, busy when it read idle: each write's condition fails
        table.put_item(Item={"tenant": TENANT, "tat": Decimal("0") if n % 2 else Decimal("1000.5")})

    unlucky, _ = contended(cloud, clock, flip, times=RACE_RETRIES, pause=pauses.append)
    with pytest.raises(RateLimited, match="at once") as refused:
        submit(unlucky, 0)
    assert refused.value.retry_after == 1 and jobs_written(cloud) == 0
    assert len(pauses) == RACE_RETRIES - 1
    assert all(0 <= pause <= RACE_BACKOFF_S * 2 ** (n + 1) for n, pause in enumerate(pauses)), "doubling, jittered"
