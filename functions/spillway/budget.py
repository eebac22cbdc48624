"""The FaaS budget ledger: money is reserved before a FaaS call, never spent past a cap.

Spend has a daily cap and optional per-segment caps (a segment is a label such as `us` or
`us/enterprise`; the caller passes the caps that apply). Money is integer micro-dollars everywhere:
no float ever reaches a DynamoDB condition.

One item per (day, scope) — `faas#2026-11-26` for the whole day, `faas#2026-11-26#us` for a
segment — holds one counter, `committed_micro` = settled spend + outstanding reservations.
DynamoDB conditions cannot add numbers, so the headroom check is written against a bound computed
here: `committed_micro <= cap - amount`. A reservation is ONE transaction: its own item
`reservation#<id>` (put only if absent: a retried reserve never reserves twice) and the counter of
every scope it touches, each under its cap. All or nothing: a segment over its cap leaves the day's
counter untouched too.

A reservation ends exactly once (a condition on its state): `settle` replaces the reserved amount
by what the call cost, `release` gives it all back. Both touch the counters the reservation named,
on the day it was made, even if they run after midnight.

Budget days are calendar days in `tz` (UTC by default). Concurrent transactions on one counter can
be cancelled with `TransactionConflict` on AWS; reserve/settle/release are idempotent, so they are
retried here a few times before the error is raised.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, tzinfo
from enum import StrEnum
from typing import Any

from aws_lambda_powertools import Logger
from botocore.exceptions import ClientError
from pydantic import BaseModel, Field, computed_field

from spillway.aws import cancellation_codes, error_code, from_item, typed
from spillway.faas.billing import MICRO  # noqa: F401 (money is micro-dollars here too)

logger = Logger(child=True)

RESERVATION_PREFIX = "reservation#"
RESERVATION_TTL_SECONDS = 90 * 86_400  # reservation items are kept this long, for audit; counters stay
CONFLICT_RETRIES = 5
Segment = str  # e.g. "us", "us/enterprise"; never contains "#"


class Cap(BaseModel):
    """A spending cap for one day: the whole day's FaaS spend (segment None) or one segment's.
    A cap of 0 means FaaS is off for that scope."""

    segment: Segment | None = Field(default=None, min_length=1, max_length=100, pattern=r"^[^#]+$")
    cap_micro: int = Field(ge=0)


class ReservationState(StrEnum):
    RESERVED = "reserved"  # the money is held against the caps
    SETTLED = "settled"  # replaced by what the call actually cost
    RELEASED = "released"  # given back whole: the call was never made


class Reservation(BaseModel):
    reservation_id: str
    amount_micro: int
    day: str  # ISO date of the budget day it counts against
    scopes: list[str]  # the budget ids of the counters it holds money on
    state: ReservationState
    reserved_at: float  # epoch seconds
    actual_micro: int | None = None  # set when settled
    ended_at: float | None = None


class BudgetView(BaseModel):
    """Spend against a cap for one day and scope, for the API and ops."""

    day: str
    segment: Segment | None
    cap_micro: int | None  # the cap asked about, else the last one a reservation was made against
    committed_micro: int  # settled + reserved
    settled_micro: int

    @computed_field  # type: ignore[prop-decorator]
    @property
    def reserved_micro(self) -> int:
        """Held by calls still under way."""
        return self.committed_micro - self.settled_micro

    @computed_field  # type: ignore[prop-decorator]
    @property
    def left_micro(self) -> int | None:
        return None if self.cap_micro is None else max(0, self.cap_micro - self.committed_micro)


def budget_id(day: str, segment: Segment | None = None, kind: str = "faas") -> str:
    """The counter's key: `faas#2026-11-26`, `faas#2026-11-26#us`."""
    return f"{kind}#{day}" if segment is None else f"{kind}#{day}#{segment}"


