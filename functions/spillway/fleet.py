"""The fleet: GPUs as their agents report them, and the tasks on them, packed by free VRAM, compute and slots.

Every change of a task's state is one DynamoDB transaction whose items each carry a condition:
assigning a waiting task takes its entry out of the waiting room, VRAM, compute and a slot from the GPU,
moves the task to `assigned` and notes the GPU on the job's current attempt, all or nothing. So
a GPU is never oversubscribed, a task never starts twice, a duplicate delivery never leases twice,
and a task whose attempt has moved on never runs. Ending a task gives them back exactly once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from boto3.dynamodb.conditions import Attr, Key
from botocore.exceptions import ClientError
from pydantic import BaseModel, Field

from spillway import health
from spillway.aws import cancellation_codes, error_code, from_item, paged_items, to_item, typed
from spillway.catalog import GPU_COMPUTE
from spillway.credentials import AgentCredential, Enrolled
from spillway.health import GpuHealth, HealthEvent, HealthPolicy, HealthRecord
from spillway.jobs import iso_at
from spillway.models import AgentHeartbeat, ErrorType, JobStatus, Pool, Priority, TaskState
from spillway.waiting_room import WaitingEntry, WaitingRoom


class Gpu(BaseModel):
    gpu_id: str
    pool: Pool
    url: str
    vram_total_mb: int
    vram_free_mb: int
    # Records from before compute was packed have none: a reference GPU's, all of it free.
    compute_total: int = GPU_COMPUTE
    compute_free: int = GPU_COMPUTE
    slots: int = 1
    running: int = 0
    services: list[str]
    last_heartbeat: float  # epoch seconds
    health: HealthRecord = Field(default_factory=HealthRecord)
    model_errors: int = 0  # ModelErrors in a row, counted as each task is released (a success resets it)
    first_error_at: float | None = None  # the first of them: time-to-detect starts there
    credentials: list[AgentCredential] = []  # its agent's secrets, hashed (see credentials.py)

    def signing_generations(self, now: float) -> list[int]:
        """Its secrets' generations valid now: a task leased on it has its push signed with them."""
        return [c.generation for c in self.credentials if c.valid(now)]

    def accepts_work(self, now: float, stale_after: float) -> bool:
        """Could take work when a slot frees: its health allows it, and its agent was heard from lately."""
        return self.health.accepts_work(self.running) and now - self.last_heartbeat <= stale_after

    def is_available(self, now: float, stale_after: float) -> bool:
        return self.accepts_work(now, stale_after) and self.free_slots > 0

    @property
    def free_slots(self) -> int:
        """Slots it may still fill in its health state (probation: one task at a time)."""
        return max(0, self.health.slots(self.slots) - self.running)

    def fits(self, service: str, vram_mb: int, compute: int) -> bool:
        """It could start the task now: its service, the VRAM and the compute free, and a slot."""
        return self.could_hold(service, vram_mb, compute) and self.vram_free_mb >= vram_mb \
            and self.compute_free >= compute and self.free_slots > 0

    def could_hold(self, service: str, vram_mb: int, compute: int) -> bool:
        """It could ever run the task: its service, and the VRAM and compute in all (once it is idle)."""
        return service in self.services and self.vram_total_mb >= vram_mb and self.compute_total >= compute

    def fit_order(self, vram_mb: int = 0, compute: int = 0) -> tuple[bool, float, float, int, int, str]:
        """Sort key of GPUs for a task (see `placement`), best first: a GPU on probation (its canary task proves
        it soon, not whenever it happens to fit best), then the least room left once the task runs — the
        tighter of its remaining VRAM and compute fractions (a big task needs both), then the looser, then the
        least VRAM left (of two idle GPUs, the smaller) — then the fewest running tasks."""
        left = ((self.vram_free_mb - vram_mb) / self.vram_total_mb, (self.compute_free - compute) / self.compute_total)
        return (self.health.state is not GpuHealth.PROBATION, min(left), max(left), self.vram_free_mb, self.running,
                self.gpu_id)


