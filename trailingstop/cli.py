"""The ``trailingstop`` command.

    trailingstop run FILE.yaml [--trades FILE | --live | --date D[..D] | --month YYYY-MM] [--book FILE]
                     [--speed X]
    trailingstop record --symbol S --stream aggTrade|bookTicker --out FILE [--count N]
    trailingstop backtest [--trades FILE | --symbol S --date D[..D] | --symbol S --month YYYY-MM]
                          --side SELL|BUY --trailing-percent LIST|--trailing-amount LIST
                          --activation-price LIST
                          [--sort input|outcome] [--json] [--plot OUT]
    trailingstop worker marketdata|orchestrator|executor ...
    trailingstop operator [--namespace NS ... | --all-namespaces]
    trailingstop crd

Exit codes: 0 done, 1 failed while running, 2 bad input (one line says which file, line and
field), 130 / 143 when ``run`` is stopped by Ctrl-C / SIGTERM (after printing where the stops stood).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import re
import signal
import sys
from collections.abc import AsyncGenerator, Coroutine, Iterator
from contextlib import aclosing
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from pydantic import TypeAdapter, ValidationError

from trailingstop import __version__, history
from trailingstop.core.contracts import (
    SYMBOL_PATTERN,
    ActivationPrice,
    TrailingAmount,
    TrailingPercent,
    deadline_ms,
    describe_errors,
)
from trailingstop.core.echo import printable, quoted, short_repr
from trailingstop.core.quote import Quote
from trailingstop.core.trade import Trade
from trailingstop.settings import SettingsError
from trailingstop.stopfiles import Manifest, ManifestError, load_manifests
from trailingstop.tradefiles import (
    DEMO_SYMBOL,
    SkippedTrades,
    TradeFileError,
    demo_trades_path,
    read_trades,
)
from trailingstop.userfiles import os_problem

if TYPE_CHECKING:
    from trailingstop.backtest import BacktestResult

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
_SYMBOL_IN_FILE_NAME = re.compile(r"^([A-Z0-9]{2,20})-aggTrades")
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# --speed: slower than a thousandth of the recorded pace is no replay (a day would take 3 years).
MIN_SPEED = 0.001


class UsageError(Exception):
    """Bad input: printed as ``error: ...`` with exit code 2."""


class RunFailed(Exception):
    """Something outside the user's input failed (Binance unreachable): ``error: ...``, exit 1."""


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line like every other error of this command."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"error: {message} (see {self.prog} --help)\n")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args.handler(args) or EXIT_OK)
    except (UsageError, ManifestError, TradeFileError, SettingsError) as exc:
        _print_error(exc)
        return EXIT_USAGE
    except history.HistoryError as exc:  # exit 2 for bad input, 1 when the data host kept failing
        _print_error(exc)
        return exc.exit_code
    except RunFailed as exc:
        _print_error(exc)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `trailingstop run ... | head`: the reader left; that is fine
        sys.stderr.close()
        return EXIT_OK


