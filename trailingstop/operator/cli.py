"""``trailingstop operator``: options of the operator."""

from __future__ import annotations

import argparse


def register(commands: argparse._SubParsersAction) -> None:
    operator = commands.add_parser("operator", help="run the Kubernetes operator (kopf)")
    scope = operator.add_mutually_exclusive_group()
    scope.add_argument("--namespace", "-n", action="append", dest="namespaces", metavar="NS",
                       help="watch this namespace (repeatable; default: $WATCH_NAMESPACES or all)")
    scope.add_argument("--all-namespaces", "-A", action="store_true", help="watch every namespace")
    operator.add_argument("--standalone", action="store_true",
                          help="no peering with other operator instances (run exactly one)")
    operator.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from trailingstop.operator.main import run

    return run(args)
