"""Fault benchmark: how long the control plane takes to notice each GPU fault, and how long a job on the faulted
GPU takes to move on. Prints figures, asserts nothing (the machine is shared and noisy).

    python bench/faults.py                           # every fault, 3 runs each (~15 min on 2 cores)
    python bench/faults.py --runs 1 --faults kill term
    python bench/faults.py --model-seconds 5 --slow-seconds 10 --json faults.json
    make bench-faults BENCH_ARGS="--runs 5"

One embedded stack (`spillway dev`) with a small fleet (FLEET: two office GPUs and a cloud one, no FaaS), so a
job on the faulted GPU always has somewhere to go. The faulted GPU is FAULTED, the best fit for the bench's jobs
while it is healthy (least free VRAM that fits), so they land there. For each fault and run:

    1. every GPU healthy (a GPU back from down or quarantine gets its canary task first);
    2. the fault, through the chaos switchboard, at t0 (when the bench asked; in force milliseconds later),
       either while a job runs on FAULTED (an agent killed, frozen, told to stop, cut off from reporting) or
       just before jobs are submitted (a link cut in, a sick or slow model: only a push or a model run after
       the fault meets it);
    3. every job answered; then the fault mended and the GPU brought back (restore, SIGCONT, restart, heal and
       an operator's readmit) for the next run.

Figures, from the stack's own records (one machine clock), never from when this client polled:
    time to detect    t0 -> the first transition of FAULTED's health away from healthy after t0, as the control
                      plane wrote it in the GPU's event log (the fleet table, read with boto3); "-" if none
    time to move on   t0 -> the first job's next attempt started running on another GPU (`running_at`), or, if it
                      never left FAULTED, t0 -> the job's end (`finished_at`)
    the job met it    faults injected before the jobs: t0 -> FAULTED was leased for the first job (its upload,
                      submit, admission and routing); a link cut or a sick model is noticed only once a push or a
                      run meets it, so this part of both figures is the job's way to the GPU, not detection
Medians over --runs, with min and max, beside the thresholds in force (read from the stack's own function
environment, as its Lambdas see it) so that the figures can be read against them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from boto3.dynamodb.types import TypeDeserializer
from rich.console import Console
from rich.table import Table

from spillway.aws import from_item
from spillway.dispatch import PROBE_TIMEOUT, PUSH_TIMEOUT
from spillway.fleet import Gpu
from spillway.health import GpuHealth
from spillway.rooms import render_room
from spillway_embedded.client import upload
from spillway_embedded.launcher import LaunchedStack, StackInfo
from spillway_embedded.template import parameter_defaults

FLEET = """
# bench/faults.py's fleet: the faulted GPU (local-0, the best fit), another office GPU and a cloud one.
[pools.local]
slots = 2
gpus = [{ id = "local-0", vram_mb = 6000 }, { id = "local-1", vram_mb = 8000 }]