def _print_error(exc: Exception) -> None:
    """One line (one per problem of a manifest object); a line break in a file name or a value
    is printed escaped, never as a second line."""
    if isinstance(exc, ManifestError) and len(exc.problems) > 1:
        print(f"error: {printable(exc.where)}:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {printable(problem)}", file=sys.stderr)
    else:
        print(f"error: {printable(str(exc))}", file=sys.stderr)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="trailingstop", description="Crypto trailing stops as Kubernetes resources.")
    parser.add_argument("--version", action="version", version=f"trailingstop {__version__}")
    commands = parser.add_subparsers(metavar="COMMAND")

    run = commands.add_parser("run", help="run TrailingStop manifests in this process (no cluster, no broker)")
    run.add_argument("manifest", type=Path, help="YAML file with one or more TrailingStop documents")
    source = run.add_mutually_exclusive_group()
    source.add_argument("--trades", type=Path, help="trade file (CSV or JSON); default: bundled XRPETH trades")
    source.add_argument("--live", action="store_true",
                        help="stream Binance's live aggTrade feed (and bookTicker, for BestBidAsk stops)")
    history.add_arguments(run, source)
    run.add_argument("--symbol", help="symbol of the trade file when its name does not say, or to fetch with "
                                      "--date/--month (default: the manifests' symbol)")
    run.add_argument("--speed", metavar="X",
                     help=f"replay at X times the recorded pace, X >= {MIN_SPEED} (default: as fast as possible)")
    run.add_argument("--book", type=Path, metavar="FILE",
                     help="recorded bookTicker quotes (trailingstop record --stream bookTicker) for BestBidAsk stops")
    run.add_argument("-v", "--verbose", action="store_true", help="also print every reference change")
    run.set_defaults(handler=_run)

    record = commands.add_parser("record", help="record a live Binance stream to a file, for run/backtest")
    record.add_argument("--symbol", required=True, help="the symbol, like BTCUSDT")
    record.add_argument("--stream", required=True, choices=["aggTrade", "bookTicker"],
                        help="aggTrade (a trade file) or bookTicker (a book file for run --book)")
    record.add_argument("--out", required=True, type=Path, help="the file to write (JSON lines; never overwritten)")
    record.add_argument("--count", help="stop after this many lines (default: until Ctrl-C or SIGTERM)")
    record.set_defaults(handler=_record)

    backtest = commands.add_parser("backtest", help="test trail/activation combinations over a trade file")
    source = backtest.add_mutually_exclusive_group()
    source.add_argument("--trades", type=Path, help="trade file (CSV or JSON); default: bundled XRPETH trades")
    history.add_arguments(backtest, source)
    backtest.add_argument("--symbol", help="symbol to fetch with --date/--month (or of the trade file, for titles)")
    backtest.add_argument("--side", required=True, choices=["SELL", "BUY"], type=str.upper)
    trail = backtest.add_mutually_exclusive_group(required=True)
    trail.add_argument("--trailing-percent", help="comma-separated percents, e.g. 0.5,1,2")
    trail.add_argument("--trailing-amount",
                       help="comma-separated distances in the quote asset, e.g. 100,250 (SELL stop = high - "
                            "amount, BUY stop = low + amount)")
    backtest.add_argument("--activation-price", default="none",
                          help="comma-separated prices; 'none' = active from the first trade (default)")
    backtest.add_argument("--expires-at", metavar="TIME",
                          help="an RFC 3339 deadline for every combination, as spec.expiresAt: the first trade at or "
                               "after it ends a stop not yet triggered (no order; exit at that trade's price)")
    backtest.add_argument("--sort", choices=["input", "outcome"], default="input",
                          help="row order: as given (default) or best outcome first")
    backtest.add_argument("--json", action="store_true", help="print a JSON array instead of a table")
    backtest.add_argument("--plot", type=Path, metavar="OUT", help="write a chart (.png, .html or .svg)")
    backtest.set_defaults(handler=_backtest)

    crd = commands.add_parser("crd", help="print the TrailingStop CustomResourceDefinition (YAML)")
    crd.set_defaults(handler=_crd)

    config = commands.add_parser("config", help="print every setting (environment variable) with its default "
                                                "and its value here")
    config.add_argument("--markdown", action="store_true", help="the table of docs/SETTINGS.md (defaults only)")
    config.set_defaults(handler=_config)

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

    speed = _speed(args.speed)
    if args.live and (args.speed is not None or args.symbol):
        raise UsageError("--speed and --symbol apply to a trade file, not to --live (the stops' symbols are streamed)")
    manifests, notes = load_manifests(args.manifest)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    _check_data_url_use(args)
    run = EmbeddedRun(manifests, sys.stdout, verbose=args.verbose)
    skipped = SkippedTrades()
    stream: AsyncGenerator[tuple[str, Trade | Quote], None]
    if args.book is not None and args.live:
        raise UsageError("--book replays a recorded book; it does not go with --live")
    # With --book and no trade source, the book alone drives the run (not the bundled 2019 trades).
    book_only = args.book is not None and args.trades is None and not history.requested(args)
    if book_only:
        symbol = _only_symbol(_named_symbol(args.book, args.symbol) or _single_symbol(manifests), manifests,
                              args.book.name)
        stream = _book_stream(symbol, _quotes(args.book, symbol))
        source = f"{args.book.name} ({symbol} bookTicker)"
    elif args.live:
        book_symbols = sorted({m.spec.symbol for m in manifests if m.spec.price_source == "BestBidAsk"})
        stream = _live_stream(run.symbols, book_symbols)
        source = "Binance live aggTrade stream" + (" and bookTicker stream" if book_symbols else "")
    elif history.requested(args):
        wanted = history.check_symbol(args.symbol) if args.symbol else _single_symbol(manifests)
        symbol = _only_symbol(wanted, manifests, f"--date {args.date}" if args.date else f"--month {args.month}")
        fetched = history.fetch_for(args, symbol)
        stream = _file_stream(symbol, fetched.trades(show_progress=False, skipped=skipped))  # transitions show progress
        source = f"{symbol} aggTrades of {fetched.span.label} from {fetched.data_url}"
    else:
        path = args.trades or demo_trades_path()
        symbol = _file_symbol(path, args.symbol, manifests)
        stream = _file_stream(symbol, _trades(path, skipped))
        source = f"{path.name} ({symbol})"
    if args.book is not None and not book_only:
        stream = _merged(stream, _book_stream(symbol, _quotes(args.book, symbol)))
        source += f" and {args.book.name} (bookTicker)"
    _announce(manifests, source)
    _note_unfed(manifests, book=args.book is not None or args.live, trades=not book_only)
    signalled = asyncio.run(_until_signalled(run.run(stream, speed=speed)))
    if signalled is not None:
        print(f"stopped by {signal.Signals(signalled).name}; where the stops stood:", file=sys.stderr, flush=True)
    print()
    print(run.table())
    _warn_skipped(skipped)
    return EXIT_OK if signalled is None else 128 + signalled


