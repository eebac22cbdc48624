"""Each function's own Powertools state, for handlers that share one process.

On Lambda every function has a process of its own, so Powertools keeps its state in globals: the
Logger's keys in the formatter of the one `spillway` logger every `Logger()` shares, the metrics in
class attributes every `Metrics()` shares. The embedded runtime runs all functions in one process,
on threads: without this, a poller's line carries `function_name: AdmitFunction` and another job's
`task_id`, and one function's flush publishes (or empties) another's metrics.

Powertools' event handler is the same: the request a resolver is resolving (`current_event`,
`lambda_context`) is kept in class attributes of `BaseRouter`, shared by every resolver in the process, so
a route of one function read another function's request (its path, its headers, its caller) whenever
their invocations overlapped. On resolvers it is read from a context variable instead (`PerInvocation`).

`apply()` makes that shared state per function: read or written inside a function's context (see
`function_context`), it is that function's own copy, taken from the process's value when first
touched; outside any (a test calling a handler directly) it is the process's, as before. The runtime
gives each of a function's containers a context of its own, entered by one invocation at a time, as
Lambda runs a container. Only the shared objects are copied (a formatter's keys, Metrics' class-level
sets), never the state of an object of one invocation (a `single_metric`'s provider): the copies stay
few.
"""

from __future__ import annotations

import contextvars
import copy
import threading
from collections.abc import Callable
from typing import Any

from aws_lambda_powertools.event_handler.api_gateway import ApiGatewayResolver, BaseRouter
from aws_lambda_powertools.logging.formatter import LambdaPowertoolsFormatter
from aws_lambda_powertools.metrics import Metrics
from aws_lambda_powertools.metrics.provider.cloudwatch_emf.cloudwatch import AmazonCloudWatchEMFProvider

# A function's copies, keyed by the id of the process's object they copy (shared objects stay shared).
_COPIES: contextvars.ContextVar[dict[int, Any]] = contextvars.ContextVar("spillway_function_state")


class PerFunction:
    """A data descriptor: the attribute's value is the current function's copy of the instance's own,
    if that is one of the `shared` objects (all, without `shared`)."""

    def __init__(self, name: str, shared: Callable[[], tuple[Any, ...]] | None = None):
        self.name = name
        self._shared = shared

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        own = obj.__dict__[self.name]
        copies = _COPIES.get(None)
        if copies is None or (self._shared is not None and not any(own is s for s in self._shared())):
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


class PerInvocation:
    """A data descriptor for a resolver's `current_event` / `lambda_context`: the value the current
    context's resolve set (each function's invocations run in a context of their own), never another
    function's. Outside any resolve, what BaseRouter holds, as before."""

    def __init__(self, name: str):
        self.name = name
        self.var: contextvars.ContextVar[Any] = contextvars.ContextVar(f"powertools_{name}")

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        try:
            return self.var.get()
        except LookupError:
            return getattr(BaseRouter, self.name)

    def __set__(self, obj: Any, value: Any) -> None:
        self.var.set(value)


def _scope_resolvers() -> None:
    """Resolvers read their request per context; `resolve` sets it there as well as on BaseRouter."""
    if isinstance(ApiGatewayResolver.__dict__.get("current_event"), PerInvocation):
        return
    ApiGatewayResolver.current_event = PerInvocation("current_event")  # type: ignore[assignment]
    ApiGatewayResolver.lambda_context = PerInvocation("lambda_context")  # type: ignore[assignment]
    resolve, to_proxy_event = ApiGatewayResolver.resolve, ApiGatewayResolver._to_proxy_event

    def resolve_in_context(self: ApiGatewayResolver, event: Any, context: Any) -> dict[str, Any]:
        self.lambda_context = context
        return resolve(self, event, context)

    def proxy_event_in_context(self: ApiGatewayResolver, event: dict) -> Any:
        self.current_event = proxy = to_proxy_event(self, event)
        return proxy

    ApiGatewayResolver.resolve = resolve_in_context  # type: ignore[method-assign]
    ApiGatewayResolver._to_proxy_event = proxy_event_in_context  # type: ignore[method-assign]


def _metrics_sets() -> tuple[Any, ...]:
    """What every Metrics() shares (class attributes), which its provider holds."""
    return Metrics._metrics, Metrics._dimensions, Metrics._metadata


# The attributes that hold per-invocation state: log keys (one formatter per service: all shared);
# metrics, their dimensions and metadata.
SCOPED: dict[type, dict[str, Callable[[], tuple[Any, ...]] | None]] = {
    LambdaPowertoolsFormatter: {"log_format": None},
    AmazonCloudWatchEMFProvider: dict.fromkeys(("metric_set", "dimension_set", "metadata_set"), _metrics_sets),
}
_lock = threading.Lock()


def apply() -> None:
    """Idempotent; instances made before it (their state in their own __dict__) are covered too."""
    with _lock:
        _scope_resolvers()
        for cls, names in SCOPED.items():
            for name, shared in names.items():
                if not isinstance(cls.__dict__.get(name), PerFunction):
                    setattr(cls, name, PerFunction(name, shared))


def function_context() -> contextvars.Context:
    """A context for one function's invocations, in which the scoped state is its own."""
    apply()
    context = contextvars.copy_context()
    context.run(_COPIES.set, {})
    return context
