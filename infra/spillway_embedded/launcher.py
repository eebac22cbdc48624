"""Start `spillway dev` as a child process and learn where it serves, as a user's client would.

The demo and the end-to-end tests use this: they talk to the embedded stack over real HTTP and
boto3 against its moto endpoint, never through its internals.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from spillway.client import DEFAULT_TENANT, STACK_FILE


def wait_for_ready_file(path: Path, process: subprocess.Popen[bytes], timeout: float, what: str = "process") -> str:
    """The `listen_url` a child process writes (atomically) once it serves; fails early if it exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            try:
                return json.loads(path.read_text())["listen_url"]
            except (ValueError, KeyError):
                pass  # being written
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode} before it served")
        time.sleep(0.05)
    raise TimeoutError(f"{what} did not serve within {timeout}s")


@dataclass(frozen=True)
class StackInfo:
    """What `spillway dev` writes to its state folder once everything is up."""

    api_url: str
    chaos_url: str  # cut and restore the office tunnel (see chaos.py)
    aws_endpoint: str
    region: str
    resources: dict[str, str]  # logical id -> physical id (queue URL, table name, bucket, ARN ...)
    gpus: list[dict[str, Any]]
    fleet_file: str | None = None  # the fleet the stack runs (see fleet_file.py)
    faas_url: str | None = None  # the stand-in FaaS provider's base URL (RunPod's API under /v2); None: no FaaS
    faas_endpoint_id: str | None = None
    faas: dict[str, Any] | None = None  # the fleet's [faas] settings (concurrency, price, ...)
    ops_url: str | None = None  # the ops page (spillway_ops.page)
    lambda_url: str | None = None  # the runtime's Lambda API; GET /_spillway/usage: what it served (aws_cost.py)
    tenants: dict[str, str] = field(default_factory=dict)  # every tenant's token, by name (see tenants.py)

    @property
    def token(self) -> str:
        """The `default` tenant's bearer token: what api_client() sends unless told another tenant."""
        return self.tenants[DEFAULT_TENANT]

    def api_client(self, timeout: Any, tenant: str | None = None) -> Any:
        """An httpx client of the job API that calls as `tenant` (default: the `default` tenant)."""
        import httpx

        return httpx.Client(base_url=self.api_url, timeout=timeout, headers=self.auth_headers(tenant))

    def auth_headers(self, tenant: str | None = None) -> dict[str, str]:
        """What a request to the job API carries to call as `tenant` (default: the `default` tenant)."""
        return {"Authorization": f"Bearer {self.tenants[tenant or DEFAULT_TENANT]}"}

    @classmethod
    def read(cls, path: Path) -> StackInfo:
        return cls(**json.loads(path.read_text()))

    def cut_tunnels(self, *gpu_ids: str, pool: str | None = None, mode: str = "refuse", direction: str = "in") -> None:
        """Drop the link in front of these GPUs; none named: every GPU of `pool` (of every pool if None).
        `mode`: "refuse" (calls fail at once) or "silent" (they hang to their timeout); `direction`: "in"
        (pushes), "out" (the agents' reports) or "both"."""
        self._chaos("cut", gpu_ids, pool, {"mode": mode, "direction": direction})

    def agents(self, action: str, *gpu_ids: str, seconds: float = 0.0) -> dict[str, str]:
        """Chaos on agent processes: kill (SIGKILL), term (SIGTERM), stop (SIGSTOP), cont, restart; on their
        models: fail-model (every run fails), slow (every run `seconds` longer), heal."""
        import httpx

        return httpx.post(f"{self.chaos_url}/agents/{action}", json={"gpu_ids": list(gpu_ids), "seconds": seconds},
                          timeout=90).raise_for_status().json()["agents"]

    def break_tunnels(self, *gpu_ids: str, pool: str | None = None) -> None:
        """Make these GPUs answer every request with a 502 (reachable, but failing every task)."""
        self._chaos("break", gpu_ids, pool)

    def restore_tunnels(self, *gpu_ids: str, pool: str | None = None) -> None:
        self._chaos("restore", gpu_ids, pool)

    def faas_chaos(self, mode: str, slow_seconds: float = 0.0) -> dict[str, Any]:
        """Make the FaaS provider "normal", "slow" (each run takes slow_seconds longer), "fail" or "refuse"."""
        import httpx

        body = {"mode": mode, "slow_seconds": slow_seconds}
        return httpx.post(f"{self.chaos_url}/faas", json=body, timeout=5).raise_for_status().json()

    def _chaos(self, action: str, gpu_ids: tuple[str, ...], pool: str | None, query: dict[str, str] | None = None
               ) -> None:
        import httpx

        body = {"gpu_ids": list(gpu_ids)} if gpu_ids else ({"pool": pool} if pool else {})
        httpx.post(f"{self.chaos_url}/tunnels/{action}", json=body, params=query, timeout=5).raise_for_status()

    def boto3_client(self, service: str) -> Any:
        import boto3

        return boto3.client(
            service, endpoint_url=self.aws_endpoint, region_name=self.region,
            aws_access_key_id="testing", aws_secret_access_key="testing",
        )


class LaunchedStack:
    def __init__(self, state_dir: Path, extra_args: list[str] | None = None, startup_timeout: float = 120.0):
        self.state_dir = state_dir
        self.log_path = state_dir / "dev.log"
        self._args = extra_args or []
        self._startup_timeout = startup_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self.info: StackInfo | None = None

    def __enter__(self) -> StackInfo:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        stack_file = self.state_dir / STACK_FILE
        stack_file.unlink(missing_ok=True)
        # Its own process group, which its children (moto, the agents, their model servers, the FaaS provider)
        # stay in even if it is killed: `__exit__` ends the group, whatever became of `spillway dev` itself.
        with self.log_path.open("wb") as log:  # the child has its own copy
            self._process = subprocess.Popen(
                [sys.executable, "-m", "spillway.cli", "dev", "--state-dir", str(self.state_dir), *self._args],
                stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy(), start_new_session=True,
            )
        try:
            self._wait_until_up(self._process, stack_file)
        except BaseException:  # it did not come up, or we were interrupted: leave nothing of it running
            self.__exit__(None, None, None)
            raise
        self.info = StackInfo.read(stack_file)
        return self.info

    def _wait_until_up(self, process: subprocess.Popen[bytes], stack_file: Path) -> None:
        deadline = time.monotonic() + self._startup_timeout
        while not stack_file.exists():
            if process.poll() is not None:
                raise RuntimeError(f"spillway dev exited with {process.returncode}; see {self.log_path}:\n"
                                   + self.log_tail())
            if time.monotonic() > deadline:
                raise TimeoutError(f"spillway dev did not come up in {self._startup_timeout:.0f}s; see {self.log_path}")
            time.sleep(0.1)

    @property
    def pid(self) -> int | None:
        """The `spillway dev` process (its children: moto's server, the agents, the FaaS provider)."""
        return self._process.pid if self._process else None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Stop `spillway dev` (SIGTERM: it stops its children in order), then kill whatever of its process group
        is left: everything it started, if it was killed (SIGKILL) or hung."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):  # none left: it stopped them all
            os.killpg(process.pid, signal.SIGKILL)