class Task(BaseModel):
    """One attempt of one job on one pool. The token never leaves this record."""

    task_id: str
    job_id: str
    attempt: int
    pool: Pool
    service: str
    input_key: str
    input_version: str | None = None
    result_key: str
    vram_mb: int
    compute: int = 0  # absent from tasks leased before compute was packed: they took none
    priority: Priority
    task_token: str
    state: TaskState = TaskState.WAITING
    rank: str  # its place in the pool's waiting room
    arrived_at: float
    wait_until: float
    deadline: float  # the job's, epoch seconds
    gpu_id: str | None = None
    gpu_url: str | None = None
    gpu_generations: list[int] = []  # the GPU's secrets when it was leased: its push is signed with them
    secret_hash: str = ""  # of the task's secret (credentials.task_secret): its reports must present it
    assigned_at: float | None = None
    running_at: float | None = None
    beat_at: float | None = None
    outcome: str | None = None
    error_type: str | None = None
    cause: str | None = None  # why the control plane failed it, kept until its execution has been told
    open_pool: str | None = None  # set until the task is done and its execution told: the sweeper's index
    expires_at: int  # TTL: the token is useless after the attempt's timeout anyway
    avoid: list[str] = []  # GPUs that failed this job: never again
    spill_to: Pool | None = None  # where it goes past its wait bound (none: it waits until its deadline)

    def waiting_entry(self) -> WaitingEntry:
        return WaitingEntry(
            pool=self.pool, rank=self.rank, task_id=self.task_id, job_id=self.job_id, attempt=self.attempt,
            service=self.service, vram_mb=self.vram_mb, compute=self.compute, priority=self.priority,
            arrived_at=self.arrived_at,
            wait_until=self.wait_until, avoid=self.avoid, spill_to=self.spill_to,
        )


