"""The embedded stack: the whole system on one machine, built from template.yaml.

moto's server (with its Step Functions interpreter) stands for AWS; the template, translated by
aws-sam-translator, is provisioned into it; the local runtime invokes the Lambda handlers as the
template wires them; real agent processes stand for the GPUs of the fleet file, each enrolled through
the API at start (its own secret) and behind a link that can be cut both ways (a tunnel in front of
it, and one it reports to the API through); a stand-in FaaS provider process for the fleet's [faas].
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from werkzeug.serving import make_server

from spillway.catalog import SERVICES
from spillway.client import DEFAULT_TENANT, STACK_FILE, Client
from spillway.models import Enrollment
from spillway_embedded.chaos import ChaosControl, ChaosRefused
from spillway_embedded.faas_provider import FaasProviderProcess, ProviderConfig
from spillway_embedded.fleet_file import DEFAULT_FLEET, FaasSettings, Fleet, GpuSpec, load_fleet
from spillway_embedded.launcher import wait_for_ready_file
from spillway_embedded.model_faults import ModelFault, write_fault
from spillway_embedded.moto_server import MotoServer, reserve_port
from spillway_embedded.provision import ACCOUNT_ID, provision
from spillway_embedded.runtime import Runtime
from spillway_embedded.serving import KeepAliveRequestHandler, collect_less_often
from spillway_embedded.template import TEMPLATE, translate
from spillway_embedded.tenants import Tenants, load_tenants
from spillway_embedded.tunnel import Tunnel
from spillway_ops.page import serve as serve_ops
from spillway_ops.source import OFFLINE_CREDENTIALS, Source

REGION = "us-east-1"
STACK_NAME = "spillway-dev"


@dataclass
class AgentProcess:
    spec: GpuSpec
    process: subprocess.Popen[bytes]
    ready_file: Path
    log_path: Path
    tunnel: Tunnel  # the link in front of it: the URL it is enrolled with
    outbound: Tunnel  # its calls to the API (heartbeats, results), cut to stop its reports
    secret: str = field(repr=False)  # its own, from its enrollment
    model_server: subprocess.Popen[bytes] | None = None  # the stand-in model server it fronts (fleet: model_server)
    model_url: str | None = None  # the model server it fronts; None: the built-in model
    listen_url: str = ""  # known once it serves


@dataclass
class EmbeddedStack:
    state_dir: Path
    api_port: int = 0
    parameters: dict[str, str] = field(default_factory=dict)
    # The GPUs and the FaaS endpoint; wired by the control plane (template parameters) later.
    fleet: Fleet = field(default_factory=lambda: load_fleet(DEFAULT_FLEET))
    # What clients of the FaaS provider present; wired by the control plane (the template's secret) later.
    faas_api_key: str = field(default_factory=lambda: secrets.token_urlsafe(32), repr=False)
    routing_rules: dict[str, Any] = field(default_factory=dict)  # overrides of the routing rules (budget, segments)
    agent_heartbeat_seconds: float = 5.0  # AgentStaleSeconds (30) is six beats
    model_seconds: float = 0.0  # the demo model takes at least this long per task
    emit_metrics: bool = False  # print each invocation's EMF metrics (CloudWatch's input) to the output
    ops_port: int = 0  # the ops page's; 0 picks a free one
    tenants_file: Path | None = None  # who may call the API, with which token (see tenants.py); always `default`
    meter_capacity: bool = False  # moto estimates DynamoDB's request units (the cost model's stacks)

    def __post_init__(self) -> None:
        # The runtime serves Lambda's Invoke API for the state machine's `lambda:invoke` Tasks; moto's
        # interpreter learns where at its start, before the runtime exists.
        self._lambda_socket = reserve_port()  # held until the runtime serves on it: nobody else takes the port
        self._moto = MotoServer(lambda_endpoint=f"http://127.0.0.1:{self._lambda_socket.getsockname()[1]}",
                                meter_capacity=self.meter_capacity)
        self._runtime: Runtime | None = None
        self._chaos: Any = None
        self._ops: Any = None
        self._agents: list[AgentProcess] = []
        self._faas: FaasProviderProcess | None = None
        self.endpoint = ""
        self.physical_ids: dict[str, str] = {}
        self.tenants: Tenants = load_tenants(self.tenants_file, ACCOUNT_ID)
        for spec in self.gpus:
            if set(spec.services) != set(SERVICES):  # refused, not silently ignored
                raise ValueError(f"{spec.gpu_id}: the agent runs every service ({sorted(SERVICES)}); a GPU "
                                 "limited to some needs `spillway agent --services`, which does not exist yet")

    @property
    def gpus(self) -> tuple[GpuSpec, ...]:
        return self.fleet.gpus()

    # ---- lifecycle

    def start(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if self.fleet.faas:  # launched first: it imports the model while moto starts
            self._faas = FaasProviderProcess(self._faas_config(self.fleet.faas), self.state_dir / "faas")
            self._faas.start()
        self.endpoint = self._moto.start()
        if self._faas:
            self._faas.wait_ready(timeout=60)  # its URL is known before the template's parameters are
        for name, value in {
            "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": REGION,
        }.items():
            os.environ.setdefault(name, value)
        if not self.emit_metrics:  # offline, EMF blobs on stdout are noise between the jobs' lines
            os.environ["POWERTOOLS_METRICS_DISABLED"] = "true"
        # The API's port is known before the template's parameters: the FaaS provider's webhooks call it.
        api_socket = None if self.api_port else reserve_port()
        self.api_port = self.api_port or api_socket.getsockname()[1]
        stack = provision(
            # Offline, the webhook receivers (a test's, a developer's) are on this machine.
            translate(TEMPLATE, {"AllowLoopbackWebhooks": "true"} | self._faas_parameters() | self.parameters),
            endpoint_url=self.endpoint, region=REGION,
            stack_name=STACK_NAME,
        )
        self.physical_ids = dict(stack.physical_ids)
        self.client("ssm").put_parameter(Name=self.physical_ids["RoutingRulesParameter"], Overwrite=True,
                                         Value=json.dumps(self._routing_overrides()))
        self._runtime = Runtime(stack, endpoint_url=self.endpoint, region=REGION, tenants=self.tenants,
                                api_port=api_socket or self.api_port, lambda_port=self._lambda_socket)
        self._runtime.start()
        for reserved in (api_socket, self._lambda_socket):  # the runtime's servers hold their own copies now
            if reserved is not None:
                reserved.close()
        switchboard = ChaosControl(self.tunnels, lambda: self.faas_url, self._pool_of, agents=self,
                                   outbound=self.outbound_tunnels)
        self._chaos = make_server("127.0.0.1", 0, switchboard, threaded=True, request_handler=KeepAliveRequestHandler)
        threading.Thread(target=self._chaos.serve_forever, name="chaos", daemon=True).start()
        # The ops page reads the stack as it would a deployed one: through AWS APIs (here moto's), read-only.
        self._ops = serve_ops(Source(self.physical_ids, REGION, self.endpoint, OFFLINE_CREDENTIALS), port=self.ops_port)
        threading.Thread(target=self._ops.serve_forever, name="ops", daemon=True).start()
        # All at once: each takes a moment to import its model libraries.
        for spec in self.gpus:
            tunnel, outbound = self._open_links()
            secret = self._enroll(spec, tunnel.url)
            self._agents.append(self._launch_agent(spec, secret, tunnel, outbound))  # at once: stop() sees them
        for agent in self._agents:
            self._await_agent(agent)
        self._wait_for_fleet(timeout=60)
        self._write_stack_file()

    def stop(self) -> None:
        for agent in self._agents:
            if agent.process.poll() is None:
                agent.process.send_signal(signal.SIGTERM)
        for agent in self._agents:
            try:
                agent.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                agent.process.kill()
            agent.tunnel.stop()
            agent.outbound.stop()
            if agent.model_server is not None and agent.model_server.poll() is None:
                agent.model_server.terminate()
                agent.model_server.wait(timeout=10)
        self._agents.clear()
        if self._faas:
            self._faas.stop()
        for server in (self._chaos, self._ops):
            if server is not None:
                server.shutdown()
        if self._runtime:
            self._runtime.stop()
        self._moto.stop()

    # ---- what the outside sees

    @property
    def api_url(self) -> str:
        assert self._runtime is not None
        return self._runtime.api_url

    def client(self, service: str) -> Any:
        return boto3.client(service, endpoint_url=self.endpoint, region_name=REGION)

    @property
    def chaos_url(self) -> str:
        return f"http://127.0.0.1:{self._chaos.server_port}"

    @property
    def ops_url(self) -> str:
        return f"http://127.0.0.1:{self._ops.server_port}"

    # The FaaS provider (None without [faas]); wired by the control plane (template parameters, secret) later.

    @property
    def faas_url(self) -> str | None:
        """Its base URL; RunPod's API is under /v2/{faas_endpoint_id}/."""
        return self._faas.url if self._faas and self._faas.url else None

    @property
    def faas_endpoint_id(self) -> str | None:
        return self.fleet.faas.endpoint_id if self.fleet.faas else None

    def _faas_parameters(self) -> dict[str, str]:
        """The template's FaaS parameters, for this stack's provider (none: the FaaS pool is off)."""
        if not self.faas_url:
            return {}
        return {"FaasBaseUrl": self.faas_url, "FaasEndpointId": self.faas_endpoint_id or "",
                "FaasApiKey": self.faas_api_key, "PublicApiUrl": f"http://127.0.0.1:{self.api_port}"}

    def _routing_overrides(self) -> dict[str, Any]:
        """The routing rules' FaaS prices and limits are the fleet's (one source: the fleet file), with the
        stack's own overrides (`spillway dev --rules`) on top."""
        overrides = self.fleet.routing_overrides()
        for key, value in self.routing_rules.items():
            overrides[key] = overrides.get(key, {}) | value if isinstance(value, dict) else value
        return overrides

    def _faas_config(self, faas: FaasSettings) -> ProviderConfig:
        return ProviderConfig(
            endpoint_id=faas.endpoint_id, api_key=self.faas_api_key, concurrency=faas.concurrency,
            cold_start_seconds=faas.cold_start_seconds, idle_seconds=faas.idle_seconds,
            price_per_second_usd=faas.price_per_second_usd, execution_timeout_seconds=faas.max_seconds,
        )

    def tunnels(self) -> dict[str, Tunnel]:
        """Each GPU's network path (the office link, the cloud's network), by the GPU behind it."""
        return {a.spec.gpu_id: a.tunnel for a in self._agents}

    def outbound_tunnels(self) -> dict[str, Tunnel]:
        """Each agent's link to the API, by its GPU: cut, it can still be pushed to but cannot report."""
        return {a.spec.gpu_id: a.outbound for a in self._agents}

    def _pool_of(self, gpu_id: str) -> str | None:
        return next((a.spec.pool.value for a in self._agents if a.spec.gpu_id == gpu_id), None)

    # ---- agents

    def agent_signal(self, gpu_ids: list[str], action: str) -> None:
        """Chaos on agent processes: `kill` (SIGKILL), `term` (SIGTERM: drain), `stop` (SIGSTOP: frozen),
        `cont` (SIGCONT), or `restart` (a new process for the same GPU behind the same link, after a kill)."""
        agents = {a.spec.gpu_id: a for a in self._agents}
        if action == "restart":
            for gpu_id in gpu_ids:
                old = agents[gpu_id]
                if old.process.poll() is None:
                    old.process.kill()
                    old.process.wait(timeout=10)
                new = self._launch_agent(old.spec, old.secret, old.tunnel, old.outbound, model_server=old.model_server)
                self._agents[self._agents.index(old)] = new
                self._await_agent(new)
            return
        sig = {"kill": signal.SIGKILL, "term": signal.SIGTERM, "stop": signal.SIGSTOP, "cont": signal.SIGCONT}[action]
        for gpu_id in gpu_ids:
            if agents[gpu_id].process.poll() is None:
                agents[gpu_id].process.send_signal(sig)

    def model_fault(self, gpu_ids: list[str], fault: ModelFault | None) -> None:
        """Make these GPUs fail every model run, or run slow (None: heal them); where their model runs (the agent,
        or the stand-in model server it fronts), the fault file is read per run."""
        external = [a.spec.gpu_id for a in self._agents if a.spec.gpu_id in gpu_ids and a.spec.model_url]
        if external:
            raise ChaosRefused(f"{', '.join(external)}: its agent fronts a model server the stack did not start "
                               "(model_url in the fleet file): its model is not the stack's to upset")
        for gpu_id in gpu_ids:
            write_fault(self._fault_file(gpu_id), fault)

    def _fault_file(self, gpu_id: str) -> Path:
        return self.state_dir / "agents" / f"{gpu_id}.fault.json"

    def agent_states(self) -> dict[str, str]:
        return {a.spec.gpu_id: "running" if a.process.poll() is None else f"exited {a.process.returncode}"
                for a in self._agents}

    def _open_links(self) -> tuple[Tunnel, Tunnel]:
        """A GPU's two links: the control plane reaches it through one that chaos can cut (the office's tunnel,
        or the cloud provider's network; wired to the agent once it serves), and it reports through the other."""
        tunnel = Tunnel(listen=("127.0.0.1", 0), target=None)
        tunnel.start()
        outbound = Tunnel(listen=("127.0.0.1", 0), target=("127.0.0.1", self.api_port))
        outbound.start()
        return tunnel, outbound

    def _enroll(self, spec: GpuSpec, url: str) -> str:
        """Enroll the GPU through the API, as `spillway fleet enroll` does; returns its agent's secret."""
        with Client(self.api_url, self.tenants.tokens[DEFAULT_TENANT]) as api:
            return api.enroll(spec.gpu_id, Enrollment(pool=spec.pool, url=url, vram_mb=spec.vram_mb)).secret

    def agent_secret(self, gpu_id: str) -> str:
        """The GPU's agent's secret (for tests that act as the control plane or as that agent)."""
        return next(a.secret for a in self._agents if a.spec.gpu_id == gpu_id)

    @property
    def storage_url(self) -> str:
        """Where the agents may fetch inputs and store results: the images bucket, path-style at moto."""
        return f"{self.endpoint}/{self.physical_ids['ImagesBucket']}/"

    def _launch_agent(self, spec: GpuSpec, secret: str, tunnel: Tunnel, outbound: Tunnel,
                      model_server: subprocess.Popen[bytes] | None = None) -> AgentProcess:
        """Start the process; it is wired (tunnel target, listen URL) once it says it serves. A GPU whose agent
        fronts the stand-in model server has it started first (and kept when its agent restarts)."""
        folder = self.state_dir / "agents"
        folder.mkdir(parents=True, exist_ok=True)
        model_url = spec.model_url
        if spec.model_server:
            model_server, model_url = self._model_server(spec, model_server)
        ready_file = folder / f"{spec.gpu_id}.json"
        ready_file.unlink(missing_ok=True)
        command = [
            # `spillway agent`, its model wrapped so that chaos can make it fail or slow (see model_faults.py)
            sys.executable, "-m", "spillway_embedded.model_faults", "--fault-file", str(self._fault_file(spec.gpu_id)),
            "--gpu-id", spec.gpu_id, "--listen", "127.0.0.1:0", "--storage-url", self.storage_url,
            "--vram-mb", str(spec.vram_mb), "--compute", str(spec.compute), "--slots", str(spec.slots),
            "--control-url", outbound.url, "--heartbeat-interval", str(self.agent_heartbeat_seconds),
            "--ready-file", str(ready_file), "--min-run-seconds", str(self.model_seconds),
        ]
        if model_url:
            command += ["--model-url", model_url]
        log_path = folder / f"{spec.gpu_id}.log"
        with log_path.open("ab") as log:  # appended: a restarted agent's log follows the killed one's
            process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=os.environ | {"SPILLWAY_AGENT_SECRET": secret}
            )
        return AgentProcess(spec, process, ready_file, log_path, tunnel, outbound, secret, model_server, model_url)

    def _model_server(self, spec: GpuSpec, running: subprocess.Popen[bytes] | None
                      ) -> tuple[subprocess.Popen[bytes], str]:
        """The GPU's stand-in model server (started, or the one still running) and its URL. It runs the demo model
        wrapped like an agent's, so that the GPU's model faults happen in the model server."""
        ready_file = self.state_dir / "agents" / f"{spec.gpu_id}.model-server.json"
        if running is None or running.poll() is not None:
            ready_file.unlink(missing_ok=True)
            with (self.state_dir / "agents" / f"{spec.gpu_id}.model-server.log").open("ab") as log:
                running = subprocess.Popen([
                    sys.executable, "-m", "spillway_embedded.model_faults", "--model-server",
                    "--fault-file", str(self._fault_file(spec.gpu_id)),
                    "--listen", "127.0.0.1:0", "--ready-file", str(ready_file),
                ], stdout=log, stderr=subprocess.STDOUT)
        try:
            return running, wait_for_ready_file(ready_file, running, 60, f"{spec.gpu_id}'s model server")
        except (RuntimeError, TimeoutError) as failed:
            raise RuntimeError(f"{failed}; see {ready_file.with_suffix('.log')}") from None

    def _await_agent(self, agent: AgentProcess, timeout: float = 60) -> None:
        try:
            agent.listen_url = wait_for_ready_file(agent.ready_file, agent.process, timeout, "agent")
        except (RuntimeError, TimeoutError) as failed:
            raise RuntimeError(f"{agent.spec.gpu_id}: {failed}; see {agent.log_path}") from None
        host, port = agent.listen_url.removeprefix("http://").rsplit(":", 1)
        agent.tunnel.target = (host, int(port))

    def _wait_for_fleet(self, timeout: float) -> None:
        """Every agent has reported through the API: the stack is usable end to end."""
        table = boto3.resource("dynamodb", endpoint_url=self.endpoint, region_name=REGION).Table(
            self.physical_ids["FleetTable"]
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            heard_from = table.scan(Select="COUNT", FilterExpression="attribute_exists(last_heartbeat)")["Count"]
            if heard_from >= len(self.gpus):
                return
            time.sleep(0.1)
        raise TimeoutError("not every agent registered with the control plane")

    def _write_stack_file(self) -> None:
        info = {
            "api_url": self.api_url,
            "tenants": self.tenants.tokens,
            "chaos_url": self.chaos_url,
            "ops_url": self.ops_url,
            "lambda_url": self._runtime.lambda_url if self._runtime else None,
            "aws_endpoint": self.endpoint,
            "region": REGION,
            "resources": self.physical_ids,
            "gpus": [
                {"gpu_id": a.spec.gpu_id, "pool": a.spec.pool.value, "vram_mb": a.spec.vram_mb,
                 "compute": a.spec.compute, "slots": a.spec.slots, "services": list(a.spec.services),
                 "listen_url": a.listen_url, "advertised_url": a.tunnel.url,
                 "pid": a.process.pid, "model_url": a.model_url}
                for a in self._agents
            ],
            "fleet_file": str(self.fleet.source) if self.fleet.source else None,
            "faas_url": self.faas_url,
            "faas_endpoint_id": self.faas_endpoint_id,
            "faas": self.fleet.faas.model_dump(mode="json") if self.fleet.faas else None,
        }
        tmp = self.state_dir / (STACK_FILE + ".tmp")
        tmp.write_text(json.dumps(info, indent=2))
        tmp.replace(self.state_dir / STACK_FILE)  # readers never see half a file


def configure_logging() -> None:
    """The runtime's one line per API request; not moto's and werkzeug's per AWS call."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for chatty in ("werkzeug", "botocore", "httpx"):
        logging.getLogger(chatty).setLevel(logging.WARNING)


def serve_forever(stack: EmbeddedStack) -> None:
    """Run until SIGINT/SIGTERM, then stop everything cleanly."""
    configure_logging()
    stopping = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.set())
    try:
        stack.start()
        collect_less_often()  # after the start: the template, the handlers' modules and clients are built
        faas = (f"  FaaS:         {stack.faas_url}/v2/{stack.faas_endpoint_id}  (RunPod's API)\n"
                if stack.faas_url else "  FaaS:         none in this fleet\n")
        print(f"Spillway is up.\n  API:          {stack.api_url}\n  AWS (moto):   {stack.endpoint}\n{faas}"
              f"  chaos:        {stack.chaos_url}  (POST /tunnels/cut, /tunnels/restore, /faas)\n"
              f"  ops page:     {stack.ops_url}  (jobs, their execution graphs, the fleet)\n"
              f"  fleet:        {stack.fleet.source or 'given in code'}\n"
              f"  state folder: {stack.state_dir}\nCtrl-C to stop.", flush=True)
        stopping.wait()
    finally:
        stack.stop()
