"""`spillway dev` and `spillway demo`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from spillway.client import DEV_STATE


def _parameters(pairs: list[str]) -> dict[str, str]:
    parameters = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--parameter takes NAME=VALUE, not {pair!r}")
        parameters[name] = value
    return parameters


def _rules(path: Path | None) -> dict:
    """Routing-rule overrides from a TOML or JSON file, checked against the rules before the stack starts."""
    import json
    import tomllib

    from spillway.routing import rules

    if path is None:
        return {}
    try:
        text = path.read_text()
        overrides = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
        rules.load(overrides)
    except (OSError, ValueError) as unusable:
        raise ValueError(f"{path}: {unusable}") from None
    return overrides


def dev(argv: list[str]) -> int:
    from spillway_embedded.fleet_file import DEFAULT_FLEET, load_fleet
    from spillway_embedded.stack import EmbeddedStack, serve_forever

    parser = argparse.ArgumentParser(prog="spillway dev", description="Run the whole system on this machine.")
    parser.add_argument("--state-dir", type=Path, default=DEV_STATE, help="logs and stack.json go here")
    parser.add_argument("--api-port", type=int, default=8080, help="0 picks a free port")
    parser.add_argument("--fleet", type=Path, default=DEFAULT_FLEET, metavar="FILE",
                        help="the GPUs and the FaaS endpoint, as TOML (default: the office, the cloud and FaaS)")
    parser.add_argument("--rules", type=Path, metavar="FILE",
                        help="overrides of the routing rules (functions/spillway/routing/rules.toml), as TOML or JSON: "
                             "FaaS segments, the budget, pool order ...")
    parser.add_argument("--tenants", type=Path, metavar="FILE",
                        help="who may call the API with which bearer token: TOML (see spillway_embedded/tenants.py); "
                             "a `default` tenant is always there, its token in stack.json")
    parser.add_argument("--parameter", action="append", default=[], metavar="NAME=VALUE",
                        help="a template parameter override, e.g. HeartbeatSeconds=10")
    parser.add_argument("--model-seconds", type=float, default=0.0,
                        help="each task takes at least this long on its GPU (the demo model is fast)")
    parser.add_argument("--agent-heartbeat-seconds", type=float, default=5.0,
                        help="seconds between the agents' fleet heartbeats (the cost bench quiets them)")
    parser.add_argument("--meter-capacity", action="store_true",
                        help="estimate the DynamoDB request units of every call (the cost model reads them; costs CPU)")
    parser.add_argument("--ops-port", type=int, help="the ops page's port (default 8090; 0 with --api-port 0)")
    parser.add_argument("--metrics", action="store_true",
                        help="print each invocation's metrics (EMF, what CloudWatch would ingest)")
    args = parser.parse_args(argv)
    try:  # a bad fleet or bad rules are named by file and field before anything starts
        stack = EmbeddedStack(state_dir=args.state_dir, api_port=args.api_port, fleet=load_fleet(args.fleet),
                              routing_rules=_rules(args.rules), parameters=_parameters(args.parameter),
                              model_seconds=args.model_seconds, emit_metrics=args.metrics,
                              agent_heartbeat_seconds=args.agent_heartbeat_seconds, tenants_file=args.tenants,
                              meter_capacity=args.meter_capacity,
                              ops_port=args.ops_port if args.ops_port is not None else (8090 if args.api_port else 0))
    except ValueError as unusable:
        raise SystemExit(f"spillway dev: {unusable}") from None
    serve_forever(stack)
    return 0


def demo(argv: list[str]) -> int:
    from spillway_embedded import demo as demo_client
    from spillway_embedded.launcher import LaunchedStack

    parser = argparse.ArgumentParser(prog="spillway demo", description="Push room photos through the whole system.")
    parser.add_argument("--out", type=Path, default=Path("demo-output"))
    parser.add_argument("--state-dir", type=Path, default=Path(".spillway/demo"))
    parser.add_argument("--steady", action="store_true", help="keep every link up throughout")
    args = parser.parse_args(argv)

    print("Starting the embedded stack: moto + the resources of template.yaml + 5 office and 2 cloud GPU agents "
          "+ a FaaS provider ...", flush=True)
    stack = LaunchedStack(args.state_dir, ["--api-port", "0"])
    try:
        with stack as info:
            print(f"Up. API at {info.api_url}  (logs: {stack.log_path})", flush=True)
            ok = demo_client.run(info, args.out, say=lambda line: print(line, flush=True), steady=args.steady)
    except Exception as exc:
        print(f"demo failed: {exc}\n--- last lines of {stack.log_path} ---\n{stack.log_tail()}", file=sys.stderr)
        return 1
    print("\nAll jobs answered." if ok else "\nSome jobs failed: see above.")
    print(f"Inputs and results are in {args.out}/. `make dev` keeps a stack up to curl (see the README).")
    return 0 if ok else 1
