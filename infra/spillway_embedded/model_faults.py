"""An embedded GPU whose model the chaos switchboard can upset: `spillway agent`, its model wrapped.

The embedded stack launches each agent through this module. Before every model run the wrapper reads the
GPU's fault file in the state folder (written by the switchboard: `/agents/fail-model`, `/agents/slow`,
`/agents/heal`): absent, the model runs as it is; `fail-model`, every run raises (the agent reports a
ModelError, as a GPU with bad memory or a broken driver would); `slow`, every run takes `seconds` longer.
Production code is untouched: this is the embedded stack's stand-in for a sick GPU.

    python -m spillway_embedded.model_faults --fault-file FILE <spillway agent options>
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
    known, agent_args = parser.parse_known_args(argv)
    from spillway.agent import cli, model

    model.run = with_faults(model.run, known.fault_file)  # the agent's CLI looks it up when it starts
    return cli.main(agent_args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
