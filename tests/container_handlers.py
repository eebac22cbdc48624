"""Handlers for the runtime tests that run two invocations of one function at once, in two containers (each
with its own copy of this module): an HTTP function written as Spillway's agent routes are (a middleware
appends the caller to the resolver's context, a route reads it back), and `runtime_handlers`' recorder."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response
from aws_lambda_powertools.event_handler.middlewares import NextMiddleware

import runtime_handlers  # not copied with this module: its gate is the test's

imports = 0  # how often this copy of the module was executed: once per container
imports += 1
app = APIGatewayHttpResolver()


def remember_caller(app: APIGatewayHttpResolver, next_middleware: NextMiddleware) -> Response:
    app.append_context(caller=app.current_event.headers["x-caller"])
    return next_middleware(app)


app.use(middlewares=[remember_caller])


@app.get("/whoami")
def whoami() -> dict[str, Any]:
    if "x-pause" in app.current_event.headers:  # stays under way, mid-route, until the test lets it go
        runtime_handlers.under_way.release()
        runtime_handlers.let_go.wait(10)
    return {"caller": app.context["caller"], "module": id(globals()), "imports": imports}


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return app.resolve(event, context)


def recorder(event: dict[str, Any], context: Any) -> Any:
    """The recorder's, whichever container runs it: what it records, and answers, is the test's."""
    return runtime_handlers.handler(event, context)
