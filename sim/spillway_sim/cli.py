"""`spillway simulate`: a day (or a week) of the scenario's traffic through each policy, in seconds.

    spillway simulate                                   # the default scenario: table, plots in sim-output/
    spillway simulate --scenario my.toml --days 7 --seed 3
    spillway simulate --sweep cloud_gpus=0,1,2,3,4      # what each answer becomes; plots sweep-cloud_gpus.png
    spillway simulate --sweep budget=0,5,25 --policies spillway
    spillway simulate --sweep outage_rate=0.5,1,2,4     # the office link drops half, twice, 4 times as often
    spillway simulate --set arrivals.jobs_per_day=20000 --set timing.leg_seconds=0.3
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from spillway_sim.engine import simulate
from spillway_sim.plots import write_plots, write_sweep
from spillway_sim.report import figures, print_report
from spillway_sim.scenario import DEFAULT_SCENARIO, ScenarioError, World, load_world
from spillway_sim.workload import draw

# --sweep names for the questions operators ask; any other dotted scenario field works as well.
SWEEPS = {"cloud_gpus": ("cloud_gpus",), "budget": ("rules.faas.daily_budget_usd",),
          "outage_rate": ("outages.gpu_per_day", "outages.office_per_day")}
RATES = {"outage_rate"}  # a multiplier of the scenario's own values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="spillway simulate", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--scenario", type=Path, default=DEFAULT_SCENARIO, help="a scenario file (TOML)")
    parser.add_argument("--seed", type=int, help="the scenario's seed otherwise")
    parser.add_argument("--days", type=float, help="the scenario's days otherwise")
    parser.add_argument("--policies", help="comma-separated, of the scenario's (default: all)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a scenario field (dotted), e.g. arrivals.jobs_per_day=20000")
    parser.add_argument("--sweep", metavar="PARAM=V1,V2,...",
                        help=f"vary one parameter: {', '.join(SWEEPS)} (x the scenario's rates), or a dotted field")
    parser.add_argument("--out", type=Path, default=Path("sim-output"), help="where the PNGs go")
    parser.add_argument("--no-plots", action="store_true")
    args = parser.parse_args(argv)
    console = Console() if sys.stdout.isatty() else Console(width=150)  # a file or a pipe: no wrapped cells
    overrides = dict(_pair(item) for item in args.set)
    overrides |= {k: v for k, v in (("seed", args.seed), ("days", args.days)) if v is not None}
    policies = args.policies.split(",") if args.policies else None
    try:
        if args.sweep:
            return _sweep(args, overrides, policies, console)
        world = _known_policies(load_world(args.scenario, overrides), policies)
    except ScenarioError as bad:
        console.print(f"[red]{bad}[/red]")
        return 2
    started = time.perf_counter()
    workload = draw(world)
    runs = simulate(world, workload, policies)
    elapsed = time.perf_counter() - started
    s = world.scenario
    office = sum(o.office for o in workload.outages)
    print_report([figures(r) for r in runs], console=console, title=(
        f"{args.scenario.name}: {s.days:g} day(s), seed {s.seed}, {len(workload.jobs):,} jobs "
        f"({workload.refused} refused at submit), {len(workload.outages)} link outages ({office} of the whole "
        f"office), {len(workload.crashes)} agent crashes; simulated in {elapsed:.1f} s"))
    if not args.no_plots:
        for path in write_plots(runs, workload, s.seconds, args.out):
            console.print(f"wrote {path}")
    return 0


def _sweep(args: argparse.Namespace, overrides: dict[str, Any], policies: list[str] | None,
           console: Console) -> int:
    param, _, raw = args.sweep.partition("=")
    values = [v for v in raw.split(",") if v]
    if not values:
        raise ScenarioError(f"--sweep {args.sweep}: give PARAM=V1,V2,...")
    base = _known_policies(load_world(args.scenario, overrides), policies).scenario.model_dump(mode="json")
    by_value = []
    for value in values:
        changed = dict(overrides)
        for field in SWEEPS.get(param, (param,)):
            changed[field] = _scaled(base, field, _number(args.sweep, value)) if param in RATES else _value(value)
        world = load_world(args.scenario, changed)
        workload = draw(world)
        runs = simulate(world, workload, policies)
        found = [figures(r) for r in runs]
        print_report(found, console=console, title=f"{param} = {value}: {len(workload.jobs):,} jobs, "
                                                   f"{len(workload.outages)} link outages")
        by_value.append(found)
    if not args.no_plots:
        console.print(f"wrote {write_sweep(param, values, by_value, args.out)}")
    return 0


def _known_policies(world: World, policies: list[str] | None) -> World:
    unknown = set(policies or ()) - set(world.scenario.policies)
    if unknown:
        raise ScenarioError(f"no policy {', '.join(sorted(unknown))}; the scenario's: "
                            f"{', '.join(world.scenario.policies)}")
    return world


def _number(sweep: str, value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise ScenarioError(f"--sweep {sweep}: {value!r} is not a number (a multiple of the scenario's rate)") from None


def _scaled(base: dict[str, Any], dotted: str, factor: float) -> float:
    value: Any = base
    for part in dotted.split("."):
        value = value[part]
    return float(value) * factor


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _pair(item: str) -> tuple[str, Any]:
    field, sep, value = item.partition("=")
    if not sep:
        raise SystemExit(f"--set {item}: give FIELD=VALUE")
    return field, _value(value)


if __name__ == "__main__":
    sys.exit(main())
