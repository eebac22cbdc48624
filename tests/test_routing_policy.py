"""The routing policy, rule by rule: a table of situations and where the next attempt goes."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from spillway.fleet import Gpu
from spillway.models import ErrorType, Pool, Priority, Segment
from spillway.routing.policy import FaasBudget, FleetSnapshot, JobFacts, PastAttempt, RouteAction, decide
from spillway.routing.rules import default_rules, load

NOW = 1_800_000_000.0
RULES = default_rules()
PLENTY = FaasBudget(left_micro=10**9)
SERVICES = ["remove_furniture", "upscale_2x"]

US_HIGH = dict(service="remove_furniture", priority=Priority.HIGH, segment=Segment(region="us"))  # FaaS-eligible
EU_NORMAL = dict(service="remove_furniture", priority=Priority.NORMAL, segment=Segment(region="eu"))


def gpu(gpu_id: str, vram: int = 8_000, slots: int = 2, running: int = 0, compute: int = 100,
        compute_used: int = 0) -> Gpu:
    pool = Pool.LOCAL if gpu_id.startswith("local") else Pool.CLOUD
    return Gpu(gpu_id=gpu_id, pool=pool, url=f"http://{gpu_id}", vram_total_mb=vram,
               vram_free_mb=vram - 3_000 * running, compute_total=compute, compute_free=compute - compute_used,
               slots=slots, running=running, services=SERVICES, last_heartbeat=NOW)


OFFICE = [gpu(f"local-{i}") for i in range(3)]
CLOUD = [gpu("cloud-0", 24_000, 4), gpu("cloud-1", 24_000, 4)]
BUSY_OFFICE = [gpu(f"local-{i}", running=2) for i in range(3)]
BUSY_CLOUD = [gpu("cloud-0", 24_000, 4, running=4), gpu("cloud-1", 24_000, 4, running=4)]
# A slot and the VRAM free on every GPU, but nearly all compute in use (one heavy task each).
COMPUTE_BOUND = [gpu(f"local-{i}", running=1, compute_used=90) for i in range(3)] + \
    [gpu(f"cloud-{i}", 24_000, 4, running=1, compute_used=90) for i in range(2)]


@dataclass
class Case:
    name: str
    job: dict
    attempts: list[PastAttempt] = field(default_factory=list)
    gpus: list[Gpu] = field(default_factory=lambda: OFFICE + CLOUD)
    down: set[str] = field(default_factory=set)  # stale, draining or suspect
    waiting: dict[Pool, int] = field(default_factory=dict)
    budget: FaasBudget = PLENTY
    faas_refused: bool = False
    deadline_in: float = 600
    vram_mb: int = 3_000
    compute: int = 30
    # what it must come to
    pool: Pool | None = None  # None: the job fails
    avoid: list[str] = field(default_factory=list)
    reason_has: tuple[str, ...] = ()


def failed(pool: Pool, gpu_id: str | None, error: ErrorType, reason: str = "") -> PastAttempt:
    return PastAttempt(pool=pool, gpu_id=gpu_id, error=error, reason=reason or None)


L, C, F = Pool.LOCAL, Pool.CLOUD, Pool.FAAS
E = ErrorType

CASES = [
    # local first for every job
    Case("idle fleet: local", EU_NORMAL, pool=L, reason_has=("first choice",)),
    Case("eligible job, office free: local too", US_HIGH, pool=L),
    Case("office busy, cloud free: local still first (the room spills it past its bound)", EU_NORMAL,
         gpus=BUSY_OFFICE + CLOUD, waiting={L: 4}, pool=L, reason_has=("waits",)),
    Case("no healthy office GPU: cloud", EU_NORMAL, down={"local-0", "local-1", "local-2"}, pool=C,
         reason_has=("no healthy local GPU",)),
    Case("too big for every office GPU: cloud", EU_NORMAL, vram_mb=20_000, pool=C),
    Case("more compute than any office GPU has: cloud", EU_NORMAL,
         gpus=[gpu(f"local-{i}", compute=50) for i in range(3)] + CLOUD, compute=60, pool=C),
    # spill-over is not an attempt
    Case("waited past its bound in the office: cloud", EU_NORMAL, [failed(L, None, E.WAIT_EXPIRED)], pool=C,
         reason_has=("spilled over from local",)),
    Case("a spill does not count: three GPU attempts after it", EU_NORMAL,
         [failed(L, None, E.WAIT_EXPIRED), failed(C, "cloud-0", E.MODEL_ERROR), failed(L, "local-1", E.MODEL_ERROR)],
         pool=L, avoid=["cloud-0", "local-1"]),
    # failure kind decides the next step
    Case("unreachable office GPU: another office GPU, never that one", EU_NORMAL,
         [failed(L, "local-0", E.GPU_UNREACHABLE)], pool=L, avoid=["local-0"], reason_has=("another of its GPUs",)),
    Case("draining office GPU: another office GPU", EU_NORMAL, [failed(L, "local-2", E.DRAINING)], pool=L,
         avoid=["local-2"]),
    Case("two office GPUs unreachable: the office is left for the cloud", EU_NORMAL,
         [failed(L, "local-0", E.GPU_UNREACHABLE), failed(L, "local-1", E.GPU_UNREACHABLE)], pool=C,
         avoid=["local-0", "local-1"]),
    Case("the only healthy office GPU failed: cloud", EU_NORMAL, [failed(L, "local-0", E.GPU_UNREACHABLE)],
         down={"local-1", "local-2"}, pool=C, avoid=["local-0"]),
    Case("model error on cloud: another GPU, the office first", EU_NORMAL,
         [failed(C, "cloud-0", E.MODEL_ERROR)], pool=L, avoid=["cloud-0"]),
    Case("input unavailable: the same pool (another of its GPUs)", EU_NORMAL,
         [failed(C, "cloud-1", E.INPUT_UNAVAILABLE)], pool=C, avoid=["cloud-1"]),
    Case("result upload failed: the same pool", EU_NORMAL, [failed(L, "local-2", E.OUTPUT_UPLOAD)], pool=L,
         avoid=["local-2"]),
    Case("bad input: the job fails at once", EU_NORMAL, [failed(L, "local-0", E.BAD_INPUT, "not a PNG")],
         reason_has=("BadInput", "not a PNG")),
    Case("three attempts that reached a GPU: fails with every reason", EU_NORMAL,
         [failed(L, "local-0", E.GPU_UNREACHABLE, "cut"), failed(L, "local-1", E.GPU_UNREACHABLE, "cut too"),
          failed(C, "cloud-0", E.MODEL_ERROR, "crashed")],
         reason_has=("3 attempts failed", "local/local-0", "cut too", "cloud/cloud-0", "crashed")),
    Case("past its deadline: fails", EU_NORMAL, [failed(L, None, E.WAIT_EXPIRED)], deadline_in=-1,
         reason_has=("deadline",)),
    Case("no GPU anywhere has the VRAM: fails with why", EU_NORMAL, vram_mb=60_000, reason_has=("60000 MB",)),
    Case("every GPU down: waits in the last pool that has one", EU_NORMAL,
         down={g.gpu_id for g in OFFICE + CLOUD}, pool=C, reason_has=("come back", "no healthy GPU")),
    # FaaS for priority segments, within the budget
    Case("eligible, nothing can start it now: faas", US_HIGH, gpus=BUSY_OFFICE + BUSY_CLOUD, waiting={L: 3, C: 2},
         pool=F, reason_has=("us-priority", "could start it now")),
    Case("eligible, a queue ahead of the free slots: faas", US_HIGH, waiting={L: 10, C: 10}, pool=F),
    Case("eligible, slots and VRAM free but no GPU has the compute now: faas", US_HIGH, gpus=COMPUTE_BOUND,
         pool=F, reason_has=("could start it now",)),
    Case("not eligible, no GPU has the compute now: waits in the office", EU_NORMAL, gpus=COMPUTE_BOUND,
         pool=L, reason_has=("waits",)),
    Case("eligible, no healthy GPU at all: faas", US_HIGH, down={g.gpu_id for g in OFFICE + CLOUD}, pool=F,
         reason_has=("no other pool can run it",)),
    Case("eligible, two attempts failed: the last one on faas", US_HIGH,
         [failed(L, "local-0", E.GPU_UNREACHABLE), failed(C, "cloud-0", E.MODEL_ERROR)], pool=F,
         avoid=["cloud-0", "local-0"], reason_has=("last attempt",)),
    Case("enterprise tier is eligible for any service", dict(service="upscale_2x", priority=Priority.LOW,
         segment=Segment(region="de", customer_tier="enterprise")), gpus=BUSY_OFFICE + BUSY_CLOUD, pool=F,
         reason_has=("enterprise",)),
    Case("not eligible (eu): never faas, even with everything busy", EU_NORMAL, gpus=BUSY_OFFICE + BUSY_CLOUD,
         waiting={L: 3}, pool=L),
    Case("not eligible (normal priority): never faas, even on its last attempt",
         dict(US_HIGH, priority=Priority.NORMAL),
         [failed(L, "local-0", E.GPU_UNREACHABLE), failed(C, "cloud-0", E.MODEL_ERROR)], pool=L,
         avoid=["cloud-0", "local-0"]),
    Case("budget spent: the eligible job is served by local/cloud", US_HIGH, gpus=BUSY_OFFICE + BUSY_CLOUD,
         budget=FaasBudget(left_micro=1_000), pool=L, reason_has=("budget of us-priority is spent",)),
    Case("the segment's cap spent while the day has room: no faas", US_HIGH, gpus=BUSY_OFFICE + BUSY_CLOUD,
         budget=FaasBudget(left_micro=10**9, segment_left_micro={"us-priority": 0}), pool=L),
    Case("the reservation lost the race for the last dollars: decide again without faas", US_HIGH,
         gpus=BUSY_OFFICE + BUSY_CLOUD, faas_refused=True, pool=L),
    Case("faas refused it (at capacity): back to local/cloud, not counted", US_HIGH,
         [failed(F, None, E.POOL_REFUSED)], gpus=BUSY_OFFICE + BUSY_CLOUD, pool=L),
    Case("faas refused it once: never faas again for this job, not even as its last resort", US_HIGH,
         [failed(F, None, E.POOL_REFUSED), failed(L, "local-0", E.MODEL_ERROR), failed(C, "cloud-0", E.MODEL_ERROR)],
         pool=L, avoid=["cloud-0", "local-0"]),
    Case("faas failed it: faas again only as the last resort", US_HIGH, [failed(F, "faas:x", E.MODEL_ERROR)],
         gpus=BUSY_OFFICE + BUSY_CLOUD, pool=L),
    Case("faas failed it, then the office: its last attempt may go to faas again", US_HIGH,
         [failed(F, "faas:x", E.MODEL_ERROR), failed(L, "local-0", E.GPU_UNREACHABLE)], pool=F, avoid=["local-0"]),
    Case("the most attempts and spills a job gets: fails with why", EU_NORMAL,
         [failed(L, None, E.WAIT_EXPIRED), failed(C, None, E.WAIT_EXPIRED)] * 3, reason_has=("6 attempts and spills",)),
    Case("no FaaS pool at all: an eligible job is routed as any other, no word of budgets", US_HIGH,
         gpus=BUSY_OFFICE + BUSY_CLOUD, budget=FaasBudget(left_micro=0, enabled=False), pool=L),
    Case("budget spent, every GPU down: waits for one, says why", US_HIGH, down={g.gpu_id for g in OFFICE + CLOUD},
         budget=FaasBudget(left_micro=0), pool=C, reason_has=("budget of us-priority is spent", "come back")),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_routing(case: Case) -> None:
    job = JobFacts(vram_mb=case.vram_mb, compute=case.compute, deadline=NOW + case.deadline_in, **case.job)
    usable = {g.gpu_id for g in case.gpus} - case.down
    fleet = FleetSnapshot(gpus=case.gpus, waiting=case.waiting, now=NOW, usable=usable)
    route = decide(job, case.attempts, fleet, case.budget, RULES, max_attempts=3,
                   current_attempt=len(case.attempts), faas_refused=case.faas_refused)
    if not case.budget.enabled:
        assert "budget" not in route.reason
    if case.pool is None:
        assert route.action is RouteAction.FAIL, route
    else:
        assert (route.action, route.pool) == (RouteAction.RUN, case.pool), route.reason
        assert route.avoid_gpus == sorted(case.avoid)
        assert (route.faas_segment is not None) == (case.pool is Pool.FAAS)
    assert route.attempt == len(case.attempts)
    assert route.faas_budget_spent == ("budget of" in route.reason), "the FaasBudgetSpent metric follows the reason"
    for part in case.reason_has:
        assert part in route.reason, route.reason


@pytest.mark.parametrize("job, down, budget, pool, spill_to", [
    (EU_NORMAL, set(), PLENTY, L, C),  # the office first; past its bound, the cloud
    (US_HIGH, set(), PLENTY, L, C),
    (EU_NORMAL, {"local-0", "local-1", "local-2"}, PLENTY, C, None),  # the last pool: it waits to its deadline
    (US_HIGH, {"local-0", "local-1", "local-2"}, PLENTY, C, F),  # ... unless FaaS may take it past its bound
    (US_HIGH, {"local-0", "local-1", "local-2"}, FaasBudget(left_micro=0), C, None),
], ids=["office-then-cloud", "eligible-office-then-cloud", "cloud-holds", "cloud-then-faas", "cloud-holds-no-budget"])
def test_each_route_says_where_the_attempt_spills_past_its_wait_bound(job, down, budget, pool, spill_to) -> None:
    fleet = FleetSnapshot(gpus=OFFICE + CLOUD, waiting={}, now=NOW, usable={g.gpu_id for g in OFFICE + CLOUD} - down)
    route = decide(JobFacts(vram_mb=3_000, compute=30, deadline=NOW + 600, **job), [], fleet, budget, RULES,
                   max_attempts=3, current_attempt=0)
    assert (route.pool, route.spill_to) == (pool, spill_to), route.reason


def test_a_job_too_big_for_faas_gpu_never_goes_there_even_in_a_faas_segment() -> None:
    rules = load({"faas": {"vram_mb": 16_000}})
    fleet = FleetSnapshot(gpus=BUSY_OFFICE + BUSY_CLOUD, waiting={L: 3, C: 2}, now=NOW,
                          usable={g.gpu_id for g in BUSY_OFFICE + BUSY_CLOUD})
    for vram_mb, pool in ((16_000, F), (16_001, C)):
        route = decide(JobFacts(vram_mb=vram_mb, compute=30, deadline=NOW + 600, **US_HIGH), [], fleet, PLENTY,
                       rules, max_attempts=3, current_attempt=0)
        assert (route.pool, route.faas_segment) == (pool, "us-priority" if pool is F else None), route.reason


def test_rules_are_data_and_overrides_merge() -> None:
    rules = load({"faas": {"daily_budget_usd": 0}, "pool_order": ["cloud", "local"]})
    assert rules.faas.daily_budget_usd == 0 and rules.faas.segments == RULES.faas.segments
    assert rules.pool_order == [Pool.CLOUD, Pool.LOCAL]


@pytest.mark.parametrize("bad, says", [
    ({"pool_order": ["local", "faas"]}, "faas is not in pool_order"),
    ({"on_failure": {"BadInput": "retry_forever"}}, "on_failure"),
    ({"faas": {"segments": [{"name": "x", "region": ["us"]}]}}, "region"),
])
def test_bad_rules_are_refused_with_the_reason(bad: dict, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        load(bad)