[pools.cloud]
slots = 2
gpus = [{ id = "cloud-0", vram_mb = 24000 }]
"""
FAULTED = "local-0"
JOB = {"service": "upscale_2x", "segment": {"region": "eu"}}  # 320x240: fits every GPU of FLEET
TIMEOUT = httpx.Timeout(10.0, connect=2.0)
JOB_BOUND = 240.0  # seconds a job may take to be answered before the run is reported as broken
# The template's health thresholds, by parameter name: what each figure is to be read against.
THRESHOLDS = {
    "AgentStaleSeconds": "no heartbeat this long -> down, its tasks fail (s)",
    "SuspectSeconds": "suspect this long without a probe answering -> down (s)",
    "HealthProbeFailures": "failed probes in a row -> down",
    "HeartbeatSeconds": "a task without a heartbeat this long fails (s)",
    "QuarantineAfterErrors": "ModelErrors in a row -> quarantined",
    "QuarantineSeconds": "the first quarantine's cool-down (s)",
}
Thresholds = dict[str, str]
BACK_BOUND = 120.0  # seconds the faulted GPU may take to come back (probe, canary) between runs


def say(*parts: object) -> None:
    print(*parts, flush=True)


def epoch(stamp: str | None) -> float | None:
    return datetime.fromisoformat(stamp).timestamp() if stamp else None


# --- talking to the stack ----------------------------------------------------------------------------------


class Bench:
    """The running stack as a client sees it: the job API, the chaos switchboard, the fleet table."""

    def __init__(self, info: StackInfo, api: httpx.Client):
        self.info = info
        self.api = api
        self._fleet = info.boto3_client("dynamodb")
        self._image = render_room(3, 320, 240)

    def submit(self) -> str:
        body = JOB | {"input_key": upload(self.api, self._image)}
        return self.api.post("/v1/jobs", json=body).raise_for_status().json()["job_id"]

    def job(self, job_id: str) -> dict[str, Any]:
        return self.api.get(f"/v1/jobs/{job_id}").raise_for_status().json()

    def wait_job(self, job_id: str, until: Callable[[dict[str, Any]], bool], what: str,
                 timeout: float = JOB_BOUND) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            view = self.job(job_id)
            if until(view):
                return view
            if time.monotonic() > deadline:
                raise TimeoutError(f"{job_id}: {what} not seen in {timeout:.0f} s; it is {view['status']}: "
                                   f"{view.get('attempts')}")
            time.sleep(0.2)

    def answered(self, job_id: str) -> dict[str, Any]:
        return self.wait_job(job_id, lambda v: v["status"] in ("SUCCEEDED", "FAILED") and bool(v.get("finished_at")),
                             "an answer")

    def first_attempt(self, job_id: str, stamp: str) -> dict[str, Any]:
        """The job's first attempt once it has `stamp` (running_at: an agent runs it; ended_at: it ended)."""
        view = self.wait_job(job_id, lambda v: bool(v["attempts"] and v["attempts"][0].get(stamp)),
                             f"its first attempt's {stamp}")
        return view["attempts"][0]

    def gpu(self, gpu_id: str) -> Gpu:
        """The GPU's fleet record as the control plane wrote it (not the view, which projects time's transitions)."""
        item = self._fleet.get_item(TableName=self.info.resources["FleetTable"], Key={"gpu_id": {"S": gpu_id}},
                                    ConsistentRead=True)["Item"]
        typed = TypeDeserializer()
        return Gpu.model_validate(from_item({k: typed.deserialize(v) for k, v in item.items()}))

    def health(self, gpu_id: str) -> str:
        """Its health as operators see it now (GET /v1/fleet: time's transitions applied)."""
        gpus = self.api.get("/v1/fleet").raise_for_status().json()["gpus"]
        return next(g["health"] for g in gpus if g["gpu_id"] == gpu_id)

    def back_to_healthy(self, gpu_id: str) -> None:
        """Wait until the GPU is healthy; one on probation is given canary jobs (it is first in line for them)."""
        deadline = time.monotonic() + BACK_BOUND
        while (state := self.health(gpu_id)) != GpuHealth.HEALTHY:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{gpu_id} is still {state} {BACK_BOUND:.0f} s after its fault was mended")
            if state == GpuHealth.PROBATION:
                self.answered(self.submit())
            else:
                time.sleep(0.3)

    def readmit(self, gpu_id: str) -> None:
        self.api.post(f"/v1/fleet/{gpu_id}/readmit").raise_for_status()


# --- the faults ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    name: str
    what: str  # the switchboard call, for the table
    inject: Callable[[StackInfo], Any]
    mend: Callable[[Bench], Any]
    mid_task: bool  # injected while a job runs on FAULTED; else just before the jobs are submitted
    jobs: Callable[[Thresholds], int] = lambda thresholds: 1  # jobs put on FAULTED, one after another


def _restart(bench: Bench) -> None:
    bench.info.agents("restart", FAULTED)


def _heal_and_readmit(bench: Bench) -> None:
    bench.info.agents("heal", FAULTED)
    bench.readmit(FAULTED)


FAULTS = (
    Fault("tunnel-refused", "tunnels/cut", lambda s: s.cut_tunnels(FAULTED),
          lambda b: b.info.restore_tunnels(FAULTED), mid_task=False),
    Fault("tunnel-silent", "tunnels/cut?mode=silent", lambda s: s.cut_tunnels(FAULTED, mode="silent"),
          lambda b: b.info.restore_tunnels(FAULTED), mid_task=False),
    Fault("heartbeats-cut", "tunnels/cut?direction=out", lambda s: s.cut_tunnels(FAULTED, direction="out"),
          lambda b: b.info.restore_tunnels(FAULTED), mid_task=True),
    Fault("agent-frozen", "agents/stop (SIGSTOP)", lambda s: s.agents("stop", FAULTED),
          lambda b: b.info.agents("cont", FAULTED), mid_task=True),
    Fault("agent-killed", "agents/kill (SIGKILL)", lambda s: s.agents("kill", FAULTED), _restart, mid_task=True),
    Fault("agent-sigterm", "agents/term (SIGTERM: drain)", lambda s: s.agents("term", FAULTED), _restart,
          mid_task=True),
    Fault("model-fails", "agents/fail-model", lambda s: s.agents("fail-model", FAULTED), _heal_and_readmit,
          mid_task=False, jobs=lambda t: int(t["QuarantineAfterErrors"])),
    # slow: its `seconds` are bound in main() from --slow-seconds
)


