"""The chaos switchboard of the embedded stack: cut and restore the office tunnel, upset the FaaS provider.

`spillway dev` serves it on its own loopback port (its URL is in stack.json), so the demo, the
tests and a person with curl can drop the link in front of any GPU while jobs run (every GPU's
network path is a tunnel: the office's link, the cloud provider's network):

    curl -X POST $CHAOS/tunnels/cut -d '{"pool": "local"}'    # the office link: every local GPU
    curl -X POST $CHAOS/tunnels/cut -d '{"gpu_ids": ["local-2"]}'
    curl -X POST $CHAOS/tunnels/cut                           # every GPU, cloud included
    curl -X POST "$CHAOS/tunnels/cut?mode=silent" -d '{"gpu_ids": ["local-2"]}'  # packets vanish: calls hang
    curl -X POST "$CHAOS/tunnels/cut?direction=out" -d '{"gpu_ids": ["local-2"]}'  # it cannot report
    curl -X POST $CHAOS/tunnels/break -d '{"pool": "cloud"}'  # reachable, but every request gets a 502
    curl -X POST $CHAOS/tunnels/restore                       # mends cuts and breaks, both ways

A cut is refused (`mode=refuse`, the default: every call, even one in flight, fails at once) or
silent (`mode=silent`: calls hang until their caller's timeout). Each GPU's link has two directions:
`in` (the default for cut and break), what the control plane sends the agent (pushes, probes); and
`out`, what the agent sends the API — its heartbeats and its tasks' heartbeats and results, all of
them, as an office that cannot call out cannot report a result either (its presigned S3 transfers
go on: the fault is "cannot report", not "cannot work"). `both` cuts the two; restore mends both
unless told one.
    curl -X POST $CHAOS/agents/kill -d '{"gpu_ids": ["local-2"]}'   # or term, stop, cont, restart
    curl -X POST $CHAOS/agents/fail-model -d '{"gpu_ids": ["local-2"]}'   # every model run fails (ModelError)
    curl -X POST $CHAOS/agents/slow -d '{"gpu_ids": ["local-2"], "seconds": 5}'   # every run 5 s longer
    curl -X POST $CHAOS/agents/heal -d '{"gpu_ids": ["local-2"]}'   # the model is well again
    curl $CHAOS/tunnels

and make the stand-in FaaS provider slow, failing or refusing (forwarded to its own /chaos, see
faas_provider.py):

    curl -X POST $CHAOS/faas -d '{"mode": "slow", "slow_seconds": 5}'   # or "fail", "refuse", "normal"
    curl $CHAOS/faas
"""

from __future__ import annotations

import json
from collections.abc import Callable
from enum import StrEnum
from typing import Any, Literal, Protocol

import httpx
from pydantic import BaseModel, Field, ValidationError
from werkzeug.wrappers import Request, Response

from spillway_embedded.model_faults import ModelFault
from spillway_embedded.tunnel import CutMode, Tunnel


class ChaosRefused(Exception):
    """A fault the stack cannot inject (e.g. into a model server it did not start), with the reason: a 409."""


class AgentControl(Protocol):
    def agent_signal(self, gpu_ids: list[str], action: str) -> None: ...
    def agent_states(self) -> dict[str, str]: ...
    def model_fault(self, gpu_ids: list[str], fault: ModelFault | None) -> None: ...


AGENT_SIGNALS = ("kill", "term", "stop", "cont", "restart")
MODEL_FAULTS = ("fail-model", "slow", "heal")
AGENT_ACTIONS = AGENT_SIGNALS + MODEL_FAULTS


class AgentSelection(BaseModel, extra="forbid"):
    gpu_ids: list[str] = Field(min_length=1)
    seconds: float = Field(default=0.0, ge=0, le=600, description="slow: how much longer each model run takes")


class TunnelSelection(BaseModel, extra="forbid"):
    gpu_ids: list[str] | None = None  # these GPUs' links; else every GPU of `pool`; else all of them
    pool: Literal["local", "cloud"] | None = None


class Direction(StrEnum):
    """Which way of a GPU's link a switch acts on."""

    IN = "in"  # control plane -> agent: pushes, probes
    OUT = "out"  # agent -> API: heartbeats, task heartbeats, results
    BOTH = "both"


