"""The waiting room's rules as plain functions over GPUs and room entries: which GPU a waiting task
goes to, and what becomes of a task past its wait bound. The pollers (`dispatch.py`) apply them to
what they read from DynamoDB; the simulator (`spillway simulate`) to its simulated fleet.

A GPU runs several tasks at once, packed by VRAM *and* compute: a task fits only where both are free
(and a slot). Best fit over both: the GPU left with the least room for another task, where a GPU's room
is the tighter of its two remaining fractions (a big task needs both, so its scarcer one is what it can
still offer). Small tasks fill GPUs whose room is small already, and GPUs with much of both stay free for
big ones. And a big task at the front of the line that fits nowhere now reserves the GPU nearest to
holding it: nothing behind it takes that GPU, so a stream of small tasks cannot starve it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from spillway.fleet import Gpu
from spillway.models import Pool
from spillway.waiting_room import WaitingEntry


def best_fit(entry: WaitingEntry, gpus: Iterable[Gpu]) -> list[Gpu]:
    """The GPUs that could start the entry now, best fit first; never one it must avoid."""
    return sorted((g for g in gpus if g.fits(entry.service, entry.vram_mb, entry.compute) and entry.may_use(g.gpu_id)),
                  key=lambda g: g.fit_order(entry.vram_mb, entry.compute))


def nearest(entry: WaitingEntry, gpus: Iterable[Gpu]) -> Gpu | None:
    """Of the GPUs that could hold the entry once idle, the one it lacks least on (VRAM or compute, as
    fractions), best fit among equals; None if none could ever hold it."""
    def lacks(gpu: Gpu) -> float:
        return max(0.0, (entry.vram_mb - gpu.vram_free_mb) / gpu.vram_total_mb,
                   (entry.compute - gpu.compute_free) / gpu.compute_total)

    holding = [g for g in gpus if g.could_hold(entry.service, entry.vram_mb, entry.compute) and entry.may_use(g.gpu_id)]
    return min(holding, key=lambda g: (lacks(g), g.fit_order(entry.vram_mb, entry.compute)), default=None)


class PoolView:
    """A pump's view of its pool's GPUs with a free slot, during one pass over the room, front to back.

    The first entry no GPU can start now, but one could hold once tasks on it end, reserves that GPU
    (`nearest`): entries behind it go around it to the other GPUs, never to that one, and it starts there
    when enough has ended. One reservation a pass: the line's head; aging brings every task to the head."""

    def __init__(self, gpus: Iterable[Gpu]):
        self.gpus = {g.gpu_id: g for g in gpus}
        self.reserved: str | None = None  # the GPU held for the head of the line

    def __bool__(self) -> bool:
        """Some GPU may still take an entry of this pass."""
        return any(gpu_id != self.reserved for gpu_id in self.gpus)

    def best_fit(self, entry: WaitingEntry) -> list[Gpu]:
        """The GPUs that could start the entry now, best fit first, the reserved one aside; an entry that fits
        none reserves the one nearest to holding it, if nothing is reserved yet."""
        fitting = best_fit(entry, (g for g in self.gpus.values() if g.gpu_id != self.reserved))
        if not fitting and self.reserved is None:
            held = nearest(entry, self.gpus.values())
            self.reserved = held.gpu_id if held else None
        return fitting

    def take(self, gpu: Gpu, entry: WaitingEntry) -> None:
        """`gpu` now holds the entry's task; a full GPU leaves the view."""
        gpu.vram_free_mb -= entry.vram_mb
        gpu.compute_free -= entry.compute
        gpu.running += 1
        if gpu.free_slots == 0:  # full, or its one task on probation
            self.gpus.pop(gpu.gpu_id)

    def update(self, gpu_id: str, fresh: Gpu | None) -> None:
        """A lease found the GPU changed (another pump leased on it): its record now, or None if it takes
        nothing more."""
        if fresh is None:
            self.gpus.pop(gpu_id, None)
        else:
            self.gpus[gpu_id] = fresh


def pulled_by(entry: WaitingEntry, pool: Pool, now: float) -> bool:
    """A task past its wait bound whose next pool is `pool`: that pool takes it over when it has room."""
    return entry.wait_until <= now and entry.spill_to is pool


def could_start(pool: Pool, room_empty: Callable[[], bool], available: Callable[[], Iterable[Gpu]],
                entry: WaitingEntry) -> bool:
    """Would `pool` start the entry's task now: nothing waits in its room and a GPU has room for it. The FaaS
    provider scales itself (or refuses, which is a spill too). Lazy: a room with a queue reads no GPU."""
    if pool is Pool.FAAS:
        return True
    return room_empty() and any(g.fits(entry.service, entry.vram_mb, entry.compute) and entry.may_use(g.gpu_id)
                                for g in available())


def wait_clock(now: float, wait_until: float, deadline: float, spill_to: Pool | None,
               next_could_start: Callable[[Pool], bool]) -> float | None:
    """A waiting task's clock: None if it leaves the room now (WaitExpired), else until when it waits on.

    Past its bound it leaves only if the next pool could start it (else moving would only add an
    attempt: it waits on, and the next pool pulls it when it has room), and at its deadline."""
    if now < wait_until:
        return wait_until
    if spill_to is None or now >= deadline or next_could_start(spill_to):
        return None
    return deadline
