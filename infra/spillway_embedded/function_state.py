"""Each function's own Powertools state, for handlers that share one process.

On Lambda every function has a process of its own, so Powertools keeps its state in globals: the
Logger's keys in the formatter of the one `spillway` logger every `Logger()` shares, the metrics in
class attributes every `Metrics()` shares. The embedded runtime runs all functions in one process,
on threads: without this, a poller's line carries `function_name: AdmitFunction` and another job's
`task_id`, and one function's flush publishes (or empties) another's metrics.

`apply()` makes those attributes per function: read or written inside a function's context (see
`function_context`), each is that function's own copy, taken from the process's value when first
touched; outside any (a test calling a handler directly) it is the process's, as before. The runtime
runs every invocation of a function in its context, one at a time, as a container does.
"""

from __future__ import annotations

import contextvars
import copy
import threading
from typing import Any

from aws_lambda_powertools.logging.formatter import LambdaPowertoolsFormatter
from aws_lambda_powertools.metrics.provider.cloudwatch_emf.cloudwatch import AmazonCloudWatchEMFProvider

# A function's copies, keyed by the id of the process's object they copy (shared objects stay shared).
_COPIES: contextvars.ContextVar[dict[int, Any]] = contextvars.ContextVar("spillway_function_state")


class PerFunction:
    """A data descriptor: the attribute's value is the current function's copy of the instance's own."""

    def __init__(self, name: str):
        self.name = name

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        own = obj.__dict__[self.name]
        copies = _COPIES.get(None)
        if copies is None:
            return own
        if id(own) not in copies:
            copies[id(own)] = copy.copy(own)
        return copies[id(own)]

    def __set__(self, obj: Any, value: Any) -> None:
        copies = _COPIES.get(None)
        if copies is None or self.name not in obj.__dict__:
            obj.__dict__[self.name] = value
        else:
            copies[id(obj.__dict__[self.name])] = value


# The attributes that hold per-invocation state: log keys; metrics, their dimensions and metadata.
SCOPED = {
    LambdaPowertoolsFormatter: ("log_format",),
    AmazonCloudWatchEMFProvider: ("metric_set", "dimension_set", "metadata_set", "dimension_sets"),
}
_lock = threading.Lock()


def apply() -> None:
    """Idempotent; instances made before it (their state in their own __dict__) are covered too."""
    with _lock:
        for cls, names in SCOPED.items():
            for name in names:
                if not isinstance(cls.__dict__.get(name), PerFunction):
                    setattr(cls, name, PerFunction(name))


def function_context() -> contextvars.Context:
    """A context for one function's invocations, in which the scoped state is its own."""
    apply()
    context = contextvars.copy_context()
    context.run(_COPIES.set, {})
    return context