class Refused(Exception):
    """A transaction did not happen; `reason` says which condition stopped it."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


# Why an assignment was refused, by the item whose condition failed.
ENTRY_GONE = "entry_gone"  # another dispatcher assigned it, or it expired
GPU_TAKEN = "gpu_taken"  # the GPU's VRAM, compute or slots went to someone else first
ATTEMPT_MOVED_ON = "attempt_moved_on"  # the job is on a later attempt, or over
HEALTH_MAY_CHANGE = "health_may_change"  # a success on a GPU on probation, or with quarantines to forgive


_HEARD_FROM = Attr("last_heartbeat").exists()  # its agent has beaten at least once
HEALTH_WRITE_ATTEMPTS = 5  # a health write that lost a race reads the record again and decides again


Transitioned = Callable[[Gpu, HealthEvent], None]


class Fleet:
    def __init__(self, fleet_table: Any, tasks_table: Any, jobs_table_name: str, waiting_room: WaitingRoom,
                 dynamodb: Any, health_policy: HealthPolicy | None = None,
                 transitioned: Transitioned = lambda gpu, event: None):
        self._gpus = fleet_table
        self._tasks = tasks_table
        self._jobs_table_name = jobs_table_name
        self.waiting_room = waiting_room
        self._ddb = dynamodb  # the low-level client, for transactions
        self.health_policy = health_policy or HealthPolicy()
        self._transitioned = transitioned  # every health transition written: logs, metrics

    # ---- agents report in

    def heartbeat(self, beat: AgentHeartbeat, now: float) -> tuple[Gpu | None, Gpu]:
        """Register a GPU on its first heartbeat; refresh it on every later one, with what time and the agent's
        word did to its health (silent since -> down; a draining beat -> draining; a not-ready beat -> suspect;
        a cool-down over -> probation). A beat never changes the pool or URL its GPU was enrolled with. Returns the
        record before the beat (None: new) and after."""
        before = self._gpus.update_item(
            Key={"gpu_id": beat.gpu_id},
            UpdateExpression=(
                "SET #pool = if_not_exists(#pool, :pool), #url = if_not_exists(#url, :url), vram_total_mb = :total, "
                "compute_total = :compute, slots = :slots, services = :services, last_heartbeat = :now, "
                "health = if_not_exists(health, :registered), vram_free_mb = if_not_exists(vram_free_mb, :total), "
                "compute_free = if_not_exists(compute_free, :compute), #running = if_not_exists(#running, :zero)"
            ),
            ExpressionAttributeNames={"#pool": "pool", "#url": "url", "#running": "running"},
            ExpressionAttributeValues=to_item({
                ":pool": beat.pool.value, ":url": str(beat.url).rstrip("/"), ":total": beat.vram_total_mb,
                ":compute": beat.compute,
                ":slots": beat.slots, ":services": beat.services, ":now": now, ":zero": 0,
                ":registered": HealthRecord.registered(now).model_dump(mode="json", by_alias=True),
            }),
            ReturnValues="ALL_OLD",
        ).get("Attributes")
        if before is None or "last_heartbeat" not in before:  # enrolled or not, this is its first beat
            before = None
            previous = self.get(beat.gpu_id)
            assert previous is not None  # just written; GPU records are never deleted
        else:
            previous = Gpu.model_validate(from_item(before))
        policy = self.health_policy

        def decide(gpu: Gpu) -> HealthRecord:
            return health.heartbeat(health.tick(gpu.health, now, previous.last_heartbeat, policy), beat.draining, now,
                                    beat.not_ready)

        after = previous.model_copy(update={"slots": beat.slots, "vram_total_mb": beat.vram_total_mb,
                                            "compute_total": beat.compute, "services": beat.services,
                                            "last_heartbeat": now})
        if decide(previous) != previous.health:  # most beats change nothing: no second read or write
            changed = self.change_health(beat.gpu_id, decide)
            assert changed is not None
            after = changed[0].model_copy(update={"health": changed[1]})
        return (previous if before is not None else None), after

    def change_health(self, gpu_id: str, decide: Callable[[Gpu], HealthRecord]) -> tuple[Gpu, HealthRecord] | None:
        """Apply a transition to the GPU's health: read, decide, write on the condition that nobody wrote
        its health meanwhile; a lost race reads and decides again. Returns the record read and the health
        written (the same when nothing changed), or None if no such GPU."""
        for _ in range(HEALTH_WRITE_ATTEMPTS):
            gpu = self.get(gpu_id)
            if gpu is None:
                return None
            after = decide(gpu)
            if after == gpu.health:
                return gpu, after
            after = after.model_copy(update={"rev": gpu.health.rev + 1})
            update = "SET health = :after"
            values: dict[str, Any] = {":after": after.model_dump(mode="json", by_alias=True), ":rev": gpu.health.rev}
            if after.state is not gpu.health.state and after.state in (GpuHealth.QUARANTINED, GpuHealth.PROBATION):
                update += ", model_errors = :zero REMOVE first_error_at"  # counted anew from here
                values[":zero"] = 0
            try:
                self._gpus.update_item(
                    Key={"gpu_id": gpu_id}, UpdateExpression=update, ConditionExpression="health.#rev = :rev",
                    ExpressionAttributeNames={"#rev": "rev"}, ExpressionAttributeValues=to_item(values))
            except self._gpus.meta.client.exceptions.ConditionalCheckFailedException:
                continue
            if after.state is not gpu.health.state:
                self._transitioned(gpu, after.events[-1])
            return gpu, after
        raise RuntimeError(f"{gpu_id}: its health changed under {HEALTH_WRITE_ATTEMPTS} writes in a row")

    def gpus(self, pool: Pool) -> list[Gpu]:
        """The pool's GPUs, read consistently: a pump right after a release must see the slot it freed
        (the by-pool index is eventually consistent). A fleet is tens of items: one page."""
        items = paged_items(self._gpus.scan, FilterExpression=Attr("pool").eq(pool.value) & _HEARD_FROM,
                            ConsistentRead=True)
        return [Gpu.model_validate(from_item(i)) for i in items]

    def all_gpus(self) -> list[Gpu]:
        """Every GPU whose agent has reported (an enrolled one that never did is no GPU to use or show yet)."""
        items = paged_items(self._gpus.scan, FilterExpression=_HEARD_FROM, ConsistentRead=True)
        return [Gpu.model_validate(from_item(i)) for i in items]

    def get(self, gpu_id: str) -> Gpu | None:
        item = self._gpus.get_item(Key={"gpu_id": gpu_id}, ConsistentRead=True).get("Item")
        return Gpu.model_validate(from_item(item)) if item and "last_heartbeat" in item else None

    # ---- enrollment: who may speak for a GPU

    def enroll(self, gpu_id: str, pool: Pool, url: str, vram_mb: int, credential: AgentCredential) -> None:
        """Record the GPU's pool, URL and memory and its agent's one secret (hashed); again, it replaces them."""
        self._gpus.update_item(
            Key={"gpu_id": gpu_id},
            UpdateExpression="SET #pool = :pool, #url = :url, vram_total_mb = :vram, credentials = :credentials",
            ExpressionAttributeNames={"#pool": "pool", "#url": "url"},
            ExpressionAttributeValues=to_item({":pool": pool.value, ":url": url.rstrip("/"), ":vram": vram_mb,
                                               ":credentials": [credential.model_dump()]}))

    def enrollment(self, gpu_id: str) -> tuple[Enrolled, list[AgentCredential]] | None:
        """The GPU's pool and URL as enrolled, and its agent's secrets (hashed); None: not enrolled."""
        item = self._gpus.get_item(Key={"gpu_id": gpu_id}, ConsistentRead=True,
                                   ProjectionExpression="gpu_id, #pool, #url, credentials",
                                   ExpressionAttributeNames={"#pool": "pool", "#url": "url"}).get("Item")
        if not item or "credentials" not in item:
            return None
        item = from_item(item)
        return (Enrolled(gpu_id, Pool(item["pool"]), item["url"]),
                [AgentCredential.model_validate(c) for c in item["credentials"]])

    def replace_credentials(self, gpu_id: str, before: list[AgentCredential], after: list[AgentCredential]) -> bool:
        """Swap the GPU's secrets, if nobody changed them since `before` was read. False: they changed."""
        try:
            self._gpus.update_item(
                Key={"gpu_id": gpu_id}, UpdateExpression="SET credentials = :after",
                ConditionExpression="credentials = :before",
                ExpressionAttributeValues=to_item({":after": [c.model_dump() for c in after],
                                                   ":before": [c.model_dump() for c in before]}))
        except self._gpus.meta.client.exceptions.ConditionalCheckFailedException:
            return False
        return True

    def available(self, pool: Pool, now: float, stale_after: float,
                  settle: Callable[[Gpu], Gpu] = lambda gpu: gpu) -> list[Gpu]:
        """GPUs of the pool that can take work now, fullest first (see `Gpu.fit_order`). `settle` brings each
        up to date first (the dispatcher writes what time alone did to its health: a cool-down over)."""
        fresh = [g for g in map(settle, self.gpus(pool)) if g.is_available(now, stale_after)]
        return sorted(fresh, key=Gpu.fit_order)

    # ---- a task's life

    def enqueue(self, task: Task) -> bool:
        """Write the task and its waiting-room entry; False if the task exists already (a redelivery)."""
        try:
            self._transact([
                {"Put": {"TableName": self._tasks.name, "Item": task.model_dump(mode="json", exclude_none=True),
                         "ConditionExpression": "attribute_not_exists(task_id)"}},
                {"Put": self.waiting_room.put_request(task.waiting_entry())},
            ], reasons=(ENTRY_GONE, ENTRY_GONE))
        except Refused:
            return False
        return True

    def lease_new(self, task: Task, gpu: Gpu, now: float) -> Task:
        """Write a new task already leased on `gpu` (it never waited): the task, VRAM, compute and a slot, and
        the job's note, all or nothing, as `assign` does for a task that waited."""
        leased = task.model_copy(update={"state": TaskState.ASSIGNED, "gpu_id": gpu.gpu_id, "gpu_url": gpu.url,
                                         "gpu_generations": gpu.signing_generations(now), "assigned_at": now})
        self._transact([
            {"Put": {"TableName": self._tasks.name, "Item": leased.model_dump(mode="json", exclude_none=True),
                     "ConditionExpression": "attribute_not_exists(task_id)"}},
            _take_slot(self._gpus.name, gpu.gpu_id, task.vram_mb, task.compute),
            self._assigned_note(task.job_id, task.attempt, gpu, task.task_id, now),
        ], reasons=(ENTRY_GONE, GPU_TAKEN, ATTEMPT_MOVED_ON))
        return leased

    def assign(self, gpu: Gpu, entry: WaitingEntry, now: float) -> Task:
        """Take the entry out of the room and lease VRAM, compute and a slot on `gpu` for it: all or nothing."""
        self._transact([
            {"Delete": {"TableName": self.waiting_room.table_name, "Key": entry.key,
                        "ConditionExpression": "attribute_exists(task_id)"}},
            _take_slot(self._gpus.name, gpu.gpu_id, entry.vram_mb, entry.compute),
            _update(self._tasks.name, {"task_id": entry.task_id},
                    "SET #state = :assigned, gpu_id = :gpu, gpu_url = :url, gpu_generations = :generations, "
                    "assigned_at = :now",
                    "#state = :waiting", {"#state": "state"},
                    {":assigned": TaskState.ASSIGNED.value, ":waiting": TaskState.WAITING.value,
                     ":gpu": gpu.gpu_id, ":url": gpu.url, ":now": now, ":generations": gpu.signing_generations(now)}),
            self._assigned_note(entry.job_id, entry.attempt, gpu, entry.task_id, now),
        ], reasons=(ENTRY_GONE, GPU_TAKEN, ENTRY_GONE, ATTEMPT_MOVED_ON))
        task = self.task(entry.task_id)
        assert task is not None
        return task

    def _assigned_note(self, job_id: str, attempt: int, gpu: Gpu, task_id: str, now: float) -> dict[str, Any]:
        """The job's attempt learns its GPU, on condition that it is still the job's attempt: a task whose
        attempt has moved on never runs."""
        n = attempt - 1
        return _update(self._jobs_table_name, {"job_id": job_id},
                       f"SET attempts[{n}].gpu_id = :gpu, attempts[{n}].task_id = :task, "
                       f"attempts[{n}].assigned_at = :at",
                       "attempt = :n AND #status = :running", {"#status": "status"},
                       {":gpu": gpu.gpu_id, ":task": task_id, ":n": attempt,
                        ":running": JobStatus.RUNNING.value, ":at": iso_at(now)})

    def mark_running(self, task: Task, now: float) -> bool:
        """The agent took the task: its liveness clock starts now, and the job's attempt shows it. False if
        the task ended meanwhile. Two single writes, not a transaction (half the units): the job's note is
        only shown, and a job that moved on keeps its record as it is (the task runs until told otherwise)."""
        started = self._write(_update(
            self._tasks.name, {"task_id": task.task_id}, "SET #state = :running, running_at = :now, beat_at = :now",
            "#state = :assigned", {"#state": "state"},
            {":running": TaskState.RUNNING.value, ":assigned": TaskState.ASSIGNED.value, ":now": now}))
        if started:
            n = task.attempt - 1
            self._write(_update(self._jobs_table_name, {"job_id": task.job_id}, f"SET attempts[{n}].running_at = :at",
                                "attempt = :n", {}, {":at": iso_at(now), ":n": task.attempt}))
        return started

    def beat(self, task_id: str, gpu_id: str, now: float) -> bool:
        """The agent says the task still runs; False if it is over (the agent should stop it)."""
        try:
            self._tasks.update_item(
                Key={"task_id": task_id},
                UpdateExpression="SET beat_at = :now",
                ConditionExpression="#state IN (:assigned, :running) AND gpu_id = :gpu",
                ExpressionAttributeNames={"#state": "state"},
                ExpressionAttributeValues=to_item({":now": now, ":gpu": gpu_id,
                                                   ":assigned": TaskState.ASSIGNED.value,
                                                   ":running": TaskState.RUNNING.value}),
            )
        except self._tasks.meta.client.exceptions.ConditionalCheckFailedException:
            return False
        return True

    def release(self, task: Task, outcome: str, error_type: str | None = None, cause: str | None = None,
                now: float | None = None) -> bool:
        """End a task on a GPU and give its VRAM and compute back, exactly once. False if it had ended already. The
        GPU's ModelErrors in a row are counted in the same write (a success resets them), then applied to
        its health: a canary's success, K ModelErrors in a row, a failed canary.

        With a `cause`, the control plane itself failed it and must still tell its execution: the task
        stays in the open index until `told` (so a lost notice is sent again by its timer or the sweep)."""
        values: dict[str, Any] = {":done": TaskState.DONE.value, ":outcome": outcome,
                                  ":assigned": TaskState.ASSIGNED.value, ":running": TaskState.RUNNING.value}
        update = "SET #state = :done, outcome = :outcome"
        if error_type:
            update += ", error_type = :error_type"
            values[":error_type"] = error_type
        update = _awaiting_notice(update, values, cause)
        now = time.time() if now is None else now
        model_ran = _model_verdict(outcome, error_type)
        end = _update(self._tasks.name, {"task_id": task.task_id}, update, "#state IN (:assigned, :running)",
                      {"#state": "state"}, values)
        # A success changes a GPU's health only on probation (its canary) or with quarantines to forgive: the
        # release itself checks that, so the common success reads the GPU no more.
        settled = model_ran is True
        try:
            self._transact([end, _free_slot(self._gpus.name, task, model_ran, now, settled)],
                           reasons=(ENTRY_GONE, HEALTH_MAY_CHANGE))
        except Refused as refused:
            if refused.reason != HEALTH_MAY_CHANGE:
                return False
            settled = False
            try:
                self._transact([end, _free_slot(self._gpus.name, task, model_ran, now)],
                               reasons=(ENTRY_GONE, ENTRY_GONE))
            except Refused:
                return False
        if model_ran is not None and not settled:
            policy = self.health_policy
            self.change_health(task.gpu_id or "", lambda gpu: health.task_ended(
                gpu.health, model_ran, gpu.model_errors, gpu.first_error_at, now, policy))
        return True

    def told(self, task_id: str) -> None:
        """Its execution has been told how the task ended: it leaves the open index."""
        self._tasks.update_item(Key={"task_id": task_id}, UpdateExpression="REMOVE open_pool")

    def renew_token(self, task_id: str, token: str) -> bool:
        """A redelivered attempt came with another token (the state machine retried the send): keep the
        newest, which is the one its execution waits on. False if the task is over."""
        try:
            self._tasks.update_item(
                Key={"task_id": task_id}, UpdateExpression="SET task_token = :token",
                ConditionExpression="#state <> :done", ExpressionAttributeNames={"#state": "state"},
                ExpressionAttributeValues={":token": token, ":done": TaskState.DONE.value},
            )
        except self._tasks.meta.client.exceptions.ConditionalCheckFailedException:
            return False
        return True

    def give_back(self, task: Task) -> bool:
        """Undo an assignment the agent refused (draining, full): the task waits again, in its place."""
        try:
            self._transact([
                _update(self._tasks.name, {"task_id": task.task_id},
                        "SET #state = :waiting REMOVE gpu_id, gpu_url, assigned_at", "#state = :assigned",
                        {"#state": "state"}, {":waiting": TaskState.WAITING.value,
                                              ":assigned": TaskState.ASSIGNED.value}),
                {"Put": self.waiting_room.put_request(task.waiting_entry())},
                _free_slot(self._gpus.name, task),
            ], reasons=(ENTRY_GONE, ENTRY_GONE, ENTRY_GONE))
        except Refused:
            return False
        return True

    def close_waiting(self, entry: WaitingEntry, outcome: str, error_type: str, cause: str | None = None
                      ) -> Task | None:
        """End a task that never got a GPU (its wait bound passed, or its attempt moved on): out of the
        room, done. With a `cause`, its execution must still be told (see `release`). Returns the task,
        or None if it was no longer waiting."""
        update = "SET #state = :done, outcome = :outcome, error_type = :error"
        values: dict[str, Any] = {":done": TaskState.DONE.value, ":waiting": TaskState.WAITING.value,
                                  ":outcome": outcome, ":error": error_type}
        update = _awaiting_notice(update, values, cause)
        try:
            self._transact([
                {"Delete": {"TableName": self.waiting_room.table_name, "Key": entry.key,
                            "ConditionExpression": "attribute_exists(task_id)"}},
                _update(self._tasks.name, {"task_id": entry.task_id}, update, "#state = :waiting",
                        {"#state": "state"}, values),
            ], reasons=(ENTRY_GONE, ENTRY_GONE))
        except Refused:
            return None
        return self.task(entry.task_id)

    # ---- reading tasks

    def task(self, task_id: str) -> Task | None:
        item = self._tasks.get_item(Key={"task_id": task_id}, ConsistentRead=True).get("Item")
        if item is None or item.get("pool") == Pool.FAAS.value:  # a FaaS task is no GPU's (see faas.dispatcher)
            return None
        return Task.model_validate(from_item(item))

    def open_tasks(self, pool: Pool) -> list[Task]:
        """Every task of the pool not done yet (an eventually consistent index: for the sweeper)."""
        items = paged_items(self._tasks.query, IndexName="open-by-pool",
                            KeyConditionExpression=Key("open_pool").eq(pool.value))
        return [Task.model_validate(from_item(i)) for i in items]

    # ---- plumbing

    def _write(self, item: dict[str, Any]) -> bool:
        """One Update item on its own; False if its condition failed."""
        try:
            self._ddb.update_item(**_typed_request(item["Update"]))
        except ClientError as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                return False
            raise
        return True

    def _transact(self, items: list[dict[str, Any]], reasons: tuple[str, ...]) -> None:
        """Run a transaction; on a failed condition raise Refused with the reason of the first item whose
        condition failed. Any other cancellation (throttling, a conflicting transaction) raises as it is."""
        try:
            self._ddb.transact_write_items(TransactItems=[_typed_item(i) for i in items])
        except ClientError as exc:
            for code, reason in zip(cancellation_codes(exc), reasons, strict=False):
                if code == "ConditionalCheckFailed":
                    raise Refused(reason) from None
            raise  # throttled, a conflict with another transaction, ...: not a refusal, the caller retries


