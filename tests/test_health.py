"""Every transition of a GPU's health, as plain functions over an injected clock (no AWS, no sleeps)."""

from __future__ import annotations

import pytest

from spillway import health
from spillway.health import EVENTS_KEPT, GpuHealth, HealthPolicy, HealthRecord, OperatorAction, Refusal

T0 = 1_000_000.0
POLICY = HealthPolicy(stale_seconds=30, suspect_seconds=30, probe_failures=3, model_errors=3,
                      quarantine_seconds=60, quarantine_rounds=2)
H, S, D, P, Q, DR = (GpuHealth.HEALTHY, GpuHealth.SUSPECT, GpuHealth.DOWN, GpuHealth.PROBATION,
                     GpuHealth.QUARANTINED, GpuHealth.DRAINING)


def record(state: GpuHealth = H, since: float = T0, **fields: object) -> HealthRecord:
    return HealthRecord(state=state, since=since, **fields)


def path(r: HealthRecord) -> list[tuple[GpuHealth, GpuHealth]]:
    return [(e.from_, e.to) for e in r.events]


# ---- unreachable from the control plane


def test_a_push_that_cannot_connect_makes_a_gpu_suspect_at_once() -> None:
    r = health.push_failed(record(), T0 + 1, "ConnectError")
    assert (r.state, r.since, r.events[-1].detect_s) == (S, T0 + 1, 0.0)
    assert "ConnectError" in r.reason
    assert health.push_failed(record(P), T0, "x").state is S, "a canary's push too"
    for state in (S, D, Q, DR):
        assert health.push_failed(record(state), T0, "x") == record(state), f"{state}: no change"


def test_a_probe_that_answers_makes_a_suspect_gpu_healthy() -> None:
    r = health.probed(record(S, probe_failures=2), True, T0 + 3, POLICY)
    assert (r.state, r.probe_failures, r.reason) == (H, 0, "a probe reached it again")


def test_n_failed_probes_make_a_suspect_gpu_down() -> None:
    r = record(S)
    for n in (1, 2):
        r = health.probed(r, False, T0 + n, POLICY)
        assert (r.state, r.probe_failures) == (S, n)
    r = health.probed(r, False, T0 + 3, POLICY)
    assert (r.state, r.events[-1].detect_s) == (D, 3.0)
    assert r.reason == "3 probes through its URL failed (unreachable or not ready)"


def test_an_agent_that_says_it_is_not_ready_makes_its_gpu_suspect_at_once() -> None:
    r = health.heartbeat(record(), False, T0 + 1, not_ready="the model server answered 503")
    assert (r.state, r.reason, r.events[-1].detect_s) == (S, "its agent is not ready: the model server answered 503",
                                                          0.0)
    assert health.heartbeat(record(P), False, T0, not_ready="x").state is S, "a GPU on probation too"
    for state in (S, D, Q, DR):
        assert health.heartbeat(record(state), False, T0, not_ready="x") == record(state), f"{state}: no change"
    assert health.heartbeat(record(), False, T0) == record(), "ready: no change"


def test_a_gpu_suspect_past_its_window_is_down() -> None:
    assert health.tick(record(S), T0 + 30, T0 + 29, POLICY).state is S
    r = health.tick(record(S), T0 + 31, T0 + 29, POLICY)
    assert (r.state, r.events[-1].detect_s) == (D, 31.0)


def test_a_down_gpu_whose_agent_reports_and_a_probe_reaches_comes_back_on_probation() -> None:
    down = record(D)
    assert health.needs_probe(down, draining=False)
    assert health.probed(down, False, T0 + 5, POLICY) == down, "still cut: it stays down"
    r = health.probed(down, True, T0 + 5, POLICY)
    assert r.state is P and "one canary" in r.reason


# ---- silent


@pytest.mark.parametrize("state", [H, S, P])
def test_no_heartbeat_for_the_stale_window_is_down(state: GpuHealth) -> None:
    assert health.tick(record(state), T0 + 30, T0, POLICY).state is state, "a window, not less"
    r = health.tick(record(state), T0 + 31, T0, POLICY)
    assert (r.state, r.reason, r.events[-1].detect_s) == (D, "silent: no heartbeat for 31 s", 31.0)


def test_silence_leaves_a_quarantined_or_operator_held_gpu_where_it_is() -> None:
    assert health.tick(record(Q, until=None, held=True), T0 + 999, T0, POLICY).state is Q
    assert health.tick(record(DR, held=True), T0 + 999, T0, POLICY).state is DR
    assert health.tick(record(D), T0 + 999, T0, POLICY) == record(D)


# ---- sick


def test_k_model_errors_in_a_row_quarantine_a_healthy_gpu_for_a_cool_down() -> None:
    assert health.task_ended(record(), False, 2, T0, T0 + 2, POLICY).state is H
    r = health.task_ended(record(), False, 3, T0, T0 + 4, POLICY)
    assert (r.state, r.quarantines, r.until, r.events[-1].detect_s) == (Q, 1, T0 + 4 + 60, 4.0)
    assert r.accepts_work(running=0) is False


