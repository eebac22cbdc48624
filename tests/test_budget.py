"""The FaaS budget ledger: caps hold under concurrency, reservations end exactly once, days roll over."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from spillway import budget as budget_module
from spillway.budget import MICRO, BudgetLedger, Cap, ReservationState, budget_id
from spillway_embedded import moto_patches

# moto's DynamoDB is not safe under threads on its own: a conditional write is a read, a check and a
# write with nothing in between, and a transaction deep-copies and restores whole tables. The race tests
# below call moto from many threads, so moto must run with the embedded stack's patches: one lock
# around each DynamoDB request (the requests of different threads still interleave, one at a time, as
# a real table's serialized item writes do) and item-level transaction rollback. The lock only makes
# moto behave like DynamoDB; which reservation wins is decided by the ledger's conditions, under test.
# (conftest applies the patches too; applying them here says this module depends on them.)
moto_patches.apply()

REGION = "us-east-1"
TABLE = "spillway-budget"
DAY1 = datetime(2026, 11, 26, 12, 0, tzinfo=UTC).timestamp()
DOLLAR = MICRO


class Clock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def aws() -> Iterator[tuple[Any, Any]]:
    with mock_aws():
        ddb = boto3.client("dynamodb", region_name=REGION)
        ddb.create_table(TableName=TABLE, KeySchema=[{"AttributeName": "budget_id", "KeyType": "HASH"}],
                         AttributeDefinitions=[{"AttributeName": "budget_id", "AttributeType": "S"}],
                         BillingMode="PAY_PER_REQUEST")
        yield boto3.resource("dynamodb", region_name=REGION).Table(TABLE), ddb


@pytest.fixture
def clock() -> Clock:
    return Clock(DAY1)


@pytest.fixture
def ledger(aws: tuple[Any, Any], clock: Clock) -> BudgetLedger:
    table, ddb = aws
    return BudgetLedger(table, ddb, clock)


def day_cap(dollars: float) -> Cap:
    return Cap(cap_micro=int(dollars * DOLLAR))


def us_cap(dollars: float) -> Cap:
    return Cap(segment="us", cap_micro=int(dollars * DOLLAR))


def committed(ledger: BudgetLedger, segment: str | None = None, day: str = "2026-11-26") -> int:
    return ledger.view(segment, day).committed_micro


# ---- reserving


def test_a_reservation_within_the_caps_holds_its_amount_on_every_scope(ledger: BudgetLedger) -> None:
    reservation = ledger.reserve("r1", 3 * DOLLAR, [day_cap(10), us_cap(5)])

    assert reservation is not None
    assert (reservation.state, reservation.day, reservation.scopes) == (
        ReservationState.RESERVED, "2026-11-26", ["faas#2026-11-26", "faas#2026-11-26#us"])
    view = ledger.view(day="2026-11-26")
    assert (view.cap_micro, view.committed_micro, view.settled_micro, view.reserved_micro, view.left_micro) == (
        10 * DOLLAR, 3 * DOLLAR, 0, 3 * DOLLAR, 7 * DOLLAR)
    assert ledger.view("us").left_micro == 2 * DOLLAR
    assert ledger.reservation("r1") == reservation


def test_a_reservation_past_the_cap_is_refused_and_holds_nothing(ledger: BudgetLedger) -> None:
    assert ledger.reserve("r1", 7 * DOLLAR, [day_cap(10)]) is not None
    assert ledger.reserve("r2", 3 * DOLLAR + 1, [day_cap(10)]) is None
    assert ledger.reserve("r3", 3 * DOLLAR, [day_cap(10)]) is not None  # exactly to the cap fits

    assert committed(ledger) == 10 * DOLLAR
    assert ledger.reservation("r2") is None
    assert ledger.reserve("r4", 1, [day_cap(10)]) is None


def test_a_segment_over_its_cap_refuses_though_the_day_has_room_and_the_day_holds_nothing(
        ledger: BudgetLedger) -> None:
    assert ledger.reserve("r1", 4 * DOLLAR, [day_cap(100), us_cap(5)]) is not None
    assert ledger.reserve("r2", 2 * DOLLAR, [day_cap(100), us_cap(5)]) is None

    # All or nothing: the day's counter did not take the 2 dollars the segment refused.
    assert committed(ledger) == 4 * DOLLAR
    assert committed(ledger, "us") == 4 * DOLLAR
    assert ledger.reservation("r2") is None
    # Another segment has its own cap; the day's counter is shared.
    assert ledger.reserve("r3", 2 * DOLLAR, [day_cap(100), Cap(segment="us/enterprise", cap_micro=5 * DOLLAR)])
    assert committed(ledger) == 6 * DOLLAR


def test_a_day_over_its_cap_refuses_though_the_segment_has_room(ledger: BudgetLedger) -> None:
    assert ledger.reserve("r1", 9 * DOLLAR, [day_cap(10)]) is not None
    assert ledger.reserve("r2", 2 * DOLLAR, [day_cap(10), us_cap(5)]) is None
    assert committed(ledger, "us") == 0


@pytest.mark.parametrize("cap, amount", [(0, 0), (0, 1), (5 * DOLLAR, 5 * DOLLAR + 1)])
def test_a_cap_of_zero_turns_faas_off_and_an_amount_over_the_cap_never_fits(
        ledger: BudgetLedger, aws: tuple[Any, Any], cap: int, amount: int) -> None:
    assert ledger.reserve("r1", amount, [Cap(cap_micro=cap)]) is None
    assert aws[0].scan()["Items"] == []  # refused without a write


def test_a_retried_reserve_returns_the_first_reservation_and_holds_once(ledger: BudgetLedger) -> None:
    first = ledger.reserve("r1", 3 * DOLLAR, [day_cap(10), us_cap(5)])
    again = ledger.reserve("r1", 3 * DOLLAR, [day_cap(10), us_cap(5)])

    assert again == first
    assert committed(ledger) == committed(ledger, "us") == 3 * DOLLAR
    # A retry that arrives after the reservation ended gets it as it is now; nothing is held again.
    ledger.settle("r1", DOLLAR)
    late = ledger.reserve("r1", 3 * DOLLAR, [day_cap(10), us_cap(5)])
    assert late is not None and late.state == ReservationState.SETTLED
    assert committed(ledger) == DOLLAR


def test_a_retried_reserve_is_idempotent_even_when_the_caps_are_now_full(ledger: BudgetLedger) -> None:
    first = ledger.reserve("r1", 3 * DOLLAR, [day_cap(3)])
    assert ledger.reserve("r1", 3 * DOLLAR, [day_cap(3)]) == first  # the cap is full, the retry still answers
    assert ledger.reserve("r1", 3 * DOLLAR, [day_cap(2)]) == first  # even if the cap was lowered meanwhile
    assert ledger.reserve("r1", 2 * DOLLAR, [day_cap(10)]) == first  # the first amount stands
    assert committed(ledger) == 3 * DOLLAR


def test_caps_must_name_each_scope_once_and_there_must_be_one(ledger: BudgetLedger) -> None:
    with pytest.raises(ValueError, match="one cap per scope"):
        ledger.reserve("r1", 1, [day_cap(10), day_cap(5)])
    with pytest.raises(ValueError, match="at least one cap"):
        ledger.reserve("r1", 1, [])
    with pytest.raises(ValueError):
        Cap(segment="us#x", cap_micro=1)  # "#" would make another scope's key


# ---- settling and releasing


def test_settling_lower_gives_the_difference_back(ledger: BudgetLedger) -> None:
    ledger.reserve("r1", 10 * DOLLAR, [day_cap(20), us_cap(10)])

    assert ledger.settle("r1", 3 * DOLLAR + 250_000) == 6 * DOLLAR + 750_000

    for segment in (None, "us"):
        view = ledger.view(segment)
        assert (view.committed_micro, view.settled_micro, view.reserved_micro) == (
            3_250_000, 3_250_000, 0)
    assert ledger.spent("2026-11-26") == 3_250_000
    settled = ledger.reservation("r1")
    assert settled is not None
    assert (settled.state, settled.actual_micro) == (ReservationState.SETTLED, 3_250_000)


def test_settling_higher_records_what_was_billed_and_says_so(ledger: BudgetLedger,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    warnings: list[tuple[str, dict[str, Any]]] = []
    monkeypatch.setattr(budget_module.logger, "warning", lambda msg, **kw: warnings.append((msg, kw)))
    ledger.reserve("r1", 2 * DOLLAR, [day_cap(10)])

    assert ledger.settle("r1", 3 * DOLLAR) == -DOLLAR

    assert committed(ledger) == ledger.spent("2026-11-26") == 3 * DOLLAR
    assert warnings == [("provider billed more than was reserved",
                         {"reservation_id": "r1", "reserved_micro": 2 * DOLLAR, "actual_micro": 3 * DOLLAR,
                          "scopes": ["faas#2026-11-26"]})]


def test_a_settlement_happens_once(ledger: BudgetLedger) -> None:
    ledger.reserve("r1", 5 * DOLLAR, [day_cap(10)])
    assert ledger.settle("r1", DOLLAR) == 4 * DOLLAR

    assert ledger.settle("r1", DOLLAR) is None  # a duplicate webhook, a poll after the webhook, ...
    assert ledger.settle("r1", 2 * DOLLAR) is None
    assert ledger.release("r1") is False
    assert (committed(ledger), ledger.spent("2026-11-26")) == (DOLLAR, DOLLAR)


def test_a_release_gives_everything_back_once(ledger: BudgetLedger) -> None:
    ledger.reserve("r1", 5 * DOLLAR, [day_cap(10), us_cap(5)])

    assert ledger.release("r1") is True
    assert ledger.release("r1") is False
    assert ledger.settle("r1", DOLLAR) is None
    assert committed(ledger) == committed(ledger, "us") == 0
    released = ledger.reservation("r1")
    assert released is not None and released.state == ReservationState.RELEASED
    # The room is there again.
    assert ledger.reserve("r2", 5 * DOLLAR, [day_cap(10), us_cap(5)]) is not None


def test_ending_an_unknown_reservation_does_nothing(ledger: BudgetLedger, aws: tuple[Any, Any]) -> None:
    assert ledger.settle("nope", DOLLAR) is None
    assert ledger.release("nope") is False
    assert aws[0].scan()["Items"] == []


# ---- days


def test_a_new_day_starts_at_zero_and_a_late_settlement_counts_on_its_own_day(
        ledger: BudgetLedger, clock: Clock) -> None:
    clock.now = datetime(2026, 11, 26, 23, 59, 59, tzinfo=UTC).timestamp()
    assert ledger.reserve("late", 10 * DOLLAR, [day_cap(10)]) is not None
    assert ledger.reserve("full", 1, [day_cap(10)]) is None

    clock.now += 2  # 00:00:01 on the 27th
    assert ledger.today() == "2026-11-27"
    assert ledger.view().committed_micro == 0
    assert ledger.reserve("next", 10 * DOLLAR, [day_cap(10)]) is not None

    # The call reserved on the 26th ends on the 27th: it settles against the 26th, the 27th is untouched.
    assert ledger.settle("late", 4 * DOLLAR) == 6 * DOLLAR
    assert (committed(ledger, day="2026-11-26"), ledger.spent("2026-11-26")) == (4 * DOLLAR, 4 * DOLLAR)
    assert (committed(ledger, day="2026-11-27"), ledger.spent("2026-11-27")) == (10 * DOLLAR, 0)


def test_the_budget_day_follows_the_ledgers_time_zone(aws: tuple[Any, Any]) -> None:
    from zoneinfo import ZoneInfo

    table, ddb = aws
    # 02:00 UTC on the 27th is still the 26th in New York.
    ledger = BudgetLedger(table, ddb, Clock(datetime(2026, 11, 27, 2, 0, tzinfo=UTC).timestamp()),
                          tz=ZoneInfo("America/New_York"))
    reservation = ledger.reserve("r1", DOLLAR, [day_cap(10)])
    assert reservation is not None and reservation.scopes == [budget_id("2026-11-26")]


# ---- concurrency


def run_together(n: int, work: Any) -> list[Any]:
    """Run work(i) on n threads released at once; the answers in order of i."""
    start = threading.Barrier(n)
    answers: list[Any] = [None] * n
    errors: list[BaseException] = []

    def run(i: int) -> None:
        start.wait()
        try:
            answers[i] = work(i)
        except BaseException as exc:  # noqa: BLE001 - surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    return answers


def test_many_reservations_racing_for_the_last_dollars_exactly_the_ones_that_fit_win(
        aws: tuple[Any, Any], clock: Clock) -> None:
    table, ddb = aws
    ledger = BudgetLedger(table, ddb, clock)
    assert ledger.reserve("earlier", 7 * DOLLAR, [day_cap(10)]) is not None  # 3 dollars left

    # 16 ledgers (16 Lambda containers) each want a dollar of the last 3.
    ledgers = [BudgetLedger(table, ddb, clock) for _ in range(16)]
    answers = run_together(16, lambda i: ledgers[i].reserve(f"r{i}", DOLLAR, [day_cap(10)]))

    winners = [a for a in answers if a is not None]
    assert len(winners) == 3
    assert committed(ledger) == 10 * DOLLAR
    assert sum(1 for i in range(16) if ledger.reservation(f"r{i}") is not None) == 3


def test_racing_reservations_of_mixed_sizes_never_pass_any_cap(aws: tuple[Any, Any], clock: Clock) -> None:
    table, ddb = aws
    ledger = BudgetLedger(table, ddb, clock)
    caps = {"us": us_cap(4), "eu": Cap(segment="eu", cap_micro=3 * DOLLAR)}
    amounts = [DOLLAR, 2 * DOLLAR, 1_500_000, 700_000] * 4  # 16 calls asking for 20.8 dollars
    segments = ["us", "eu"] * 8

    answers = run_together(16, lambda i: BudgetLedger(table, ddb, clock).reserve(
        f"r{i}", amounts[i], [day_cap(6), caps[segments[i]]]))

    won = [i for i, a in enumerate(answers) if a is not None]
    day_total = sum(amounts[i] for i in won)
    assert committed(ledger) == day_total <= 6 * DOLLAR
    for segment, cap in caps.items():
        total = sum(amounts[i] for i in won if segments[i] == segment)
        assert committed(ledger, segment) == total <= cap.cap_micro
    # Counters only grow during the race, so whatever lost could not fit at the end either.
    for i, answer in enumerate(answers):
        if answer is None:
            segment_left = caps[segments[i]].cap_micro - committed(ledger, segments[i])
            assert amounts[i] > min(6 * DOLLAR - day_total, segment_left)


def test_two_callers_that_both_saw_room_for_the_last_dollars_one_wins(aws: tuple[Any, Any], clock: Clock) -> None:
    table, ddb = aws
    a, b = BudgetLedger(table, ddb, clock), BudgetLedger(table, ddb, clock)
    assert a.reserve("earlier", 8 * DOLLAR, [day_cap(10)]) is not None
    both_read = threading.Barrier(2)

    def check_then_reserve(ledger: BudgetLedger, reservation_id: str) -> Any:
        seen = ledger.view(cap_micro=10 * DOLLAR)
        assert seen.left_micro == 2 * DOLLAR  # each sees room for its 2 dollars...
        both_read.wait()  # ...before either writes
        return ledger.reserve(reservation_id, 2 * DOLLAR, [day_cap(10)])

    answers = run_together(2, lambda i: check_then_reserve((a, b)[i], ("from-a", "from-b")[i]))

    assert sum(x is not None for x in answers) == 1
    assert committed(a) == 10 * DOLLAR


class HoldingClient:
    """A DynamoDB client that stops its caller's transaction just before it is sent, until released."""

    def __init__(self, client: Any):
        self._client = client
        self.about_to_write = threading.Event()
        self.go = threading.Event()

    def transact_write_items(self, **request: Any) -> Any:
        self.about_to_write.set()
        assert self.go.wait(10)
        return self._client.transact_write_items(**request)


