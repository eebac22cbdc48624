"""PNG plots of a run (matplotlib, no display needed): time to result, failures over time with the
outages shaded, spend over time; Spillway against the old design; a sweep's answer."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on a server or in CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402

from spillway.models import Pool  # noqa: E402
from spillway_sim.report import Figures  # noqa: E402
from spillway_sim.run import Run  # noqa: E402
from spillway_sim.workload import Outage, Workload  # noqa: E402

HOUR = 3600.0


def _cdf(ax: Axes, runs: list[Run]) -> None:
    for run in runs:
        done = np.sort([r.latency for r in run.results if r.succeeded])
        n = len(run.results)
        failed = n - len(done)
        ax.step(done, np.arange(1, len(done) + 1) / n, where="post",
                label=f"{run.policy} ({100 * failed / n:.2f}% failed)" if n else run.policy)
    ax.set_xscale("log")
    ax.set_xlabel("time to result (s, log scale)")
    ax.set_ylabel("share of jobs answered with a result")
    ax.set_ylim(0, 1.01)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)


def _shade(ax: Axes, outages: list[Outage]) -> None:
    office = gpu = False
    for o in outages:
        kind = "whole office link down" if o.office else "one office GPU's link down"
        first = not (office if o.office else gpu)
        ax.axvspan(o.start / HOUR, o.end / HOUR, color="tab:red" if o.office else "tab:orange",
                   alpha=0.25 if o.office else 0.12, lw=0, label=kind if first else None)
        office, gpu = office or o.office, gpu or not o.office


def _failures(ax: Axes, runs: list[Run], workload: Workload, seconds: float) -> None:
    bins = np.arange(0, seconds / HOUR + 1)
    for run in runs:
        failed = [r.job.at / HOUR for r in run.results if not r.succeeded]
        counts, _ = np.histogram(failed, bins=bins)
        ax.step(bins[:-1], counts, where="post", label=f"{run.policy}: {len(failed)} failed")
    _shade(ax, workload.outages)
    for i, crash in enumerate(workload.crashes):
        ax.axvline(crash.at / HOUR, color="tab:purple", ls=":", lw=1, label="an agent crashed" if i == 0 else None)
    ax.set_xlabel("hour of arrival")
    ax.set_ylabel("failed jobs per hour")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)


def _spend(ax: Axes, runs: list[Run], seconds: float) -> None:
    for run in runs:
        ordered = sorted(run.spend, key=lambda s: s.at)
        t = [0.0] + [s.at / HOUR for s in ordered]
        total = np.concatenate([[0.0], np.cumsum([s.usd for s in ordered])])
        faas = np.concatenate([[0.0], np.cumsum([s.usd if s.pool is Pool.FAAS else 0.0 for s in ordered])])
        line, = ax.step(t, total, where="post", label=f"{run.policy}: ${total[-1]:.2f} (cloud + FaaS)")
        if faas[-1] > 0:
            ax.step(t, faas, where="post", ls=":", color=line.get_color(), label=f"{run.policy}: FaaS ${faas[-1]:.2f}")
    budgets = {run.rules.faas.daily_budget_usd for run in runs if run.rules.faas.daily_budget_usd < 10_000}
    for budget in budgets:
        ax.axhline(budget, color="grey", ls="--", lw=1, label=f"FaaS daily budget ${budget:g}")
    ax.set_xlim(0, seconds / HOUR)
    ax.set_xlabel("hour")
    ax.set_ylabel("spend so far (USD)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", fontsize=7)


def write_plots(runs: list[Run], workload: Workload, seconds: float, out: Path) -> list[Path]:
    """time-to-result.png, failures.png, spend.png; and spillway-vs-old.png when both policies ran."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, draw in (("time-to-result", lambda ax: _cdf(ax, runs)),
                       ("failures", lambda ax: _failures(ax, runs, workload, seconds)),
                       ("spend", lambda ax: _spend(ax, runs, seconds))):
        fig, ax = plt.subplots(figsize=(9, 5), layout="constrained")
        draw(ax)
        ax.set_title({"time-to-result": "Time to result per policy (a curve ends below 1 by its failed share)",
                      "failures": "Failed jobs by hour of arrival, link outages shaded",
                      "spend": "Spend over time (cloud GPU time and FaaS; office GPUs are paid for)"}[name])
        written.append(_save(fig, out / f"{name}.png"))
    pair = [r for r in runs if r.policy in ("spillway", "old-design")]
    if len(pair) == 2:
        fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5), layout="constrained")
        _cdf(left, pair)
        left.set_title("Time to result")
        _failures(right, pair, workload, seconds)
        right.set_title("Failed jobs by hour of arrival, link outages shaded")
        fig.suptitle("Spillway vs the old design (a queue per GPU): one simulated day of the default scenario")
        written.append(_save(fig, out / "spillway-vs-old.png"))
    return written


def write_sweep(param: str, values: list[str], by_value: list[list[Figures]], out: Path) -> Path:
    """One panel per answer: failed %, p95 time to result of each priority/segment, $ per 1,000 jobs."""
    out.mkdir(parents=True, exist_ok=True)
    policies = [f.policy for f in by_value[0]]
    labels = sorted({k for figs in by_value for f in figs for k in f.latency if k != "all"})
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5), layout="constrained")
    x = np.arange(len(values))
    for i, policy in enumerate(policies):
        row = [figs[i] for figs in by_value]
        axes[0].plot(x, [f.failed_pct for f in row], marker="o", label=policy)
        axes[2].plot(x, [sum(f.usd_per_1000.values()) for f in row], marker="o", label=policy)
        for j, label in enumerate(labels):  # a colour per priority/segment, a line style per policy
            p95 = [f.latency.get(label, (None, None, None))[1] for f in row]
            axes[1].plot(x, [np.nan if v is None else v for v in p95], marker="o", color=f"C{j}",
                         ls=("-", "--", ":", "-.")[i % 4], label=f"{policy} {label}" if len(policies) > 1 else label)
    for ax, what in zip(axes, ("failed jobs (%)", "p95 time to result (s)", "$ per 1,000 jobs (cloud + FaaS)"),
                        strict=True):
        ax.set_xticks(x, values)
        ax.set_xlabel(param)
        ax.set_ylabel(what)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    axes[1].set_yscale("log")
    fig.suptitle(f"What if: {param} = {', '.join(values)}")
    return _save(fig, out / f"sweep-{param}.png")


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
