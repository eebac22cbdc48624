"""Load benchmark of the embedded stack: prints figures, asserts nothing (shared machines are noisy).

    python bench/load.py                       # burst N=10,100,500 x3 runs, idle latency, steady 3 jobs/s for 60 s
    python bench/load.py --quick               # a small version of everything, as a smoke test
    python bench/load.py --modes burst --jobs 10 200 --runs 5 --json bench-out.json
    python bench/load.py --model-seconds 0.5 --parameter HeartbeatSeconds=10   # passed to `spillway dev`
    make bench BENCH_ARGS="--quick --json bench.json"
(bench/run.py, the older end-to-end latency probe, still runs on its own.)
(bench/routing.py: a mixed workload with outages; where the work went and what it cost.)

Every run starts a FRESH `spillway dev` (its tables start empty) and talks to it only as a client
would: the job API over HTTP, and boto3 against its moto endpoint to read the Step Functions executions.

Latencies come from the server's own timestamps (one machine clock), never from when the client
happened to poll:
    submit -> agent start   running_at of the attempt that succeeded - created_at of the job
    submit -> done          finished_at - created_at (succeeded jobs)
    wait                    running_at - started_at of the attempt that succeeded (time in the pool's
                            waiting room until its GPU's agent took it), by priority
    completed/s             final jobs / (last finished_at - first created_at)
    accepted/s              accepted jobs / wall time of the submission phase (client clock)

Modes:
    burst   upload N small (320x240) photos first, THEN submit all of them as fast as the API takes
            (--concurrency threads, one httpx client each), then poll until every job is final or
            --bound seconds pass (unfinished = lost). Medians across --runs, and the scaling ratio
            (median completed/s at the largest N / at the smallest N).
    idle    10 jobs one at a time, each waiting for its result before the next.
    steady  --steady-rate jobs/s for --steady-seconds on a monotonic schedule (uploads done before).

Polling is deliberately gentle (round-robin, --poll-batch GETs per round, two at a time): the API
function's few containers and everything else share two or so CPUs, so a heavy poller
would slow down what it measures.
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import os
import random
import re
import statistics
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from spillway.rooms import render_room
from spillway_embedded.client import upload as upload_image
from spillway_embedded.launcher import LaunchedStack, StackInfo

SERVICES = ("remove_furniture", "upscale_2x")
PRIORITIES = ("high", "normal", "low")
FINAL = ("SUCCEEDED", "FAILED")
WIDTH, HEIGHT = 320, 240
DISTINCT_IMAGES = 16  # rendered once, each uploaded under many keys
TIMEOUT = httpx.Timeout(30.0, connect=5.0)
UNSETTLED_GETS = 5  # a final status without finished_at (or with an attempt still open) is read again this often

TARGETS = {
    "all_succeed": "N/N succeed at the largest N (every run)",
    "ratio": "scaling ratio >= 0.9",
    "throughput": "completed >= 10 jobs/s at the largest N",
    "idle_start_p50": "idle submit->agent-start p50 < 100 ms",
    "steady_done_p95": "steady submit->done p95 < 2 s",
}


def say(*parts: object) -> None:
    print(*parts, flush=True)


# --- numbers -------------------------------------------------------------------------------------


def percentile(values: Iterable[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default); None for no values."""
    ordered = sorted(values)
    if not ordered:
        return None
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def epoch(stamp: str | None) -> float | None:
    return datetime.fromisoformat(stamp).timestamp() if stamp else None


def fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def fmt_n(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(headers: list[str], rows: list[list[str]], indent: str = "  ") -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]
    lines = [indent + "  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths,
                                                                                                     strict=True)))]
    lines.append(indent + "  ".join("-" * w for w in widths))
    for row in rows:
        lines.append(indent + "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                                        for i, (c, w) in enumerate(zip(row, widths, strict=True))))
    return "\n".join(lines)


# --- the client side -----------------------------------------------------------------------------


@functools.lru_cache(maxsize=DISTINCT_IMAGES)
def image(seed: int) -> bytes:
    return render_room(seed, WIDTH, HEIGHT)


def job_mix(n: int, seed: int) -> list[tuple[str, str]]:
    """(service, priority) per job: services half and half, priorities ~70% normal, 15% high, 15% low."""
    rng = random.Random(seed)
    mix = []
    for _ in range(n):
        draw = rng.random()
        priority = "high" if draw < 0.15 else "low" if draw < 0.30 else "normal"
        mix.append((rng.choice(SERVICES), priority))
    return mix


# Every job is the default tenant's: its limits lifted (given first, so that --parameter may set them again).
NO_TENANT_LIMITS = ("TenantSubmitsPerSecond=100000", "TenantSubmitBurst=100000", "TenantJobsInFlight=5000")


class Clients:
    """One httpx client per thread, all closed at the end."""

    def __init__(self, info: StackInfo):
        self._info = info
        self._local = threading.local()
        self._all: list[httpx.Client] = []
        self._lock = threading.Lock()

    def get(self) -> httpx.Client:
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = self._info.api_client(TIMEOUT)
            with self._lock:
                self._all.append(client)
        return client

    def close(self) -> None:
        for client in self._all:
            client.close()


def upload(clients: Clients, seed: int) -> str:
    return upload_image(clients.get(), image(seed % DISTINCT_IMAGES))


def upload_all(clients: Clients, n: int, seed: int, concurrency: int) -> tuple[list[str], float]:
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        keys = list(pool.map(lambda i: upload(clients, seed + i), range(n)))
    return keys, time.perf_counter() - started


class Job:
    def __init__(self, index: int, service: str, priority: str, input_key: str):
        self.index = index
        self.service = service
        self.priority = priority
        self.input_key = input_key
        self.job_id: str | None = None
        self.rejected: str | None = None  # why the POST did not give a 202
        self.post_seconds: float | None = None  # client-side POST round trip
        self.sent_late: float | None = None  # steady mode: how late the POST left after its slot
        self.view: dict[str, Any] | None = None  # the last GET /v1/jobs/{id}
        self.throttled = 0  # submits answered 429 and retried
        self.unsettled_gets = 0  # GETs that showed a final status before finished_at and every attempt's end
        self.execution: dict[str, Any] | None = None

    def body(self) -> dict[str, Any]:
        """What POST /v1/jobs gets for it."""
        return {"service": self.service, "input_key": self.input_key, "priority": self.priority}

    def submit(self, clients: Clients) -> None:
        started = time.perf_counter()
        body = self.body()
        try:
            for backoff in (0.5, 1.0, 2.0, 4.0, 8.0, None):  # a throttled submit (429) is retried, as clients do
                response = clients.get().post("/v1/jobs", json=body)
                if response.status_code != 429 or backoff is None:
                    break
                self.throttled += 1
                time.sleep(backoff)
        except httpx.HTTPError as exc:
            self.rejected = f"{type(exc).__name__}: {exc}"[:160]
            return
        finally:
            self.post_seconds = time.perf_counter() - started
        if response.status_code != 202:
            self.rejected = f"HTTP {response.status_code}: {response.text[:120]}"
            return
        self.job_id = response.json()["job_id"]

    @property
    def final(self) -> bool:
        """Final, and its record settled: finished_at set and every attempt ended (or it never settles)."""
        if self.view is None or self.view["status"] not in FINAL:
            return False
        return self.settled or self.unsettled_gets >= UNSETTLED_GETS

    @property
    def settled(self) -> bool:
        view = self.view or {}
        return bool(view.get("finished_at")) and all(a.get("ended_at") for a in view.get("attempts", []))

    def ran(self) -> dict[str, Any] | None:
        """The attempt that succeeded."""
        if self.view is None:
            return None
        return next((a for a in self.view.get("attempts", []) if a.get("outcome") == "succeeded"), None)

    def figures(self) -> dict[str, Any]:
        view = self.view or {}
        attempt = self.ran() or {}
        created, finished = epoch(view.get("created_at")), epoch(view.get("finished_at"))
        running, opened = epoch(attempt.get("running_at")), epoch(attempt.get("started_at"))
        succeeded = view.get("status") == "SUCCEEDED"
        return {
            "index": self.index, "job_id": self.job_id, "service": self.service, "priority": self.priority,
            "rejected": self.rejected, "post_seconds": self.post_seconds, "sent_late": self.sent_late,
            "status": view.get("status"), "error": view.get("error"),
            "created_at": view.get("created_at"), "finished_at": view.get("finished_at"),
            "attempts": view.get("attempts", []),
            "start_latency": running - created if succeeded and running and created else None,
            "done_latency": finished - created if succeeded and finished and created else None,
            "wait": running - opened if succeeded and running and opened else None,
            "execution": self.execution, "unsettled_gets": self.unsettled_gets, "settled": self.settled,
        }


def stage(job: dict[str, Any]) -> str:
    """Where a job that never became final stands: its status and how far its last attempt got."""
    if not job["attempts"]:
        return f"{job['status']}, no attempt"
    last = job["attempts"][-1]
    step = next((name for name, key in (("ended", "ended_at"), ("running", "running_at"), ("assigned", "assigned_at"))
                 if last.get(key)), "waiting")
    return f"{job['status']}, attempt {last['number']} {last['pool']} {step}"


class Poller:
    """Round-robin GET /v1/jobs/{id} over the jobs not yet final, a few at a time."""

    def __init__(self, clients: Clients, batch: int, interval: float):
        self._clients = clients
        self._batch = batch
        self._interval = interval
        self._pending: collections.deque[Job] = collections.deque()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(2)
        self.gets = 0
        self.errors = 0

    def add(self, job: Job) -> None:
        with self._lock:
            self._pending.append(job)

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def _get(self, job: Job) -> None:
        try:
            job.view = self._clients.get().get(f"/v1/jobs/{job.job_id}").raise_for_status().json()
            if job.view["status"] in FINAL and not job.settled:
                job.unsettled_gets += 1
        except httpx.HTTPError:
            self.errors += 1
        self.gets += 1

    def round(self) -> None:
        with self._lock:
            take = [self._pending.popleft() for _ in range(min(self._batch, len(self._pending)))]
        list(self._pool.map(self._get, take))
        with self._lock:
            self._pending.extend(job for job in take if not job.final)

    def until_final(self, deadline: float, keep_going: Callable[[], bool] = lambda: False) -> None:
        while (self.pending or keep_going()) and time.monotonic() < deadline:
            self.round()
            time.sleep(self._interval)

    def close(self) -> None:
        self._pool.shutdown()


# --- the server side, read through boto3 -----------------------------------------------------------


def read_executions(info: StackInfo, jobs: list[Job]) -> dict[str, Any]:
    """Describe each job's execution (named by its job id) and count the machine's executions."""
    sfn = info.boto3_client("stepfunctions")
    machine = info.resources["DispatchStateMachine"]
    prefix = machine.replace(":stateMachine:", ":execution:") + ":"

    def describe(job: Job) -> None:
        try:
            found = sfn.describe_execution(executionArn=prefix + job.job_id)
            job.execution = {"status": found["status"]}
        except Exception as exc:  # noqa: BLE001 - ExecutionDoesNotExist or the stack being down: both "none"
            job.execution = {"status": None, "error": f"{type(exc).__name__}"}

    accepted = [job for job in jobs if job.job_id]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(describe, accepted))
    try:
        listed = sum(len(page["executions"]) for page in
                     sfn.get_paginator("list_executions").paginate(stateMachineArn=machine))
    except Exception as exc:  # noqa: BLE001
        listed = None
        say(f"    list_executions failed: {exc}")
    statuses = collections.Counter(job.execution["status"] for job in accepted if job.execution)
    mismatched = sum(1 for job in accepted if job.final and job.execution
                     and job.execution["status"] != job.view["status"])
    return {
        "described": sum(1 for job in accepted if job.execution and job.execution["status"]),
        "missing": sum(1 for job in accepted if not (job.execution and job.execution["status"])),
        "listed": listed, "statuses": dict(statuses), "status_mismatch": mismatched,
    }