def _awaiting_notice(update: str, values: dict[str, Any], cause: str | None) -> str:
    """End a task's update: with a cause (the control plane failed it), keep it in the open index
    until its execution has been told; without, it leaves the index now."""
    if not cause:
        return update + " REMOVE open_pool"
    values[":cause"] = cause[:2000]
    return update + ", cause = :cause"


def _take_slot(table: str, gpu_id: str, vram_mb: int, compute: int) -> dict[str, Any]:
    """Its health is checked in the same write that leases: a GPU that turned suspect, quarantined or
    draining since the pump read it takes nothing, and one on probation holds one task at a time. A record
    from before compute was packed gets its compute in the same write (as `Gpu`'s defaults read it)."""
    return _update(table, {"gpu_id": gpu_id},
                   "SET vram_free_mb = vram_free_mb - :need, "
                   "compute_free = if_not_exists(compute_free, :full) - :compute, #running = #running + :one",
                   "vram_free_mb >= :need AND (compute_free >= :compute OR attribute_not_exists(compute_free)) "
                   "AND #running < slots AND "
                   "(health.#state = :healthy OR (health.#state = :probation AND #running = :zero))",
                   {"#running": "running", "#state": "state"},
                   {":need": vram_mb, ":compute": compute, ":full": GPU_COMPUTE, ":one": 1, ":zero": 0,
                    ":healthy": GpuHealth.HEALTHY.value, ":probation": GpuHealth.PROBATION.value})


