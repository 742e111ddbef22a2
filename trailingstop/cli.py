"""The ``trailingstop`` command.

    trailingstop run FILE.yaml [--trades FILE | --live | --date D[..D] | --month YYYY-MM] [--speed X]
    trailingstop backtest [--trades FILE | --symbol S --date D[..D] | --symbol S --month YYYY-MM]
                          --side SELL|BUY --trailing-percent LIST --activation-price LIST
                          [--sort input|outcome] [--json] [--plot OUT]
    trailingstop worker marketdata|orchestrator|executor ...
    trailingstop operator [--namespace NS ... | --all-namespaces]
    trailingstop crd

Exit codes: 0 done, 1 failed while running, 2 bad input (a message says which and where).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path

from pydantic import TypeAdapter, ValidationError

from trailingstop import __version__, history
from trailingstop.contracts import ActivationPrice, TrailingPercent, describe_errors
from trailingstop.manifests import Manifest, ManifestError, load_manifests
from trailingstop.trades import DEMO_SYMBOL, Trade, TradeFileError, demo_trades_path, read_trades

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
_SYMBOL_IN_FILE_NAME = re.compile(r"^([A-Z0-9]{2,20})-aggTrades")


class UsageError(Exception):
    """Bad input: printed as ``error: ...`` with exit code 2."""


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args.handler(args) or EXIT_OK)
    except (UsageError, ManifestError, TradeFileError) as exc:
        _print_error(exc)
        return EXIT_USAGE
    except history.HistoryError as exc:  # exit 2 for bad input, 1 when the data host kept failing
        _print_error(exc)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `trailingstop run ... | head`: the reader left; that is fine
        sys.stderr.close()
        return EXIT_OK


def _print_error(exc: Exception) -> None:
    if isinstance(exc, ManifestError) and len(exc.problems) > 1:
        print(f"error: {exc.where}:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
    else:
        print(f"error: {exc}", file=sys.stderr)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trailingstop", description="Crypto trailing stops as Kubernetes resources.")
    parser.add_argument("--version", action="version", version=f"trailingstop {__version__}")
    commands = parser.add_subparsers(metavar="COMMAND")

    run = commands.add_parser("run", help="run TrailingStop manifests in this process (no cluster, no broker)")
    run.add_argument("manifest", type=Path, help="YAML file with one or more TrailingStop documents")
    source = run.add_mutually_exclusive_group()
    source.add_argument("--trades", type=Path, help="trade file (CSV or JSON); default: bundled XRPETH trades")
    source.add_argument("--live", action="store_true", help="stream Binance's live aggTrade feed")
    history.add_arguments(run, source)
    run.add_argument("--symbol", help="symbol of the trade file when its name does not say, or to fetch with "
                                      "--date/--month (default: the manifests' symbol)")
    run.add_argument("--speed", type=float, default=0.0,
                     help="replay at X times the recorded pace (default: as fast as possible)")
    run.add_argument("-v", "--verbose", action="store_true", help="also print every reference change")
    run.set_defaults(handler=_run)

    backtest = commands.add_parser("backtest", help="test trail/activation combinations over a trade file")
    source = backtest.add_mutually_exclusive_group()
    source.add_argument("--trades", type=Path, help="trade file (CSV or JSON); default: bundled XRPETH trades")
    history.add_arguments(backtest, source)
    backtest.add_argument("--symbol", help="symbol to fetch with --date/--month (or of the trade file, for titles)")
    backtest.add_argument("--side", required=True, choices=["SELL", "BUY"], type=str.upper)
    backtest.add_argument("--trailing-percent", required=True, help="comma-separated, e.g. 0.5,1,2")
    backtest.add_argument("--activation-price", default="none",
                          help="comma-separated prices; 'none' = active from the first trade (default)")
    backtest.add_argument("--sort", choices=["input", "outcome"], default="input",
                          help="row order: as given (default) or best outcome first")
    backtest.add_argument("--json", action="store_true", help="print a JSON array instead of a table")
    backtest.add_argument("--plot", type=Path, metavar="OUT", help="write a chart (.png, .html or .svg)")
    backtest.set_defaults(handler=_backtest)

    crd = commands.add_parser("crd", help="print the TrailingStop CustomResourceDefinition (YAML)")
    crd.set_defaults(handler=_crd)

    _add_service_commands(commands)
    return parser


def _add_service_commands(commands: argparse._SubParsersAction) -> None:
    """``worker`` and ``operator`` live in their own modules; they register their own options."""
    from trailingstop.operator import cli as operator_cli
    from trailingstop.workers import cli as workers_cli

    workers_cli.register(commands)
    operator_cli.register(commands)


# --- run -----------------------------------------------------------------------------------------


def _run(args: argparse.Namespace) -> int:
    from trailingstop.embedded import EmbeddedRun

    manifests, notes = load_manifests(args.manifest)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    if args.speed < 0:
        raise UsageError("--speed must be >= 0")
    _check_data_url_use(args)
    run = EmbeddedRun(manifests, sys.stdout, verbose=args.verbose)
    if args.live:
        stream = _live_stream(run.symbols)
        source = "Binance live aggTrade stream"
    elif history.requested(args):
        wanted = history.check_symbol(args.symbol) if args.symbol else _single_symbol(manifests)
        symbol = _only_symbol(wanted, manifests, f"--date {args.date}" if args.date else f"--month {args.month}")
        fetched = history.fetch_for(args, symbol)
        stream = _file_stream(symbol, fetched.trades(show_progress=False))  # the transitions show progress
        source = f"{symbol} aggTrades of {fetched.span.label} from {fetched.data_url}"
    else:
        path = args.trades or demo_trades_path()
        symbol = _file_symbol(path, args.symbol, manifests)
        stream = _file_stream(symbol, read_trades(path))
        source = f"{path.name} ({symbol})"
    _announce(manifests, source)
    asyncio.run(run.run(stream, speed=args.speed))
    print()
    print(run.table())
    return EXIT_OK


def _announce(manifests: list[Manifest], source: str) -> None:
    print(f"{len(manifests)} stop(s) on {source}; orders are simulated", flush=True)
    for manifest in manifests:
        if manifest.spec.mode != "Simulate":
            print(f"note: {manifest.key}: mode {manifest.spec.mode} is simulated here; "
                  "real orders are placed only by the operator's executor", file=sys.stderr)


def _file_symbol(path: Path, given: str | None, manifests: list[Manifest]) -> str:
    """Which symbol a trade file holds: --symbol, else its Binance file name, else the stops'."""
    symbol = _named_symbol(path, given)
    if symbol is None:
        wanted = sorted({m.spec.symbol for m in manifests})
        if len(wanted) != 1:
            raise UsageError(f"cannot tell the symbol of {path}; pass --symbol")
        symbol = wanted[0]
    return _only_symbol(symbol, manifests, path.name)