IDS = re.compile(r"\b[tj]-[0-9a-f]{32}\b")
STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ ")
OWN_POLLING = re.compile(r"GET /v1/jobs/j-[0-9a-f]{32} -> 200")


def log_errors(stack: LaunchedStack) -> dict[str, Any]:
    """Error lines and tracebacks in the `spillway dev` log, grouped, for the report when something went wrong."""
    try:
        lines = stack.log_path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return {"count": 0, "distinct": []}
    found: collections.Counter[str] = collections.Counter()
    for i, line in enumerate(lines):
        if line.startswith("Traceback"):
            last = next((x for x in lines[i + 1:] if x and not x.startswith((" ", "Traceback"))), "?")
            found["Traceback: " + last] += 1
        elif '"level":"ERROR"' in line or '"level":"CRITICAL"' in line:
            try:
                entry = json.loads(line)
                found[f"{entry.get('location', '')} {entry.get('message', '')}"] += 1
            except ValueError:
                found[line] += 1
        elif " ERROR " in line or " CRITICAL " in line:
            found[STAMP.sub("", line)] += 1
    grouped: collections.Counter[str] = collections.Counter()
    for message, n in found.items():
        grouped[IDS.sub("<id>", message)[:200]] += n
    return {"count": sum(found.values()), "distinct": [f"{n}x {m}" for m, n in grouped.most_common(8)]}


def log_tail(stack: LaunchedStack, lines: int = 30) -> str:
    """The end of the `spillway dev` log, without the benchmark's own polling GETs."""
    try:
        text = stack.log_path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return ""
    return "\n".join([line for line in text if not OWN_POLLING.search(line)][-lines:])


# --- what the jobs cost the machine ---------------------------------------------------------------

ROLES = (("moto", "spillway_embedded.moto_server"), ("agents", " agent "), ("faas", "faas_provider"))
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process_cpu(root: int) -> dict[str, float]:
    """CPU seconds (user + system) so far of `spillway dev` ("runtime": the handlers, the tunnels) and of the
    processes under it, by role. Linux only (/proc); elsewhere empty."""
    stats: dict[int, tuple[int, float, str]] = {}  # pid -> (parent, cpu seconds, command line)
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError):
            continue  # not a process, or gone
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (name) "
        stats[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / CLOCK_TICKS, command)
    cpu: collections.Counter[str] = collections.Counter()
    for pid, (parent, seconds, _) in stats.items():
        if pid == root:
            cpu["runtime"] += seconds
            continue
        child = pid  # the ancestor started by `spillway dev` names the role (its own children count with it)
        while parent not in (root, 0) and parent in stats:
            child, parent = parent, stats[parent][0]
        if parent == root:
            cpu[next((role for role, marker in ROLES if marker in stats[child][2]), "other")] += seconds
    return dict(cpu)


