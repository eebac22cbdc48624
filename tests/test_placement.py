"""The waiting room's placement and wait-bound rules, as plain functions (the pollers and the simulator call them)."""

from __future__ import annotations

from spillway import placement
from spillway.fleet import Gpu
from spillway.models import Pool, Priority
from spillway.waiting_room import WaitingEntry


def gpu(gpu_id: str, free_mb: int, running: int = 0, slots: int = 2, total_mb: int = 12_000,
        compute_free: int = 100, compute_total: int = 100) -> Gpu:
    return Gpu(gpu_id=gpu_id, pool=Pool.LOCAL, url=f"http://{gpu_id}", vram_total_mb=total_mb, vram_free_mb=free_mb,
               compute_total=compute_total, compute_free=compute_free, slots=slots, running=running,
               services=["remove_furniture"], last_heartbeat=0)


def entry(vram_mb: int = 3_000, avoid: list[str] | None = None, wait_until: float = 100,
          spill_to: Pool | None = Pool.CLOUD, compute: int = 20, task_id: str = "t") -> WaitingEntry:
    return WaitingEntry(pool=Pool.LOCAL, rank=task_id, task_id=task_id, job_id="j", attempt=1,
                        service="remove_furniture", vram_mb=vram_mb, compute=compute, priority=Priority.NORMAL,
                        arrived_at=0, wait_until=wait_until, avoid=avoid or [], spill_to=spill_to)


def ids(gpus: list[Gpu]) -> list[str]:
    return [g.gpu_id for g in gpus]


def test_best_fit_is_the_least_free_vram_that_fits_never_a_gpu_to_avoid_nor_a_full_one() -> None:
    gpus = [gpu("big", 12_000), gpu("small", 4_000), gpu("tiny", 2_000), gpu("full", 3_500, running=2),
            gpu("failed-it", 3_200)]
    assert ids(placement.best_fit(entry(avoid=["failed-it"]), gpus)) == ["small", "big"]


def test_a_gpu_with_the_vram_but_not_the_compute_free_does_not_fit() -> None:
    busy = gpu("busy", 12_000, running=1, compute_free=15)  # VRAM for it, compute for it only once idle
    assert ids(placement.best_fit(entry(compute=20), [busy])) == []
    assert not busy.fits("remove_furniture", 3_000, 20) and busy.could_hold("remove_furniture", 3_000, 20)
    assert ids(placement.best_fit(entry(compute=15), [busy])) == ["busy"]
    weak = gpu("weak", 12_000, compute_free=50, compute_total=50)  # a MIG slice: never a whole GPU's compute
    assert not weak.could_hold("remove_furniture", 3_000, 60)


def test_best_fit_over_both_is_the_gpu_left_with_the_tightest_room() -> None:
    # After a 3 GB, 20% task: vram-tight keeps 1/12 of its VRAM (and 80% compute); compute-tight 10% of its
    # compute (and most of its VRAM); roomy keeps half of both. The tighter of the two decides: roomy, with
    # room for a big task in both, stays free.
    vram_tight, compute_tight = gpu("vram-tight", 4_000), gpu("compute-tight", 12_000, compute_free=30)
    roomy = gpu("roomy", 9_000, compute_free=70)
    assert ids(placement.best_fit(entry(), [roomy, vram_tight, compute_tight])) == [
        "vram-tight", "compute-tight", "roomy"]
    # Equal on the tighter fraction: the looser decides (the GPU that fills most evenly).
    even, lopsided = gpu("even", 6_000, compute_free=70), gpu("lopsided", 6_000, compute_free=100)
    assert ids(placement.best_fit(entry(), [lopsided, even])) == ["even", "lopsided"]


def test_taking_a_slot_updates_the_view_and_drops_a_full_gpu() -> None:
    view = placement.PoolView([gpu("a", 8_000, slots=2)])
    a = view.gpus["a"]
    view.take(a, entry(3_000, compute=30))
    assert (a.vram_free_mb, a.compute_free, a.running) == (5_000, 70, 1)
    view.take(a, entry(3_000, compute=30))
    assert view.gpus == {} and not view


