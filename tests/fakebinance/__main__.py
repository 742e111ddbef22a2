"""Run the fake as a process: ``python -m tests.fakebinance [options]``.

Prints one JSON line on stdout once it listens, e.g.::

    {"api_url": "http://127.0.0.1:40123/api", "stream_url": "ws://127.0.0.1:40123/",
     "admin_url": "http://127.0.0.1:40123/_fake", "base_url": "...", "port": 40123,
     "pid": 4242, "symbols": ["XRPETH", "BTCUSDT"], "accounts": ["fakebinanceApiKey"]}

then serves until SIGTERM or SIGINT. Drive it over the admin API (``/_fake/...``).

Options:
  --host HOST              bind address (default 127.0.0.1)
  --port PORT              0 picks a free port (default 0)
  --trades SYMBOL=PATH     a tape (CSV or JSON trade file); repeatable. Default: the bundled
                           XRPETH demo trades
  --speed N                free-run at N trades/second per symbol (default 0: advance by hand)
  --happened N             trades of each tape that have already happened at start (default 0)
  --keep-times             keep the recorded trade times instead of stamping server time
  --account KEY:SECRET     an API key pair; repeatable. Default: fakebinanceApiKey:fakebinanceApiSecret
  --balance ASSET=AMOUNT   a starting free balance for every account; repeatable
  --clock-offset-ms MS     server clock offset from this machine's clock
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys

from .fake import DEFAULT_API_KEY, DEFAULT_API_SECRET, DEFAULT_BALANCES, FakeBinance
from .market import Account


def _pair(text: str, sep: str, what: str) -> tuple[str, str]:
    if sep not in text:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    left, right = text.split(sep, 1)
    return left, right


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.fakebinance", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--trades", action="append", default=[], type=lambda t: _pair(t, "=", "SYMBOL=PATH"))
    parser.add_argument("--speed", type=float, default=0.0)
    parser.add_argument("--happened", type=int, default=0)
    parser.add_argument("--keep-times", action="store_true")
    parser.add_argument("--account", action="append", default=[], type=lambda t: _pair(t, ":", "KEY:SECRET"))
    parser.add_argument("--balance", action="append", default=[], type=lambda t: _pair(t, "=", "ASSET=AMOUNT"))
    parser.add_argument("--clock-offset-ms", type=int, default=0)
    return parser.parse_args(argv)


def build(args: argparse.Namespace) -> FakeBinance:
    balances = dict(DEFAULT_BALANCES)
    balances.update({asset.upper(): amount for asset, amount in args.balance})
    pairs = args.account or [(DEFAULT_API_KEY, DEFAULT_API_SECRET)]
    return FakeBinance(
        trades={symbol: path for symbol, path in args.trades} or None,
        accounts=[Account(key, secret, dict(balances)) for key, secret in pairs],
        speed=args.speed,
        happened=args.happened,
        rebase_times=not args.keep_times,
        host=args.host,
        port=args.port,
        clock_offset_ms=args.clock_offset_ms,
    )


async def serve(args: argparse.Namespace) -> None:
    fake = build(args)
    await fake.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    info = {
        **fake.urls(),
        "pid": os.getpid(),
        "symbols": list(fake.exchange.specs),
        "accounts": list(fake.exchange.accounts),
    }
    sys.stdout.write(json.dumps(info) + "\n")
    sys.stdout.flush()
    try:
        await stop.wait()
    finally:
        await fake.stop()


def main(argv: list[str] | None = None) -> None:
    asyncio.run(serve(parse_args(argv)))


if __name__ == "__main__":
    main()