def _named_symbol(path: Path, given: str | None) -> str | None:
    """The symbol of a trade file when something names it: --symbol, its Binance file name, or the bundled one's."""
    if given:
        return given.upper()
    if (match := _SYMBOL_IN_FILE_NAME.match(path.name)) is not None:
        return match.group(1)
    return DEMO_SYMBOL if path == demo_trades_path() else None


def _only_symbol(symbol: str, manifests: list[Manifest], source: str) -> str:
    """``symbol``, when no manifest has a stop on another symbol (those need their own trades)."""
    others = sorted({m.spec.symbol for m in manifests} - {symbol})
    if others:
        raise UsageError(
            f"{source} holds {symbol} trades, but the manifests also have stops on {', '.join(others)}; "
            "run those with their own trade file or --live"
        )
    return symbol


def _single_symbol(manifests: list[Manifest]) -> str:
    symbols = sorted({m.spec.symbol for m in manifests})
    if len(symbols) != 1:
        raise UsageError(f"the manifests have stops on {', '.join(symbols)}; pass --symbol to say which to fetch")
    return symbols[0]


def _check_data_url_use(args: argparse.Namespace) -> None:
    if args.data_url is not None and not history.requested(args):
        raise UsageError("--data-url is only used with --date or --month")


async def _file_stream(symbol: str, trades: Iterator[Trade]) -> AsyncIterator[tuple[str, Trade]]:
    for trade in trades:
        yield symbol, trade


async def _live_stream(symbols: list[str]) -> AsyncIterator[tuple[str, Trade]]:
    from trailingstop.exchange.binance import BinanceSettings, live_trades

    async for symbol, trade in live_trades(symbols, BinanceSettings.from_env()):
        yield symbol, trade


# --- backtest ------------------------------------------------------------------------------------

_TRAIL = TypeAdapter(TrailingPercent)
_ACTIVATION = TypeAdapter(ActivationPrice)


def parse_decimal_list(text: str, adapter: TypeAdapter, flag: str, allow_none: bool) -> list[Decimal | None]:
    values: list[Decimal | None] = []
    for raw in text.split(","):
        item = raw.strip()
        if allow_none and item.lower() == "none":
            values.append(None)
            continue
        try:
            values.append(adapter.validate_python(item))
        except ValidationError as exc:
            problem = describe_errors(exc)[0].strip()
            raise UsageError(f"{flag}: {problem}") from None
    if not values:
        raise UsageError(f"{flag} needs at least one value")
    return values


def _backtest(args: argparse.Namespace) -> int:
    from trailingstop.backtest import combinations, render_results, run_backtest

    trails = parse_decimal_list(args.trailing_percent, _TRAIL, "--trailing-percent", allow_none=False)
    activations = parse_decimal_list(args.activation_price, _ACTIVATION, "--activation-price", allow_none=True)
    combos = combinations(args.side, [t for t in trails if t is not None], activations)
    _check_data_url_use(args)
    symbol: str | None
    if history.requested(args):
        if not args.symbol:
            raise UsageError(f"--{'date' if args.date else 'month'} needs --symbol (e.g. --symbol ETHUSDT)")
        fetched = history.fetch_for(args, args.symbol)
        trades, symbol, source = fetched.trades(), fetched.symbol, fetched.span.label
    else:
        path = args.trades or demo_trades_path()
        trades, source = read_trades(path), path.name
        symbol = _named_symbol(path, args.symbol)
    result = run_backtest(trades, combos, record=args.plot is not None)
    result.symbol, result.source = symbol, source
    if args.plot is not None:
        from trailingstop.plot import PlotError, write_chart

        try:
            written = write_chart(result, args.plot)
        except PlotError as exc:
            raise UsageError(str(exc)) from None
        print(f"chart written to {written}", file=sys.stderr)
    if args.json:
        print(json.dumps(result.report(args.sort), indent=2))
    else:
        print(render_results(result, args.sort))
    return EXIT_OK


def _crd(args: argparse.Namespace) -> int:
    from trailingstop.operator.crd import crd_yaml

    sys.stdout.write(crd_yaml())
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
