"""moto's server on loopback, with its Step Functions interpreter on."""

from __future__ import annotations

import os
import socket

import httpx
from moto.server import ThreadedMotoServer


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


class MotoServer:
    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self._host = host
        self._port = port
        self._server: ThreadedMotoServer | None = None

    def start(self) -> str:
        port = self._port or free_port(self._host)
        # moto's interpreter calls its own service integrations (DynamoDB, SQS ...) at
        # http://localhost:$MOTO_PORT: it must be this server's port, set before the first execution.
        os.environ["MOTO_PORT"] = str(port)
        self._server = ThreadedMotoServer(ip_address=self._host, port=port, verbose=False)
        self._server.start()
        endpoint = f"http://{self._host}:{port}"
        httpx.post(f"{endpoint}/moto-api/config", json={"stepfunctions": {"execute_state_machine": True}},
                   timeout=10).raise_for_status()
        self.endpoint = endpoint
        return endpoint

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
