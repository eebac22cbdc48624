"""A GPU's health: a small state machine, plain code over an injected clock and thresholds.

    healthy ──push cannot connect, or its agent not ready──▶ suspect ──N failed probes, or past SuspectSeconds──▶ down
       ▲  ▲                            │ a probe answers                                          │
       │  └────────────────────────────┘                      its agent beats and a probe answers │
       │                                                                                          ▼
       └──────────────── the canary succeeds ◀──────────────────────────────────────────── probation
    healthy ──K ModelErrors in a row──▶ quarantined ──cool-down over──▶ probation (one task at a time)
    probation ──its canary fails (ModelError)──▶ quarantined again, the cool-down doubled; after M
    rounds it stays quarantined until an operator readmits it
    any ──no heartbeat for AgentStaleSeconds──▶ down (its tasks fail at once with GpuUnreachable)
    any ──its agent's draining beat (SIGTERM), or an operator's drain──▶ draining: no new work; an agent
    that drained and left goes down; an operator's drain holds until an operator readmits it

A GPU that was down comes back on probation, not healthy: it proves itself with one task first. A
suspect GPU that a probe reaches again is healthy at once (a link blip is no reason to doubt the GPU).
A probe asks the agent's readiness (`/readyz`): it counts only if the agent is ready to take work, so an agent
that answers but cannot work (its model server is down) stays out until it can.

Every function here returns a new `HealthRecord` (the same one when nothing changes); the fleet store
writes it conditionally on the record's revision, so concurrent writers never lose a transition.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

EVENTS_KEPT = 20  # the per-GPU event log is the last few transitions, not a history


class GpuHealth(StrEnum):
    HEALTHY = "healthy"  # takes work
    SUSPECT = "suspect"  # a push could not reach it: no new work until a probe answers
    DOWN = "down"  # silent, or unreachable through many probes: no work; its tasks failed
    PROBATION = "probation"  # back from down or quarantine: one canary task at a time
    QUARANTINED = "quarantined"  # failed its models too often: no work for a cool-down (or until readmitted)
    DRAINING = "draining"  # shutting down, or drained by an operator: no new work, running tasks finish


class OperatorAction(StrEnum):
    DRAIN = "drain"
    QUARANTINE = "quarantine"
    READMIT = "readmit"


@dataclass(frozen=True)
class HealthPolicy:
    """The thresholds; the template's parameters give them (see `settings`)."""

    stale_seconds: float = 30  # AgentStaleSeconds: no heartbeat for this long -> down
    suspect_seconds: float = 30  # SuspectSeconds: suspect this long without a probe answering -> down
    probe_failures: int = 3  # HealthProbeFailures (N): failed probes in a row -> down
    model_errors: int = 3  # QuarantineAfterErrors (K): ModelErrors in a row on one GPU -> quarantined
    quarantine_seconds: float = 120  # QuarantineSeconds: the first cool-down; each round doubles it
    quarantine_rounds: int = 3  # QuarantineRounds (M): timed cool-downs before it waits for an operator

    def cooldown(self, round_: int) -> float | None:
        """The cool-down of the `round_`-th quarantine in a row (1-based); None: until an operator readmits."""
        return self.quarantine_seconds * 2 ** (round_ - 1) if round_ <= self.quarantine_rounds else None

    @property
    def forgive_after(self) -> float:
        """Healthy for longer than any cool-down: its quarantines in a row start from none again."""
        return self.quarantine_seconds * 2 ** self.quarantine_rounds


