"""``trailingstop worker ...``: options of each worker role."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable


def register(commands: argparse._SubParsersAction) -> None:
    worker = commands.add_parser("worker", help="run one worker role (what the operator's Deployments run)")
    roles = worker.add_subparsers(metavar="ROLE", required=True)

    marketdata = roles.add_parser("marketdata", help="publish a symbol's trades as PriceTicks")
    marketdata.add_argument("--symbol", required=True, type=str.upper)
    marketdata.add_argument("--source", default="binance",
                            help="binance (default) or replay:FILE (a trade file, for demos and tests)")
    marketdata.add_argument("--speed", type=float, default=0.0,
                            help="replay pace: X times the recorded pace (default: as fast as possible)")
    marketdata.add_argument("--book", action="store_true",
                            help="also stream the top of the book (bookTicker) for BestBidAsk stops")
    marketdata.set_defaults(handler=_run_role("marketdata"))

    orchestrator = roles.add_parser("orchestrator", help="run the stops of one symbol")
    orchestrator.add_argument("--symbol", required=True, type=str.upper)
    orchestrator.set_defaults(handler=_run_role("orchestrator"))

    executor = roles.add_parser("executor", help="place the orders of one route")
    executor.add_argument("--route", required=True, help="simulate, or <mode>-<secret name>")
    executor.set_defaults(handler=_run_role("executor"))


def _run_role(role: str) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        import asyncio
        import importlib

        from trailingstop.settings import SettingsError, load_settings

        try:
            settings = load_settings()
        except SettingsError as exc:  # a Deployment's env, not a bug: one line, no traceback
            print(f"error: {exc}", file=sys.stderr)
            return 2
        module = importlib.import_module(f"trailingstop.workers.{role}")
        return int(asyncio.run(module.main(args, settings)) or 0)

    return handler
