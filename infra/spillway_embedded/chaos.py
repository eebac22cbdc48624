"""The chaos switchboard of the embedded stack: cut and restore the office tunnel from outside.

`spillway dev` serves it on its own loopback port (its URL is in stack.json), so the demo, the
tests and a person with curl can drop the link in front of the local GPUs while jobs run:

    curl -X POST $CHAOS/tunnels/cut                           # every local GPU
    curl -X POST $CHAOS/tunnels/cut -d '{"gpu_ids": ["local-2"]}'
    curl -X POST $CHAOS/tunnels/restore
    curl $CHAOS/tunnels
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ValidationError
from werkzeug.wrappers import Request, Response

from spillway_embedded.tunnel import Tunnel


class TunnelSelection(BaseModel, extra="forbid"):
    gpu_ids: list[str] | None = None  # None: all of them


class ChaosControl:
    """A WSGI app over the tunnels, by the GPU behind each."""

    def __init__(self, tunnels: Callable[[], dict[str, Tunnel]]):
        self._tunnels = tunnels

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        return self._respond(Request(environ))(environ, start_response)

    def _respond(self, request: Request) -> Response:
        tunnels = self._tunnels()
        if request.path == "/tunnels" and request.method == "GET":
            return _json(200, self._state(tunnels))
        action = {"/tunnels/cut": Tunnel.cut, "/tunnels/restore": Tunnel.restore}.get(request.path)
        if action is None or request.method != "POST":
            return _json(404, {"message": f"no route {request.method} {request.path}"})
        try:
            selection = TunnelSelection.model_validate_json(request.get_data() or b"{}")
        except ValidationError as invalid:
            return _json(422, {"message": str(invalid)})
        chosen = selection.gpu_ids if selection.gpu_ids is not None else list(tunnels)
        unknown = sorted(set(chosen) - set(tunnels))
        if unknown:
            return _json(404, {"message": f"no tunnel in front of {', '.join(unknown)}; there are: {sorted(tunnels)}"})
        for gpu_id in chosen:
            action(tunnels[gpu_id])
        return _json(200, self._state(tunnels))

    @staticmethod
    def _state(tunnels: dict[str, Tunnel]) -> dict[str, Any]:
        return {"tunnels": [{"gpu_id": gpu_id, "url": t.url, "cut": t.is_cut} for gpu_id, t in sorted(tunnels.items())]}


def _json(status: int, body: Any) -> Response:
    return Response(json.dumps(body), status=status, content_type="application/json")
