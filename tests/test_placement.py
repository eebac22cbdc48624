"""The waiting room's placement and wait-bound rules, as plain functions (the pollers and the simulator call them)."""

from __future__ import annotations

from spillway import placement
from spillway.fleet import Gpu
from spillway.models import Pool, Priority
from spillway.waiting_room import WaitingEntry


def gpu(gpu_id: str, free_mb: int, running: int = 0, slots: int = 2) -> Gpu:
    return Gpu(gpu_id=gpu_id, pool=Pool.LOCAL, url=f"http://{gpu_id}", vram_total_mb=12_000, vram_free_mb=free_mb,
               slots=slots, running=running, services=["remove_furniture"], last_heartbeat=0)


def entry(vram_mb: int = 3_000, avoid: list[str] | None = None, wait_until: float = 100,
          spill_to: Pool | None = Pool.CLOUD) -> WaitingEntry:
    return WaitingEntry(pool=Pool.LOCAL, rank="r", task_id="t", job_id="j", attempt=1, service="remove_furniture",
                        vram_mb=vram_mb, priority=Priority.NORMAL, arrived_at=0, wait_until=wait_until,
                        avoid=avoid or [], spill_to=spill_to)


def test_best_fit_is_the_least_free_vram_that_fits_never_a_gpu_to_avoid_nor_a_full_one() -> None:
    gpus = [gpu("big", 12_000), gpu("small", 4_000), gpu("tiny", 2_000), gpu("full", 3_500, running=2),
            gpu("failed-it", 3_200)]
    assert [g.gpu_id for g in placement.best_fit(entry(avoid=["failed-it"]), gpus)] == ["small", "big"]


def test_taking_a_slot_updates_the_view_and_drops_a_full_gpu() -> None:
    view = {"a": gpu("a", 8_000, slots=2)}
    placement.take_slot(view, view["a"], 3_000)
    assert (view["a"].vram_free_mb, view["a"].running) == (5_000, 1)
    placement.take_slot(view, view["a"], 3_000)
    assert view == {}


def test_a_pool_pulls_only_what_waits_past_its_bound_and_spills_into_it() -> None:
    assert placement.pulled_by(entry(wait_until=10), Pool.CLOUD, now=10)
    assert not placement.pulled_by(entry(wait_until=11), Pool.CLOUD, now=10)
    assert not placement.pulled_by(entry(wait_until=10, spill_to=Pool.FAAS), Pool.CLOUD, now=10)


def test_a_pool_could_start_a_task_only_with_an_empty_room_and_a_gpu_that_fits_and_reads_no_gpu_otherwise() -> None:
    def unread() -> list[Gpu]:
        raise AssertionError("a room with a queue reads no GPU")

    fits = [gpu("a", 4_000)]
    assert placement.could_start(Pool.CLOUD, lambda: True, lambda: fits, "remove_furniture", 3_000, [])
    assert not placement.could_start(Pool.CLOUD, lambda: True, lambda: fits, "remove_furniture", 3_000, ["a"])
    assert not placement.could_start(Pool.CLOUD, lambda: True, lambda: fits, "remove_furniture", 5_000, [])
    assert not placement.could_start(Pool.CLOUD, lambda: False, unread, "remove_furniture", 3_000, [])
    assert placement.could_start(Pool.FAAS, lambda: False, unread, "remove_furniture", 3_000, [])


def test_the_wait_clock_holds_a_task_to_its_bound_then_moves_it_on_only_if_the_next_pool_could_start_it() -> None:
    def clock(now: float, spill_to: Pool | None, next_free: bool) -> float | None:
        return placement.wait_clock(now, wait_until=30, deadline=3_600, spill_to=spill_to,
                                    next_could_start=lambda pool: next_free)

    assert clock(10, Pool.CLOUD, next_free=True) == 30  # within its bound: it waits
    assert clock(30, Pool.CLOUD, next_free=True) is None  # past it, the cloud has room: it leaves
    assert clock(30, Pool.CLOUD, next_free=False) == 3_600  # the cloud is full too: it waits on to its deadline
    assert clock(30, None, next_free=False) is None  # nowhere to spill (its bound is its deadline)
    assert clock(3_600, Pool.CLOUD, next_free=False) is None  # its deadline