def _speed(text: str | None) -> float:
    """--speed as a float: finite and at least MIN_SPEED (0 = as fast as possible, the default)."""
    if text is None:
        return 0.0
    try:
        speed = float(text)
    except ValueError:
        raise UsageError(f"--speed must be a number, got {short_repr(text)}") from None
    if not math.isfinite(speed) or speed < MIN_SPEED:
        raise UsageError(f"--speed must be a number >= {MIN_SPEED} (times the recorded pace), got {short_repr(text)}")
    return speed


def _trades(path: Path, skipped: SkippedTrades) -> Iterator[Trade]:
    """The file's trades in id order (the others counted in ``skipped``); a file without a single
    trade is an error, found before anything is printed."""
    trades = read_trades(path, skipped=skipped)
    first = next(trades, None)
    if first is None:
        raise TradeFileError(path, None, "no trades in this file")
    return itertools.chain([first], trades)


def _quotes(path: Path, symbol: str) -> Iterator[Quote]:
    """The book file's quotes (of ``symbol`` only); a file without one is an error, found before
    anything is printed."""
    from trailingstop.bookfiles import read_quotes

    quotes = read_quotes(path, symbol)
    first = next(quotes, None)
    if first is None:
        raise TradeFileError(path, None, "no bookTicker quotes in this file")
    return itertools.chain([first], quotes)


async def _book_stream(symbol: str, quotes: Iterator[Quote]) -> AsyncGenerator[tuple[str, Trade | Quote], None]:
    for quote in quotes:
        yield symbol, quote


async def _merged(
    trades: AsyncGenerator[tuple[str, Trade | Quote], None], quotes: AsyncGenerator[tuple[str, Trade | Quote], None]
) -> AsyncGenerator[tuple[str, Trade | Quote], None]:
    """Trades and quotes in time order (a trade first when both have the same millisecond)."""
    async with aclosing(trades) as trade_stream, aclosing(quotes) as quote_stream:
        trade = await anext(trade_stream, None)
        quote = await anext(quote_stream, None)
        while trade is not None or quote is not None:
            if quote is None or (trade is not None and trade[1].time <= quote[1].time):
                assert trade is not None
                yield trade
                trade = await anext(trade_stream, None)
            else:
                yield quote
                quote = await anext(quote_stream, None)