def test_a_cool_down_over_is_probation_one_canary_at_a_time() -> None:
    quarantined = health.quarantine(record(), "3 ModelErrors", T0, POLICY)
    assert health.tick(quarantined, T0 + 59, T0 + 59, POLICY).state is Q
    r = health.tick(quarantined, T0 + 60, T0 + 60, POLICY)
    assert (r.state, r.until) == (P, None)
    assert r.accepts_work(running=0) and not r.accepts_work(running=1)
    assert (r.slots(4), record().slots(4), record(S).slots(4)) == (1, 4, 0)


def test_a_canary_success_is_healthy_a_failure_quarantines_again_with_the_cool_down_doubled() -> None:
    canary = record(P, quarantines=1)
    assert health.task_ended(canary, True, 0, None, T0, POLICY).state is H
    r = health.task_ended(canary, False, 1, T0, T0, POLICY)
    assert (r.state, r.quarantines, r.until) == (Q, 2, T0 + 120)


def test_after_m_rounds_it_stays_quarantined_until_an_operator_readmits_it() -> None:
    r = health.task_ended(record(P, quarantines=2), False, 1, T0, T0, POLICY)  # M = 2 timed rounds were had
    assert (r.state, r.quarantines, r.until) == (Q, 3, None)
    assert "until an operator readmits it" in r.reason
    assert health.tick(r, T0 + 10**6, T0 + 10**6, POLICY).state is Q, "no cool-down ends it"
    back = health.operator(r, OperatorAction.READMIT, T0 + 5)
    assert (back.state, back.quarantines, back.held) == (P, 0, False)


def test_a_long_healthy_spell_forgives_past_quarantines() -> None:
    healthy = record(H, quarantines=2)
    assert health.task_ended(healthy, True, 0, None, T0 + POLICY.forgive_after - 1, POLICY).quarantines == 2
    assert health.task_ended(healthy, True, 0, None, T0 + POLICY.forgive_after, POLICY).quarantines == 0


def test_other_failures_are_not_the_models_and_change_nothing() -> None:
    assert health.task_ended(record(), False, 0, None, T0, POLICY) == record(), "a count of 0: not a ModelError"


# ---- draining


def test_a_draining_beat_drains_and_an_agent_that_left_is_down() -> None:
    r = health.heartbeat(record(), draining=True, now=T0)
    assert (r.state, r.held) == (DR, False) and r.accepts_work(running=0) is False
    assert health.heartbeat(r, draining=True, now=T0 + 5) == r
    assert health.tick(r, T0 + 40, T0 + 5, POLICY).reason == "drained: its agent left"
    assert health.heartbeat(record(Q), draining=True, now=T0).state is Q, "no work either way"


def test_an_agent_back_from_a_drain_is_probed_then_on_probation() -> None:
    drained = health.heartbeat(record(), draining=True, now=T0)
    assert health.needs_probe(drained, draining=False) and not health.needs_probe(drained, draining=True)
    assert health.probed(drained, True, T0 + 9, POLICY).state is P
    assert health.probed(drained, False, T0 + 9, POLICY).state is D


def test_an_operator_drain_holds_through_silence_and_agent_restarts_until_readmitted() -> None:
    r = health.operator(record(), OperatorAction.DRAIN, T0)
    assert (r.state, r.held) == (DR, True)
    assert not health.needs_probe(r, draining=False), "its agent's own word does not end an operator's drain"
    assert health.tick(r, T0 + 999, T0, POLICY) == r
    assert health.operator(r, OperatorAction.READMIT, T0 + 1).state is P


def test_an_operator_quarantine_waits_for_a_readmit() -> None:
    r = health.operator(record(), OperatorAction.QUARANTINE, T0)
    assert (r.state, r.until, r.held) == (Q, None, True)
    assert health.tick(r, T0 + 10**6, T0 + 10**6, POLICY) == r


def test_readmit_is_a_no_op_in_service_and_refused_for_a_gpu_that_comes_back_by_itself() -> None:
    assert health.operator(record(H), OperatorAction.READMIT, T0) == record(H)
    assert health.operator(record(P), OperatorAction.READMIT, T0) == record(P)
    for state in (S, D):
        with pytest.raises(Refusal, match="comes back by itself"):
            health.operator(record(state), OperatorAction.READMIT, T0)


# ---- the record


def test_each_transition_is_logged_from_to_reason_at_and_the_log_is_bounded() -> None:
    r = HealthRecord.registered(T0)
    for n in range(EVENTS_KEPT + 5):
        r = health.push_failed(r, T0 + n, "cut") if r.state is H else health.probed(r, True, T0 + n, POLICY)
    assert len(r.events) == EVENTS_KEPT
    last = r.events[-1]
    assert (last.at, last.from_, last.to) == (T0 + EVENTS_KEPT + 4, r.events[-2].to, r.state)
    assert last.model_dump(mode="json", by_alias=True)["from"] in ("healthy", "suspect")


def test_time_alone_is_applied_until_nothing_changes() -> None:
    """A cool-down that ended while its agent was silent: probation, then down."""
    quarantined = health.quarantine(record(), "x", T0, POLICY)
    assert path(health.tick(quarantined, T0 + 100, T0, POLICY))[-2:] == [(Q, P), (P, D)]
