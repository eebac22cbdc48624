"""Benchmarks: print numbers, assert nothing (shared machines are noisy).

    python bench/run.py            # end-to-end latency through the embedded stack
    python bench/run.py --jobs 30
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from spillway.rooms import render_room
from spillway_embedded.client import upload
from spillway_embedded.launcher import LaunchedStack, StackInfo

TIMEOUT = httpx.Timeout(10.0, connect=2.0)


def one_job(info: StackInfo, seed: int) -> tuple[float, str]:
    with info.api_client(TIMEOUT) as api:
        start = time.perf_counter()
        key = upload(api, render_room(seed))
        job_id = api.post("/v1/jobs", json={"service": "remove_furniture", "input_key": key}
                          ).raise_for_status().json()["job_id"]
        while True:
            view = api.get(f"/v1/jobs/{job_id}").raise_for_status().json()
            if view["status"] in ("SUCCEEDED", "FAILED"):
                return time.perf_counter() - start, view["status"]
            time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=12)
    parser.add_argument("--concurrency", type=int, default=6)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as state, LaunchedStack(Path(state), ["--api-port", "0"]) as info:
        started = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            results = list(pool.map(lambda seed: one_job(info, seed), range(args.jobs)))
        wall = time.perf_counter() - started
    latencies = sorted(latency for latency, _ in results)
    succeeded = sum(status == "SUCCEEDED" for _, status in results)
    print(f"jobs                 {args.jobs} ({succeeded} succeeded), {args.concurrency} at a time")
    print(f"throughput           {args.jobs / wall:.2f} jobs/s over {wall:.1f} s")
    print(f"latency p50          {statistics.median(latencies):.2f} s  (upload -> result ready)")
    print(f"latency p95          {latencies[max(0, int(len(latencies) * 0.95) - 1)]:.2f} s")
    print(f"latency max          {latencies[-1]:.2f} s")


if __name__ == "__main__":
    main()