def test_a_reservation_written_between_anothers_check_and_write_makes_that_write_refused(
        aws: tuple[Any, Any], clock: Clock) -> None:
    """The interleaving a read-then-write ledger would lose to, forced step by step: B reserves the last
    dollars while A is between deciding and writing. A's condition is checked at its write, so A loses."""
    table, ddb = aws
    held = HoldingClient(ddb)
    a, b = BudgetLedger(table, held, clock), BudgetLedger(table, ddb, clock)
    assert b.reserve("earlier", 9 * DOLLAR, [day_cap(10), us_cap(10)]) is not None

    answer: list[Any] = []
    thread = threading.Thread(target=lambda: answer.append(a.reserve("a", DOLLAR, [day_cap(10), us_cap(10)])))
    thread.start()
    assert held.about_to_write.wait(10)  # A has built its transaction with the room it computed
    assert b.reserve("b", DOLLAR, [day_cap(10)]) is not None  # B takes the last dollar meanwhile
    held.go.set()
    thread.join(10)

    assert answer == [None]
    assert committed(b) == 10 * DOLLAR
    assert committed(b, "us") == 9 * DOLLAR  # A's segment hold was rolled back with its day hold


def test_a_settlement_and_a_release_racing_end_the_reservation_once(aws: tuple[Any, Any], clock: Clock) -> None:
    table, ddb = aws
    ledger = BudgetLedger(table, ddb, clock)
    for n in range(8):
        ledger.reserve(f"r{n}", 4 * DOLLAR, [Cap(segment=f"s{n}", cap_micro=10 * DOLLAR)])
        settled, released = run_together(2, lambda i, n=n: (
            BudgetLedger(table, ddb, clock).settle(f"r{n}", DOLLAR) if i == 0
            else BudgetLedger(table, ddb, clock).release(f"r{n}")))

        assert (settled is not None) != released
        assert committed(ledger, f"s{n}") == (DOLLAR if settled is not None else 0)


def test_a_conflicting_transaction_is_retried(aws: tuple[Any, Any], clock: Clock) -> None:
    """On AWS a transaction that meets another on the same counter is cancelled with TransactionConflict."""
    table, ddb = aws

    class Conflicting:
        calls = 0

        def transact_write_items(self, **request: Any) -> Any:
            self.calls += 1
            if self.calls == 1:
                raise ClientError({"Error": {"Code": "TransactionCanceledException", "Message": "conflict"},
                                   "CancellationReasons": [{"Code": "None"}, {"Code": "TransactionConflict"}]},
                                  "TransactWriteItems")
            return ddb.transact_write_items(**request)

    client = Conflicting()
    sleeps: list[float] = []
    ledger = BudgetLedger(table, client, clock, sleep=sleeps.append)

    assert ledger.reserve("r1", DOLLAR, [day_cap(10)]) is not None
    assert client.calls == 2 and len(sleeps) == 1
    assert committed(ledger) == DOLLAR