class Switch(BaseModel, extra="forbid"):
    """A tunnel switch's query: `?mode=silent&direction=out`."""

    action: Literal["cut", "break", "restore"]
    mode: CutMode = CutMode.REFUSE  # of a cut
    direction: Direction | None = None  # None: `in` for a cut or a break, `both` for a restore

    @property
    def inbound(self) -> bool:
        return (self.direction or self._default) in (Direction.IN, Direction.BOTH)

    @property
    def outbound(self) -> bool:
        return (self.direction or self._default) in (Direction.OUT, Direction.BOTH)

    @property
    def _default(self) -> Direction:
        return Direction.BOTH if self.action == "restore" else Direction.IN

    def apply(self, link: Tunnel) -> None:
        if self.action == "cut":
            link.cut(self.mode)
        elif self.action == "break":
            link.break_()
        else:
            link.restore()


FORWARD_TIMEOUT = httpx.Timeout(5.0, connect=2.0)


class ChaosControl:
    """A WSGI app over the tunnels, by the GPU behind each, and the FaaS provider's chaos control."""

    def __init__(self, tunnels: Callable[[], dict[str, Tunnel]], faas_url: Callable[[], str | None] = lambda: None,
                 pool_of: Callable[[str], str | None] = lambda gpu_id: None, agents: AgentControl | None = None,
                 outbound: Callable[[], dict[str, Tunnel]] = dict):
        self._tunnels = tunnels
        self._outbound = outbound  # each agent's own link to the API, by its GPU
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
        tunnels, outbound = self._tunnels(), self._outbound()
        if request.path == "/tunnels" and request.method == "GET":
            return _json(200, self._state(tunnels, outbound))
        if request.path not in ("/tunnels/cut", "/tunnels/break", "/tunnels/restore") or request.method != "POST":
            return _json(404, {"message": f"no route {request.method} {request.path}"})
        try:
            selection = TunnelSelection.model_validate_json(request.get_data() or b"{}")
            switch = Switch.model_validate({**request.args, "action": request.path.removeprefix("/tunnels/")})
        except ValidationError as invalid:
            return _json(422, {"message": str(invalid)})
        if selection.gpu_ids is not None:
            chosen = selection.gpu_ids
        else:
            chosen = [g for g in tunnels if selection.pool is None or self._pool_of(g) == selection.pool]
        unknown = sorted(set(chosen) - set(tunnels))
        if unknown:
            return _json(404, {"message": f"no tunnel in front of {', '.join(unknown)}; there are: {sorted(tunnels)}"})
        without_outbound = sorted(set(chosen) - set(outbound))
        if switch.direction in (Direction.OUT, Direction.BOTH) and without_outbound:
            return _json(404, {"message": f"no outbound link behind {', '.join(without_outbound)}"})
        links = [tunnels[g] for g in chosen] if switch.inbound else []
        links += [outbound[g] for g in chosen if g in outbound] if switch.outbound else []
        for link in links:
            switch.apply(link)
        return _json(200, self._state(tunnels, outbound))

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
        if action in MODEL_FAULTS:
            fault = {"mode": action, "seconds": selection.seconds}
            try:
                self._agents.model_fault(selection.gpu_ids,
                                         None if action == "heal" else ModelFault.model_validate(fault))
            except ChaosRefused as refused:
                return _json(409, {"message": str(refused)})
        else:
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
    def _state(tunnels: dict[str, Tunnel], outbound: dict[str, Tunnel]) -> dict[str, Any]:
        return {"tunnels": [{"gpu_id": gpu_id, **_link(t), "outbound": _link(outbound[gpu_id]) if gpu_id in outbound
                             else None} for gpu_id, t in sorted(tunnels.items())]}


def _link(tunnel: Tunnel) -> dict[str, Any]:
    return {"url": tunnel.url, "cut": tunnel.is_cut, "cut_mode": tunnel.cut_mode, "broken": tunnel.is_broken}


def _json(status: int, body: Any) -> Response:
    return Response(json.dumps(body), status=status, content_type="application/json")
