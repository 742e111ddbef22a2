"""BestBidAsk stops through the real workers and the real RabbitMQ, with the fake Binance's book
(issue 14, item 2): marketdata ``--book`` streams bookTicker, the orchestrator follows the best bid
(SELL) and the best ask (BUY), a lost stream is a gap in the status and the metrics, and a
restarted orchestrator resumes a book stop after its saved updateId with no second order.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import pytest

from tests.fakebinance import FakeBinance
from tests.harness import MemoryOperator, Probe, Workers, eventually, metric_total
from trailingstop.core.contracts import client_order_id
from trailingstop.operator.stops import StopRecord

pytestmark = pytest.mark.timeout(180)

SYMBOL = "XRPETH"
D = Decimal


def book_spec(side: str, trail: str, activation: str | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"symbol": SYMBOL, "side": side, "quantity": "100", "trailingPercent": trail,
                            "priceSource": "BestBidAsk", **extra}
    if activation is not None:
        body["activationPrice"] = activation
    return body


async def start_book_pipeline(workers: Workers, fake: FakeBinance) -> dict[str, Any]:
    started = {
        "executor": workers.executor("simulate"),
        "orchestrator": workers.orchestrator(SYMBOL),
        "marketdata": workers.start("worker", "marketdata", "--symbol", SYMBOL, "--book", name="marketdata-book"),
    }
    for process in started.values():
        await process.wait_healthy()
    await fake.wait_for_stream_connections(2, timeout=20)  # the trade socket and the book socket
    return started


async def quotes(fake: FakeBinance, *pairs: tuple[str, str], pause: float = 0.05) -> list[dict[str, Any]]:
    sent = []
    for bid, ask in pairs:
        sent += fake.set_quotes(SYMBOL, [{"bid": bid, "ask": ask}])
        await asyncio.sleep(pause)
    return sent


async def settle(record: StopRecord, phase: str, what: str, timeout: float = 30) -> None:
    await eventually(lambda: record.status.phase == phase, timeout=timeout, what=what)


async def test_sell_follows_the_bid_buy_the_ask_and_trades_do_not_move_them(
    workers: Workers, fake: FakeBinance, operator: MemoryOperator, probe: Probe
) -> None:
    started = await start_book_pipeline(workers, fake)
    sell = await operator.add("bid-sell", book_spec("SELL", "1"))
    buy = await operator.add("ask-buy", book_spec("BUY", "1"))
    last = await operator.add("last-sell", {"symbol": SYMBOL, "side": "SELL", "quantity": "100",
                                            "trailingPercent": "0.00000001"})
    await eventually(lambda: all(r.status.phase == "Armed" for r in (sell, buy, last)), what="armed")
    assert (sell.status.price_source, buy.status.price_source, last.status.price_source) == (
        "BestBid", "BestAsk", "LastTrade")

    sent = await quotes(fake, ("0.00145", "0.00146"), ("0.00150", "0.00147"))
    await eventually(lambda: sell.status.reference_price == D("0.0015"), what="the bid as the SELL's reference")
    assert buy.status.reference_price == D("0.00146")  # the ask: 0.00147 is higher, no new low
    assert sell.status.activated_update_id == sent[0]["u"] and sell.status.activated_trade_id is None
    assert last.status.phase == "Armed", "quotes are not trades"

    # 0.0015 * 0.99 = 0.001485: a bid of 0.001486 does not trigger, 0.001485 does (inclusive);
    # the ask stays below the BUY's stop (0.00146 * 1.01 = 0.0014746).
    sent += await quotes(fake, ("0.001486", "0.00147"), ("0.001485", "0.00147"))
    await settle(sell, "Filled", "the SELL filled at the bid")
    assert (sell.status.trigger_price, sell.status.trigger_update_id) == (D("0.001485"), sent[-1]["u"])
    assert sell.status.trigger_trade_id is None
    assert buy.status.phase == "Tracking"
    await eventually(lambda: probe.results_for(client_order_id(sell.uid)), what="the SELL's OrderResult")
    [result] = probe.results_for(client_order_id(sell.uid))
    assert (result.status, result.trigger_update_id, result.price_source) == ("SIMULATED", sent[-1]["u"], "BestBid")
    # The ask reaches the BUY's stop exactly.
    sent += await quotes(fake, ("0.00146", "0.0014746"))
    await settle(buy, "Filled", "the BUY filled at the ask")
    assert (buy.status.trigger_price, buy.status.trigger_update_id) == (D("0.0014746"), sent[-1]["u"])

    await fake.advance(SYMBOL, 3)  # the LastTrade stop still follows the trades
    await eventually(lambda: last.status.phase in ("Tracking", "Triggered", "Filled"), what="the LastTrade stop")
    assert last.status.last_update_id is None and last.status.last_trade_id is not None
    metrics = await started["marketdata"].metrics()
    assert metric_total(metrics, "trailingstop_marketdata_book_quotes_total") >= len(sent)


async def test_a_lost_book_stream_is_a_gap_in_the_status_and_metrics(
    workers: Workers, fake: FakeBinance, operator: MemoryOperator
) -> None:
    started = await start_book_pipeline(workers, fake)
    sell = await operator.add("bid-sell", book_spec("SELL", "5"))
    await eventually(lambda: sell.status.phase == "Armed", what="armed")
    before = await quotes(fake, ("100", "101"), ("102", "103"))
    await eventually(lambda: sell.status.last_update_id == before[-1]["u"], what="the last quote in the status")

    fake.drop_streams(refuse_seconds=1)  # both sockets die; reconnecting fails for a second
    await fake.wait_for_stream_connections(0, timeout=10)
    fake.set_quotes(SYMBOL, [{"bid": "50", "ask": "51"}])  # happens while nobody listens: lost
    await fake.wait_for_stream_connections(2, timeout=30)
    # Fresh quotes until one is heard: a socket python-binance reopened may still be replaced by
    # the feed's silence check (the top moved while it heard nothing), and a quote sent meanwhile
    # is lost too. Each is 101 (bid) so that whichever is first heard is the price now.
    after: list[dict[str, Any]] = []
    deadline = asyncio.get_running_loop().time() + 60
    while sell.status.gap_count is None and asyncio.get_running_loop().time() < deadline:
        after += await quotes(fake, ("101", "102"), pause=0.5)
    assert sell.status.gap_count == 1, sell.status
    gap = sell.status.last_gap
    assert gap is not None and gap.from_update_id == before[-1]["u"]
    assert gap.to_update_id in {q["u"] for q in after}
    assert gap.seconds >= D("1")
    assert sell.status.phase == "Tracking" and sell.status.last_price == D("101"), "the fresh quote, not the lost one"
    metrics = await started["orchestrator"].metrics()
    assert metric_total(metrics, "trailingstop_orchestrator_book_gaps_total") == 1
    assert metric_total(metrics, "trailingstop_orchestrator_book_gap_seconds_total") >= 1


async def test_a_restarted_orchestrator_resumes_a_book_stop_once(
    workers: Workers, fake: FakeBinance, operator: MemoryOperator, probe: Probe
) -> None:
    started = await start_book_pipeline(workers, fake)
    sell = await operator.add("bid-sell", book_spec("SELL", "1"))
    await eventually(lambda: sell.status.phase == "Armed", what="armed")
    sent = await quotes(fake, ("100", "101"), ("110", "111"))
    await eventually(lambda: sell.status.last_update_id == sent[-1]["u"], what="the status at the last quote")
    await asyncio.sleep(0.5)  # the saved state is the status as written

    started["orchestrator"].kill()  # kill -9
    restarted = workers.orchestrator(SYMBOL)
    await restarted.wait_healthy()
    await eventually(lambda: "restored" in restarted.log_text(), what="the stops restored")
    fake.set_quotes(SYMBOL, [{"bid": "108.9", "ask": "109"}])  # 110 * 0.99: the reference survived
    await settle(sell, "Filled", "the restored stop fired")
    assert sell.status.reference_price == D("110") and sell.status.trigger_price == D("108.9")
    await asyncio.sleep(1)  # room for a second order to show up
    [result] = probe.results_for(client_order_id(sell.uid))
    assert result.trigger_update_id == sell.status.trigger_update_id
    assert sell.status.trigger_update_id is not None and sell.status.trigger_update_id > sent[-1]["u"]
    assert sell.status.gap_count is None, "nothing was lost: the restored stop follows its saved quote"
