"""What Spillway costs on AWS: $ per 1M jobs by path, and the idle fleet's $ per month.

    python bench/cost.py            # make bench-cost
    python bench/cost.py --jobs 1 --idle-seconds 65

Every figure is counted on fresh embedded stacks (see infra/spillway_embedded/aws_cost.py for what is counted
and how) and priced with infra/spillway_embedded/aws_prices.toml:
- happy path: office GPUs up, an EU job (high priority: its timers fire within seconds), one office attempt;
- fallback path: the office link cut (pushes refused), the first job after the cut: the office fails it, the
  cloud runs it;
- FaaS path: a US priority job while no GPU is healthy (one office GPU, silent) goes to FaaS;
- idle: a default fleet with nothing to do (heartbeats every 5 s, the sweeper every minute), scaled to a month,
  plus what the template's alarms, dashboard and secrets cost a month.
A job stack is kept quiet (agents' heartbeats an hour apart) so that a job's window holds only the job's calls.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from spillway.rooms import render_room
from spillway_embedded import aws_cost
from spillway_embedded.launcher import LaunchedStack
from spillway_embedded.template import TEMPLATE, load

US_PRIORITY_JOB = {"service": "remove_furniture", "priority": "high", "segment": {"region": "us"}}
# One office GPU that beats once and is stale 5 s later, and the default FaaS endpoint: with no healthy GPU,
# a FaaS-eligible job goes to FaaS.
STALE_SECONDS = 5
SILENT_GPU = ["--agent-heartbeat-seconds", "3600", "--parameter", f"AgentStaleSeconds={STALE_SECONDS}",
              "--parameter", "HeartbeatSeconds=5"]
ONE_SILENT_GPU = """
[pools.local]
gpus = [{ id = "local-0", vram_mb = 24000 }]

[faas]
endpoint_id = "spillway-dev"
price_per_second_usd = 0.00076
"""

PathCost = tuple[aws_cost.Usage, list[str]]


def launched(state: str, *args: str) -> LaunchedStack:
    """A stack whose moto meters DynamoDB's request units: every path's cost reads them."""
    return LaunchedStack(Path(state), ["--api-port", "0", "--meter-capacity", *args])


def path_of(view: dict[str, Any]) -> str:
    return " -> ".join(f"{a['pool']}:{a.get('outcome')}" for a in view.get("attempts", []))


def happy_and_fallback(jobs: int) -> dict[str, PathCost]:
    with tempfile.TemporaryDirectory() as state, launched(state, *aws_cost.QUIET_STACK) as info:
        runs = [aws_cost.measure_job(info, aws_cost.EU_JOB, render_room(seed)) for seed in range(jobs)]
        info.cut_tunnels(pool="local")  # refused at once, as a dropped office link
        fallback = aws_cost.measure_job(info, aws_cost.EU_JOB, render_room(jobs))
    return {"happy": average(runs), "fallback": average([fallback])}


def faas_path(jobs: int) -> dict[str, PathCost]:
    with tempfile.TemporaryDirectory() as state:
        fleet = Path(state) / "fleet.toml"
        fleet.write_text(ONE_SILENT_GPU)
        with launched(state, *SILENT_GPU, "--fleet", str(fleet)) as info:
            time.sleep(STALE_SECONDS + 1)  # the GPU's one heartbeat goes stale
            runs = [aws_cost.measure_job(info, US_PRIORITY_JOB, render_room(seed)) for seed in range(jobs)]
    return {"faas": average(runs)}


def idle(seconds: float) -> aws_cost.Usage:
    """A default fleet (heartbeats every 5 s, the sweeper every minute) with nothing to do, scaled to a month."""
    with tempfile.TemporaryDirectory() as state, launched(state) as info:
        before = aws_cost.snapshot(info)
        time.sleep(seconds)  # the measuring window itself, not a wait for a condition
        after = aws_cost.snapshot(info)
    return aws_cost.between(before, after).scaled(aws_cost.MONTH_SECONDS / seconds)


def average(runs: list[tuple[aws_cost.Usage, Any]]) -> PathCost:
    total = aws_cost.Usage()
    for usage, _ in runs:
        total = total + usage
    return total.scaled(1 / len(runs)), [path_of(view) for _, view in runs]


def report(paths: dict[str, PathCost], idle_month: aws_cost.Usage | None,
           idle_seconds: float) -> None:
    prices = aws_cost.load_prices()
    names = list(paths)
    print("Per job (counted on the embedded stack), and $ per 1M jobs at us-east-1 list prices")
    print(f"  {'':24}" + "".join(f"{name:>14}" for name in names))
    counts = {name: usage.service_counts() for name, (usage, _) in paths.items()}
    for figure in next(iter(counts.values())):
        print(f"  {figure:24}" + "".join(f"{counts[name][figure]:14.2f}" for name in names))
    bills = {name: aws_cost.dollars(usage, prices) for name, (usage, _) in paths.items()}
    for service in next(iter(bills.values())):
        print(f"  $/1M {service:19}" + "".join(f"{bills[name][service] * 1e6:14.2f}" for name in names))
    print(f"  {'$/1M jobs':24}" + "".join(f"{sum(bills[name].values()) * 1e6:14.2f}" for name in names))
    for name, (usage, views) in paths.items():
        print(f"  {name}: attempts {'; '.join(views)}")
        print(f"    lambda invocations: {dict(sorted((+usage.invocations).items()))}")
        print(f"    AWS calls: {dict(sorted((+usage.calls).items()))}")
    if idle_month is None:
        return
    fixed = aws_cost.fixed_monthly(load(TEMPLATE), prices)
    running = aws_cost.dollars(idle_month, prices)
    print(f"\nIdle fleet, $ per month (a default fleet with nothing to do for {idle_seconds:.0f} s, scaled to 30 days;"
          " the template's fixed costs)")
    for service, usd in {**running, **fixed}.items():
        print(f"  {service:24}{usd:10.2f}")
    print(f"  {'total':24}{sum(running.values()) + sum(fixed.values()):10.2f}")
    print(f"  idle counts per month: {({k: round(v) for k, v in idle_month.service_counts().items()})}")
    print(f"    lambda invocations: {dict(sorted((k, round(v)) for k, v in (+idle_month.invocations).items()))}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=3, help="jobs per path measured (their average is priced)")
    parser.add_argument("--idle-seconds", type=float, default=130.0, help="the idle window (0: no idle figure)")
    args = parser.parse_args(argv)
    paths = happy_and_fallback(args.jobs) | faas_path(args.jobs)
    report(paths, idle(args.idle_seconds) if args.idle_seconds else None, args.idle_seconds)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