class HealthEvent(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    at: float  # epoch seconds
    from_: GpuHealth = Field(alias="from")
    to: GpuHealth
    reason: str
    detect_s: float | None = Field(default=None, description="from the fault's first sign to this transition")


class HealthRecord(BaseModel):
    """What the fleet record keeps of a GPU's health (one map attribute, written as a whole)."""

    state: GpuHealth = GpuHealth.HEALTHY
    reason: str = "registered"
    since: float = 0.0
    rev: int = 0  # bumped by every write: the condition that keeps concurrent writers from losing one
    events: list[HealthEvent] = []
    probe_failures: int = 0
    quarantines: int = 0  # quarantines in a row (a long healthy spell forgives them; a readmit too)
    until: float | None = None  # quarantined: when its cool-down ends (None: until an operator readmits)
    held: bool = False  # an operator drained or quarantined it: only an operator lets it back

    @classmethod
    def registered(cls, now: float) -> HealthRecord:
        return cls(since=now, events=[HealthEvent(at=now, from_=GpuHealth.DOWN, to=GpuHealth.HEALTHY,
                                                  reason="registered: its agent's first heartbeat")])

    def accepts_work(self, running: int) -> bool:
        """Healthy takes work; probation one task at a time; nothing else any."""
        return self.state is GpuHealth.HEALTHY or (self.state is GpuHealth.PROBATION and running == 0)

    def slots(self, slots: int) -> int:
        """How many tasks it may hold at once in this state."""
        return {GpuHealth.HEALTHY: slots, GpuHealth.PROBATION: 1}.get(self.state, 0)


def move(record: HealthRecord, to: GpuHealth, reason: str, now: float, detect_s: float | None = None,
         **changes: object) -> HealthRecord:
    """`record` in state `to`, with the transition in its event log (the last EVENTS_KEPT)."""
    event = HealthEvent(at=now, from_=record.state, to=to, reason=reason,
                        detect_s=round(detect_s, 3) if detect_s is not None else None)
    return record.model_copy(update={"state": to, "reason": reason, "since": now,
                                     "events": [*record.events, event][-EVENTS_KEPT:], **changes})


# ---- the clock: transitions that time alone makes


def tick(record: HealthRecord, now: float, last_heartbeat: float, policy: HealthPolicy) -> HealthRecord:
    """What time has done to the GPU since its last heartbeat: silent -> down, suspect too long -> down,
    a cool-down over -> probation. Applied until nothing more changes (a cool-down may end, then silence)."""
    for _ in range(len(GpuHealth)):
        after = _tick_once(record, now, last_heartbeat, policy)
        if after is record:
            return record
        record = after
    return record


def _tick_once(record: HealthRecord, now: float, last_heartbeat: float, policy: HealthPolicy) -> HealthRecord:
    state = record.state
    silent_for = now - last_heartbeat
    if silent_for > policy.stale_seconds and (
            state in (GpuHealth.HEALTHY, GpuHealth.SUSPECT, GpuHealth.PROBATION)
            or (state is GpuHealth.DRAINING and not record.held)):
        reason = ("drained: its agent left" if state is GpuHealth.DRAINING
                  else f"silent: no heartbeat for {silent_for:.0f} s")
        return move(record, GpuHealth.DOWN, reason, now, detect_s=silent_for, probe_failures=0)
    if state is GpuHealth.SUSPECT and now - record.since > policy.suspect_seconds:
        return move(record, GpuHealth.DOWN, f"unreachable: no probe answered for {now - record.since:.0f} s",
                    now, detect_s=now - record.since, probe_failures=0)
    if state is GpuHealth.QUARANTINED and record.until is not None and now >= record.until:
        return move(record, GpuHealth.PROBATION, "its cool-down is over: one canary task at a time", now,
                    until=None)
    return record


# ---- what the control plane sees


def push_failed(record: HealthRecord, now: float, why: str) -> HealthRecord:
    """A push could not reach the GPU: suspect at once (from healthy or probation)."""
    if record.state not in (GpuHealth.HEALTHY, GpuHealth.PROBATION):
        return record
    return move(record, GpuHealth.SUSPECT, f"a push could not reach it: {why}"[:300], now, detect_s=0.0,
                probe_failures=0)


def needs_probe(record: HealthRecord, draining: bool) -> bool:
    """Should this heartbeat bring a probe through the GPU's URL: it is suspect or down, or its agent drained
    and is back (a new process)."""
    return record.state in (GpuHealth.SUSPECT, GpuHealth.DOWN) or (
        record.state is GpuHealth.DRAINING and not record.held and not draining)


def probed(record: HealthRecord, answered: bool, now: float, policy: HealthPolicy) -> HealthRecord:
    """A probe's outcome (`answered`: the agent answered that it is ready). Suspect: an answer -> healthy;
    N failures -> down. Down, or an agent back from a drain: an answer -> probation; a failure leaves it down."""
    state = record.state
    if answered:
        if state is GpuHealth.SUSPECT:
            return move(record, GpuHealth.HEALTHY, "a probe reached it again", now, probe_failures=0)
        if state is GpuHealth.DOWN or (state is GpuHealth.DRAINING and not record.held):
            return move(record, GpuHealth.PROBATION, "back: its agent reports and a probe reaches it; "
                                                     "one canary task at a time", now, probe_failures=0)
        return record
    if state is GpuHealth.SUSPECT:
        failures = record.probe_failures + 1
        if failures >= policy.probe_failures:
            return move(record, GpuHealth.DOWN, f"{failures} probes through its URL failed (unreachable or not "
                                                "ready)", now,
                        detect_s=now - record.since, probe_failures=0)
        return record.model_copy(update={"probe_failures": failures})
    if state is GpuHealth.DRAINING and not record.held:
        return move(record, GpuHealth.DOWN, "its agent is back, but no probe reaches it", now)
    return record


def heartbeat(record: HealthRecord, draining: bool, now: float, not_ready: str | None = None) -> HealthRecord:
    """The agent's own word: a draining beat (SIGTERM) -> draining; a beat saying it cannot take work (its model
    server is not ready) -> suspect from healthy or probation: no work until a probe finds it ready."""
    if draining and record.state not in (GpuHealth.DRAINING, GpuHealth.QUARANTINED):
        return move(record, GpuHealth.DRAINING, "its agent is shutting down (SIGTERM): running tasks finish", now)
    if not_ready is not None and record.state in (GpuHealth.HEALTHY, GpuHealth.PROBATION):
        return move(record, GpuHealth.SUSPECT, f"its agent is not ready: {not_ready}"[:300], now, detect_s=0.0,
                    probe_failures=0)
    return record


def task_ended(record: HealthRecord, succeeded: bool, model_errors: int, first_error_at: float | None,
               now: float, policy: HealthPolicy) -> HealthRecord:
    """A task on the GPU ended. `model_errors` counts its ModelErrors in a row, this one included (the store
    counts them atomically with the task's release); other failures (input, upload, link) are not the
    model's and change nothing."""
    state = record.state
    if succeeded:
        if state is GpuHealth.PROBATION:
            return move(record, GpuHealth.HEALTHY, "its canary task succeeded", now)
        if state is GpuHealth.HEALTHY and record.quarantines and now - record.since >= policy.forgive_after:
            return record.model_copy(update={"quarantines": 0})  # healthy long enough: its past is forgiven
        return record
    detect_s = now - first_error_at if first_error_at is not None else None
    if state is GpuHealth.PROBATION:
        return quarantine(record, "its canary task failed with a ModelError", now, policy, detect_s)
    if state is GpuHealth.HEALTHY and model_errors >= policy.model_errors:
        return quarantine(record, f"{model_errors} ModelErrors in a row", now, policy, detect_s)
    return record


def quarantine(record: HealthRecord, why: str, now: float, policy: HealthPolicy,
               detect_s: float | None = None) -> HealthRecord:
    round_ = record.quarantines + 1
    cooldown = policy.cooldown(round_)
    if cooldown is None:
        return move(record, GpuHealth.QUARANTINED, f"{why}; quarantine {round_}: until an operator readmits it",
                    now, detect_s, quarantines=round_, until=None)
    return move(record, GpuHealth.QUARANTINED, f"{why}; quarantine {round_}: a {cooldown:.0f} s cool-down",
                now, detect_s, quarantines=round_, until=now + cooldown)


class Refusal(ValueError):
    """An operator action that does not apply to the GPU's state, with the reason."""


def operator(record: HealthRecord, action: OperatorAction, now: float) -> HealthRecord:
    """An operator's drain (no new work until readmitted), quarantine (no work until readmitted) or readmit
    (back on probation: one canary task, then healthy)."""
    state = record.state
    if action is OperatorAction.DRAIN:
        return move(record, GpuHealth.DRAINING, "drained by an operator", now, held=True)
    if action is OperatorAction.QUARANTINE:
        return move(record, GpuHealth.QUARANTINED, "quarantined by an operator", now, held=True, until=None)
    if state in (GpuHealth.HEALTHY, GpuHealth.PROBATION):
        return record  # in service already
    if state in (GpuHealth.SUSPECT, GpuHealth.DOWN):
        raise Refusal(f"it is {state.value} ({record.reason}): it comes back by itself once its agent reports "
                      "and a probe reaches it")
    return move(record, GpuHealth.PROBATION, "readmitted by an operator: one canary task at a time", now,
                held=False, quarantines=0, until=None, probe_failures=0)
