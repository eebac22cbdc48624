"""What a FaaS job costs, in integer micro-dollars (the budget ledger's unit).

RunPod bills a serverless worker per second, rounded up, from when it starts until it fully stops:
its start (container and model load: the cold start), the jobs it executes, and its idle timeout
after the last one. A job's status reports `executionTime` (billed) and `delayTime` (the wait in the
queue: only partly billed — the cold start of a worker started for it is in there, plain queueing
is not — so it is not counted). The per-job charge taken here is therefore

    billed seconds = ceil((executionTime + overhead) / 1 s)

where `overhead_s` is the endpoint's expected per-job share of cold start and idle timeout (a pool
setting: 0 for always-warm workers, up to cold start + idle timeout for a worker woken per job).
Rounding up per job, where RunPod rounds per worker session, over-counts by under a second a job:
on the safe side of a cap. What the ledger holds stays an estimate of RunPod's invoice; reconciling
it with RunPod's billing API is separate.

Before a call, `reservation_micro` reserves the most the job can cost: the execution timeout sent
with the job (RunPod stops it there) plus the same overhead.
"""

from __future__ import annotations

from decimal import ROUND_CEILING, Decimal

from spillway.faas.provider import FaasStatus

MICRO = 1_000_000  # money is kept in integer micro-dollars: DynamoDB conditions compare it exactly
Price = Decimal | str | int | float  # USD per second; floats are read through their text ("0.00031")


def billed_seconds(status: FaasStatus, overhead_s: float = 0.0) -> int | None:
    """Worker seconds a final job is billed (execution + overhead, rounded up). None when the status
    cannot say — no `executionTime` on a job that may have run (cancelled or timed out while running):
    settle such a job at its reservation."""
    if not status.final:
        raise ValueError(f"job {status.job_id} is {status.state.value}: its cost is not known yet")
    if status.execution_ms is None:
        return None
    return seconds_for(status.execution_ms / 1000 + overhead_s)


def cost_micro(status: FaasStatus, price_per_second_usd: Price, overhead_s: float = 0.0) -> int | None:
    """What a final job cost, micro-dollars rounded up; None when unknown (see `billed_seconds`)."""
    seconds = billed_seconds(status, overhead_s)
    return None if seconds is None else micro_for(seconds, price_per_second_usd)


def reservation_micro(max_seconds: float, price_per_second_usd: Price) -> int:
    """The most a job capped at `max_seconds` of billed worker time can cost, micro-dollars."""
    return micro_for(seconds_for(max_seconds), price_per_second_usd)


def seconds_for(seconds: float) -> int:
    """Whole seconds, rounded up. Rounded to the microsecond first, so that float noise never bills an
    extra second (0.1 * 3 * 10 s is 3.0000000000000004 as floats: 3 s, not 4)."""
    return int(Decimal(str(round(seconds, 6))).to_integral_value(rounding=ROUND_CEILING))


def micro_for(seconds: int, price_per_second_usd: Price) -> int:
    price = Decimal(str(price_per_second_usd))
    if price < 0 or seconds < 0:
        raise ValueError("a price and a duration are never negative")
    return int((price * seconds * MICRO).to_integral_value(rounding=ROUND_CEILING))

