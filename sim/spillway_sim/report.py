"""The figures of a run, per policy, and the tables that show them side by side."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from rich.console import Console
from rich.table import Table

from spillway.models import Pool
from spillway_sim.run import Run, percentile
from spillway_sim.scenario import DAY

POOLS = (Pool.LOCAL, Pool.CLOUD, Pool.FAAS)
QUANTILES = (50, 95, 99)


@dataclass(frozen=True)
class Figures:
    policy: str
    jobs: int
    failed: int
    served: dict[Pool, int]
    latency: dict[str, tuple[float | None, ...]]  # "all" and each priority/segment -> p50, p95, p99 (succeeded)
    usd_per_1000: dict[Pool, float]
    office_utilization: float | None  # share of time an office GPU ran a task, mean over office GPUs
    faas_usd_per_day: float
    faas_budget_usd: float
    failure_reasons: dict[str, int] = field(default_factory=dict)

    @property
    def failed_pct(self) -> float:
        return 100 * self.failed / self.jobs if self.jobs else 0.0


def figures(run: Run) -> Figures:
    results = run.results
    ok = [r for r in results if r.succeeded]
    groups: dict[str, list[float]] = {"all": [r.latency for r in ok]}
    for r in ok:
        groups.setdefault(r.job.label, []).append(r.latency)
    spend = Counter()
    for s in run.spend:
        spend[s.pool] += s.usd
    office = run.office_gpus  # by pool, not by name: a fleet file names its GPUs as it likes
    busy = sum(_union(run.busy[g]) for g in office)
    return Figures(
        policy=run.policy, jobs=len(results), failed=len(results) - len(ok),
        served=Counter(r.pool for r in ok),
        latency={k: tuple(percentile(v, q) for q in QUANTILES) for k, v in sorted(groups.items())},
        usd_per_1000={p: 1000 * spend[p] / len(results) if results else 0.0 for p in POOLS},
        office_utilization=busy / (len(office) * run.seconds) if office else None,
        faas_usd_per_day=spend[Pool.FAAS] / (run.seconds / DAY), faas_budget_usd=run.rules.faas.daily_budget_usd,
        failure_reasons=dict(Counter(_kind(r.reason) for r in results if not r.succeeded).most_common(5)),
    )


def _union(intervals: list[tuple[float, float]]) -> float:
    """Seconds covered by at least one interval (a GPU with 2 slots busy twice at once is busy once)."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def _kind(reason: str | None) -> str:
    """A failure's reason without its GPU and its figures, so that alike reasons count together."""
    general = re.sub(r"\d+(\.\d+)?", "N", re.sub(r"\b(local|cloud)-\d+\b", "<gpu>", reason or "?"))
    return general.split(": #")[0][:80]


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _quantiles_cell(values: tuple[float | None, ...]) -> str:
    """p50 / p95 / p99 in one cell, in seconds."""
    return " / ".join("-" if v is None else f"{v:.0f}" for v in values) + " s"


def summary_table(all_figures: list[Figures], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("")
    for f in all_figures:
        table.add_column(f.policy, justify="right")
    rows: list[tuple[str, list[str]]] = [
        ("jobs", [f"{f.jobs:,}" for f in all_figures]),
        ("failed", [f"{f.failed:,} ({f.failed_pct:.2f}%)" for f in all_figures]),
        *((f"served by {p.value}", [f"{f.served.get(p, 0):,}" for f in all_figures]) for p in POOLS),
        *((f"time to result p{q}", [_duration(f.latency["all"][i]) for f in all_figures])
          for i, q in enumerate(QUANTILES)),
        *((f"$ / 1,000 jobs, {p.value}", [f"${f.usd_per_1000[p]:.3f}" for f in all_figures]) for p in POOLS),
        ("$ / 1,000 jobs, all", [f"${sum(f.usd_per_1000.values()):.3f}" for f in all_figures]),
        ("office GPU utilization", ["-" if f.office_utilization is None else f"{100 * f.office_utilization:.0f}%"
                                    for f in all_figures]),
        ("FaaS $ per day / budget", [f"${f.faas_usd_per_day:.2f} / ${f.faas_budget_usd:,.0f}" for f in all_figures]),
    ]
    for name, cells in rows:
        table.add_row(name, *cells)
    return table


def latency_table(all_figures: list[Figures]) -> Table:
    table = Table(title="time to result of succeeded jobs, p50 / p95 / p99, by priority/segment", title_justify="left")
    table.add_column("")
    for f in all_figures:
        table.add_column(f.policy, justify="right")
    labels = sorted({k for f in all_figures for k in f.latency if k != "all"})
    for label in labels:
        table.add_row(label, *(_quantiles_cell(f.latency.get(label, (None,) * 3)) for f in all_figures))
    return table


def failures_table(all_figures: list[Figures]) -> Table | None:
    rows = [(f.policy, reason, n) for f in all_figures for reason, n in f.failure_reasons.items()]
    if not rows:
        return None
    table = Table(title="why jobs failed (most frequent)", title_justify="left")
    for column in ("policy", "reason", "jobs"):
        table.add_column(column, justify="right" if column == "jobs" else "left")
    for policy, reason, n in rows:
        table.add_row(policy, reason, str(n))
    return table


def print_report(all_figures: list[Figures], title: str, console: Console | None = None) -> None:
    console = console or Console()
    console.print(summary_table(all_figures, title))
    console.print(latency_table(all_figures))
    failures = failures_table(all_figures)
    if failures is not None:
        console.print(failures)
