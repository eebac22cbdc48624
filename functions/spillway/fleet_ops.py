"""What an operator sees of the fleet and does to it: every GPU's health, load and recent transitions;
drain, quarantine, readmit; enroll a GPU and rotate its agent's secret.

The view applies what time alone has done (`health.tick`, the function the writers apply), so a GPU
whose agent went silent a moment ago shows down though no writer has recorded it yet.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from spillway import credentials, health
from spillway.errors import Conflict, NotFound
from spillway.fleet import Fleet, Gpu
from spillway.health import GpuHealth, OperatorAction
from spillway.jobs import iso_at
from spillway.models import AgentSecret, Enrollment, FleetView, GpuView, HealthEventView, Pool, TaskState


class FleetOperations:
    def __init__(self, fleet: Fleet, control_key: Callable[[], bytes], clock: Callable[[], float] = time.time):
        self._fleet = fleet
        self._control_key = control_key
        self._clock = clock

    def enroll(self, gpu_id: str, enrollment: Enrollment) -> AgentSecret:
        """Record what the GPU is and give its agent a secret, shown only in this answer. Enrolling it again
        (a new URL, a lost secret) replaces its secret (the old one is refused within a minute: see
        credentials.CHECKED_CREDENTIAL_SECONDS)."""
        found = self._fleet.enrollment(gpu_id)
        generation = 1 + max((c.generation for c in found[1]), default=0) if found else 1
        key = self._control_key()
        self._fleet.enroll(gpu_id, enrollment.pool, str(enrollment.url), enrollment.vram_mb,
                           credentials.credential(gpu_id, key, generation))
        return AgentSecret(gpu_id=gpu_id, secret=credentials.agent_secret(key, gpu_id, generation),
                           generation=generation)

    def rotate(self, gpu_id: str, overlap_s: float = credentials.ROTATION_OVERLAP_SECONDS) -> AgentSecret:
        """A new secret for the GPU's agent; the current one stays valid for `overlap_s` (two are valid
        meanwhile: restart the agent with the new one within it)."""
        found = self._fleet.enrollment(gpu_id)
        if found is None:
            raise NotFound(f"no GPU {gpu_id} is enrolled")
        now, before = self._clock(), found[1]
        current = [c for c in before if c.valid_until is None]
        generation = 1 + max(c.generation for c in before)
        key = self._control_key()
        after = [credentials.credential(gpu_id, key, generation),
                 *(c.model_copy(update={"valid_until": now + overlap_s}) for c in current)]
        if not self._fleet.replace_credentials(gpu_id, before, after):
            raise Conflict(f"{gpu_id}'s secrets changed meanwhile: rotate again")
        return AgentSecret(gpu_id=gpu_id, secret=credentials.agent_secret(key, gpu_id, generation),
                           generation=generation, previous_valid_until=iso_at(now + overlap_s))

    def view(self) -> FleetView:
        now = self._clock()
        gpus = sorted(self._fleet.all_gpus(), key=lambda g: (g.pool.value, g.gpu_id))
        leased = self._leased({g.pool for g in gpus})
        return FleetView(gpus=[self._gpu_view(g, now, leased.get(g.gpu_id, [])) for g in gpus])

    def census(self) -> dict[Pool, dict[GpuHealth, int]]:
        """GPUs by health, per pool that has any (every state counted, zeros too: an alarm watches healthy)."""
        now = self._clock()
        counts: dict[Pool, dict[GpuHealth, int]] = {}
        for gpu in self._fleet.all_gpus():
            state = health.tick(gpu.health, now, gpu.last_heartbeat, self._fleet.health_policy).state
            by_state = counts.setdefault(gpu.pool, dict.fromkeys(GpuHealth, 0))
            by_state[state] += 1
        return counts

    def act(self, gpu_id: str, action: OperatorAction) -> GpuView:
        """Drain (no new work until readmitted; running tasks finish), quarantine (no work until readmitted),
        or readmit (back on probation: one canary task, then healthy)."""
        now = self._clock()
        policy = self._fleet.health_policy
        try:
            changed = self._fleet.change_health(gpu_id, lambda gpu: health.operator(
                health.tick(gpu.health, now, gpu.last_heartbeat, policy), action, now))
        except health.Refusal as refused:
            raise Conflict(f"cannot {action.value} {gpu_id}: {refused}") from None
        if changed is None:
            raise NotFound(f"no GPU {gpu_id}")
        gpu = changed[0].model_copy(update={"health": changed[1]})
        return self._gpu_view(gpu, now, self._leased({gpu.pool}).get(gpu_id, []))

    def _leased(self, pools: set[Pool]) -> dict[str, list[str]]:
        """The tasks leased on each GPU (assigned or running), by GPU."""
        leased: dict[str, list[str]] = {}
        for pool in pools:
            for task in self._fleet.open_tasks(pool):
                if task.state in (TaskState.ASSIGNED, TaskState.RUNNING) and task.gpu_id:
                    leased.setdefault(task.gpu_id, []).append(task.task_id)
        return leased

    def _gpu_view(self, gpu: Gpu, now: float, running: list[str]) -> GpuView:
        record = health.tick(gpu.health, now, gpu.last_heartbeat, self._fleet.health_policy)
        return GpuView(
            gpu_id=gpu.gpu_id, pool=gpu.pool, health=record.state, reason=record.reason, since=iso_at(record.since),
            quarantined_until=iso_at(record.until) if record.until is not None else None, held=record.held,
            vram_total_mb=gpu.vram_total_mb, vram_used_mb=gpu.vram_total_mb - gpu.vram_free_mb,
            compute_total=gpu.compute_total, compute_used=gpu.compute_total - gpu.compute_free, slots=gpu.slots,
            running=sorted(running), last_heartbeat=iso_at(gpu.last_heartbeat),
            last_heartbeat_age_s=round(now - gpu.last_heartbeat, 1), model_errors=gpu.model_errors,
            quarantines=record.quarantines,
            events=[HealthEventView(at=iso_at(e.at), from_=e.from_, to=e.to, reason=e.reason, detect_s=e.detect_s)
                    for e in record.events],
        )