def slow_fault(seconds: float) -> Fault:
    return Fault("gpu-slow", f"agents/slow ({seconds:g} s)", lambda s: s.agents("slow", FAULTED, seconds=seconds),
                 lambda b: b.info.agents("heal", FAULTED), mid_task=False)


@dataclass
class Run:
    fault: str
    run: int
    t0: float = 0.0
    reached_s: float | None = None  # faults met by a push or a run: t0 -> the first job's GPU was leased for it
    detect_s: float | None = None
    detected_as: str | None = None  # the state it left healthy for, and why
    move_on_s: float | None = None
    moved_on: str | None = None  # "to local-1" / "finished on local-0 (SUCCEEDED)"
    attempts: list[list[Any]] = field(default_factory=list)  # per job: (gpu, outcome, error) of each attempt
    error: str | None = None

    def line(self) -> str:
        if self.error:
            return f"BROKEN: {self.error}"
        detect = "not detected" if self.detect_s is None else f"detected in {self.detect_s:.2f} s ({self.detected_as})"
        return f"{detect}; moved on in {self.move_on_s:.2f} s ({self.moved_on})"


def measure(bench: Bench, fault: Fault, thresholds: Thresholds, number: int) -> Run:
    run = Run(fault.name, number)
    for gpu in [g["gpu_id"] for g in bench.info.gpus]:
        bench.back_to_healthy(gpu)
    jobs: list[str] = []
    if fault.mid_task:
        jobs.append(bench.submit())
        first = bench.first_attempt(jobs[0], "running_at")
        if first["gpu_id"] != FAULTED:
            raise RuntimeError(f"the job ran on {first['gpu_id']}, not on {FAULTED}: the fault would miss it")
    run.t0 = time.time()  # asked now; in force once the switchboard answers (milliseconds later)
    fault.inject(bench.info)
    if not fault.mid_task:
        for n in range(fault.jobs(thresholds)):  # one after another, so that each finds FAULTED free (the best fit)
            if n:
                bench.first_attempt(jobs[-1], "ended_at")
            jobs.append(bench.submit())
    views = [bench.answered(job_id) for job_id in jobs]
    run.attempts = [[(a.get("gpu_id"), a.get("outcome"), a.get("error")) for a in v["attempts"]] for v in views]
    if not fault.mid_task:
        run.reached_s = epoch(views[0]["attempts"][0]["assigned_at"]) - run.t0
    left = next((e for e in bench.gpu(FAULTED).health.events if e.at >= run.t0 and e.from_ is GpuHealth.HEALTHY),
                None)
    if left is not None:
        run.detect_s, run.detected_as = left.at - run.t0, f"{left.to.value}: {left.reason}"
    first = views[0]
    elsewhere = next((a for a in first["attempts"] if a.get("gpu_id") not in (None, FAULTED) and a.get("running_at")),
                     None)
    if elsewhere is not None:
        run.move_on_s, run.moved_on = epoch(elsewhere["running_at"]) - run.t0, f"to {elsewhere['gpu_id']}"
    else:
        run.move_on_s = epoch(first["finished_at"]) - run.t0
        run.moved_on = f"ended on {first['attempts'][-1].get('gpu_id')} ({first['status']})"
    fault.mend(bench)
    return run


# --- the report --------------------------------------------------------------------------------------------------


def spread(values: list[float]) -> str:
    if not values:
        return "-"
    middle = statistics.median(values)
    return f"{middle:.1f} s ({min(values):.1f}–{max(values):.1f})" if len(values) > 1 else f"{middle:.1f} s"


