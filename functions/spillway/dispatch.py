"""A pool's dispatcher: from an attempt in the waiting room to a task running on a GPU.

Dispatch by capacity, not by re-polling: an attempt enters its pool's waiting room when the state
machine sends it (`enqueue`), and the room is *pumped* — its front assigned to GPUs that have the
VRAM, the compute and a slot — whenever something arrives or a slot frees (`pump`), plus a periodic sweep as a
safety net. Two clocks, kept apart:

- the wait for a GPU is bounded by the priority's spill bound or the job's deadline
  (`priorities.wait_bound`); past it the attempt fails with `Spillway.WaitExpired`;
- the liveness clock starts when an agent has the task: a task whose agent has not beaten for
  `heartbeat_seconds` fails with `Spillway.GpuUnreachable`, saying which GPU went silent.

Fail fast and by kind: an agent that cannot be reached fails the attempt at once; an agent that
refuses (draining, full) gives the task back to the room, in its place.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from itertools import chain, islice
from typing import Any

import httpx
from aws_lambda_powertools import Logger
from pydantic import BaseModel

from spillway import credentials, health, metrics, placement, signing
from spillway.aws import version_param
from spillway.callbacks import Callbacks
from spillway.fleet import ATTEMPT_MOVED_ON, GPU_TAKEN, Fleet, Gpu, Refused, Task
from spillway.health import GpuHealth
from spillway.models import (
    AgentCancel,
    AgentHeartbeat,
    AgentTask,
    ErrorType,
    Pool,
    PoolTask,
    TaskState,
    Timer,
    TimerKind,
)
from spillway.priorities import NEXT_POOL, SPILLS_INTO, job_clock, wait_bound
from spillway.timers import TimerQueue
from spillway.waiting_room import WaitingEntry

logger = Logger(child=True)

PUSH_TIMEOUT = httpx.Timeout(connect=1.0, read=5.0, write=5.0, pool=1.0)
PROBE_TIMEOUT = httpx.Timeout(connect=1.0, read=2.0, write=2.0, pool=1.0)
STALE_CONNECTION_RETRIES = 3  # a pool may hold a few connections the other end has dropped
INPUT_URL_SECONDS = 60 * 60
LOOK_AHEAD = 200  # entries a pass reads from the front of a room, at most, for one that fits
MAX_PASSES = 8  # a pump stops after this many passes; the next arrival, release or sweep goes on
SPILL_LOOK_AHEAD = 25  # entries of another pool's room a pump reads for tasks past their bound: its front
CANCELLED = "cancelled"  # a task's outcome (and error type) when its job was cancelled


def result_key_for(job_id: str, attempt: int) -> str:
    return f"results/{job_id}/attempt-{attempt}.png"


@dataclass(frozen=True)
class Limits:
    heartbeat_seconds: int  # the liveness window of a task on a GPU
    attempt_timeout_seconds: int
    agent_stale_seconds: int  # a GPU whose agent has not reported for this long is down


class Dispatcher:
    def __init__(
        self,
        fleet: Fleet,
        timers: TimerQueue,
        s3: Any,
        sfn: Any,
        http: httpx.Client,
        bucket: str,
        limits: Limits,
        control_key: Callable[[], bytes],
        clock: Callable[[], float] = time.time,
    ):
        self._fleet = fleet
        self._room = fleet.waiting_room
        self._timers = timers
        self._s3 = s3
        self._callbacks = Callbacks(sfn)
        self._http = http
        self._bucket = bucket
        self._limits = limits
        self._control_key = control_key  # derives task ids and secrets, and the agents' secrets that sign pushes
        self._clock = clock

    # ---- arrivals

    def enqueue(self, queued: PoolTask) -> dict[str, str]:
        """One attempt into its pool's waiting room, then pump the room (see `enqueue_batch`)."""
        return self.enqueue_batch([queued])

    def enqueue_batch(self, batch: list[PoolTask]) -> dict[str, str]:
        """Put attempts in their pools' waiting rooms, then pump each room once, so that a batch starts
        in the room's order, not in the order it arrived; one that arrives alone to an empty room takes a
        free GPU at once (`_start_at_once`). Idempotent by attempt. Returns what happened to each task
        started (task id -> outcome)."""
        now = self._clock()
        waiting: list[Task] = []
        outcomes: dict[str, str] = {}
        shunned: set[str] = set()  # a GPU that failed or refused the push at once: not again in this pump
        at_once: set[Pool] = set()  # a room the arrival found empty and left empty: no pump needed
        for queued in batch:
            task = self._new_task(queued, now)
            started = self._start_at_once(task, now, shunned) if len(batch) == 1 else None
            if started is not None:
                outcomes[task.task_id] = started
                if started == "pushed":
                    at_once.add(task.pool)
                if started == "refused":  # handed back to the room: held to its bound as any arrival
                    waiting.append(task)
                continue
            if self._fleet.enqueue(task):
                waiting.append(task)
                continue
            known = self._fleet.task(task.task_id)  # a redelivery
            if known is not None and known.task_token != queued.task_token:
                self._fleet.renew_token(known.task_id, queued.task_token)  # the send was retried: a new token
                known = self._fleet.task(known.task_id)
            if known is not None and known.state is TaskState.WAITING:
                waiting.append(known)  # the first delivery may have died before it set the wait timer
            elif known is not None and known.state is TaskState.ASSIGNED:
                outcomes[known.task_id] = self._push_alone(known)  # it died between lease and push
        for pool in sorted({queued.pool for queued in batch} - at_once):
            outcomes |= self.pump(pool, shunned)
        for task in waiting:
            if outcomes.get(task.task_id, "refused") == "refused":  # it waits (or again): hold it to its bound
                logger.info("waiting", job_id=task.job_id, task_id=task.task_id, pool=task.pool.value,
                            priority=task.priority.value, wait_s=round(task.wait_until - now, 1))
                self._hold_to_wait_bound(task, now)
        return outcomes

    def _start_at_once(self, task: Task, now: float, shunned: set[str]) -> str | None:
        """Nobody waits in its room: lease the best-fitting free GPU for the new task in one transaction
        (the task written leased, the slot, the job's note), without entering the room and being assigned
        out of it (half the write units), and push it. None: someone waits, no GPU fits now, or the lease was
        refused (a redelivery, its attempt moved on): the room's way then."""
        if not self._room_empty(task.pool):
            return None
        view = self._free_gpus(task.pool, now, shunned)
        try:
            leased = self._lease(task.waiting_entry(), view, now, lambda gpu: self._fleet.lease_new(task, gpu, now))
        except Refused:
            return None
        if leased is None:
            return None
        outcome = self._push(leased)
        if outcome != "pushed":
            shunned.add(leased.gpu_id or "")
        return outcome

    def _hold_to_wait_bound(self, task: Task, now: float) -> None:
        self._timers.set(Timer(kind=TimerKind.WAIT_EXPIRY, task_id=task.task_id, due_at=task.wait_until), now)

    def _new_task(self, queued: PoolTask, now: float) -> Task:
        key = self._control_key()
        task_id = credentials.task_id_for(key, queued.job_id, queued.attempt)  # a redelivery finds its task
        submitted, deadline = job_clock(queued.priority, queued.submitted_at, queued.deadline_at, now)
        # Routing names where it spills; an attempt sent before it did goes on to the pool's next one.
        spill_to = queued.spill_to if "spill_to" in queued.model_fields_set else NEXT_POOL.get(queued.pool)
        return Task(
            task_id=task_id, job_id=queued.job_id, attempt=queued.attempt, pool=queued.pool,
            service=queued.service, input_key=queued.input_key, input_version=queued.input_version,
            result_key=result_key_for(queued.job_id, queued.attempt), vram_mb=queued.vram_mb, compute=queued.compute,
            priority=queued.priority, task_token=queued.task_token,
            secret_hash=credentials.secret_hash(credentials.task_secret(key, task_id)),
            # Ranked by the job's age, not the attempt's: a job that waited elsewhere keeps its place.
            rank=WaitingEntry.rank_for(queued.priority, min(submitted, now), task_id), arrived_at=now,
            wait_until=wait_bound(queued.priority, spill_to, now, deadline), deadline=deadline,
            open_pool=queued.pool.value, avoid=queued.avoid_gpus, spill_to=spill_to,
            expires_at=int(max(deadline, now)) + self._limits.attempt_timeout_seconds + 86_400,
        )

    # ---- the pump

    def pump(self, pool: Pool, shunned: set[str] | None = None) -> dict[str, str]:
        """Start waiting tasks on free GPUs, front of the room first, until either runs out; then, if
        the room is empty and GPUs are still free, take over what waits past its spill bound in the
        pools that spill into this one. Returns what happened to each task it started (id -> outcome)."""
        outcomes: dict[str, str] = {}
        shunned = set(shunned or ())  # GPUs whose agent refused or failed a push in this pump: not again now
        for _ in range(MAX_PASSES):
            assigned, room_empty = self._assign_front(pool, shunned)
            for task in assigned:
                if task.gpu_id in shunned:  # its GPU just failed or refused a push: back to the room, in place
                    self._fleet.give_back(task)
                    outcomes[task.task_id] = "refused"
                    continue
                outcome = outcomes[task.task_id] = self._push(task)
                if outcome != "pushed":
                    shunned.add(task.gpu_id or "")
            # Go on only while a push freed a slot (failed) or handed a task back (refused).
            if not assigned or all(outcomes[t.task_id] == "pushed" for t in assigned):
                break
        if room_empty and pool in SPILLS_INTO:
            self._take_spills(pool, shunned)
        return outcomes

    def _assign_front(self, pool: Pool, excluded: set[str]) -> tuple[list[Task], bool]:
        """One pass over the room, front to back: each entry, in order, to the best-fitting GPU with
        room, until no GPU has a free slot or LOOK_AHEAD entries were read. An entry that fits no
        free GPU now does not hold back a smaller one behind it, except on the GPU the first such
        entry reserves (see `placement.PoolView`). Returns the tasks assigned, and whether the room
        is empty now."""
        now = self._clock()
        entries = islice(self._room.front(pool), LOOK_AHEAD)
        first = next(entries, None)
        if first is None:
            return [], True  # an empty room: no need to look at the fleet
        view = self._free_gpus(pool, now, excluded)
        assigned: list[Task] = []
        read = 0
        for entry in chain([first], entries):
            read += 1
            if not view:
                return assigned, False
            task = self._assign(entry, view, now)
            if task is not None:
                assigned.append(task)
        return assigned, read == len(assigned) and read < LOOK_AHEAD

    def _free_gpus(self, pool: Pool, now: float, excluded: set[str]) -> placement.PoolView:
        return placement.PoolView(g for g in self._available(pool, now) if g.gpu_id not in excluded)

    def _room_empty(self, pool: Pool) -> bool:
        return next(self._room.front(pool, page=1), None) is None

    def _available(self, pool: Pool, now: float) -> list[Gpu]:
        """The pool's GPUs that can take work now, best fit first, each with what time alone did to its
        health written first (a cool-down that ended is probation now, here as in the fleet's view)."""
        return self._fleet.available(pool, now, self._limits.agent_stale_seconds, settle=lambda g: self.tick(g, now))

    def _take_spills(self, pool: Pool, excluded: set[str]) -> None:
        """This pool's room is empty and some of its GPUs are free: the tasks that wait past their spill
        bound in the pools that spill into it leave their rooms (WaitExpired), front first, as many as
        fit here now; their executions send them here as their next attempt. Event-driven: a task
        past its bound does not poll for room elsewhere, the pool with room pulls it."""
        now = self._clock()
        view = self._free_gpus(pool, now, excluded)
        for source in SPILLS_INTO[pool]:
            for entry in islice(self._room.front(source), SPILL_LOOK_AHEAD):
                if not view:
                    return
                if not placement.pulled_by(entry, pool, now):
                    continue  # within its bound (its own pool may still start it), or it spills elsewhere
                fitting = view.best_fit(entry)
                task = self._fleet.task(entry.task_id) if fitting else None
                if task is None or task.state is not TaskState.WAITING or self._expire(task, now) == "started":
                    continue
                view.take(fitting[0], entry)

    def _assign(self, entry: WaitingEntry, view: placement.PoolView, now: float) -> Task | None:
        """Assign one waiting entry out of the room to the GPU of `view` that fits it best (see `_lease`)."""
        try:
            return self._lease(entry, view, now, lambda gpu: self._fleet.assign(gpu, entry, now))
        except Refused as refused:
            if refused.reason == ATTEMPT_MOVED_ON:
                logger.info("attempt moved on while waiting", job_id=entry.job_id, task_id=entry.task_id)
                self._fleet.close_waiting(entry, "abandoned", ErrorType.WAIT_EXPIRED.value)
            return None  # assigned by someone else, expired, or abandoned

    def _lease(self, entry: WaitingEntry, view: placement.PoolView, now: float, lease: Callable[[Gpu], Task]
               ) -> Task | None:
        """Lease the entry's task with `lease` on the GPU of `view` that fits it best (see `placement`), the next
        if another dispatcher took that one first, keeping `view` up to date; its liveness clock starts from its
        agent's last beat. None: no GPU of the view fits it. Refused: the lease was, for another reason."""
        for gpu in view.best_fit(entry):
            try:
                task = lease(gpu)
            except Refused as refused:
                if refused.reason != GPU_TAKEN:
                    raise
                fresh = self._fleet.get(gpu.gpu_id)  # another dispatcher got there first: look again
                usable = fresh is not None and fresh.is_available(now, self._limits.agent_stale_seconds)
                view.update(gpu.gpu_id, fresh if usable else None)
                continue
            view.take(gpu, entry)
            logger.info("assigned", job_id=task.job_id, task_id=task.task_id, gpu_id=gpu.gpu_id,
                        waited_ms=int((now - entry.arrived_at) * 1000))
            self._timers.set(self._liveness_timer(task, now, gpu), now)
            return task
        return None

    # ---- pushing to an agent

    def _push(self, task: Task) -> str:
        agent_task = AgentTask(
            task_id=task.task_id,
            job_id=task.job_id,
            service=task.service,
            input_url=self._presign("get_object", task.input_key, **version_param(task.input_version)),
            output_url=self._presign("put_object", task.result_key, ContentType="image/png"),
            # Beat three times per liveness window, so one lost beat never fails an attempt.
            heartbeat_interval_s=max(1.0, self._limits.heartbeat_seconds / 3),
            task_secret=credentials.task_secret(self._control_key(), task.task_id),
        )
        try:
            response = self._call_agent(task, "/v1/tasks", agent_task)
        except httpx.HTTPError as exc:
            return self._unreachable(task, f"{task.gpu_id} unreachable: {exc!r}")
        if response.status_code in (200, 202):
            self._fleet.mark_running(task, self._clock())
            logger.info("pushed", job_id=task.job_id, task_id=task.task_id, gpu_id=task.gpu_id)
            return "pushed"
        if response.status_code == 503:
            # Draining, or its slots are full after all: back to the room, in its place.
            logger.info("agent refused the task", job_id=task.job_id, gpu_id=task.gpu_id, answer=response.text[:200])
            self._fleet.give_back(task)
            return "refused"
        if response.status_code >= 500 or response.status_code in (401, 403):
            # Broken, or holding another agent key (a rotation half done): this GPU cannot take it.
            return self._unreachable(task, f"{task.gpu_id} answered {response.status_code}: {response.text[:200]}")
        return self.fail(task, ErrorType.MODEL_ERROR, f"{task.gpu_id} rejected the task: {response.text[:500]}")

    def _unreachable(self, task: Task, cause: str) -> str:
        """The push did not reach a working agent: the GPU is suspect (no new work until a probe reaches it),
        the attempt fails at once."""
        now = self._clock()
        self._fleet.change_health(task.gpu_id or "", lambda gpu: health.push_failed(gpu.health, now, cause))
        return self.fail(task, ErrorType.GPU_UNREACHABLE, cause)

    def _call_agent(self, task: Task, path: str, message: BaseModel) -> httpx.Response:
        """POST `message` to the task's agent, signed with its GPU's secrets of when it was leased. A pooled
        connection the other end dropped meanwhile (an agent restarted, a link reset) fails before any answer:
        the message is sent again, on the next pooled connection or a fresh one (an agent takes a task, or its
        cancel, idempotently, by its id), so only an agent unreachable now fails the call. Each send is signed
        anew: the agent refuses a message id it has seen (a replay)."""
        body = message.model_dump_json().encode()
        for retry in (True,) * STALE_CONNECTION_RETRIES + (False,):
            try:
                return self._http.post(
                    f"{task.gpu_url}{path}", content=body,
                    headers={"Content-Type": "application/json",
                             **self._signed(task.gpu_id or "", task.gpu_generations, body)},
                    timeout=PUSH_TIMEOUT,
                )
            except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
                if not retry:
                    raise
                logger.debug("stale connection: sending again", gpu_id=task.gpu_id, path=path, error=repr(exc))
        raise AssertionError("unreachable")  # the loop returns or raises

    def _signed(self, gpu_id: str, generations: list[int], body: bytes) -> dict[str, str]:
        """Standard Webhooks headers signing `body` with each of the GPU's secrets valid when it was read."""
        keys = credentials.signing_keys(self._control_key(), gpu_id, generations)
        return signing.sign(keys, "msg_" + secrets.token_hex(16), body, self._clock())

    def on_heartbeat(self, beat: AgentHeartbeat) -> bool:
        """An agent's report: the fleet record and what time and the agent's word did to its health (see
        `Fleet.heartbeat`); then what it says beyond: leases it does not report (it restarted, or lost them)
        end and their jobs move on; a GPU that is suspect, down, or back from a drain is probed through its
        URL. True: it can take work it could not take before, or gave leases back: pump its pool."""
        now = self._clock()
        stale = self._limits.agent_stale_seconds
        before, gpu = self._fleet.heartbeat(beat, now)
        if before is not None and now - before.last_heartbeat > stale:  # silent until this beat: down, tasks lost
            self._fail_tasks_on(gpu, _silent_cause(gpu.gpu_id, now - before.last_heartbeat))
        freed = self._end_unreported(gpu, set(beat.running)) if gpu.running > len(beat.running) else 0
        if health.needs_probe(gpu.health, beat.draining):
            gpu = self.probe(gpu, beat.draining)
        could_before = before is not None and before.accepts_work(now, stale)
        # An operator's readmit since its last beat: it takes work again, though it "could" at that beat.
        readmitted = before is not None and before.health.since > before.last_heartbeat
        return (gpu.accepts_work(now, stale) and (readmitted or not could_before)) or freed > 0

    def _end_unreported(self, gpu: Gpu, reported: set[str]) -> int:
        """Tasks leased on the GPU that its agent does not hold: failed (GpuUnreachable), their VRAM back.
        Only those leased a stale window ago or more: a report written before a push arrived is no proof."""
        now = self._clock()
        lost = [t for t in self._fleet.open_tasks(gpu.pool)
                if t.gpu_id == gpu.gpu_id and t.state in (TaskState.ASSIGNED, TaskState.RUNNING)
                and t.task_id not in reported and now - (t.assigned_at or now) > self._limits.agent_stale_seconds]
        for task in lost:
            self.fail(task, ErrorType.GPU_UNREACHABLE,
                      f"{gpu.gpu_id} no longer has it: its agent reports {len(reported)} task(s), not this one "
                      "(it restarted, or lost the task)")
        return len(lost)

    def probe(self, gpu: Gpu, draining: bool = False) -> Gpu:
        """Its agent still reports (it can call out), but is the GPU reachable from here, and ready? Ask its agent
        through the GPU's own URL (the tunnel) and apply the answer to its health (see `health.probed`). Called on its
        agent's heartbeats, so a link that comes back is noticed within a beat, and one still cut gets no push.
        Returns the GPU with its health now."""
        try:
            generations = gpu.signing_generations(self._clock())
            response = self._http.get(f"{gpu.url}/readyz", headers=self._signed(gpu.gpu_id, generations, b""),
                                      timeout=PROBE_TIMEOUT)
            # Ready to take work, not merely reachable: a 503 (its model server is down, it is draining) keeps
            # it out, as a cut link would.
            answered = response.status_code == 200
            if not answered:
                logger.debug("probe: not ready", gpu_id=gpu.gpu_id, status=response.status_code,
                             answer=response.text[:200])
        except httpx.HTTPError as exc:
            logger.debug("probe failed", gpu_id=gpu.gpu_id, error=repr(exc))
            answered = False
        now = self._clock()
        policy = self._fleet.health_policy
        changed = self._fleet.change_health(gpu.gpu_id, lambda g: health.probed(g.health, answered, now, policy)
                                            if health.needs_probe(g.health, draining) else g.health)
        return gpu if changed is None else changed[0].model_copy(update={"health": changed[1]})

    def _fail_tasks_on(self, gpu: Gpu, cause: str) -> int:
        """Every task leased on the GPU fails now (GpuUnreachable), its job moves on: the GPU is down."""
        lost = [t for t in self._fleet.open_tasks(gpu.pool)
                if t.gpu_id == gpu.gpu_id and t.state in (TaskState.ASSIGNED, TaskState.RUNNING)]
        for task in lost:
            self.fail(task, ErrorType.GPU_UNREACHABLE, cause)
        return len(lost)

    def tick(self, gpu: Gpu, now: float) -> Gpu:
        """What time alone did to the GPU's health (silent -> down, suspect too long -> down, a cool-down over
        -> probation), written; a GPU that went down has its tasks failed at once."""
        policy = self._fleet.health_policy
        if health.tick(gpu.health, now, gpu.last_heartbeat, policy) == gpu.health:
            return gpu
        changed = self._fleet.change_health(gpu.gpu_id, lambda g: health.tick(g.health, now, g.last_heartbeat, policy))
        if changed is None:
            return gpu
        before, after = changed
        silent_for = now - before.last_heartbeat
        if after.state is GpuHealth.DOWN and silent_for > self._limits.agent_stale_seconds:
            self._fail_tasks_on(before, _silent_cause(gpu.gpu_id, silent_for))
        return before.model_copy(update={"health": after})

    def cancel(self, task_id: str) -> str:
        """Its job was cancelled: the task ends now — out of the waiting room, or its GPU's VRAM and slot back
        (and the room pumped onto them) — and its agent is told to stop. Telling is best effort: an agent we
        cannot reach learns it from its next task heartbeat (`current: false`), and its late result finds the
        task over and is dropped. Returns what was done."""
        for _ in range(3):  # the task may change state under us once or twice (assigned, pushed)
            task = self._fleet.task(task_id)
            if task is None or task.state is TaskState.DONE:
                return "over"
            if task.state is TaskState.WAITING:
                if self._fleet.close_waiting(task.waiting_entry(), CANCELLED, CANCELLED) is not None:
                    return "left_room"
                continue
            if not self._fleet.release(task, CANCELLED, CANCELLED, now=self._clock()):
                continue
            metrics.attempt_ended(task.pool, CANCELLED)
            self.pump(task.pool)
            return self._tell_agent_cancelled(task)
        return "over"

    def _tell_agent_cancelled(self, task: Task) -> str:
        try:
            response = self._call_agent(task, f"/v1/tasks/{task.task_id}/cancel", AgentCancel(task_id=task.task_id))
        except httpx.HTTPError as exc:
            logger.warning("could not tell the agent its task is cancelled", job_id=task.job_id, gpu_id=task.gpu_id,
                           error=repr(exc))
            return "agent_unreachable"
        logger.info("agent told: task cancelled", job_id=task.job_id, gpu_id=task.gpu_id, answer=response.status_code)
        return "agent_told" if response.is_success else f"agent_answered_{response.status_code}"

    def _push_alone(self, task: Task) -> str:
        """A push outside a pump: if it frees the slot (failed) or hands the task back, pump the room."""
        outcome = self._push(task)
        if outcome != "pushed":
            self.pump(task.pool)
        return outcome

    def fail(self, task: Task, error: ErrorType, cause: str) -> str:
        """End a task on a GPU as failed and tell its execution, once."""
        logger.warning("attempt failed", job_id=task.job_id, task_id=task.task_id, gpu_id=task.gpu_id,
                       error=error.value, cause=cause)
        if self._fleet.release(task, "failed", error.value, cause=cause, now=self._clock()):
            metrics.attempt_ended(task.pool, error.value)
            self._tell(task, error, cause)
        return error.value

    def _tell(self, task: Task, error: ErrorType, cause: str) -> None:
        """Tell the execution the control plane failed its task. Until this has gone through, the task
        stays in the open index, and its timer or the sweep tells it again."""
        self._callbacks.failed(task.task_token, error, cause)
        self._fleet.told(task.task_id)

    def _presign(self, operation: str, key: str, **extra: str) -> str:
        return self._s3.generate_presigned_url(
            operation, Params={"Bucket": self._bucket, "Key": key, **extra}, ExpiresIn=INPUT_URL_SECONDS
        )

    # ---- clocks

    def on_timer(self, timer: Timer) -> str:
        """A timer came due: a waiting task past its bound leaves the room; a silent task fails."""
        now = self._clock()
        task = self._fleet.task(timer.task_id)
        if task is None or (task.state is TaskState.DONE and task.open_pool is None):
            return "over"
        if not TimerQueue.due(timer, now):
            self._timers.set(timer, now)  # over SQS's longest delay: set again for the rest
            return "not_due"
        if timer.kind is TimerKind.WAIT_EXPIRY and task.state in (TaskState.ASSIGNED, TaskState.RUNNING):
            return "started"  # its liveness timer holds it now
        if timer.kind is TimerKind.LIVENESS and task.state is TaskState.WAITING:
            return "waiting"  # handed back to the room: its wait timer holds it, the next GPU sets a new one
        return self.check(task, now, rearm=True)

    def check(self, task: Task, now: float, rearm: bool) -> str:
        """Hold one open task to its clocks; `rearm` sets its next timer when it is not due yet."""
        if task.state is TaskState.DONE:  # failed by the control plane, its execution not told yet
            self._tell(task, ErrorType(task.error_type or ErrorType.MODEL_ERROR), task.cause or "")
            return "told"
        if task.state is TaskState.WAITING:
            return self._check_wait(task, now, rearm)
        if task.state is TaskState.ASSIGNED and now - (task.assigned_at or now) >= self._limits.heartbeat_seconds:
            outcome = self._push_alone(task)  # the push was lost (a crash between lease and push): push again
            if outcome == "pushed":
                self._timers.set(self._liveness_timer(task, now), now)
            return outcome
        last_sign = task.beat_at or task.assigned_at or now
        gpu = self._fleet.get(task.gpu_id or "")
        agent_silent = now - gpu.last_heartbeat if gpu else float("inf")
        if agent_silent > self._limits.agent_stale_seconds:  # the agent is gone (killed, frozen, cut off)
            if gpu is not None:
                self.tick(gpu, now)  # down: its other tasks fail with this one
            outcome = self.fail(task, ErrorType.GPU_UNREACHABLE, _silent_cause(task.gpu_id, agent_silent))
            self.pump(task.pool)
            return outcome
        if now - last_sign >= self._limits.heartbeat_seconds:
            outcome = self.fail(task, ErrorType.GPU_UNREACHABLE,
                                f"{task.gpu_id} went silent: no heartbeat for {now - last_sign:.0f} s")
            self.pump(task.pool)
            return outcome
        running_for = now - (task.running_at or now)
        if running_for >= self._limits.attempt_timeout_seconds:  # beating, but the model never ends
            outcome = self.fail(task, ErrorType.MODEL_ERROR,
                                f"{task.gpu_id} ran it for {running_for:.0f} s, past the attempt timeout "
                                f"({self._limits.attempt_timeout_seconds} s)")
            self.pump(task.pool)
            return outcome
        if rearm:
            self._timers.set(self._liveness_timer(task, last_sign, gpu), now)
        return "alive"

    def _check_wait(self, task: Task, now: float, rearm: bool) -> str:
        """A waiting task past its bound leaves the room, unless the next pool could not start it either:
        then moving it would only add an attempt, so it waits on, until the next pool has room (and pulls
        it) or its deadline."""
        due = placement.wait_clock(now, task.wait_until, task.deadline, task.spill_to,
                                   lambda pool: self._could_start(pool, task, now))
        if due is None:
            return self._expire(task, now)
        if rearm:
            self._timers.set(Timer(kind=TimerKind.WAIT_EXPIRY, task_id=task.task_id, due_at=due), now)
        return "waiting"

    def _could_start(self, pool: Pool, task: Task, now: float) -> bool:
        return placement.could_start(
            pool, lambda: self._room_empty(pool),
            lambda: self._available(pool, now), task.waiting_entry())

    def _expire(self, task: Task, now: float) -> str:
        waited = f"{now - task.arrived_at:.0f} s" + (", its deadline" if now >= task.deadline else "")
        cause = f"no {task.pool.value} GPU could start it within {waited} ({task.priority.value} priority)"
        closed = self._fleet.close_waiting(task.waiting_entry(), "failed", ErrorType.WAIT_EXPIRED.value, cause)
        if closed is None:
            return "started"  # assigned meanwhile
        logger.info("wait expired", job_id=task.job_id, task_id=task.task_id, cause=cause)
        metrics.attempt_ended(task.pool, ErrorType.WAIT_EXPIRED.value)
        self._tell(task, ErrorType.WAIT_EXPIRED, cause)
        return ErrorType.WAIT_EXPIRED.value

    def _liveness_timer(self, task: Task, last_sign: float, gpu: Gpu | None = None) -> Timer:
        """Due when the task would have been silent for a window, run past the attempt timeout, or its
        agent would be stale (so a killed agent's tasks move on a stale window after its last report)."""
        due = last_sign + self._limits.heartbeat_seconds
        if task.running_at is not None:
            due = min(due, task.running_at + self._limits.attempt_timeout_seconds)
        agent_seen = gpu.last_heartbeat if gpu is not None else last_sign
        due = min(due, agent_seen + self._limits.agent_stale_seconds + 1)
        return Timer(kind=TimerKind.LIVENESS, task_id=task.task_id, due_at=due)

    def sweep(self, pools: tuple[Pool, ...] = (Pool.LOCAL, Pool.CLOUD)) -> dict[str, int]:
        """The safety net: pump every room, and hold every open task to its clock, in case a pump
        or a timer was lost (a crashed invocation, a message past its retries)."""
        now = self._clock()
        counts: dict[str, int] = {}
        for gpu in self._fleet.all_gpus():
            self.tick(gpu, now)  # a silent GPU with no task on it is down too; cool-downs end
        for pool in pools:
            self.pump(pool)
            for task in self._fleet.open_tasks(pool):
                outcome = self.check(task, now, rearm=False)
                counts[outcome] = counts.get(outcome, 0) + 1
        return counts


def _silent_cause(gpu_id: str | None, silent_for: float) -> str:
    return f"{gpu_id} went silent: its agent has not reported for {silent_for:.0f} s"

