"""A job's execution graph: the state machine's definition drawn as a graph, the path its execution took lit.

The graph comes from the definition (Amazon States Language: Next, Default, Choices, Catch, End); the
path from the execution's history (GetExecutionHistory): each state entered is `succeeded` if it was
left without an unrecovered failure, `failed` if a failure ended it (a caught Task error, a Fail
state), `running` if the execution is still in it. A state visited more than once (the Route loop)
shows its last visit, how many there were, and a red border if an earlier one failed. A Task that sends
to a pool (every attempt is the one RunAttempt state) lists each visit's pool, from its TaskScheduled
parameters, and how it ended: `local ✗ GpuUnreachable`, `local ↷ WaitExpired` (spilled on),
`cloud ✓`. Drawn by Graphviz (`dot`), as SVG or PNG.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from spillway.models import ErrorType


class Lit(StrEnum):
    """How a state is drawn; also its SVG class (`node state failed`), which the ops page styles."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    RUNNING = "running"
    UNVISITED = "unvisited"


STYLE = {  # fill, border
    Lit.SUCCEEDED: ("#c8e6c9", "#2e7d32"),
    Lit.FAILED: ("#ffcdd2", "#c62828"),
    Lit.RUNNING: ("#fff59d", "#f9a825"),
    Lit.UNVISITED: ("#ffffff", "#9e9e9e"),
}
START, END = "(start)", "(end)"


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    label: str = ""
    caught: bool = False  # a Catch: taken on a failure


@dataclass(frozen=True)
class StateGraph:
    start_at: str
    types: dict[str, str]  # state name -> its Type
    edges: list[Edge]

    @classmethod
    def of(cls, definition: dict[str, Any]) -> StateGraph:
        states: dict[str, dict[str, Any]] = definition["States"]
        edges = [Edge(START, definition["StartAt"])]
        for name, state in states.items():
            if state.get("Next"):
                edges.append(Edge(name, state["Next"]))
            for choice in state.get("Choices", []):
                edges.append(Edge(name, choice["Next"], _choice_label(choice)))
            if state.get("Default"):
                edges.append(Edge(name, state["Default"], "otherwise"))
            for catch in state.get("Catch", []):
                edges.append(Edge(name, catch["Next"], _errors_label(catch["ErrorEquals"]), caught=True))
            if state.get("End") or state["Type"] in ("Succeed", "Fail"):
                edges.append(Edge(name, END))
        return cls(definition["StartAt"], {n: s["Type"] for n, s in states.items()}, edges)


@dataclass
class Path:
    """What the execution did: each state's last visit, how often it was entered (and failed), the
    transitions taken, and each visit of a pool's Task: its pool and how it ended."""

    lit: dict[str, Lit] = field(default_factory=dict)
    visits: dict[str, int] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)
    attempts: dict[str, list[str]] = field(default_factory=dict)  # "local ✗ GpuUnreachable", "cloud ✓"
    taken: set[tuple[str, str]] = field(default_factory=set)
    status: str = "RUNNING"  # the execution's


_FAILURE_SUFFIXES = ("Failed", "TimedOut", "Aborted")
_RECOVERY_SUFFIXES = ("Succeeded",)  # a retried Task that succeeded after all


def event_details(event: dict[str, Any]) -> dict[str, Any]:
    """A history event's `...EventDetails` (an event has at most one; {} if none)."""
    return next((v for k, v in event.items() if k.endswith("EventDetails") and isinstance(v, dict)), {})


def path_of(events: Iterable[dict[str, Any]], types: dict[str, str]) -> Path:
    """Read a GetExecutionHistory event list (oldest first); `types` are the states' Types."""
    path, current, failing = Path(), START, False
    pool: str | None = None  # the pool the current visit sent to
    error = ""  # the current visit's last failure

    def leave(failed: bool) -> None:
        if path.lit.get(current) is not Lit.RUNNING:
            return
        lit = Lit.FAILED if failed or types.get(current) == "Fail" else Lit.SUCCEEDED
        path.lit[current] = lit
        if lit is Lit.FAILED:
            path.failures[current] = path.failures.get(current, 0) + 1
        if pool:
            path.attempts.setdefault(current, []).append(_attempt_label(pool, lit, _short(error)))

    for event in events:
        kind = event["type"]
        if kind.endswith("StateEntered"):
            name = event["stateEnteredEventDetails"]["name"]
            leave(failing)  # a state left without an Exited event: a caught failure moved on
            path.taken.add((current, name))
            path.visits[name] = path.visits.get(name, 0) + 1
            path.lit[name], current, failing, pool, error = Lit.RUNNING, name, False, None, ""
        elif kind.endswith("StateExited"):
            leave(failing)
        elif kind == "TaskScheduled":
            pool = _pool_of(event["taskScheduledEventDetails"].get("parameters")) or pool
        elif kind.startswith("Execution") and kind != "ExecutionStarted":
            path.status = kind.removeprefix("Execution").upper()  # SUCCEEDED, FAILED, TIMEDOUT, ABORTED
            leave(failing or path.status != "SUCCEEDED")
            if types.get(current) in ("Succeed", "Fail") or path.status == "SUCCEEDED":  # or an End: true state
                path.taken.add((current, END))
        elif kind.endswith(_FAILURE_SUFFIXES):
            failing = True
            error = event_details(event).get("error", "")
        elif kind.endswith(_RECOVERY_SUFFIXES):
            failing = False
    if pool and path.lit.get(current) is Lit.RUNNING:
        path.attempts.setdefault(current, []).append(f"{pool} …")
    return path