def report(console: Console, faults: list[Fault], runs: list[Run], thresholds: Thresholds,
           args: argparse.Namespace, loads: tuple[str, str]) -> None:
    results = Table(title=f"GPU faults on {FAULTED}: median (min–max) over {args.runs} run(s), from t0 = the fault")
    for header in ("fault", "switchboard", "the job met it", "detected as", "time to detect", "time to move on",
                   "moved on", "runs"):
        results.add_column(header, justify="left" if header in ("fault", "switchboard", "detected as", "moved on")
                           else "right")
    for fault in faults:
        done = [r for r in runs if r.fault == fault.name and r.error is None]
        broken = [r for r in runs if r.fault == fault.name and r.error is not None]
        states = sorted({r.detected_as.split(":")[0] for r in done if r.detected_as}) or ["not detected"]
        moved = sorted({r.moved_on.split(" (")[0] for r in done if r.moved_on})
        met = "running at t0" if fault.mid_task else spread([r.reached_s for r in done if r.reached_s is not None])
        results.add_row(fault.name, fault.what, met, ", ".join(states),
                        spread([r.detect_s for r in done if r.detect_s is not None]),
                        spread([r.move_on_s for r in done if r.move_on_s is not None]),
                        ", ".join(moved), f"{len(done)}" + (f" ({len(broken)} broken)" if broken else ""))
    console.print(results)
    table = Table(title="thresholds in force (the template's parameters as the stack was started; its options)")
    table.add_column("threshold")
    table.add_column("value", justify="right")
    for name, meaning in THRESHOLDS.items():
        table.add_row(f"{name}: {meaning}", f"{thresholds[name]}")
    for name, value in (
        ("agent heartbeat interval: each beat of a suspect or down GPU brings a probe", f"{args.heartbeat_seconds:g}"),
        ("push timeout, connect / read", f"{PUSH_TIMEOUT.connect:g} / {PUSH_TIMEOUT.read:g}"),
        ("probe timeout, connect / read", f"{PROBE_TIMEOUT.connect:g} / {PROBE_TIMEOUT.read:g}"),
        ("every model run takes at least (--model-seconds)", f"{args.model_seconds:g}"),
    ):
        table.add_row(f"{name} (s)", value)
    console.print(table)
    console.print(f"machine: before {loads[0]}; after {loads[1]}")
    for run in runs:
        if run.error:
            console.print(f"[red]{run.fault} run {run.run}: {run.error}[/red]")


def uptime() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} CPUs"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="runs of each fault (default 3)")
    parser.add_argument("--faults", nargs="+", metavar="NAME", help="only these (default: every fault)")
    parser.add_argument("--model-seconds", type=float, default=5.0,
                        help="every model run takes at least this long, so a fault lands while the job runs")
    parser.add_argument("--slow-seconds", type=float, default=10.0, help="gpu-slow: how much longer each run takes")
    parser.add_argument("--heartbeat-seconds", type=float, default=5.0, help="the agents' heartbeat interval")
    parser.add_argument("--parameter", action="append", default=[], metavar="NAME=VALUE",
                        help="a template parameter for `spillway dev` (e.g. AgentStaleSeconds=15)")
    parser.add_argument("--state-dir", type=Path, help="keep the stack's logs here (default: a temporary folder)")
    parser.add_argument("--json", type=Path, help="write every run's figures here")
    args = parser.parse_args(argv)
    every = [*FAULTS, slow_fault(args.slow_seconds)]
    unknown = set(args.faults or ()) - {f.name for f in every}
    if unknown:
        parser.error(f"no fault {', '.join(sorted(unknown))}; the faults are {', '.join(f.name for f in every)}")
    faults = [f for f in every if not args.faults or f.name in args.faults]
    console = Console(width=160)  # a wide table, also when piped to a file
    state = args.state_dir or Path(tempfile.mkdtemp(prefix="spillway-faults-"))
    state.mkdir(parents=True, exist_ok=True)
    (state / "fleet.toml").write_text(FLEET)
    stack_args = ["--api-port", "0", "--fleet", str(state / "fleet.toml"), "--model-seconds", str(args.model_seconds),
                  "--agent-heartbeat-seconds", str(args.heartbeat_seconds)]
    for pair in args.parameter:
        stack_args += ["--parameter", pair]
    defaults = parameter_defaults()
    thresholds = {name: str(defaults[name]) for name in THRESHOLDS} | dict(p.split("=", 1) for p in args.parameter)
    runs: list[Run] = []
    before = uptime()
    say(f"faults: {', '.join(f.name for f in faults)}; {args.runs} run(s) each; {before}; stack logs in {state}")
    with LaunchedStack(state / "stack", stack_args) as info, info.api_client(TIMEOUT) as api:
        bench = Bench(info, api)
        for number in range(1, args.runs + 1):  # round by round: the machine's load spreads over every fault
            for fault in faults:
                try:
                    run = measure(bench, fault, thresholds, number)
                except Exception as exc:  # noqa: BLE001 - a broken run is a finding, not the end of the bench
                    run = Run(fault.name, number, error=f"{type(exc).__name__}: {exc}")
                    with contextlib.suppress(Exception):  # best effort: the next run waits for health itself
                        fault.mend(bench)
                runs.append(run)
                say(f"  run {number} {fault.name}: {run.line()}")
    report(console, faults, runs, thresholds, args, (before, uptime()))
    if args.state_dir is None and not any(run.error for run in runs):
        shutil.rmtree(state, ignore_errors=True)  # kept when a run broke: its logs say why
    if args.json:
        args.json.write_text(json.dumps([run.__dict__ for run in runs], indent=2, default=str))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