def aws_calls(info: StackInfo) -> dict[str, list[float]]:
    """AWS calls moto has served so far by API: [calls, CPU seconds of their request threads]."""
    try:
        return httpx.get(f"{info.aws_endpoint}/_spillway/calls", timeout=TIMEOUT).raise_for_status().json()
    except httpx.HTTPError:
        return {}


class Cost:
    """What a phase cost: CPU seconds by process role and AWS calls by API, between `__init__` and `end`."""

    def __init__(self, launched: LaunchedStack, info: StackInfo):
        self._launched, self._info = launched, info
        self._cpu, self._calls = process_cpu(launched.pid or 0), aws_calls(info)

    def end(self, jobs: int) -> dict[str, Any]:
        cpu, calls = process_cpu(self._launched.pid or 0), aws_calls(self._info)
        per_job = max(jobs, 1)
        spent = {api: [n - self._calls.get(api, [0, 0.0])[0], s - self._calls.get(api, [0, 0.0])[1]]
                 for api, (n, s) in calls.items()}
        spent = {api: v for api, v in spent.items() if v[0]}
        return {
            "cpu_ms_per_job": {role: (cpu[role] - self._cpu.get(role, 0.0)) * 1000 / per_job for role in cpu},
            "aws_calls_per_job": sum(n for n, _ in spent.values()) / per_job,
            "aws_calls": {api: {"per_job": n / per_job, "cpu_ms_per_call": s * 1000 / n}
                          for api, (n, s) in sorted(spent.items(), key=lambda kv: -kv[1][0])},
        }


def cost_line(cost: dict[str, Any]) -> str:
    cpu = ", ".join(f"{role} {ms:.0f}" for role, ms in sorted(cost["cpu_ms_per_job"].items(), key=lambda kv: -kv[1]))
    top = ", ".join(f"{api} {c['per_job']:.1f}" for api, c in list(cost["aws_calls"].items())[:8])
    return f"CPU ms/job: {cpu} | AWS calls/job {cost['aws_calls_per_job']:.1f}: {top}"


# --- one stack -------------------------------------------------------------------------------------


class Stack:
    """A fresh `spillway dev` in its own state folder; on failure the log tail is printed and kept."""

    def __init__(self, args: argparse.Namespace, name: str):
        base = Path(args.state_dir) if args.state_dir else Path(tempfile.mkdtemp(prefix="spillway-bench-"))
        self.state = base / name if args.state_dir else base
        extra = ["--api-port", "0", "--model-seconds", str(args.model_seconds)]
        for pair in (*NO_TENANT_LIMITS, *args.parameter):  # the load is the system's, not one tenant's
            extra += ["--parameter", pair]
        self.launched = LaunchedStack(self.state, extra)
        self.keep = bool(args.state_dir)  # or when the run saw trouble: its dev.log is worth reading

    def __enter__(self) -> tuple[LaunchedStack, StackInfo]:
        started = time.monotonic()
        info = self.launched.__enter__()
        self.startup_seconds = time.monotonic() - started
        return self.launched, info

    def __exit__(self, *exc: Any) -> None:
        self.launched.__exit__(*exc)
        if not self.keep:
            import shutil

            shutil.rmtree(self.state, ignore_errors=True)


def summarize(jobs: list[Job]) -> dict[str, Any]:
    figures = [job.figures() for job in jobs]
    accepted = [f for f in figures if f["job_id"]]
    final = [f for f in accepted if f["status"] in FINAL]
    succeeded = [f for f in final if f["status"] == "SUCCEEDED"]
    failed = [f for f in final if f["status"] == "FAILED"]
    created = [epoch(f["created_at"]) for f in accepted if f["created_at"]]
    finished = [epoch(f["finished_at"]) for f in final if f["finished_at"]]
    span = max(finished) - min(created) if finished and created else None
    start = [f["start_latency"] for f in succeeded if f["start_latency"] is not None]
    done = [f["done_latency"] for f in succeeded if f["done_latency"] is not None]
    wait = {p: [f["wait"] for f in succeeded if f["priority"] == p and f["wait"] is not None] for p in PRIORITIES}
    attempts = collections.Counter(len(f["attempts"]) for f in final)
    lost = [f for f in accepted if f["status"] not in FINAL]
    return {
        "n": len(jobs), "accepted": len(accepted), "rejected": len(jobs) - len(accepted),
        "rejected_reasons": dict(collections.Counter(f["rejected"] for f in figures if f["rejected"])),
        "succeeded": len(succeeded), "failed": len(failed), "lost": len(accepted) - len(final),
        "failed_reasons": dict(collections.Counter(str(f["error"]) for f in failed)),
        "lost_states": dict(collections.Counter(stage(f) for f in lost)),
        "final_unsettled": sum(1 for f in final if not f["settled"]),  # final status, finished_at/attempt end never set
        "final_seen_unsettled": sum(1 for f in final if f["unsettled_gets"]),  # ... set only on a later read
        "attempts_per_job": {str(k): v for k, v in sorted(attempts.items())},
        "pools": dict(collections.Counter(f"{a['pool']}:{a.get('outcome')}" for f in final for a in f["attempts"])),
        "completed_per_s": len(final) / span if span else None, "span_seconds": span,
        "start": {f"p{q}": percentile(start, q) for q in (50, 95, 99)},
        "done": {f"p{q}": percentile(done, q) for q in (50, 95, 99)},
        "wait": {p: {"p50": percentile(w, 50), "p95": percentile(w, 95), "count": len(w)} for p, w in wait.items()},
        "post": {"p50": percentile([f["post_seconds"] for f in figures if f["post_seconds"]], 50),
                 "p95": percentile([f["post_seconds"] for f in figures if f["post_seconds"]], 95)},
        "jobs": figures,
    }