def test_the_head_of_the_line_that_fits_nowhere_now_reserves_the_gpu_nearest_to_holding_it() -> None:
    view = placement.PoolView([gpu("a", 5_000, running=1, slots=4, compute_free=50),
                               gpu("b", 3_000, running=1, slots=4, compute_free=80)])
    big, small, small2 = entry(8_000, compute=60, task_id="big"), entry(1_000, task_id="s1"), \
        entry(1_000, task_id="s2")
    assert view.best_fit(big) == [] and view.reserved == "a"  # a lacks 25% of its VRAM and 10% compute; b 42%
    assert ids(view.best_fit(small)) == ["b"], "the small ones go around it, never to the reserved GPU"
    view.take(view.gpus["b"], small)
    assert view.best_fit(small2) and view.reserved == "a", "one reservation a pass: the head's"
    never = placement.PoolView([gpu("a", 5_000, running=1, slots=4)])
    assert never.best_fit(entry(20_000, task_id="huge")) == [] and never.reserved is None, \
        "a task no GPU of the view could ever hold reserves nothing"


def test_a_big_task_is_not_starved_by_a_stream_of_small_ones() -> None:
    """One GPU, a small task ending and two arriving every round: the big one at the head of the line takes
    the GPU once the tasks that ran when it arrived have ended (3 rounds), not never (without its reservation the
    freed room goes to the small ones behind it, round after round)."""
    card = gpu("local-0", 12_000, slots=8, compute_free=100)
    running: list[WaitingEntry] = []
    room: list[WaitingEntry] = []
    view = placement.PoolView([card])
    for n in range(4):  # the GPU is busy with small tasks when the big one arrives
        small = entry(2_000, compute=20, task_id=f"early-{n}")
        view.take(card, small)
        running.append(small)
    room.append(entry(10_000, compute=70, task_id="big"))
    started_at = None
    for round_ in range(1, 20):
        ended = running.pop(0)  # the oldest small task ends: its room comes back
        card.vram_free_mb, card.compute_free, card.running = \
            card.vram_free_mb + ended.vram_mb, card.compute_free + ended.compute, card.running - 1
        room += [entry(2_000, compute=20, task_id=f"small-{round_}-{k}") for k in range(2)]
        view = placement.PoolView([card] if card.free_slots else [])  # a pump: one pass, front to back
        for waiting in list(room):
            fitting = view.best_fit(waiting)
            if fitting:
                view.take(fitting[0], waiting)
                room.remove(waiting)
                running.append(waiting)
        if all(e.task_id != "big" for e in room):
            started_at = round_
            break
    assert started_at == 3, f"the big task started in round {started_at}"
    assert (card.vram_free_mb, card.compute_free) == (0, 10), "nothing took the room it waited for"


def test_a_pool_pulls_only_what_waits_past_its_bound_and_spills_into_it() -> None:
    assert placement.pulled_by(entry(wait_until=10), Pool.CLOUD, now=10)
    assert not placement.pulled_by(entry(wait_until=11), Pool.CLOUD, now=10)
    assert not placement.pulled_by(entry(wait_until=10, spill_to=Pool.FAAS), Pool.CLOUD, now=10)


def test_a_pool_could_start_a_task_only_with_an_empty_room_and_a_gpu_that_fits_and_reads_no_gpu_otherwise() -> None:
    def unread() -> list[Gpu]:
        raise AssertionError("a room with a queue reads no GPU")

    fits = [gpu("a", 4_000, compute_free=30)]
    assert placement.could_start(Pool.CLOUD, lambda: True, lambda: fits, entry(3_000))
    assert not placement.could_start(Pool.CLOUD, lambda: True, lambda: fits, entry(3_000, avoid=["a"]))
    assert not placement.could_start(Pool.CLOUD, lambda: True, lambda: fits, entry(5_000))
    assert not placement.could_start(Pool.CLOUD, lambda: True, lambda: fits, entry(3_000, compute=40))
    assert not placement.could_start(Pool.CLOUD, lambda: False, unread, entry(3_000))
    assert placement.could_start(Pool.FAAS, lambda: False, unread, entry(3_000))


def test_the_wait_clock_holds_a_task_to_its_bound_then_moves_it_on_only_if_the_next_pool_could_start_it() -> None:
    def clock(now: float, spill_to: Pool | None, next_free: bool) -> float | None:
        return placement.wait_clock(now, wait_until=30, deadline=3_600, spill_to=spill_to,
                                    next_could_start=lambda pool: next_free)

    assert clock(10, Pool.CLOUD, next_free=True) == 30  # within its bound: it waits
    assert clock(30, Pool.CLOUD, next_free=True) is None  # past it, the cloud has room: it leaves
    assert clock(30, Pool.CLOUD, next_free=False) == 3_600  # the cloud is full too: it waits on to its deadline
    assert clock(30, None, next_free=False) is None  # nowhere to spill (its bound is its deadline)
    assert clock(3_600, Pool.CLOUD, next_free=False) is None  # its deadline