def _model_verdict(outcome: str, error_type: str | None) -> bool | None:
    """What a task's end says of its GPU's model: True (it ran), False (a ModelError), None (nothing:
    the input, the upload, the link, a drain)."""
    if outcome == "succeeded":
        return True
    return False if error_type == ErrorType.MODEL_ERROR.value else None


def _free_slot(table: str, task: Task, model_ran: bool | None = None, now: float = 0.0,
               settled: bool = False) -> dict[str, Any]:
    """Give the task's VRAM, compute and slot back; count the GPU's ModelErrors in a row (`model_ran`, see
    above). `settled`: on condition that a success cannot change its health (see `health.task_ended`)."""
    update = ("SET vram_free_mb = vram_free_mb + :need, compute_free = if_not_exists(compute_free, :full) + :compute, "
              "#running = #running - :one")
    values: dict[str, Any] = {":need": task.vram_mb, ":compute": task.compute, ":full": GPU_COMPUTE, ":one": 1}
    if model_ran is True:
        update += ", model_errors = :zero REMOVE first_error_at"
        values[":zero"] = 0
    elif model_ran is False:
        update += (", model_errors = if_not_exists(model_errors, :zero) + :one, "
                   "first_error_at = if_not_exists(first_error_at, :now)")
        values |= {":zero": 0, ":now": now}
    names = {"#running": "running"}
    condition = None
    if settled:
        condition = "health.#health_state <> :probation AND health.quarantines = :none"
        names["#health_state"] = "state"
        values |= {":probation": GpuHealth.PROBATION.value, ":none": 0}
    return _update(table, {"gpu_id": task.gpu_id}, update, condition, names, values)


def _update(table: str, key: dict[str, Any], expression: str, condition: str | None,
            names: dict[str, str], values: dict[str, Any]) -> dict[str, Any]:
    """A transaction's Update item, with plain Python values (serialized by `_typed_item`)."""
    update: dict[str, Any] = {"TableName": table, "Key": key, "UpdateExpression": expression,
                              "ExpressionAttributeValues": values}
    if condition:
        update["ConditionExpression"] = condition
    if names:
        update["ExpressionAttributeNames"] = names
    return {"Update": update}


def _typed_item(item: dict[str, Any]) -> dict[str, Any]:
    """A transaction item with plain values -> DynamoDB's typed wire format."""
    (operation, request), = item.items()
    return {operation: _typed_request(request)}


def _typed_request(request: dict[str, Any]) -> dict[str, Any]:
    return {field: typed(value) if field in ("Key", "Item", "ExpressionAttributeValues") else value
            for field, value in request.items()}
