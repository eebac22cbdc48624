"""`spillway submit|status|jobs|cancel|wait`: the job API from a shell, through `spillway.client`.

It calls the running `spillway dev` (its stack.json: URL and token), or `--api URL` / SPILLWAY_API_URL (with
SPILLWAY_TOKEN offline; a deployed stack's `execute-api` URL is signed with your AWS credentials).
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path

import httpx

from spillway.client import DEV_STATE, ApiError, Client
from spillway.models import JobList, JobStatus, JobView, Priority, Segment

COMMANDS = ("submit", "status", "jobs", "cancel", "wait")


def main(command: str, argv: list[str]) -> int:
    args = _parser(command).parse_args(argv)
    try:
        with Client.from_env(args.api, args.state_dir) as client:
            return _run(client, command, args)
    except (ApiError, ValueError, TimeoutError, OSError, httpx.HTTPError) as failed:
        print(f"spillway {command}: {failed}", file=sys.stderr)
        return 1


def _run(client: Client, command: str, args: argparse.Namespace) -> int:
    if command == "submit":
        accepted = client.submit(
            args.service, args.image.read_bytes(), content_type=_content_type(args.image), priority=args.priority,
            segment=Segment(region=args.region, customer_tier=args.tier), deadline_at=args.deadline,
            idempotency_key=args.idempotency_key, webhook_url=args.webhook_url)
        if not args.wait:
            print(accepted.model_dump_json() if args.json else accepted.job_id)
            return 0
        return _show(client.wait(accepted.job_id, args.timeout, args.poll), args.json)
    if command == "status":
        _show(client.status(args.job_id), args.json)
        return 0
    if command == "jobs":
        _list(client.jobs(args.status, args.limit, args.cursor), args.json)
        return 0
    if command == "cancel":
        _show(client.cancel(args.job_id, args.reason), args.json)
        return 0
    return _show(client.wait(args.job_id, args.timeout, args.poll), args.json)


def _show(job: JobView, as_json: bool) -> int:
    """Print the job; the exit status says how it stands: 0 succeeded (or still open), 1 failed or cancelled."""
    if as_json:
        print(job.model_dump_json(indent=2))
    else:
        print(describe(job))
    return 1 if job.status in (JobStatus.FAILED, JobStatus.CANCELLED) else 0


def _list(page: JobList, as_json: bool) -> None:
    """A line per job, newest first; then how to ask for the next page, if there is one."""
    if as_json:
        print(page.model_dump_json(indent=2))
        return
    for job in page.jobs:
        print(f"{job.job_id}  {job.status.value:<9}  {job.service:<16}  {job.priority.value:<6}  {job.created_at}"
              + (f"  ({job.error})" if job.error else ""))
    if page.next_cursor:
        print(f"more: --cursor {page.next_cursor}")


def describe(job: JobView) -> str:
    lines = [f"{job.job_id}  {job.status.value}  {job.service}  {job.priority.value}  ${job.cost_usd:.4f}"]
    for a in job.attempts:
        how = a.outcome.value if a.outcome else "open"
        lines.append(f"  attempt {a.number}: {a.pool.value} {a.gpu_id or '-'} {how}"
                     + (f" ({a.reason})" if a.reason and a.outcome and a.outcome.value != "succeeded" else ""))
    if job.error:
        lines.append(f"  why: {job.error}")
    if job.result_url:
        lines.append(f"  result: {job.result_url}")
    return "\n".join(lines)


def _content_type(image: Path) -> str:
    return "image/jpeg" if image.suffix.lower() in (".jpg", ".jpeg") else "image/png"


def _parser(command: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"spillway {command}", description=__doc__.splitlines()[0])
    parser.add_argument("--api", help="the API's base URL (default: SPILLWAY_API_URL, else the running `spillway dev`)")
    parser.add_argument("--state-dir", type=Path, default=DEV_STATE, help="a `spillway dev` state folder")
    parser.add_argument("--json", action="store_true", help="print the API's answer as JSON")
    if command == "submit":
        parser.add_argument("service", help="e.g. remove_furniture, upscale_2x")
        parser.add_argument("image", type=Path, help="a PNG or JPEG photo")
        parser.add_argument("--priority", type=Priority, default=Priority.NORMAL, choices=list(Priority))
        parser.add_argument("--region", default="us", help="the segment's region (two letters)")
        parser.add_argument("--tier", default="standard", choices=["standard", "premium", "enterprise"])
        parser.add_argument("--deadline", type=datetime.fromisoformat, help="answer by then (ISO 8601 with a zone)")
        parser.add_argument("--idempotency-key", help="a retried submit with the same key returns the same job")
        parser.add_argument("--webhook-url", help="told (signed) when the job ends")
        parser.add_argument("--wait", action="store_true", help="wait for the job to end, then show it")
    elif command == "jobs":
        parser.add_argument("--status", type=JobStatus, choices=list(JobStatus), help="only jobs in this status")
        parser.add_argument("--limit", type=int, default=20, help="jobs on the page, 1-100 (default 20)")
        parser.add_argument("--cursor", help="the page after the one that printed it")
    else:
        parser.add_argument("job_id")
    if command == "cancel":
        parser.add_argument("--reason", help="kept on the job")
    if command in ("submit", "wait"):
        parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait at most (default 600)")
        parser.add_argument("--poll", type=float, default=1.0, help="seconds between looks (default 1)")
    return parser