def guarded(label: str, body: Callable[[LaunchedStack, StackInfo], dict[str, Any]], args: argparse.Namespace,
            name: str) -> dict[str, Any]:
    """Run one measurement on a fresh stack; a failure is reported (with the log tail), not raised."""
    stack = Stack(args, name)
    launched = stack.launched
    try:
        with stack as (launched, info):
            load = os.getloadavg()[0]
            say(f"  [{label}] stack up in {stack.startup_seconds:.1f} s ({info.api_url}); machine load {load:.1f} "
                f"on {os.cpu_count()} CPUs")
            result = body(launched, info)
            result.update(startup_seconds=stack.startup_seconds, load_before=load, load_after=os.getloadavg()[0])
            result["log_errors"] = log_errors(launched)
            if result.get("failed") or result.get("lost") or result.get("rejected"):
                result["log_tail"] = log_tail(launched)
                result["log_path"] = str(launched.log_path)
                stack.keep = True
            return result
    except Exception as exc:  # noqa: BLE001 - a broken run is a finding, not a crash of the benchmark
        stack.keep = True
        tail = launched.log_tail(40)
        say(f"  [{label}] FAILED: {type(exc).__name__}: {exc}\n{traceback.format_exc(limit=-12)}"
            f"  --- last lines of {launched.log_path} ---\n{tail}\n  ---")
        return {"error": f"{type(exc).__name__}: {exc}", "log_tail": tail, "log_path": str(launched.log_path),
                "log_errors": log_errors(launched)}


# --- modes -----------------------------------------------------------------------------------------


def burst(args: argparse.Namespace, n: int, run: int) -> dict[str, Any]:
    def body(launched: LaunchedStack, info: StackInfo) -> dict[str, Any]:
        clients = Clients(info)
        try:
            mix = job_mix(n, args.seed * 1000 + n)
            keys, upload_seconds = upload_all(clients, n, args.seed, args.concurrency)
            jobs = [Job(i, service, priority, key) for i, ((service, priority), key) in enumerate(zip(mix, keys,
                                                                                                      strict=True))]
            cost = Cost(launched, info)  # from the first submit until every job is final (the polling GETs too)
            started = time.perf_counter()
            with ThreadPoolExecutor(args.concurrency) as pool:
                list(pool.map(lambda job: job.submit(clients), jobs))
            submit_seconds = time.perf_counter() - started
            poller = Poller(clients, args.poll_batch, args.poll_interval)
            for job in jobs:
                if job.job_id:
                    poller.add(job)
            poller.until_final(time.monotonic() + args.bound)
            poller.close()
            spent = cost.end(n)
            executions = read_executions(info, jobs)
            result = summarize(jobs)
            result.update(upload_seconds=upload_seconds, submit_seconds=submit_seconds,
                          accepted_per_s=result["accepted"] / submit_seconds, poll_gets=poller.gets,
                          poll_errors=poller.errors, executions=executions, cost=spent)
            return result
        finally:
            clients.close()

    result = guarded(f"burst N={n} run {run + 1}", body, args, f"burst-{n}-{run}")
    if "error" not in result:
        ex = result["executions"]
        say(f"    {result['succeeded']}/{n} succeeded, {result['failed']} failed, {result['lost']} lost, "
            f"{result['rejected']} rejected | accepted {fmt_n(result['accepted_per_s'])}/s, "
            f"completed {fmt_n(result['completed_per_s'])}/s | start p50 {fmt_s(result['start']['p50'])}, "
            f"done p50 {fmt_s(result['done']['p50'])} p95 {fmt_s(result['done']['p95'])} | "
            f"executions {ex['described']} described, {ex['listed']} listed")
        say(f"    {cost_line(result['cost'])} (poll GETs/job {result['poll_gets'] / n:.1f})")
        report_trouble(result)
    return result


