"""The `headway` command. Each subcommand lives in its own module, which provides
`add_arguments(parser)` and `run(args) -> int`; this file only wires them up."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# name -> (module, help). Modules are imported lazily so `headway plan` does not pay
# for aiohttp and `headway sim` does not pay for matplotlib.
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("headway.gateway.cli", "run the inference gateway"),
    "sim": ("headway.sim.cli", "run a fleet of simulated vLLM engines"),
    "plan": ("headway.plan.cli", "capacity planning and tokenomics"),
    "bench": ("headway.bench.cli", "benchmark OpenAI-compatible servers (load generator)"),
    "demo": ("headway.demo", "the main job on a built-in simulated fleet"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser; only `command`'s module is imported (all with None)."""
    parser = argparse.ArgumentParser(
        prog="headway",
        description="Headway: inference gateway, engine simulator, benchmark and planner.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if command is not None and name != command:
            continue
        module = importlib.import_module(module_name)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if a in COMMANDS), "")
    args = build_parser(command).parse_args(argv)
    return int(args._run(args))


if __name__ == "__main__":
    sys.exit(main())
