"""`headway plan ...` subcommands."""

from __future__ import annotations

import argparse

from headway.plan import capacity, explain, simulate, throughput, whatif


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="plan_command", metavar="PLAN_COMMAND", required=True)
    p = sub.add_parser(
        "throughput", help=throughput.__doc__.splitlines()[0] if throughput.__doc__ else ""
    )
    throughput.add_arguments(p)
    p.set_defaults(_plan_run=throughput.run)
    p = sub.add_parser("simulate", help=(simulate.__doc__ or "").splitlines()[0])
    simulate.add_arguments(p)
    p.set_defaults(_plan_run=simulate.run)
    p = sub.add_parser("capacity", help=(capacity.__doc__ or "").splitlines()[0])
    capacity.add_arguments(p)
    p.set_defaults(_plan_run=capacity.run)
    p = sub.add_parser("explain", help=(explain.__doc__ or "").splitlines()[0])
    explain.add_arguments(p)
    p.set_defaults(_plan_run=explain.run)
    p = sub.add_parser("whatif", help=(whatif.__doc__ or "").splitlines()[0])
    whatif.add_arguments(p)
    p.set_defaults(_plan_run=whatif.run)


def run(args: argparse.Namespace) -> int:
    return int(args._plan_run(args))