def idle(args: argparse.Namespace) -> dict[str, Any]:
    def body(launched: LaunchedStack, info: StackInfo) -> dict[str, Any]:
        clients = Clients(info)
        try:
            mix = job_mix(args.idle_jobs, args.seed + 7)
            keys, _ = upload_all(clients, args.idle_jobs, args.seed, 4)
            jobs = [Job(i, s, p, k) for i, ((s, p), k) in enumerate(zip(mix, keys, strict=True))]
            poller = Poller(clients, 1, args.idle_poll_interval)
            for job in jobs:
                job.submit(clients)
                if job.job_id:
                    poller.add(job)
                    poller.until_final(time.monotonic() + args.bound)
            poller.close()
            executions = read_executions(info, jobs)
            result = summarize(jobs)
            result.update(executions=executions, poll_gets=poller.gets, poll_errors=poller.errors)
            return result
        finally:
            clients.close()

    result = guarded("idle", body, args, "idle")
    if "error" not in result:
        starts = [fmt_s(job["start_latency"]) for job in result["jobs"]]
        say(f"    {result['succeeded']}/{result['n']} succeeded; submit->agent-start per job: {', '.join(starts)}")
        report_trouble(result)
    return result


def steady(args: argparse.Namespace) -> dict[str, Any]:
    total = round(args.steady_rate * args.steady_seconds)

    def body(launched: LaunchedStack, info: StackInfo) -> dict[str, Any]:
        clients = Clients(info)
        try:
            mix = job_mix(total, args.seed + 11)
            keys, _ = upload_all(clients, total, args.seed, args.concurrency)
            jobs = [Job(i, s, p, k) for i, ((s, p), k) in enumerate(zip(mix, keys, strict=True))]
            poller = Poller(clients, args.poll_batch, args.steady_poll_interval)
            submitting = threading.Event()
            submitting.set()
            watcher = threading.Thread(target=poller.until_final,
                                       args=(time.monotonic() + args.steady_seconds + args.bound, submitting.is_set))
            watcher.start()

            def send(job: Job, slot: float) -> None:
                job.sent_late = time.monotonic() - slot
                job.submit(clients)
                if job.job_id:
                    poller.add(job)

            t0 = time.monotonic() + 0.5
            with ThreadPoolExecutor(args.concurrency) as pool:
                for i, job in enumerate(jobs):
                    slot = t0 + i / args.steady_rate
                    time.sleep(max(0.0, slot - time.monotonic()))
                    pool.submit(send, job, slot)
            submit_seconds = time.monotonic() - t0
            submitting.clear()
            watcher.join()
            poller.close()
            executions = read_executions(info, jobs)
            result = summarize(jobs)
            late = [job.sent_late for job in jobs if job.sent_late is not None]
            sent = sorted(t0 + i / args.steady_rate + job.sent_late for i, job in enumerate(jobs)
                          if job.sent_late is not None)
            offered = (len(sent) - 1) / (sent[-1] - sent[0]) if len(sent) > 1 and sent[-1] > sent[0] else None
            result.update(submit_seconds=submit_seconds, offered_per_s=offered,
                          sent_late={"p95": percentile(late, 95), "max": max(late, default=None)},
                          poll_gets=poller.gets, poll_errors=poller.errors, executions=executions)
            return result
        finally:
            clients.close()

    result = guarded(f"steady {args.steady_rate:g}/s for {args.steady_seconds:g} s", body, args, "steady")
    if "error" not in result:
        say(f"    {result['succeeded']}/{total} succeeded at {fmt_n(result['offered_per_s'], 2)} jobs/s offered "
            f"(sent late p95 {fmt_s(result['sent_late']['p95'])}); done p50 {fmt_s(result['done']['p50'])} "
            f"p95 {fmt_s(result['done']['p95'])}")
        report_trouble(result)
    return result


def report_trouble(result: dict[str, Any]) -> None:
    if result.get("failed_reasons"):
        say(f"    failed: {result['failed_reasons']}")
    if result.get("lost_states"):
        say(f"    lost: {result['lost_states']}")
    if result.get("rejected_reasons"):
        say(f"    rejected: {result['rejected_reasons']}")
    ex = result.get("executions") or {}
    if ex.get("missing") or (ex.get("listed") is not None and ex["listed"] != result["accepted"]):
        say(f"    executions: {ex} (expected one per accepted job: {result['accepted']})")
    if result.get("failed") or result.get("lost") or result.get("rejected"):
        errors = result.get("log_errors", {})
        say(f"    log {result.get('log_path')}: {errors.get('count', 0)} error lines/tracebacks")
        for line in errors.get("distinct", []):
            say(f"      {line}")
        say("    --- its last lines (without the benchmark's own GETs) ---")
        say("\n".join("    " + line[:300] for line in result.get("log_tail", "").splitlines()[-20:]))
    if result.get("final_seen_unsettled"):
        say(f"    {result['final_seen_unsettled']} jobs read as final before finished_at/attempt end were set "
            f"({result['final_unsettled']} never settled)")