def _note_unfed(manifests: list[Manifest], *, book: bool, trades: bool) -> None:
    """A stop whose price series this run does not have would just wait: say so up front."""
    for manifest in manifests:
        follows_book = manifest.spec.price_source == "BestBidAsk"
        if follows_book and not book:
            print(f"note: {manifest.key} follows the book (BestBidAsk); this run has no book (a recorded one is "
                  "replayed with --book FILE), so it never moves", file=sys.stderr)
        elif not follows_book and not trades:
            print(f"note: {manifest.key} follows the last trade; with only --book it never moves", file=sys.stderr)


def _warn_skipped(skipped: SkippedTrades) -> None:
    if skipped.count:
        print(f"warning: {skipped.note()}", file=sys.stderr)


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
        symbol = given.upper()
        if not re.fullmatch(SYMBOL_PATTERN, symbol):
            raise UsageError(f"--symbol must be 2-20 letters or digits, like BTCUSDT, got {short_repr(given)}")
        return symbol
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


async def _file_stream(symbol: str, trades: Iterator[Trade]) -> AsyncGenerator[tuple[str, Trade], None]:
    for trade in trades:
        yield symbol, trade


async def _live_stream(symbols: list[str], book_symbols: list[str]) -> AsyncGenerator[tuple[str, Trade | Quote], None]:
    import aiohttp
    from binance.exceptions import BinanceAPIException, BinanceRequestException

    from trailingstop.exchange.binance import BinanceSettings, live_market

    settings = BinanceSettings.from_env()
    try:
        async with aclosing(live_market(symbols, book_symbols, settings)) as market:
            async for symbol, item in market:
                yield symbol, item
    except (aiohttp.ClientError, BinanceAPIException, BinanceRequestException, TimeoutError, OSError) as exc:
        # Only connecting can fail this way: the feeds reconnect and backfill by themselves.
        raise RunFailed(f"cannot reach Binance at {settings.api_url}: {exc}") from None


async def _until_signalled(work: Coroutine[Any, Any, None]) -> int | None:
    """Run ``work``; SIGINT (Ctrl-C) or SIGTERM cancels it, and the signal's number is returned.

    The work closes its streams on the way out (a live feed's sockets within seconds), so the
    caller can still print where the stops stood. None when the work ended by itself.
    """
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    received: list[int] = []

    def stop(signum: int) -> None:
        received.append(signum)
        if task is not None:
            task.cancel()

    for signum in _STOP_SIGNALS:
        loop.add_signal_handler(signum, stop, signum)
    try:
        await work
    except asyncio.CancelledError:
        if not received:
            raise
    finally:
        for signum in _STOP_SIGNALS:
            loop.remove_signal_handler(signum)
    return received[0] if received else None


# --- record --------------------------------------------------------------------------------------


def _record(args: argparse.Namespace) -> int:
    import aiohttp
    from binance.exceptions import BinanceAPIException, BinanceRequestException

    from trailingstop.exchange.binance import BinanceSettings
    from trailingstop.record import Recorder, open_new

    symbol = _named_symbol(Path(), args.symbol)
    assert symbol is not None
    count = _count(args.count)
    settings = BinanceSettings.from_env()
    try:
        out = open_new(args.out)
    except FileExistsError:
        raise UsageError(f"{args.out} exists; a recording is never overwritten (choose another --out)") from None
    except OSError as exc:
        raise UsageError(f"{args.out}: {os_problem(exc)}") from None
    recorder = Recorder(symbol, args.stream, out, count)
    print(f"recording {symbol} {args.stream} from {settings.stream_url} to {args.out}; Ctrl-C to stop",
          file=sys.stderr, flush=True)
    try:
        signalled = asyncio.run(_until_signalled(recorder.record(settings)))
    except (aiohttp.ClientError, BinanceAPIException, BinanceRequestException, TimeoutError, OSError) as exc:
        out.close()
        if recorder.written == 0:
            args.out.unlink(missing_ok=True)  # ours, and empty: no file that looks like a recording
        raise RunFailed(f"cannot reach Binance at {settings.api_url}: {exc}") from None
    out.close()
    how = f" (stopped by {signal.Signals(signalled).name})" if signalled is not None else ""
    print(f"recorded {recorder.written} {args.stream} line(s) to {args.out}{how}", file=sys.stderr)
    return EXIT_OK


