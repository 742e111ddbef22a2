"""Issue 14 over the real RabbitMQ, workers as processes, the fake Binance: amount stops, Limit
execution on a thin book, expiry by the orchestrator's clock and across its restart.

Expected trigger trades come from the engine over the same bundled trades, as in test_workers.py.
"""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal

import pytest

from tests.fakebinance import FakeBinance
from tests.harness import MemoryOperator, Probe, Workers, eventually
from tests.integration.test_workers import SYMBOL, TESTNET, TRADES, advance, start_pipeline
from trailingstop.core.contracts import client_order_id, ms_to_rfc3339
from trailingstop.core.engine import Engine

pytestmark = pytest.mark.timeout(180)

FIRST_ID = TRADES[0].trade_id


def amount_spec(side: str, amount: str, activation: str | None = None, **extra: object) -> dict[str, object]:
    body: dict[str, object] = {"symbol": SYMBOL, "side": side, "quantity": "100", "trailingAmount": amount, **extra}
    if activation is not None:
        body["activationPrice"] = activation
    return body


def offline_trigger(side: str, upto: int, percent: str | None = None, amount: str | None = None,
                    activation: str | None = None) -> int | None:
    engine = Engine(SYMBOL)
    engine.upsert("s", side, None if percent is None else Decimal(percent),  # type: ignore[arg-type]
                  None if activation is None else Decimal(activation),
                  trailing_amount=None if amount is None else Decimal(amount))
    for trade in TRADES[:upto]:
        engine.on_trade(trade.price, trade.trade_id, trade.time)
    return engine.state("s").trigger_trade_id


async def test_amount_and_percent_stops_trigger_where_the_engine_says(
    workers: Workers, fake: FakeBinance, operator: MemoryOperator
) -> None:
    await start_pipeline(workers, fake)
    amount = await operator.add("amount", amount_spec("SELL", "0.0000148", "0.00145"))
    buy = await operator.add("buy-amount", amount_spec("BUY", "0.00001", "0.0014"))
    percent = await operator.add("percent", {"symbol": SYMBOL, "side": "SELL", "quantity": "100",
                                             "trailingPercent": "1", "activationPrice": "0.00145"})
    await eventually(lambda: all(r.status.phase == "Armed" for r in (amount, buy, percent)), what="armed")
    await advance(fake, 5000, step=200)
    await eventually(lambda: all(r.status.phase == "Filled" and r.status.trigger_trade_id
                                 for r in (amount, buy, percent)), what="all three filled")
    assert amount.status.trigger_trade_id == offline_trigger("SELL", 5000, amount="0.0000148",
                                                             activation="0.00145") == FIRST_ID + 4847
    assert buy.status.trigger_trade_id == offline_trigger("BUY", 5000, amount="0.00001", activation="0.0014")
    assert percent.status.trigger_trade_id == FIRST_ID + 4848
    assert (amount.status.reference_price, amount.status.stop_price) == (Decimal("0.00149267"),
                                                                         Decimal("0.00147787"))


async def test_a_limit_stop_on_a_thin_book_is_partially_filled_once(
    workers: Workers, fake: FakeBinance, operator: MemoryOperator, probe: Probe
) -> None:
    # SELL 0.5 %, no activation: triggers at offset 311 (0.00141249); bound 0.00140543 (rounded up).
    fake.set_book(SYMBOL, bids=[["0.00141249", "40"], ["0.0014054", "100000"]])
    await start_pipeline(workers, fake, "testnet-keys")
    record = await operator.add("limit", {"symbol": SYMBOL, "side": "SELL", "quantity": "100",
                                          "trailingPercent": "0.5", **TESTNET,
                                          "execution": {"type": "Limit", "maxSlippagePercent": "0.5"}})
    await eventually(lambda: record.status.phase == "Armed", what="armed")
    await advance(fake, 400)
    cid = client_order_id(record.uid)
    await eventually(lambda: record.status.phase == "PartiallyFilled", what="PartiallyFilled")
    # The probe's queue and the operator's are two: the result may reach the probe a little later.
    [result] = await eventually(lambda: probe.results_for(cid), what="the OrderResult at the probe")
    assert (result.type, result.price, result.status) == ("LIMIT", Decimal("0.00140543"), "EXPIRED")
    order = record.status.order
    assert order is not None
    assert (order.orig_qty, order.executed_qty, order.remaining_qty, order.avg_price) == (
        Decimal("100"), Decimal("40"), Decimal("60"), Decimal("0.00141249"))
    assert record.status.trigger_trade_id == FIRST_ID + 311
    await advance(fake, 800)
    await asyncio.sleep(1)
    assert (fake.order_count(cid), fake.order_posts(cid)) == (1, 1)
    assert len(probe.results_for(cid)) == 1


async def test_a_quiet_stop_expires_by_the_clock_and_stays_expired_through_a_restart(
    workers: Workers, fake: FakeBinance, operator: MemoryOperator, probe: Probe
) -> None:
    started = await start_pipeline(workers, fake)
    deadline = ms_to_rfc3339(int(time.time() * 1000) + 1500)
    record = await operator.add("quiet", {"symbol": SYMBOL, "side": "SELL", "quantity": "100",
                                          "trailingPercent": "0.5", "expiresAt": deadline})
    await eventually(lambda: record.status.phase == "Expired", timeout=30, what="Expired by the clock")
    assert record.status.message == (f"expired at {deadline} (no trade reached the stop by then); "
                                     "no order was placed")
    [expired] = await eventually(lambda: probe.events_for(record.uid, "expired"), what="the expired event")
    assert expired.trade_id is None

    started["orchestrator"].kill()
    restarted = workers.orchestrator(SYMBOL)
    await restarted.wait_healthy()
    await advance(fake, 400)  # the trades that would have triggered it (offset 311)
    await asyncio.sleep(1)
    assert record.status.phase == "Expired"
    assert fake.order_count(client_order_id(record.uid)) == 0
    assert probe.results_for(client_order_id(record.uid)) == []
    assert probe.events_for(record.uid, "triggered") == []