# --- the report ------------------------------------------------------------------------------------


def burst_tables(results: dict[int, list[dict[str, Any]]]) -> tuple[str, dict[str, Any]]:
    good = {n: [r for r in runs if "error" not in r] for n, runs in results.items()}
    med: dict[str, Any] = {}
    outcome_rows, latency_rows, wait_rows = [], [], []
    for n, runs in good.items():
        broken = len(results[n]) - len(runs)

        def per_run(pick: Callable[[dict[str, Any]], Any], runs: list[dict[str, Any]] = runs) -> str:
            return "/".join(str(pick(r)) for r in runs) or "-"

        m = {
            "accepted_per_s": median(r["accepted_per_s"] for r in runs),
            "completed_per_s": median(r["completed_per_s"] for r in runs),
            **{f"start_{q}": median(r["start"][q] for r in runs) for q in ("p50", "p95", "p99")},
            **{f"done_{q}": median(r["done"][q] for r in runs) for q in ("p50", "p95", "p99")},
            **{f"wait_{p}_{q}": median(r["wait"][p][q] for r in runs) for p in PRIORITIES for q in ("p50", "p95")},
        }
        med[str(n)] = m
        outcome_rows.append([
            str(n), f"{len(runs)}" + (f" (+{broken} broken)" if broken else ""),
            per_run(lambda r: r["succeeded"]), per_run(lambda r: r["failed"]), per_run(lambda r: r["lost"]),
            per_run(lambda r: r["rejected"]),
            per_run(lambda r: f"{r['executions']['described']}:{r['executions']['listed']}"),
            per_run(lambda r: r["attempts_per_job"].get("1", 0)),
            fmt_n(m["accepted_per_s"]), fmt_n(m["completed_per_s"]),
        ])
        latency_rows.append([str(n), *(fmt_s(m[f"start_{q}"]) for q in ("p50", "p95", "p99")),
                             *(fmt_s(m[f"done_{q}"]) for q in ("p50", "p95", "p99"))])
        wait_rows.append([str(n), *(fmt_s(m[f"wait_{p}_{q}"]) for p in PRIORITIES for q in ("p50", "p95"))])
    text = "\n".join([
        "Burst: outcome per run (a/b/c = runs 1/2/3), rates are medians across runs",
        table(["N", "runs", "succeeded", "failed", "lost", "rejected", "exec described:listed", "1-attempt jobs",
               "accepted/s", "completed/s"], outcome_rows),
        "",
        "Burst latency, medians across runs (server timestamps)",
        table(["N", "start p50", "start p95", "start p99", "done p50", "done p95", "done p99"], latency_rows),
        "  start = submit -> agent start (running_at of the attempt that succeeded - created_at); done = finished_at"
        " - created_at",
        "",
        "Burst wait in the pool's waiting room by priority (running_at - started_at of the attempt that ran), medians",
        table(["N", "high p50", "high p95", "normal p50", "normal p95", "low p50", "low p95"], wait_rows),
    ])
    return text, med


def report(args: argparse.Namespace, out: dict[str, Any]) -> None:
    say("\n" + "=" * 100)
    targets: list[list[str]] = []
    if out.get("burst"):
        results = {int(n): runs for n, runs in out["burst"].items()}
        text, med = burst_tables(results)
        out["burst_medians"] = med
        say(text)
        small, large = min(results), max(results)
        ratio = None
        if med[str(small)]["completed_per_s"] and med[str(large)]["completed_per_s"]:
            ratio = med[str(large)]["completed_per_s"] / med[str(small)]["completed_per_s"]
        out["scaling_ratio"] = ratio
        say(f"\nScaling ratio = median completed/s at N={large} / at N={small} = {fmt_n(ratio, 2)}")
        runs = results[large]
        all_ok = bool(runs) and all("error" not in r and r["succeeded"] == large for r in runs)
        targets.append([TARGETS["all_succeed"].replace("N/N", f"{large}/{large}"),
                        "/".join(str(r.get("succeeded", "broken")) for r in runs) + f" of {large}", mark(all_ok)])
        targets.append([TARGETS["ratio"], fmt_n(ratio, 2), mark(ratio is not None and ratio >= 0.9)])
        throughput = med[str(large)]["completed_per_s"]
        targets.append([TARGETS["throughput"] + f" (N={large})", f"{fmt_n(throughput)} jobs/s",
                        mark(throughput is not None and throughput >= 10)])
    if out.get("idle"):
        r = out["idle"]
        say("\nIdle latency: one job at a time on a fresh stack")
        if "error" in r:
            say(f"  broken: {r['error']}")
        else:
            say(table(["jobs", "succeeded", "start p50", "start p95", "done p50", "done p95"],
                      [[str(r["n"]), str(r["succeeded"]), fmt_s(r["start"]["p50"]), fmt_s(r["start"]["p95"]),
                        fmt_s(r["done"]["p50"]), fmt_s(r["done"]["p95"])]]))
        p50 = None if "error" in r else r["start"]["p50"]
        targets.append([TARGETS["idle_start_p50"], fmt_s(p50), mark(p50 is not None and p50 < 0.1)])
    if out.get("steady"):
        r = out["steady"]
        say(f"\nSteady: {args.steady_rate:g} jobs/s for {args.steady_seconds:g} s on a fresh stack")
        if "error" in r:
            say(f"  broken: {r['error']}")
        else:
            say(table(["jobs", "offered/s", "succeeded", "failed", "lost", "start p50", "done p50", "done p95",
                       "done p99"],
                      [[str(r["n"]), fmt_n(r["offered_per_s"], 2), str(r["succeeded"]), str(r["failed"]),
                        str(r["lost"]), fmt_s(r["start"]["p50"]), fmt_s(r["done"]["p50"]), fmt_s(r["done"]["p95"]),
                        fmt_s(r["done"]["p99"])]]))
        p95 = None if "error" in r else r["done"]["p95"]
        targets.append([TARGETS["steady_done_p95"], fmt_s(p95), mark(p95 is not None and p95 < 2)])
    say("\nTargets (reported, not asserted)")
    say(table(["target", "figure", ""], targets))
    out["targets"] = [{"target": t, "figure": f, "met": m == "met"} for t, f, m in targets]


