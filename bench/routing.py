"""Routing benchmark: a mixed workload with outages on a fresh embedded stack; prints where the work went
and what it cost. Asserts nothing: it reports one scenario's outcome.

    python bench/routing.py                     # 300 jobs over 180 s, seed 1 (~3.5 min on 2 cores)
    python bench/routing.py --quick             # 60 jobs over 50 s (~1.2 min)
    python bench/routing.py --jobs 100 --seconds 60 --seed 7 --runs 2 --json routing.json
    python bench/routing.py --no-cloud-cut --faas-mode slow --faas-slow-seconds 5
    make bench-routing BENCH_ARGS=--quick

The workload (seeded): N jobs over T seconds, Poisson arrivals (N sorted uniform times on [0, T]).
A share (--us-share) are US priority jobs: `priority: high`, `segment.region: us`, `remove_furniture`,
FaaS-eligible by the default rules (segment us-priority); the rest are for `segment.region: eu`
(never FaaS), normal priority (10% low), a quarter of them `upscale_2x`.

The outages (seeded start and end times, through the chaos switchboard of `spillway dev`):
    one office GPU        its link cut   from ~0.10 T to ~0.30 T
    office link           every local GPU cut from ~0.40 T to ~0.75 T
    cloud links           every cloud GPU cut from ~0.52 T to ~0.62 T (--no-cloud-cut: not)
                          so for a while only FaaS serves: eligible jobs should go there
    FaaS upset            --faas-mode slow|fail|refuse in the second half of the cloud cut (of the office cut
                          with --no-cloud-cut); off by default
Everything is restored before T; jobs are then polled until final or --bound seconds pass (then lost).

Figures, from the server's own records (see bench/load.py; its helpers are reused):
    jobs by final status, the reason of each failed job and what was down when it was submitted;
    jobs per pool (the pool of the attempt that succeeded); attempts per pool and outcome
    (succeeded / failed / spilled); attempts per job; the paths jobs took;
    submit -> done (finished_at - created_at) p50/p95 by class (priority/region) and by what was down
    at submit; the slowest jobs;
    FaaS spend three ways: the job views (`cost_usd` of FaaS attempts), the budget table's counters
    (committed / settled per day and segment, against their caps) and the provider's own billing;
    cost per 1,000 jobs by pool (cloud: GPU time of its attempts at the rules' hourly price).
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from boto3.dynamodb.types import TypeDeserializer
from load import (  # bench/load.py, beside this file: its client, poller and stack helpers
    FINAL,
    TIMEOUT,
    Clients,
    Job,
    Poller,
    epoch,
    fmt_n,
    fmt_s,
    guarded,
    percentile,
    read_executions,
    say,
    table,
    upload_all,
)

from spillway.aws import from_item
from spillway.faas.billing import MICRO
from spillway.routing.rules import default_rules
from spillway_embedded.launcher import LaunchedStack, StackInfo

POOLS = ("local", "cloud", "faas")
OUTCOMES = ("succeeded", "failed", "spilled", "open")
US_PRIORITY = ("high", {"region": "us"})
SUSPECT_SECONDS = 30.0  # template.yaml's SuspectSeconds default


def cls(priority: str, segment: dict[str, str]) -> str:
    return f"{priority}/{segment['region']}"


# --- the workload and the outages ------------------------------------------------------------------


class RoutedJob(Job):
    """A job of bench/load.py with a segment and its arrival time (seconds after the start)."""

    def __init__(self, index: int, at: float, service: str, priority: str, segment: dict[str, str], input_key: str):
        super().__init__(index, service, priority, input_key)
        self.at = at
        self.segment = segment

    def body(self) -> dict[str, Any]:
        return super().body() | {"segment": self.segment}


def workload(n: int, seconds: float, seed: int, us_share: float) -> list[tuple[float, str, str, dict[str, str]]]:
    """(arrival, service, priority, segment) per job: Poisson arrivals, a US priority share, the rest EU."""
    rng = random.Random(seed)
    plan = []
    for at in sorted(rng.uniform(0, seconds) for _ in range(n)):
        if rng.random() < us_share:
            plan.append((at, "remove_furniture", *US_PRIORITY))
        else:
            service = "upscale_2x" if rng.random() < 0.25 else "remove_furniture"
            plan.append((at, service, "low" if rng.random() < 0.1 else "normal", {"region": "eu"}))
    return plan


@dataclass
class Event:
    at: float  # seconds after the start
    name: str  # the outage it begins or ends
    action: str  # "cut" / "restore"
    call: Callable[[StackInfo], Any]
    done_at: float | None = None  # epoch, when the switchboard answered
    error: str | None = None


def outages(args: argparse.Namespace, seed: int) -> list[Event]:
    rng = random.Random(seed * 7919 + 1)
    T = args.seconds

    def when(fraction: float) -> float:
        return max(0.0, (fraction + rng.uniform(-0.03, 0.03)) * T)

    gpu = f"local-{rng.randrange(5)}"
    office, cloud = (when(0.40), when(0.75)), (when(0.52), when(0.62))
    plan = [(f"office GPU {gpu}", when(0.10), when(0.30), lambda s: s.cut_tunnels(gpu),
             lambda s: s.restore_tunnels(gpu)),
            ("office link", *office, lambda s: s.cut_tunnels(pool="local"), lambda s: s.restore_tunnels(pool="local"))]
    if args.cloud_cut:
        plan.append(("cloud links", *cloud, lambda s: s.cut_tunnels(pool="cloud"),
                     lambda s: s.restore_tunnels(pool="cloud")))
    if args.faas_mode:  # the second half of the cloud cut (of the office cut without one)
        start, end = cloud if args.cloud_cut else office
        plan.append((f"FaaS {args.faas_mode}", (start + end) / 2, end,
                     lambda s: s.faas_chaos(args.faas_mode, args.faas_slow_seconds), lambda s: s.faas_chaos("normal")))
    events = [e for name, start, end, cut, restore in plan
              for e in (Event(start, name, "cut", cut), Event(end, name, "restore", restore))]
    return sorted(events, key=lambda e: e.at)


def run_events(info: StackInfo, events: list[Event], t0: float, stop: threading.Event) -> None:
    for event in events:
        if stop.wait(max(0.0, t0 + event.at - time.monotonic())):
            return
        try:
            event.call(info)
        except Exception as exc:  # noqa: BLE001 - a switchboard that failed is part of the timeline
            event.error = f"{type(exc).__name__}: {exc}"[:120]
        event.done_at = time.time()


def down_at(events: list[Event], moment: float | None, aftermath: float) -> str:
    """What was down at an epoch moment (by the switchboard's answers), e.g. "office link+cloud links";
    "nothing" is told apart within `aftermath` seconds of a restore (a GPU a push failed to stays suspect)."""
    if moment is None:
        return "?"
    down = [e.name for e in events if e.action == "cut" and e.done_at and e.done_at <= moment
            and not any(r.name == e.name and r.action == "restore" and r.done_at and r.done_at <= moment
                        for r in events)]
    if down:
        return "+".join(down)
    restored = any(e.action == "restore" and e.done_at and 0 <= moment - e.done_at <= aftermath for e in events)
    return f"nothing (<= {aftermath:g} s after a restore)" if restored else "nothing"


def suspect_seconds(args: argparse.Namespace) -> float:
    """How long a GPU a push could not reach gets no new work: the template's SuspectSeconds, or its override."""
    given = [float(p.split("=", 1)[1]) for p in args.parameter if p.startswith("SuspectSeconds=")]
    return given[-1] if given else SUSPECT_SECONDS


# --- what the stack recorded -----------------------------------------------------------------------


def faas_ledger(info: StackInfo) -> dict[str, Any]:
    """The budget table's counters (per day and scope) and its reservations by state; the provider's billing."""
    typed = TypeDeserializer()
    ddb = info.boto3_client("dynamodb")
    items = [from_item({k: typed.deserialize(v) for k, v in item.items()})
             for page in ddb.get_paginator("scan").paginate(TableName=info.resources["BudgetTable"])
             for item in page["Items"]]
    counters = [{"day": i.get("day"), "scope": i.get("segment") or "(day)", "cap_micro": i.get("cap_micro"),
                 "committed_micro": i.get("committed_micro", 0), "settled_micro": i.get("settled_micro", 0)}
                for i in items if not i["budget_id"].startswith("reservation#")]
    reservations = collections.Counter(i.get("state") for i in items if i["budget_id"].startswith("reservation#"))
    billing: dict[str, Any] = {}
    if info.faas_url:
        try:
            key = info.boto3_client("secretsmanager").get_secret_value(
                SecretId=info.resources["FaasApiKeySecret"])["SecretString"]
            billing = httpx.get(f"{info.faas_url}/v2/{info.faas_endpoint_id}/billing",
                                headers={"Authorization": f"Bearer {key}"}, timeout=TIMEOUT).raise_for_status().json()
        except Exception as exc:  # noqa: BLE001
            billing = {"error": f"{type(exc).__name__}: {exc}"[:160]}
    return {"counters": sorted(counters, key=lambda c: (str(c["day"]), c["scope"] != "(day)", c["scope"])),
            "reservations": dict(reservations), "billing": billing}


def summarize(jobs: list[RoutedJob], events: list[Event], t0_epoch: float, aftermath: float) -> dict[str, Any]:
    figures = []
    for job in jobs:
        f = job.figures()
        created = epoch(f["created_at"])
        f.update(at=job.at, segment=job.segment, cls=cls(job.priority, job.segment),
                 t_submit=created - t0_epoch if created else None,
                 timeline=" > ".join(f"{a['pool']}/{a.get('gpu_id') or '-'} {a.get('outcome') or 'open'} "
                                     f"@{fmt_n(epoch(a.get('ended_at')) - t0_epoch if a.get('ended_at') else None)}"
                                     for a in f["attempts"]),
                 down_at_submit=down_at(events, epoch(f["created_at"]), aftermath),
                 pool=(job.ran() or {}).get("pool"), cost_usd=(job.view or {}).get("cost_usd", 0.0),
                 path=" > ".join(f"{a['pool']}:{a.get('outcome') or 'open'}" for a in f["attempts"]))
        figures.append(f)
    accepted = [f for f in figures if f["job_id"]]
    final = [f for f in accepted if f["status"] in FINAL]
    succeeded = [f for f in final if f["status"] == "SUCCEEDED"]
    attempts = [a for f in accepted for a in f["attempts"]]
    by_pool_outcome = collections.Counter((a["pool"], a.get("outcome") or "open") for a in attempts)
    pool_cost = collections.Counter()
    for a in attempts:
        pool_cost[a["pool"]] += a.get("cost_usd") or 0.0

    def latencies(pick: Callable[[dict[str, Any]], str]) -> dict[str, dict[str, Any]]:
        groups: dict[str, list[float]] = collections.defaultdict(list)
        counts: collections.Counter[str] = collections.Counter()
        for f in accepted:
            counts[pick(f)] += 1
            if f["done_latency"] is not None:
                groups[pick(f)].append(f["done_latency"])
        return {k: {"jobs": counts[k], "succeeded": len(groups[k]), "p50": percentile(groups[k], 50),
                    "p95": percentile(groups[k], 95), "max": max(groups[k], default=None)} for k in sorted(counts)}

    finished = [epoch(f["finished_at"]) for f in final if f["finished_at"]]
    return {
        "n": len(jobs), "accepted": len(accepted), "rejected": len(jobs) - len(accepted),
        "succeeded": len(succeeded), "failed": len(final) - len(succeeded), "lost": len(accepted) - len(final),
        "failed_jobs": [{k: f[k] for k in ("job_id", "cls", "service", "t_submit", "down_at_submit", "error",
                                           "timeline")}
                        for f in final if f["status"] == "FAILED"],
        "lost_jobs": [{k: f[k] for k in ("job_id", "cls", "status", "down_at_submit", "path")}
                      for f in accepted if f["status"] not in FINAL],
        "rejected_reasons": dict(collections.Counter(f["rejected"] for f in figures if f["rejected"])),
        "jobs_by_pool": dict(collections.Counter(f["pool"] for f in succeeded)),
        "attempts_by_pool": {f"{p}:{o}": n for (p, o), n in sorted(by_pool_outcome.items())},
        "attempts_per_job": dict(sorted(collections.Counter(len(f["attempts"]) for f in final).items())),
        "attempts_mean": (sum(len(f["attempts"]) for f in final) / len(final)) if final else None,
        "attempts_max": max((len(f["attempts"]) for f in final), default=None),
        "paths": dict(collections.Counter(f["path"] for f in final).most_common()),
        "done_by_class": latencies(lambda f: f["cls"]),
        "done_by_down": latencies(lambda f: f["down_at_submit"]),
        "done_all": latencies(lambda f: "all")["all"] if accepted else {},
        "cost_by_pool": dict(pool_cost), "faas_attempt_costs": [a.get("cost_usd") or 0.0 for a in attempts
                                                                if a["pool"] == "faas"],
        "span_seconds": max(finished) - t0_epoch if finished else None,
        "slowest": [{k: f[k] for k in ("job_id", "cls", "t_submit", "done_latency", "down_at_submit", "path")}
                    for f in sorted(succeeded, key=lambda f: -f["done_latency"])[:5]],
        "jobs": figures,
    }


# --- one run ---------------------------------------------------------------------------------------


def scenario(args: argparse.Namespace, seed: int, run: int) -> dict[str, Any]:
    def body(launched: LaunchedStack, info: StackInfo) -> dict[str, Any]:
        clients = Clients(info)
        try:
            plan = workload(args.jobs, args.seconds, seed, args.us_share)
            keys, _ = upload_all(clients, len(plan), seed, 8)
            jobs = [RoutedJob(i, at, service, priority, segment, key)
                    for i, ((at, service, priority, segment), key) in enumerate(zip(plan, keys, strict=True))]
            events = outages(args, seed)
            poller = Poller(clients, args.poll_batch, args.poll_interval)
            submitting = threading.Event()
            submitting.set()
            t0, t0_epoch = time.monotonic() + 0.5, time.time() + 0.5
            watcher = threading.Thread(target=poller.until_final,
                                       args=(t0 + args.seconds + args.bound, submitting.is_set))
            stop = threading.Event()
            chaos = threading.Thread(target=run_events, args=(info, events, t0, stop))
            watcher.start()
            chaos.start()

            def send(job: RoutedJob) -> None:
                job.sent_late = time.monotonic() - (t0 + job.at)
                job.submit(clients)
                if job.job_id:
                    poller.add(job)

            try:
                with ThreadPoolExecutor(8) as pool:
                    for job in jobs:
                        time.sleep(max(0.0, t0 + job.at - time.monotonic()))
                        pool.submit(send, job)
                chaos.join()
            finally:
                stop.set()
                chaos.join()
                submitting.clear()
                info.restore_tunnels()  # whatever happened, leave every link up (jobs still open need them)
                if args.faas_mode:
                    info.faas_chaos("normal")
            watcher.join()
            poller.close()
            result = summarize(jobs, events, t0_epoch, suspect_seconds(args))
            result.update(seed=seed, executions=read_executions(info, jobs), ledger=faas_ledger(info),
                          poll_gets=poller.gets, poll_errors=poller.errors,
                          sent_late_p95=percentile([j.sent_late for j in jobs if j.sent_late is not None], 95),
                          timeline=[{"at": e.at, "done_at": e.done_at - t0_epoch if e.done_at else None,
                                     "name": e.name, "action": e.action, "error": e.error} for e in events])
            return result
        finally:
            clients.close()

    result = guarded(f"run {run + 1}, seed {seed}: {args.jobs} jobs over {args.seconds:g} s", body, args,
                     f"routing-{run}")
    if "error" not in result:
        report(result, args)
    return result


# --- the report ------------------------------------------------------------------------------------


def share(n: int, total: int) -> str:
    return f"{n} ({100 * n / total:.0f}%)" if total else str(n)


def usd(value: float | None) -> str:
    return "-" if value is None else f"${value:.4f}"


def report(r: dict[str, Any], args: argparse.Namespace) -> None:
    say(f"\n  Timeline (seconds after the start of the schedule, as every time below; seed {r['seed']})")
    say(table(["event", "planned", "done", ""],
              [[f"{e['action']} {e['name']}", f"{e['at']:.1f}", fmt_n(e["done_at"]), e["error"] or ""]
               for e in r["timeline"]]))

    accepted = r["accepted"]
    say(f"\n  Jobs: {r['n']} submitted, {accepted} accepted: {r['succeeded']} succeeded, {r['failed']} failed, "
        f"{r['lost']} not final after {args.bound:g} s, {r['rejected']} rejected"
        f" (sent late p95 {fmt_s(r['sent_late_p95'])}; poll GETs {r['poll_gets']}, errors {r['poll_errors']})")
    for f in r["failed_jobs"]:
        say(f"    FAILED {f['job_id']} {f['cls']} {f['service']}, submitted at {fmt_n(f['t_submit'])} s (down: "
            f"{f['down_at_submit']}): {f['error']}\n      attempts (ended at, s): {f['timeline']}")
    for f in r["lost_jobs"]:
        say(f"    LOST {f['job_id']} {f['cls']} {f['status']} (down at submit: {f['down_at_submit']}): {f['path']}")
    if r["rejected_reasons"]:
        say(f"    rejected: {r['rejected_reasons']}")
    if r.get("log_path"):  # kept by load.guarded when a job failed, was lost or rejected
        errors = r.get("log_errors", {})
        say(f"    dev.log kept: {r['log_path']} ({errors.get('count', 0)} error lines/tracebacks"
            + "".join(f"; {line}" for line in errors.get("distinct", [])[:3]) + ")")
    ex = r["executions"]
    if ex.get("missing") or ex.get("status_mismatch") or ex.get("listed") != accepted:
        say(f"    executions: {ex} (expected one per accepted job, status as the job's)")

    succeeded = r["succeeded"]
    rows = []
    for pool in POOLS:
        counts = [r["attempts_by_pool"].get(f"{pool}:{o}", 0) for o in OUTCOMES]
        rows.append([pool, share(r["jobs_by_pool"].get(pool, 0), succeeded), *map(str, counts),
                     share(sum(counts), sum(r["attempts_by_pool"].values()))])
    say("\n  Where work went: jobs by the pool of the attempt that succeeded; attempts by pool and outcome")
    say(table(["pool", "jobs", *(f"att. {o}" for o in OUTCOMES), "attempts"], rows))
    per_job = " ".join(f"{k}:{v}" for k, v in r["attempts_per_job"].items())
    say(f"  attempts per job: mean {fmt_n(r['attempts_mean'], 2)}, max {r['attempts_max']} (jobs by attempts "
        f"{per_job}; spills included)")
    say("  paths (attempts in order, pool:outcome)")
    say(table(["path", "jobs"], [[p, str(n)] for p, n in list(r["paths"].items())[:8]], indent="    "))

    say("\n  submit -> done (finished_at - created_at, succeeded jobs)")
    groups = [("all", r["done_all"])] + [(f"class {k}", v) for k, v in r["done_by_class"].items()] + \
             [(f"down at submit: {k}", v) for k, v in r["done_by_down"].items()]
    say(table(["jobs", "n", "succeeded", "p50", "p95", "max"],
              [[name, str(g["jobs"]), str(g["succeeded"]), fmt_s(g["p50"]), fmt_s(g["p95"]), fmt_s(g["max"])]
               for name, g in groups]))
    say("  slowest jobs")
    say(table(["job", "class", "submitted", "done", "down at submit", "path"],
              [[f["job_id"], f["cls"], fmt_n(f["t_submit"]), fmt_s(f["done_latency"]), f["down_at_submit"], f["path"]]
               for f in r["slowest"]], indent="    "))

    faas_report(r)

    cost, jobs = r["cost_by_pool"], r["jobs_by_pool"]
    total = sum(cost.values())
    say(f"\n  Cost per 1,000 jobs by pool (attempts' cost_usd; cloud = GPU time of its attempts at "
        f"${default_rules().gpu_hour_usd.get('cloud', 0):.2f}/h)")
    say(table(["pool", "cost", "per 1,000 jobs", "per 1,000 jobs it served"],
              [[p, usd(cost.get(p, 0.0)), usd(1000 * cost.get(p, 0.0) / accepted if accepted else None),
                usd(1000 * cost.get(p, 0.0) / jobs[p] if jobs.get(p) else None)] for p in POOLS]
              + [["all", usd(total), usd(1000 * total / accepted if accepted else None), ""]]))
    if r["span_seconds"]:
        cloud_gpus = 2
        rented = cloud_gpus * r["span_seconds"] / 3600 * default_rules().gpu_hour_usd.get("cloud", 0)
        say(f"  (renting the {cloud_gpus} cloud GPUs for the run's {r['span_seconds']:.0f} s costs {usd(rented)} "
            f"whatever their load)")


def faas_report(r: dict[str, Any]) -> None:
    rules = default_rules().faas
    ledger, billing = r["ledger"], r["ledger"]["billing"]
    views = sum(r["faas_attempt_costs"])
    served = r["jobs_by_pool"].get("faas", 0)
    say("\n  FaaS spend")
    say(f"    job views: {len(r['faas_attempt_costs'])} FaaS attempts, {usd(views)} "
        f"({usd(views / served) if served else '-'} per job it served)")
    caps = {"(day)": rules.daily_budget_usd} | {s.name: s.daily_budget_usd for s in rules.segments}
    rows = []
    for c in ledger["counters"]:
        cap = c["cap_micro"] / MICRO if c["cap_micro"] is not None else caps.get(c["scope"])
        rows.append([f"{c['day']} {c['scope']}", usd(c["committed_micro"] / MICRO), usd(c["settled_micro"] / MICRO),
                     usd((c["committed_micro"] - c["settled_micro"]) / MICRO),
                     "-" if cap is None else f"${cap:.2f}",
                     "-" if not cap else f"{100 * c['committed_micro'] / MICRO / cap:.2f}%"])
    say("    budget table (BudgetTable counters; the rules' daily budget "
        f"${rules.daily_budget_usd:.2f}, segments {', '.join(f'{k} ${v}' for k, v in caps.items() if k != '(day)')})")
    say(table(["day scope", "committed", "settled", "reserved now", "cap", "of cap"], rows or [["(none)"] + [""] * 5],
              indent="      "))
    say(f"      reservations by state: {ledger['reservations'] or '-'}")
    if "error" in billing or not billing:
        say(f"    provider billing: {billing.get('error', 'no FaaS provider')}")
        return
    lines = billing.get("jobs", [])
    cold = sum(1 for j in lines if j.get("coldStart"))
    say(f"    provider billing: {len(lines)} jobs ({cold} cold starts), {billing['billedSeconds']} s billed, "
        f"{usd(billing['costUsd'])} at ${billing['pricePerSecondUsd']}/s")
    day = next((c for c in ledger["counters"] if c["scope"] == "(day)"), None)
    settled = day["settled_micro"] / MICRO if day else 0.0
    say(f"    compared: views {usd(views)} vs ledger settled {usd(settled)} (should be equal); provider "
        f"{usd(billing['costUsd'])} vs ledger {usd(settled)} (the ledger counts a {rules.cold_start_seconds:g} s "
        f"cold start where a job's delay shows one); {len(lines)} provider jobs vs {len(r['faas_attempt_costs'])} "
        f"FaaS attempts")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="60 jobs over 50 s, bound 120 s")
    parser.add_argument("--jobs", type=int, help="jobs per run (default 300; quick 60)")
    parser.add_argument("--seconds", type=float, help="arrivals spread over this long (default 180; quick 50)")
    parser.add_argument("--us-share", type=float, default=0.2, help="share of US priority (FaaS-eligible) jobs")
    parser.add_argument("--no-cloud-cut", dest="cloud_cut", action="store_false",
                        help="keep the cloud's links up throughout")
    parser.add_argument("--faas-mode", choices=("slow", "fail", "refuse"),
                        help="upset the FaaS provider in the second half of the cloud cut (else of the office cut)")
    parser.add_argument("--faas-slow-seconds", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--runs", type=int, default=1, help="repeat on fresh stacks with seeds seed, seed+1, ...")
    parser.add_argument("--bound", type=float, help="seconds after the last arrival to wait for jobs (default 240)")
    parser.add_argument("--poll-batch", type=int, default=20, help="GETs per polling round")
    parser.add_argument("--poll-interval", type=float, default=1.0)
    parser.add_argument("--model-seconds", type=float, default=0.0, help="passed to `spillway dev`")
    parser.add_argument("--parameter", action="append", default=[], metavar="NAME=VALUE",
                        help="a template parameter override passed to `spillway dev`")
    parser.add_argument("--state-dir", help="keep each stack's state and dev.log under this folder")
    parser.add_argument("--json", type=Path, metavar="PATH", help="save every raw figure here")
    args = parser.parse_args(argv)
    args.jobs = args.jobs or (60 if args.quick else 300)
    args.seconds = args.seconds or (50.0 if args.quick else 180.0)
    args.bound = args.bound or (120.0 if args.quick else 240.0)

    say(f"Spillway routing benchmark{' (quick)' if args.quick else ''}: {args.jobs} jobs over {args.seconds:g} s, "
        f"{args.us_share:.0%} US priority, cloud cut {'on' if args.cloud_cut else 'off'}, FaaS chaos "
        f"{args.faas_mode or 'off'}, seeds {', '.join(str(args.seed + i) for i in range(args.runs))}")
    started = time.monotonic()
    out: dict[str, Any] = {"config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                           "runs": []}
    try:
        for run in range(args.runs):
            out["runs"].append(scenario(args, args.seed + run, run))
    except KeyboardInterrupt:
        say("\ninterrupted")
    if len(out["runs"]) > 1:
        say("\nRuns")
        say(table(["seed", "succeeded", "failed", "lost", "local", "cloud", "faas", "FaaS $ (views)"],
                  [[str(r.get("seed", "-")), *(str(r.get(k, "-")) for k in ("succeeded", "failed", "lost")),
                    *(str(r.get("jobs_by_pool", {}).get(p, 0)) for p in POOLS),
                    usd(sum(r.get("faas_attempt_costs", [])))]
                   for r in out["runs"]]))
    out["wall_seconds"] = time.monotonic() - started
    say(f"\n(benchmark wall time {out['wall_seconds'] / 60:.1f} min)")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=str))
        say(f"raw figures: {args.json}")


if __name__ == "__main__":
    sys.exit(main())
