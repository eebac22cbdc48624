"""`spillway graph JOB_ID` and `spillway ops`: the operator's view of the stack `spillway dev` runs, or of a
deployed one (`--stack NAME --region ...`, read-only, with the operator's AWS credentials)."""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from spillway.client import DEV_STATE, STACK_FILE
from spillway_ops.graph import MissingGraphviz, path_of, render
from spillway_ops.source import Source
from spillway_ops.views import execution_history, state_graph


def _stack_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stack", metavar="NAME",
                        help="a deployed stack's name (default: the one `spillway dev` runs)")
    parser.add_argument("--region", help="the deployed stack's region")
    parser.add_argument("--state-dir", type=Path, default=DEV_STATE,
                        help=f"the state folder of `spillway dev` (default {DEV_STATE})")


def _source(args: argparse.Namespace) -> Source:
    if args.stack:
        if not args.region:
            raise SystemExit("--stack needs --region")
        return Source.deployed(args.stack, args.region)
    stack_file = args.state_dir / STACK_FILE
    if not stack_file.exists():
        raise SystemExit(f"no stack at {stack_file}: start one with `spillway dev`, or name a deployed one "
                         "with --stack")
    return Source.embedded(stack_file)


def graph(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="spillway graph", description="Draw a job's execution graph, its path lit.")
    parser.add_argument("job_id")
    parser.add_argument("-o", "--output", type=Path, help="the file to write (default JOB_ID.svg); .png for PNG")
    _stack_arguments(parser)
    args = parser.parse_args(argv)
    output = args.output or Path(f"{args.job_id}.svg")
    source = _source(args)
    events = execution_history(source, args.job_id)
    if not events:
        print(f"spillway graph: job {args.job_id} has no execution (yet) in this stack", file=sys.stderr)
        return 1
    drawn = state_graph(source)
    path = path_of(events, drawn.types)
    try:
        output.write_bytes(render(drawn, path, fmt="png" if output.suffix == ".png" else "svg",
                                  title=f"job {args.job_id}: {path.status}"))
    except MissingGraphviz as missing:
        print(f"spillway graph: {missing}", file=sys.stderr)
        return 2
    print(output)
    return 0


def ops(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="spillway ops", description="Serve the ops page for a stack (read-only).")
    parser.add_argument("--port", type=int, default=8090)
    _stack_arguments(parser)
    args = parser.parse_args(argv)
    from spillway_ops.page import serve

    server = serve(_source(args), port=args.port)
    print(f"ops page: http://127.0.0.1:{server.server_port}/  (Ctrl-C to stop)", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    return 0
