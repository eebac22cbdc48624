"""An embedded GPU whose model the chaos switchboard can upset: `spillway agent`, or the stand-in model server
an agent fronts (`--model-server`), its model wrapped.

The embedded stack launches each agent, and each stand-in model server, through this module: where the model
runs, the fault is (a model server answers a failed run with a 500, which its agent reports as a ModelError,
through the same contract as a real server's crash). Before every model run the wrapper reads the
GPU's fault file in the state folder (written by the switchboard: `/agents/fail-model`, `/agents/slow`,
`/agents/heal`): absent, the model runs as it is; `fail-model`, every run raises (the agent reports a
ModelError, as a GPU with bad memory or a broken driver would); `slow`, every run takes `seconds` longer.
Production code is untouched: this is the embedded stack's stand-in for a sick GPU.

    python -m spillway_embedded.model_faults --fault-file FILE <spillway agent options>
    python -m spillway_embedded.model_faults --fault-file FILE --model-server <model server options>
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

Model = Callable[[str, bytes], bytes]


class ModelFault(BaseModel, extra="forbid"):
    mode: Literal["fail-model", "slow"]
    seconds: float = Field(default=0.0, ge=0, le=600, description="slow: how much longer each run takes")


class ChaosModelError(RuntimeError):
    """The fault `fail-model`: this GPU fails every model run."""


def read_fault(path: Path) -> ModelFault | None:
    try:
        return ModelFault.model_validate_json(path.read_text())
    except FileNotFoundError:
        return None


def write_fault(path: Path, fault: ModelFault | None) -> None:
    """Set (or with None, heal) the GPU's fault; atomically, as its agent reads it on every run."""
    if fault is None:
        path.unlink(missing_ok=True)
        return
    tmp = path.with_suffix(".tmp")
    tmp.write_text(fault.model_dump_json())
    tmp.replace(path)


def with_faults(run: Model, fault_file: Path, sleep: Callable[[float], None] = time.sleep) -> Model:
    def run_with_faults(service: str, image: bytes) -> bytes:
        fault = read_fault(fault_file)
        if fault is not None and fault.mode == "fail-model":
            raise ChaosModelError("chaos: this GPU fails every model run (fail-model)")
        if fault is not None:
            sleep(fault.seconds)
        return run(service, image)

    return run_with_faults


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="model_faults", add_help=False)
    parser.add_argument("--fault-file", type=Path, required=True)
    parser.add_argument("--model-server", action="store_true", help="run the stand-in model server, not an agent")
    known, rest = parser.parse_known_args(argv)
    from spillway.agent import cli, model, model_server

    model.run = with_faults(model.run, known.fault_file)  # both look it up when they start
    return model_server.main(rest) if known.model_server else cli.main(rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