def mark(ok: bool) -> str:
    return "met" if ok else "MISSED"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small version of everything (N=10,50, 1 run, 20 s)")
    parser.add_argument("--modes", nargs="+", choices=("burst", "idle", "steady"), default=["burst", "idle", "steady"])
    parser.add_argument("--jobs", type=int, nargs="+", help="burst sizes (default 10 100 500)")
    parser.add_argument("--runs", type=int, help="runs per burst size, each on a fresh stack (default 3)")
    parser.add_argument("--concurrency", type=int, default=16, help="submitting threads, one httpx client each")
    parser.add_argument("--bound", type=float, help="seconds to wait for jobs to finish; then lost (default 600)")
    parser.add_argument("--idle-jobs", type=int, default=10)
    parser.add_argument("--steady-rate", type=float, default=3.0, help="jobs/s")
    parser.add_argument("--steady-seconds", type=float, help="default 60")
    parser.add_argument("--poll-batch", type=int, default=25, help="GETs per polling round")
    parser.add_argument("--poll-interval", type=float, default=2.0,
                        help="seconds between polling rounds (burst); latencies come from server timestamps")
    parser.add_argument("--steady-poll-interval", type=float, default=0.25)
    parser.add_argument("--idle-poll-interval", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--model-seconds", type=float, default=0.0, help="passed to `spillway dev`")
    parser.add_argument("--parameter", action="append", default=[], metavar="NAME=VALUE",
                        help="a template parameter override passed to `spillway dev`")
    parser.add_argument("--state-dir", help="keep each stack's state and dev.log under this folder")
    parser.add_argument("--json", type=Path, metavar="PATH", help="save every raw figure here")
    args = parser.parse_args(argv)
    quick = args.quick
    args.jobs = args.jobs or ([10, 50] if quick else [10, 100, 500])
    args.runs = args.runs or (1 if quick else 3)
    args.steady_seconds = args.steady_seconds or (20.0 if quick else 60.0)
    args.bound = args.bound or (180.0 if quick else 600.0)

    say(f"Spillway load benchmark{' (quick)' if quick else ''}: modes {' '.join(args.modes)}; burst N={args.jobs} "
        f"x {args.runs} runs; steady {args.steady_rate:g}/s x {args.steady_seconds:g} s; model {args.model_seconds} s; "
        f"bound {args.bound:g} s")
    started = time.monotonic()
    out: dict[str, Any] = {"config": {k: v for k, v in vars(args).items() if k != "json"}}
    out["config"]["json"] = str(args.json) if args.json else None
    try:
        if "burst" in args.modes:
            out["burst"] = {}
            for n in args.jobs:
                runs = out["burst"][str(n)] = []
                for run in range(args.runs):
                    runs.append(burst(args, n, run))
        if "idle" in args.modes:
            out["idle"] = idle(args)
        if "steady" in args.modes:
            out["steady"] = steady(args)
    except KeyboardInterrupt:
        say("\ninterrupted: reporting what was measured so far")
    if out.get("burst"):
        out["burst"] = {n: runs for n, runs in out["burst"].items() if runs}
    report(args, out)
    out["wall_seconds"] = time.monotonic() - started
    say(f"\n(benchmark wall time {out['wall_seconds'] / 60:.1f} min)")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=str))
        say(f"raw figures: {args.json}")


if __name__ == "__main__":
    sys.exit(main())
