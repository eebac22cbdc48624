"""`spillway fleet [list|drain|readmit|quarantine|enroll|rotate GPU_ID]`: the operators' fleet routes from a shell.

It calls the API through `spillway.client`: a running `spillway dev`'s (its state folder's stack.json), or any URL
given with `--api` or SPILLWAY_API_URL. A deployed stack's API takes IAM (SigV4) signatures: calls to an
`execute-api` host are signed with the caller's AWS credentials, as the AWS CLI would sign them; the
embedded stack takes its bearer token (stack.json's, or SPILLWAY_TOKEN with `--api`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime
from pathlib import Path

import httpx
from pydantic import BaseModel

from spillway.client import DEV_STATE, ApiError, Client
from spillway.health import OperatorAction
from spillway.models import Enrollment, Pool


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="spillway fleet", description="See the fleet's health; drain, quarantine "
                                     "or readmit a GPU; enroll one, or rotate its agent's secret.")
    parser.add_argument("action", nargs="?", default="list",
                        choices=["list", *(a.value for a in OperatorAction), *CREDENTIAL_ACTIONS])
    parser.add_argument("gpu_id", nargs="?", help="the GPU to act on")
    parser.add_argument("--pool", choices=[Pool.LOCAL.value, Pool.CLOUD.value], help="enroll: the GPU's pool")
    parser.add_argument("--url", help="enroll: where the control plane reaches its agent (https://, e.g. its tunnel's "
                                      "hostname; http:// only on loopback)")
    parser.add_argument("--vram-mb", type=int, help="enroll: the GPU's memory")
    parser.add_argument("--api", help="the API's base URL (default: SPILLWAY_API_URL, else the running "
                                      "`spillway dev`'s)")
    parser.add_argument("--state-dir", type=Path, default=DEV_STATE, help="a `spillway dev` state folder")
    parser.add_argument("--events", type=int, default=0, metavar="N", help="list: each GPU's last N health events")
    parser.add_argument("--json", action="store_true", help="print the API's answer as JSON")
    args = parser.parse_args(argv)
    if (args.action == "list") != (args.gpu_id is None):
        parser.error("list takes no GPU; every other action takes one")
    if args.action == "enroll" and not (args.pool and args.url and args.vram_mb):
        parser.error("enroll needs --pool, --url and --vram-mb")
    try:
        with Client.from_env(args.api, args.state_dir) as client:
            answer = _run(client, args).model_dump(mode="json", by_alias=True)
    except (ApiError, OSError, httpx.HTTPError, ValueError) as failed:
        print(f"spillway fleet: {failed}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(answer, indent=2))
    elif args.action == "list":
        print(table(answer["gpus"], args.events))
    elif args.action in CREDENTIAL_ACTIONS:
        print(secret_notice(answer))
    else:
        print(table([answer], events=3))
    return 0


CREDENTIAL_ACTIONS = ("enroll", "rotate")


def _run(client: Client, args: argparse.Namespace) -> BaseModel:
    if args.action == "list":
        return client.fleet()
    if args.action == "enroll":
        return client.enroll(args.gpu_id, Enrollment(pool=args.pool, url=args.url, vram_mb=args.vram_mb))
    if args.action == "rotate":
        return client.rotate(args.gpu_id)
    return client.act(args.gpu_id, OperatorAction(args.action))


def secret_notice(answer: dict) -> str:
    """The agent's secret, shown this once, and what to do with it."""
    lines = [f"{answer['gpu_id']}: its agent's secret (generation {answer['generation']}), shown only now:", "",
             f"  SPILLWAY_AGENT_SECRET={answer['secret']}", "",
             "Give it to the GPU's `spillway agent` (e.g. in /etc/spillway/agent-N.env, mode 0600) and restart it."]
    if answer.get("previous_valid_until"):
        lines.append(f"The previous secret works until {answer['previous_valid_until']}: restart the agent before.")
    return "\n".join(lines)


def table(gpus: list[dict], events: int = 0) -> str:
    """One line per GPU (and its last `events` health transitions under it)."""
    now = time.time()
    rows = [("GPU", "POOL", "HEALTH", "FOR", "VRAM USED", "COMPUTE USED", "TASKS", "HEARD", "WHY")]
    for g in gpus:
        rows.append((g["gpu_id"], g["pool"], g["health"], _age(now - _epoch(g["since"])),
                     f"{g['vram_used_mb']}/{g['vram_total_mb']} MB", f"{g['compute_used']}/{g['compute_total']}%",
                     f"{len(g['running'])}/{g['slots']}",
                     _age(g["last_heartbeat_age_s"]) + " ago", g["reason"]))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = []
    for index, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1])
        if index and events:
            for event in gpus[index - 1]["events"][-events:]:
                detected = f" (detected in {event['detect_s']:.1f} s)" if event.get("detect_s") is not None else ""
                lines.append(f"    {event['at']}  {event['from']} -> {event['to']}: {event['reason']}{detected}")
    return "\n".join(lines)


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def _age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f}s"
    return f"{seconds / 60:.0f}m" if seconds < 7200 else f"{seconds / 3600:.0f}h"
