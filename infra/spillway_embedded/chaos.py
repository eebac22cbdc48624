"""The chaos switchboard of the embedded stack: cut and restore the office tunnel, upset the FaaS provider.

`spillway dev` serves it on its own loopback port (its URL is in stack.json), so the demo, the
tests and a person with curl can drop the link in front of any GPU while jobs run (every GPU's
network path is a tunnel: the office's link, the cloud provider's network):

    curl -X POST $CHAOS/tunnels/cut -d '{"pool": "local"}'    # the office link: every local GPU
    curl -X POST $CHAOS/tunnels/cut -d '{"gpu_ids": ["local-2"]}'
    curl -X POST $CHAOS/tunnels/cut                           # every GPU, cloud included
    curl -X POST $CHAOS/tunnels/break -d '{"pool": "cloud"}'  # reachable, but every request gets a 502
    curl -X POST $CHAOS/tunnels/restore                       # mends cuts and breaks
    curl -X POST $CHAOS/agents/kill -d '{"gpu_ids": ["local-2"]}'   # or term, stop, cont, restart
    curl $CHAOS/tunnels

and make the stand-in FaaS provider slow, failing or refusing (forwarded to its own /chaos, see
faas_provider.py):

    curl -X POST $CHAOS/faas -d '{"mode": "slow", "slow_seconds": 5}'   # or "fail", "refuse", "normal"
    curl $CHAOS/faas
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Literal, Protocol

import httpx
from pydantic import BaseModel, Field, ValidationError
from werkzeug.wrappers import Request, Response

from spillway_embedded.tunnel import Tunnel


class AgentControl(Protocol):
    def agent_signal(self, gpu_ids: list[str], action: str) -> None: ...
    def agent_states(self) -> dict[str, str]: ...


AGENT_ACTIONS = ("kill", "term", "stop", "cont", "restart")


class AgentSelection(BaseModel, extra="forbid"):
    gpu_ids: list[str] = Field(min_length=1)


class TunnelSelection(BaseModel, extra="forbid"):
    gpu_ids: list[str] | None = None  # these GPUs' links; else every GPU of `pool`; else all of them
    pool: Literal["local", "cloud"] | None = None


FORWARD_TIMEOUT = httpx.Timeout(5.0, connect=2.0)


class ChaosControl:
    """A WSGI app over the tunnels, by the GPU behind each, and the FaaS provider's chaos control."""

    def __init__(self, tunnels: Callable[[], dict[str, Tunnel]], faas_url: Callable[[], str | None] = lambda: None,
                 pool_of: Callable[[str], str | None] = lambda gpu_id: None, agents: AgentControl | None = None):
        self._tunnels = tunnels
        self._pool_of = pool_of
        self._agents = agents
        self._faas_url = faas_url  # late-bound: the provider may come up after the switchboard

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        return self._respond(Request(environ))(environ, start_response)

    def _respond(self, request: Request) -> Response:
        if request.path == "/faas":
            return self._faas(request)
        if request.path.startswith("/agents"):
            return self._agent_chaos(request)
        tunnels = self._tunnels()
        if request.path == "/tunnels" and request.method == "GET":
            return _json(200, self._state(tunnels))
        action = {"/tunnels/cut": Tunnel.cut, "/tunnels/break": Tunnel.break_,
                  "/tunnels/restore": Tunnel.restore}.get(request.path)
        if action is None or request.method != "POST":
            return _json(404, {"message": f"no route {request.method} {request.path}"})
        try:
            selection = TunnelSelection.model_validate_json(request.get_data() or b"{}")
        except ValidationError as invalid:
            return _json(422, {"message": str(invalid)})
        if selection.gpu_ids is not None:
            chosen = selection.gpu_ids
        else:
            chosen = [g for g in tunnels if selection.pool is None or self._pool_of(g) == selection.pool]
        unknown = sorted(set(chosen) - set(tunnels))
        if unknown:
            return _json(404, {"message": f"no tunnel in front of {', '.join(unknown)}; there are: {sorted(tunnels)}"})
        for gpu_id in chosen:
            action(tunnels[gpu_id])
        return _json(200, self._state(tunnels))

    def _agent_chaos(self, request: Request) -> Response:
        if self._agents is None:
            return _json(404, {"message": "no agents here"})
        if request.path == "/agents" and request.method == "GET":
            return _json(200, {"agents": self._agents.agent_states()})
        action = request.path.removeprefix("/agents/")
        if action not in AGENT_ACTIONS or request.method != "POST":
            return _json(404, {"message": f"no route {request.method} {request.path}; POST /agents/"
                                          f"{{{'|'.join(AGENT_ACTIONS)}}}"})
        try:
            selection = AgentSelection.model_validate_json(request.get_data() or b"{}")
        except ValidationError as invalid:
            return _json(422, {"message": str(invalid)})
        unknown = sorted(set(selection.gpu_ids) - set(self._agents.agent_states()))
        if unknown:
            return _json(404, {"message": f"no agent for {', '.join(unknown)}"})
        self._agents.agent_signal(selection.gpu_ids, action)
        return _json(200, {"agents": self._agents.agent_states()})

    def _faas(self, request: Request) -> Response:
        """Forward to the provider's own /chaos; its answer (mode, or why a body was refused) comes back as is."""
        url = self._faas_url()
        if url is None:
            return _json(404, {"message": "this stack's fleet has no FaaS provider"})
        if request.method not in ("GET", "POST"):
            return _json(404, {"message": f"no route {request.method} {request.path}"})
        try:
            answer = httpx.request(request.method, f"{url}/chaos", content=request.get_data(),
                                   headers={"Content-Type": "application/json"}, timeout=FORWARD_TIMEOUT)
        except httpx.HTTPError as exc:
            return _json(502, {"message": f"the FaaS provider at {url} did not answer: {exc!r}"})
        return Response(answer.content, status=answer.status_code, content_type="application/json")

    @staticmethod
    def _state(tunnels: dict[str, Tunnel]) -> dict[str, Any]:
        return {"tunnels": [{"gpu_id": gpu_id, "url": t.url, "cut": t.is_cut, "broken": t.is_broken}
                            for gpu_id, t in sorted(tunnels.items())]}


def _json(status: int, body: Any) -> Response:
    return Response(json.dumps(body), status=status, content_type="application/json")