def _count(text: str | None) -> int | None:
    if text is None:
        return None
    if not text.isascii() or not text.isdigit() or len(text) > 18:
        raise UsageError(f"--count must be a whole number >= 0, got {short_repr(text)}")
    return int(text)


# --- backtest ------------------------------------------------------------------------------------

_TRAIL = TypeAdapter(TrailingPercent)
_AMOUNT = TypeAdapter(TrailingAmount)
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

    if args.trailing_amount is not None:
        trails = parse_decimal_list(args.trailing_amount, _AMOUNT, "--trailing-amount", allow_none=False)
    else:
        trails = parse_decimal_list(args.trailing_percent, _TRAIL, "--trailing-percent", allow_none=False)
    activations = parse_decimal_list(args.activation_price, _ACTIVATION, "--activation-price", allow_none=True)
    combos = combinations(args.side, [t for t in trails if t is not None], activations,
                          "amount" if args.trailing_amount is not None else "percent", _deadline(args.expires_at))
    _check_data_url_use(args)
    if args.plot is not None:
        _check_plot_target(args.plot)  # before the work, not after it
    skipped = SkippedTrades()
    symbol: str | None
    if history.requested(args):
        if not args.symbol:
            raise UsageError(f"--{'date' if args.date else 'month'} needs --symbol (e.g. --symbol ETHUSDT)")
        fetched = history.fetch_for(args, args.symbol)
        trades, symbol, source = fetched.trades(skipped=skipped), fetched.symbol, fetched.span.label
    else:
        path = args.trades or demo_trades_path()
        trades, source = _trades(path, skipped), path.name
        symbol = _named_symbol(path, args.symbol)
    result = run_backtest(trades, combos, record=args.plot is not None)
    result.symbol, result.source = symbol, source
    if args.plot is not None:
        _write_plot(result, args.plot)
    if args.json:
        print(json.dumps(result.report(args.sort), indent=2))
    else:
        print(render_results(result, args.sort))
    _warn_skipped(skipped)
    return EXIT_OK


def _deadline(text: str | None) -> int | None:
    """``--expires-at`` as the engine's deadline (epoch ms, rounded up as the spec's is), or None."""
    if text is None:
        return None
    try:
        return deadline_ms(text)
    except ValueError as exc:
        raise UsageError(f"--expires-at: {exc}, got {quoted(text)}") from None


def _check_plot_target(target: Path) -> None:
    from trailingstop.plot import PlotError, check_target

    try:
        check_target(target)
    except PlotError as exc:
        raise UsageError(str(exc)) from None


def _write_plot(result: BacktestResult, target: Path) -> None:
    from trailingstop.plot import PlotError, write_chart

    try:
        written = write_chart(result, target)
    except PlotError as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:  # the disk filled up, the folder went away meanwhile, ...
        raise UsageError(f"--plot {target}: {os_problem(exc, 'write')}") from None
    print(f"chart written to {written}", file=sys.stderr)


def _config(args: argparse.Namespace) -> int:
    from trailingstop import settings

    if args.markdown:
        sys.stdout.write(settings.markdown_table())
        return EXIT_OK
    def cell(text: str, width: int = 40) -> str:  # long JSON defaults: see docs/SETTINGS.md
        return text if len(text) <= width else text[: width - 1] + "…"

    table = [("VARIABLE", "DEFAULT", "VALUE", "READ BY"), *(
        (variables, cell(default), cell(value), roles) for variables, default, value, roles, _ in settings.rows(
            settings.load_settings()))]
    widths = [max(len(row[i]) for row in table) for i in range(3)]
    for row in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[3])
    return EXIT_OK


def _crd(args: argparse.Namespace) -> int:
    from trailingstop.operator.crd import crd_yaml

    sys.stdout.write(crd_yaml())
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