def _attempt_label(pool: str, lit: Lit, error: str) -> str:
    """`cloud ✓`, `local ✗ GpuUnreachable`, or `local ↷ WaitExpired`: it spilled on, never having run."""
    if lit is not Lit.FAILED:
        return f"{pool} ✓"
    spilled = any(kind.spills and kind.value == error for kind in ErrorType)
    return f"{pool} {'↷' if spilled else '✗'} {error}".rstrip()


def _pool_of(parameters: str | None) -> str | None:
    """The pool a Task's parameters send to (a pool queue's message body names it), if any."""
    try:
        body = json.loads(parameters or "{}").get("MessageBody")
        body = json.loads(body) if isinstance(body, str) else body
    except (ValueError, AttributeError):
        return None
    return body.get("pool") if isinstance(body, dict) else None


def dot_source(graph: StateGraph, path: Path | None = None, title: str = "") -> Any:
    """The graph as a graphviz.Digraph, lit by `path` (none: the bare definition)."""
    graphviz = _graphviz()
    path = path or Path()
    dot = graphviz.Digraph("dispatch", graph_attr={
        "rankdir": "TB", "fontname": "Helvetica", "fontsize": "12", "label": title, "labelloc": "t",
        "bgcolor": "transparent", "nodesep": "0.35", "ranksep": "0.4",
    }, node_attr={"fontname": "Helvetica", "fontsize": "11"}, edge_attr={"fontname": "Helvetica", "fontsize": "9"})
    dot.node(START, "", shape="circle", width="0.2", style="filled", fillcolor="#424242", id="state_start")
    dot.node(END, "", shape="doublecircle", width="0.15", style="filled", fillcolor="#424242", id="state_end")
    for name, kind in graph.types.items():
        lit = path.lit.get(name, Lit.UNVISITED)
        fill, border = STYLE[lit]
        visits = path.visits.get(name, 0)
        attempts = path.attempts.get(name)
        label = name + ("\n" + "\n".join(attempts) if attempts else f"\n×{visits}" if visits > 1 else "")
        failed_before = bool(path.failures.get(name)) and lit is not Lit.FAILED  # an earlier visit failed
        choice = kind == "Choice"
        dot.node(name, label, id=f"state_{name}", **{"class": f"state {lit.value}"},
                 shape="diamond" if choice else "box", style="filled" if choice else "rounded,filled",
                 fillcolor=fill, color=STYLE[Lit.FAILED][1] if failed_before else border,
                 penwidth="3" if lit is Lit.RUNNING or failed_before else "1.5")
    for edge in graph.edges:
        taken = (edge.source, edge.target) in path.taken
        dot.edge(edge.source, edge.target, label=edge.label, style="dashed" if edge.caught else "solid",
                 color="#212121" if taken else "#bdbdbd", penwidth="2.2" if taken else "1",
                 fontcolor="#616161", **{"class": "taken" if taken else "untaken"})
    return dot


def render(graph: StateGraph, path: Path | None = None, fmt: str = "svg", title: str = "") -> bytes:
    """SVG or PNG bytes (needs Graphviz's `dot`)."""
    graphviz = _graphviz()
    try:
        return dot_source(graph, path, title).pipe(format=fmt)
    except graphviz.ExecutableNotFound:
        raise MissingGraphviz("Graphviz's `dot` is not installed (Debian: apt-get install -y graphviz)") from None


class MissingGraphviz(RuntimeError):
    """What to install to draw graphs."""


def _graphviz() -> Any:
    try:
        import graphviz
    except ImportError:
        raise MissingGraphviz("the `graphviz` Python package is missing: pip install 'spillway[ops]'") from None
    return graphviz


def _errors_label(errors: list[str]) -> str:
    return ", ".join(_short(e) for e in errors)


def _short(error: str) -> str:
    return error.removeprefix("Spillway.").removeprefix("DynamoDB.").removesuffix("Exception")


def _choice_label(choice: dict[str, Any]) -> str:
    """A Choice rule, shortly: `pool = local`, `action = fail`."""
    for operator in ("StringEquals", "NumericEquals", "BooleanEquals"):
        if operator in choice and "Variable" in choice:
            return f"{choice['Variable'].rsplit('.', 1)[-1]} = {choice[operator]}"
    return ""
