"""`spillway`: the agent beside a GPU, and the embedded stack for running everything on one machine."""

from __future__ import annotations

import sys

USAGE = """usage: spillway <command> [options]

commands:
  agent   run the agent beside one GPU's model server
  fleet   every GPU's health, load and recent events; drain, quarantine or readmit one (fleet --help)
  submit  submit a job (a photo and a service); --wait for its end
  status  a job's status, attempts and result link
  cancel  cancel a queued or running job
  wait    wait for a job to end; exit 0 if it succeeded
  dev     run the whole system on this machine (moto, the template's resources, agents) and stay up
  demo    start the embedded stack, push a few room photos through the API, show where each ran
  graph   draw a job's execution graph, the path it took lit (SVG or PNG)
  ops     serve the ops page (jobs, their graphs, the fleet) for a stack: `spillway dev`'s or a deployed one
  simulate  a day of traffic through the routing policy and the alternatives, in seconds: tables and plots
"""


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "agent":
        from spillway.agent.cli import main as agent_main

        return agent_main(rest)
    if command == "fleet":
        from spillway.fleet_cli import main as fleet_main

        return fleet_main(rest)
    from spillway.client_cli import COMMANDS as CLIENT_COMMANDS

    if command in CLIENT_COMMANDS:
        from spillway.client_cli import main as client_main

        return client_main(command, rest)
    if command in ("dev", "demo"):
        try:
            from spillway_embedded import cli as embedded_cli
        except ImportError as missing:  # the Lambda install has no moto: say what to install
            print(f"spillway {command} needs the embedded extra: pip install 'spillway[embedded]' ({missing})")
            return 2
        return embedded_cli.dev(rest) if command == "dev" else embedded_cli.demo(rest)
    if command == "simulate":
        try:
            from spillway_sim.cli import main as simulate_main
        except ImportError as missing:
            print(f"spillway simulate needs the sim extra: pip install 'spillway[sim]' ({missing})")
            return 2
        return simulate_main(rest)
    if command in ("graph", "ops"):
        try:
            from spillway_ops import cli as ops_cli
        except ImportError as missing:
            print(f"spillway {command} needs the ops extra: pip install 'spillway[ops]' ({missing})")
            return 2
        return ops_cli.graph(rest) if command == "graph" else ops_cli.ops(rest)
    print(f"spillway: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
