"""The waiting room's rules as plain functions over GPUs and room entries: which GPU a waiting task
goes to, and what becomes of a task past its wait bound. The pollers (`dispatch.py`) apply them to
what they read from DynamoDB; the simulator (`spillway simulate`) to its simulated fleet.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from spillway.fleet import Gpu
from spillway.models import Pool
from spillway.waiting_room import WaitingEntry


def best_fit(entry: WaitingEntry, gpus: Iterable[Gpu]) -> list[Gpu]:
    """The GPUs that could start the entry now, best fit first (see `Gpu.best_fit`); never one it must avoid."""
    return sorted((g for g in gpus if g.fits(entry.service, entry.vram_mb) and entry.may_use(g.gpu_id)),
                  key=lambda g: g.best_fit)


def take_slot(gpus: dict[str, Gpu], gpu: Gpu, vram_mb: int) -> None:
    """A pump's view of its pool: `gpu` now holds one task more; a full GPU leaves the view."""
    gpu.vram_free_mb -= vram_mb
    gpu.running += 1
    if gpu.free_slots == 0:  # full, or its one task on probation
        gpus.pop(gpu.gpu_id)


def pulled_by(entry: WaitingEntry, pool: Pool, now: float) -> bool:
    """A task past its wait bound whose next pool is `pool`: that pool takes it over when it has room."""
    return entry.wait_until <= now and entry.spill_to is pool


def could_start(pool: Pool, room_empty: Callable[[], bool], available: Callable[[], Iterable[Gpu]],
                service: str, vram_mb: int, avoid: Iterable[str]) -> bool:
    """Would `pool` start a task now: nothing waits in its room and a GPU has room for it. The FaaS
    provider scales itself (or refuses, which is a spill too). Lazy: a room with a queue reads no GPU."""
    if pool is Pool.FAAS:
        return True
    return room_empty() and any(g.fits(service, vram_mb) and g.gpu_id not in avoid for g in available())


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