class BudgetLedger:
    def __init__(self, table: Any, dynamodb: Any, clock: Callable[[], float] = time.time, *,
                 kind: str = "faas", tz: tzinfo = UTC, sleep: Callable[[float], None] = time.sleep):
        self._table = table
        self._ddb = dynamodb  # the low-level client, for transactions
        self._clock = clock
        self._kind = kind
        self._tz = tz
        self._sleep = sleep

    def today(self) -> str:
        return datetime.fromtimestamp(self._clock(), self._tz).date().isoformat()

    # ---- a reservation's life

    def reserve(self, reservation_id: str, amount_micro: int, caps: Sequence[Cap]) -> Reservation | None:
        """Hold `amount_micro` against every cap, all or nothing. None if any cap would be exceeded
        (nothing is held then: the caller goes to another pool). Idempotent by `reservation_id`: a
        retry returns the reservation made first, whatever its state now."""
        if amount_micro < 0:
            raise ValueError("amount_micro must be >= 0")
        if not caps:
            raise ValueError("a reservation needs at least one cap: spend is never unbounded")
        segments = [c.segment for c in caps]
        if len(set(segments)) != len(segments):
            raise ValueError(f"one cap per scope, got {segments}")
        if any(c.cap_micro == 0 or amount_micro > c.cap_micro for c in caps):
            # Cannot fit even on an empty day (or FaaS is off): no write. A retry of a reservation
            # made earlier under a larger cap still gets that reservation back.
            return self._earlier(reservation_id, amount_micro)

        now = self._clock()
        day = datetime.fromtimestamp(now, self._tz).date().isoformat()
        reservation = Reservation(
            reservation_id=reservation_id, amount_micro=amount_micro, day=day,
            scopes=[budget_id(day, c.segment, self._kind) for c in caps], state=ReservationState.RESERVED,
            reserved_at=now,
        )
        items: list[dict[str, Any]] = [{"Put": {
            "TableName": self._table.name,
            "Item": typed(self._reservation_item(reservation)),
            "ConditionExpression": "attribute_not_exists(budget_id)",
        }}]
        for cap, scope in zip(caps, reservation.scopes, strict=True):
            values: dict[str, Any] = {":zero": 0, ":amount": amount_micro, ":room": cap.cap_micro - amount_micro,
                                      ":cap": cap.cap_micro, ":day": day}
            update = ("SET committed_micro = if_not_exists(committed_micro, :zero) + :amount, "
                      "settled_micro = if_not_exists(settled_micro, :zero), cap_micro = :cap, #day = :day")
            if cap.segment is not None:
                update += ", #segment = :segment"
                values[":segment"] = cap.segment
            items.append({"Update": {
                "TableName": self._table.name, "Key": typed({"budget_id": scope}),
                "UpdateExpression": update,
                "ConditionExpression": "attribute_not_exists(committed_micro) OR committed_micro <= :room",
                "ExpressionAttributeNames": {"#day": "day", **({"#segment": "segment"} if cap.segment else {})},
                "ExpressionAttributeValues": typed(values),
            }})

        failed = self._transact(items)
        if failed is None:
            logger.info("budget reserved", reservation_id=reservation_id, amount_micro=amount_micro,
                        scopes=reservation.scopes)
            return reservation
        if failed[0]:
            return self._earlier(reservation_id, amount_micro)
        logger.info("budget refused", reservation_id=reservation_id, amount_micro=amount_micro,
                    over=[s for s, f in zip(reservation.scopes, failed[1:], strict=False) if f])
        return None

    def settle(self, reservation_id: str | Reservation, actual_micro: int) -> int | None:
        """Replace the reserved amount by what the call cost, exactly once. Returns what went back to
        the budget (reserved - actual; negative if the provider billed more than was reserved, which is
        recorded anyway and logged). None if the reservation is unknown or already ended. A caller that
        has just read the reservation may pass it: its end is conditional on its state all the same."""
        if actual_micro < 0:
            raise ValueError("actual_micro must be >= 0")
        reservation = self._open(reservation_id, "settle")
        if reservation is None:
            return None
        delta = actual_micro - reservation.amount_micro
        if delta > 0:
            # The call was capped at the reserved seconds: billing past them is the provider's doing.
            logger.warning("provider billed more than was reserved", reservation_id=reservation.reservation_id,
                           reserved_micro=reservation.amount_micro, actual_micro=actual_micro,
                           scopes=reservation.scopes)
        counters = [self._counter_update(scope, "SET committed_micro = committed_micro + :delta, "
                                                "settled_micro = if_not_exists(settled_micro, :zero) + :actual",
                                         {":delta": delta, ":actual": actual_micro, ":zero": 0})
                    for scope in reservation.scopes]
        ended = self._end(reservation, ReservationState.SETTLED, counters, actual_micro)
        return -delta if ended else None

    def release(self, reservation_id: str | Reservation) -> bool:
        """Give the whole reservation back (the call was never made, or the provider refused it),
        exactly once. False if the reservation is unknown or already ended. (A read reservation may be
        passed, as to `settle`.)"""
        reservation = self._open(reservation_id, "release")
        if reservation is None:
            return False
        counters = [self._counter_update(scope, "SET committed_micro = committed_micro - :amount",
                                         {":amount": reservation.amount_micro})
                    for scope in reservation.scopes]
        return self._end(reservation, ReservationState.RELEASED, counters, None)

    # ---- reading

    def reservation(self, reservation_id: str) -> Reservation | None:
        item = self._table.get_item(Key={"budget_id": RESERVATION_PREFIX + reservation_id},
                                    ConsistentRead=True).get("Item")
        return Reservation.model_validate(from_item(item)) if item else None

    def view(self, segment: Segment | None = None, day: date | str | None = None,
             cap_micro: int | None = None) -> BudgetView:
        """Spend of one scope on one day (today by default) against `cap_micro` (else the cap the last
        reservation was made against)."""
        day_text = self.today() if day is None else str(day)
        item = self._table.get_item(Key={"budget_id": budget_id(day_text, segment, self._kind)},
                                    ConsistentRead=True).get("Item") or {}
        stored = from_item(item)
        return BudgetView(
            day=day_text, segment=segment,
            cap_micro=cap_micro if cap_micro is not None else stored.get("cap_micro"),
            committed_micro=stored.get("committed_micro", 0), settled_micro=stored.get("settled_micro", 0),
        )

    def spent(self, day: date | str, segment: Segment | None = None) -> int:
        """Settled spend of one scope on one day, micro-dollars."""
        return self.view(segment, day).settled_micro

    # ---- plumbing

    def _earlier(self, reservation_id: str, amount_micro: int) -> Reservation | None:
        """A retried reserve: the first answer stands, even if this one asks for another amount."""
        earlier = self.reservation(reservation_id)
        if earlier is not None and earlier.amount_micro != amount_micro:
            logger.warning("reserve retried with another amount: the first reservation stands",
                           reservation_id=reservation_id, reserved_micro=earlier.amount_micro,
                           asked_micro=amount_micro)
        return earlier

    def _open(self, reservation_id: str | Reservation, action: str) -> Reservation | None:
        reservation = reservation_id if isinstance(reservation_id, Reservation) else self.reservation(reservation_id)
        if reservation is None:
            logger.warning(f"{action}: no such reservation", reservation_id=reservation_id)
            return None
        if reservation.state != ReservationState.RESERVED:
            logger.info(f"{action}: reservation already ended", reservation_id=reservation.reservation_id,
                        state=reservation.state.value)
            return None
        return reservation

    def _end(self, reservation: Reservation, state: ReservationState, counters: list[dict[str, Any]],
             actual_micro: int | None) -> bool:
        """Move the reservation from reserved to `state` and apply the counters' updates, all or nothing."""
        values: dict[str, Any] = {":state": state.value, ":reserved": ReservationState.RESERVED.value,
                                  ":now": self._clock()}
        update = "SET #state = :state, ended_at = :now"
        if actual_micro is not None:
            update += ", actual_micro = :actual"
            values[":actual"] = actual_micro
        key = {"budget_id": RESERVATION_PREFIX + reservation.reservation_id}
        end = {"Update": {
            "TableName": self._table.name, "Key": typed(key),
            "UpdateExpression": update, "ConditionExpression": "#state = :reserved",
            "ExpressionAttributeNames": {"#state": "state"}, "ExpressionAttributeValues": typed(values),
        }}
        failed = self._transact([end, *counters])
        if failed is not None:
            logger.info("reservation ended meanwhile", reservation_id=reservation.reservation_id, wanted=state.value)
            return False
        logger.info(f"budget {state.value}", reservation_id=reservation.reservation_id,
                    amount_micro=reservation.amount_micro, actual_micro=actual_micro)
        return True

    def _counter_update(self, scope: str, update: str, values: dict[str, Any]) -> dict[str, Any]:
        # The counter must exist: it was made by the reservation's own transaction.
        return {"Update": {
            "TableName": self._table.name, "Key": typed({"budget_id": scope}), "UpdateExpression": update,
            "ConditionExpression": "attribute_exists(committed_micro)", "ExpressionAttributeValues": typed(values),
        }}

    def _reservation_item(self, reservation: Reservation) -> dict[str, Any]:
        item = reservation.model_dump(mode="json", exclude_none=True)
        return {"budget_id": RESERVATION_PREFIX + reservation.reservation_id, **item,
                "expires_at": int(reservation.reserved_at) + RESERVATION_TTL_SECONDS}

    def _transact(self, items: list[dict[str, Any]]) -> list[bool] | None:
        """Run a transaction. None if it happened; else, per item, whether its condition failed.
        A conflict with a concurrent transaction is retried (every transaction here is idempotent by
        its conditions); anything else raises."""
        for attempt in range(CONFLICT_RETRIES + 1):
            try:
                self._ddb.transact_write_items(TransactItems=items)
                return None
            except ClientError as exc:
                codes = cancellation_codes(exc)
                if any(c == "ConditionalCheckFailed" for c in codes):
                    return [c == "ConditionalCheckFailed" for c in codes]
                conflict = "TransactionConflict" in codes or error_code(exc) == "TransactionConflictException"
                if not conflict or attempt == CONFLICT_RETRIES:
                    raise
                self._sleep(random.uniform(0, 0.02 * 2 ** attempt))  # full jitter, so retries spread out
        raise AssertionError("unreachable")


