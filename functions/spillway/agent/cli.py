"""`spillway agent`: run the agent beside one GPU (and its model server) until SIGTERM, then drain."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from spillway.agent import model
from spillway.agent.inference import RemoteModel
from spillway.agent.server import Agent, AgentConfig, JobFilter
from spillway.catalog import GPU_COMPUTE

ENVIRONMENT = """environment variables:
  SPILLWAY_AGENT_SECRET  required: this GPU's secret, printed once by `spillway fleet enroll GPU_ID` (or
                         `spillway fleet rotate GPU_ID`). The agent presents it with its GPU id on every call to
                         the control plane, and takes only pushes signed with it (Standard Webhooks headers)
  SPILLWAY_STORAGE_URL   the default of --storage-url
  SPILLWAY_MODEL_URL     the default of --model-url
  SPILLWAY_COMPUTE       the default of --compute

The GPU's pool and the URL the control plane reaches it at are its enrollment's, not the agent's to say.

the model server contract (--model-url): KServe's Open Inference Protocol v2, REST, on the same host.
  GET  {model-url}/v2/health/ready            folded into the agent's /readyz
  POST {model-url}/v2/models/{service}/infer  the image in and the PNG result out, each as one binary BYTES
                                              tensor named "image" (the binary-data extension)
  an answer 400/413/415/422 fails the job (BadInput); any other failure is a ModelError (another GPU may do
  it). python -m spillway.agent.model_server is a stand-in that speaks it; see spillway/agent/inference.py.
"""


def listen_address(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, not {value!r}")
    return host or "0.0.0.0", int(port)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="spillway agent", description="Run the agent beside one GPU: it takes the tasks the control plane "
        "pushes, runs them on the GPU's model, stores the results and reports back.",
        epilog=ENVIRONMENT, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu-id", required=True, help="this GPU's name in the fleet, e.g. local-0")
    parser.add_argument("--vram-mb", required=True, type=int, help="the GPU's memory")
    parser.add_argument("--compute", type=int, default=int(os.environ.get("SPILLWAY_COMPUTE") or GPU_COMPUTE),
                        help=f"the GPU's compute, in SM%% of a reference GPU: tasks are packed onto it by their "
                        f"services' shares of it as well as by VRAM (default {GPU_COMPUTE})")
    parser.add_argument("--control-url", required=True, help="the Spillway API, e.g. https://api.example.com")
    parser.add_argument("--listen", type=listen_address, default=("127.0.0.1", 9000),
                        help="HOST:PORT to take tasks on; port 0 picks one (default 127.0.0.1:9000)")
    parser.add_argument("--storage-url", default=os.environ.get("SPILLWAY_STORAGE_URL") or None,
                        help="the images bucket's URL (the stack's ImagesBucketUrl, e.g. "
                        "https://BUCKET.s3.REGION.amazonaws.com/): a task's input and output URLs must be in it")
    parser.add_argument("--model-url", default=os.environ.get("SPILLWAY_MODEL_URL") or None,
                        help="the model server on this host, e.g. http://127.0.0.1:8000 (the contract is below); "
                        "default: the built-in CPU demo model, in this process")
    parser.add_argument("--model-timeout", type=float, default=300.0,
                        help="seconds one inference may take before it fails as a ModelError (default 300)")
    parser.add_argument("--slots", type=int, default=2, help="tasks run at once (default 2)")
    parser.add_argument("--heartbeat-interval", type=float, default=5.0,
                        help="seconds between fleet heartbeats (default 5)")
    parser.add_argument("--drain-timeout", type=float, default=30.0,
                        help="seconds running tasks get on SIGTERM before they are given back (default 30)")
    parser.add_argument("--ready-file", type=Path, help="write {gpu_id, listen_url, pid} here once serving")
    parser.add_argument("--min-run-seconds", type=float, default=0.0,
                        help="the model takes at least this long per task, to stand for a heavier GPU model")
    return parser.parse_args(argv)


def at_least(seconds: float, run: Callable[[str, bytes], bytes]) -> Callable[[str, bytes], bytes]:
    """The model, made to take at least `seconds` (as a real model on a real GPU would)."""
    if seconds <= 0:
        return run

    def run_for_a_while(service: str, image: bytes) -> bytes:
        started = time.monotonic()
        output = run(service, image)
        time.sleep(max(0.0, seconds - (time.monotonic() - started)))
        return output

    return run_for_a_while


def main(argv: list[str]) -> int:
    args = parse(argv)
    secret = os.environ.get("SPILLWAY_AGENT_SECRET", "")
    if not secret:
        print("spillway agent: set SPILLWAY_AGENT_SECRET to this GPU's secret (`spillway fleet enroll GPU_ID`)",
              file=sys.stderr)
        return 2
    if not args.storage_url:
        print("spillway agent: give --storage-url (or SPILLWAY_STORAGE_URL): the images bucket's URL", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {args.gpu_id} %(levelname)s %(job)s%(message)s")
    for handler in logging.root.handlers:
        handler.addFilter(JobFilter())
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request, heartbeats and signed URLs
    run_model, model_not_ready = model.run, lambda: None
    if args.model_url:
        remote = RemoteModel(args.model_url, httpx.Timeout(args.model_timeout, connect=2.0))
        run_model, model_not_ready = remote.run, remote.not_ready
    agent = Agent(AgentConfig(
        gpu_id=args.gpu_id, vram_mb=args.vram_mb, compute=args.compute, control_url=args.control_url,
        secret=secret, storage_url=args.storage_url, listen=args.listen, slots=args.slots,
        heartbeat_interval_s=args.heartbeat_interval, drain_timeout_s=args.drain_timeout, ready_file=args.ready_file,
    ), run_model=at_least(args.min_run_seconds, run_model), model_not_ready=model_not_ready)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    agent.start()
    logging.getLogger("spillway.agent").info("model: %s", args.model_url or "the built-in CPU demo model")
    stop.wait()
    logging.getLogger("spillway.agent").info("draining")
    agent.drain_and_stop()
    return 0
