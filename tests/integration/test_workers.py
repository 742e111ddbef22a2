"""Workers as processes over the real RabbitMQ, with the fake Binance: flow, crashes, faults.

Every test compares what the system did with what the engine computes offline over the same
trades, so "survived" means "decided exactly as if nothing had happened".
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from decimal import Decimal
from typing import Any

import aio_pika
import pytest

from tests.fakebinance import DEFAULT_API_KEY, DEFAULT_API_SECRET, FakeBinance
from tests.harness import MemoryOperator, Probe, Vhost, Workers, eventually, metric_total
from trailingstop.bus import (
    DEAD_LETTER_QUEUE,
    MARKETDATA_EXCHANGE,
    ORDER_COMMANDS_EXCHANGE,
    STOP_COMMANDS_EXCHANGE,
    command_queue,
    executor_queue,
    tick_queue,
)
from trailingstop.core.contracts import client_order_id
from trailingstop.core.engine import Engine
from trailingstop.operator.stops import StopRecord
from trailingstop.tradefiles import demo_trades_path, load_trades

pytestmark = pytest.mark.timeout(180)

SYMBOL = "XRPETH"
TRADES = load_trades(demo_trades_path())
FIRST_ID = TRADES[0].trade_id
TESTNET = {"mode": "Testnet", "credentialsSecretRef": {"name": "keys"}}
KEYS = {"BINANCE_API_KEY": DEFAULT_API_KEY, "BINANCE_API_SECRET": DEFAULT_API_SECRET}

# (side, trailingPercent, activationPrice) -> offset of the trigger trade in the bundled data
STOPS: list[tuple[str, str, str | None]] = [
    ("SELL", "0.5", None),  # 311
    ("BUY", "0.5", "0.0014"),  # 1320
    ("BUY", "1", "0.0014"),  # 1498
    ("SELL", "1", "0.00143"),  # 2082
    ("SELL", "0.3", "0.00145"),  # 3333
    ("SELL", "0.5", "0.00145"),  # 3420
    ("BUY", "5", None),  # 4019
    ("SELL", "0.3", "0.00147"),  # 4259
    ("SELL", "1", "0.00145"),  # 4848
    ("SELL", "2", None),  # does not trigger in the data
]


def spec(side: str, trail: str, activation: str | None, quantity: str = "100", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"symbol": SYMBOL, "side": side, "quantity": quantity, "trailingPercent": trail, **extra}
    if activation is not None:
        body["activationPrice"] = activation
    return body


def expected_triggers(stops: list[tuple[str, str, str | None]], upto: int) -> dict[int, int | None]:
    """Stop index -> trigger trade id, computed offline over the first ``upto`` trades."""
    engine = Engine(SYMBOL)
    for index, (side, trail, activation) in enumerate(stops):
        engine.upsert(str(index), side, Decimal(trail), Decimal(activation) if activation else None)  # type: ignore[arg-type]
    for trade in TRADES[:upto]:
        engine.on_trade(trade.price, trade.trade_id, trade.time)
    return {index: engine.state(str(index)).trigger_trade_id for index in range(len(stops))}


async def advance(fake: FakeBinance, upto: int, step: int = 50, pause: float = 0.02) -> None:
    """Let trades happen up to offset ``upto`` at a steady pace (about step/pause trades a second)."""
    while fake.tape(SYMBOL).position < upto:
        await fake.advance(SYMBOL, min(step, upto - fake.tape(SYMBOL).position))
        await asyncio.sleep(pause)


async def start_pipeline(workers: Workers, fake: FakeBinance, route: str = "simulate") -> dict[str, Any]:
    executor_env = KEYS if route != "simulate" else {}
    started = {
        "executor": workers.executor(route, **executor_env),
        "orchestrator": workers.orchestrator(SYMBOL),
        "marketdata": workers.marketdata(SYMBOL),
    }
    for process in started.values():
        await process.wait_healthy()
    await fake.wait_for_stream_connections(1, timeout=10)
    return started


async def add_stops(
    operator: MemoryOperator, stops: list[tuple[str, str, str | None]], **extra: Any
) -> list[StopRecord]:
    records = [await operator.add(f"stop-{i}", spec(*stop, **extra)) for i, stop in enumerate(stops)]
    await eventually(lambda: all(r.status.phase in ("Armed", "Tracking") for r in records), what="stops armed")
    return records


def triggered_ids(records: list[StopRecord]) -> dict[int, int | None]:
    return {i: r.status.trigger_trade_id for i, r in enumerate(records)}


async def settled(records: list[StopRecord], want: dict[int, int | None], timeout: float) -> None:
    """Until every stop expected to trigger is Filled with its trigger details (the order's result
    and the trigger event travel on different queues, in either order); the caller then compares."""

    def done() -> bool:
        return all(r.status.phase == "Filled" and r.status.trigger_trade_id for i, r in enumerate(records) if want[i])

    with contextlib.suppress(AssertionError):
        await eventually(done, timeout=timeout, what="every expected stop filled with its trigger")


async def test_trades_flow_from_marketdata_to_an_order_result(
    workers: Workers, fake: FakeBinance, operator: MemoryOperator, probe: Probe
) -> None:
    await start_pipeline(workers, fake)
    [record] = await add_stops(operator, [("SELL", "1", "0.00145")])
    await advance(fake, 5000, step=200)

    cid = client_order_id(record.uid)
    await eventually(lambda: probe.results_for(cid), what="the OrderResult")
    await asyncio.sleep(1)  # room for a duplicate to show up
    [result] = probe.results_for(cid)
    assert (result.status, result.executed_qty, result.avg_price) == ("SIMULATED", Decimal("100"), Decimal("0.0014772"))
    status = await eventually(lambda: record.status if record.status.phase == "Filled" else None, what="Filled")
    assert status.trigger_trade_id == FIRST_ID + 4848 == expected_triggers([("SELL", "1", "0.00145")], 5000)[0]
    assert (status.reference_price, status.stop_price) == (Decimal("0.00149267"), Decimal("0.0014777433"))
    assert status.activated_trade_id == FIRST_ID + 3307
    ticks = [t.trade_id for t in probe.ticks]
    assert ticks == list(range(FIRST_ID + 1, FIRST_ID + 5001)) or ticks == list(range(FIRST_ID, FIRST_ID + 5000))


async def test_orchestrator_killed_mid_stream_loses_no_stop_and_orders_once(
    workers: Workers, fake: FakeBinance, operator: MemoryOperator
) -> None:
    route = "testnet-keys"
    started = await start_pipeline(workers, fake, route)
    records = await add_stops(operator, STOPS, **TESTNET)

    await advance(fake, 3200)
    started["orchestrator"].kill()  # kill -9, in the middle of the stream
    await advance(fake, 3800)  # trades keep happening while it is down
    restarted = workers.orchestrator(SYMBOL)
    await restarted.wait_healthy()
    await advance(fake, 5200, step=100)

    want = expected_triggers(STOPS, 5200)
    assert sum(1 for v in want.values() if v and v - FIRST_ID < 3200) >= 4, "some trigger before the kill"
    assert sum(1 for v in want.values() if v and 3200 <= v - FIRST_ID < 3800) >= 2, "some while it is down"
    await settled(records, want, timeout=30)
    assert triggered_ids(records) == want
    assert records[-1].status.phase == "Tracking"
    for index, record in enumerate(records):
        cid = client_order_id(record.uid)
        placed = 1 if want[index] else 0
        assert (fake.order_count(cid), fake.order_posts(cid)) == (placed, placed), record.name
    assert "restored" in restarted.log_text()


async def test_broker_restart_mid_stream_is_survived_by_every_worker(
    workers: Workers, fake: FakeBinance, operator: MemoryOperator, broker_restart: Any
) -> None:
    started = await start_pipeline(workers, fake)
    records = await add_stops(operator, STOPS)
    await advance(fake, 3000, step=100)
    await asyncio.to_thread(broker_restart)
    await advance(fake, 5200, step=100)

    for process in started.values():
        await process.wait_healthy(timeout=60)
        process.assert_running()
    want = expected_triggers(STOPS, 5200)
    await settled(records, want, timeout=60)
    assert triggered_ids(records) == want


async def test_executor_killed_after_the_exchange_executed_places_no_second_order(
    workers: Workers, fake: FakeBinance, operator: MemoryOperator, probe: Probe
) -> None:
    route = "testnet-keys"
    started = await start_pipeline(workers, fake, route)
    [record] = await add_stops(operator, [("SELL", "0.5", None)], **TESTNET)
    fake.faults.delay(60, count=1, paths=["/api/v3/order"], after_handling=True)  # executes, never answers

    await advance(fake, 400)
    cid = client_order_id(record.uid)
    await fake.wait_for_orders(1, timeout=20)
    started["executor"].kill()  # the order is on the exchange; its PlaceOrder is not acked
    assert probe.results_for(cid) == []
    workers.executor(route, **KEYS)  # redelivery: it must find the order, not place another

    [result] = await eventually(lambda: probe.results_for(cid), what="the OrderResult after the restart")
    assert result.status == "FILLED"
    assert (fake.order_count(cid), fake.order_posts(cid)) == (1, 1)
    await eventually(lambda: record.status.phase == "Filled", what="Filled")


async def test_exchange_5xx_after_executing_is_looked_up_not_resent(
    workers: Workers, fake: FakeBinance, operator: MemoryOperator, probe: Probe
) -> None:
    await start_pipeline(workers, fake, "testnet-keys")
    [record] = await add_stops(operator, [("SELL", "0.5", None)], **TESTNET)
    fake.faults.fail_orders(1, status=503, code=-1007)  # executes, then "execution status unknown"

    await advance(fake, 400)
    cid = client_order_id(record.uid)
    [result] = await eventually(lambda: probe.results_for(cid), what="the OrderResult")
    assert result.status == "FILLED"
    assert (fake.order_count(cid), fake.order_posts(cid)) == (1, 1)


async def test_exchange_rejection_reaches_the_status_with_binance_code_and_message(
    workers: Workers, fake: FakeBinance, operator: MemoryOperator
) -> None:
    await start_pipeline(workers, fake, "testnet-keys")
    fake.account().set_balances({"XRP": "10", "ETH": "100"})
    [record] = await add_stops(operator, [("SELL", "0.5", None)], **TESTNET)
    await advance(fake, 400)

    await eventually(lambda: record.status.phase == "Rejected", what="Rejected")
    order = record.status.order
    assert order is not None and order.error is not None
    assert (order.error.code, order.error.message) == (-2010, "Account has insufficient balance for requested action.")
    assert fake.order_count(client_order_id(record.uid)) == 0


async def test_invalid_quantity_is_reported_at_once(
    workers: Workers, fake: FakeBinance, operator: MemoryOperator
) -> None:
    await start_pipeline(workers, fake)
    record = await operator.add("odd-lot", spec("SELL", "1", None, quantity="10.5"))
    await eventually(lambda: record.status.phase == "Invalid", what="Invalid")
    assert "stepSize" in (record.status.message or "")


async def test_dropped_websocket_is_backfilled_with_no_trade_missing(
    workers: Workers, fake: FakeBinance, probe: Probe
) -> None:
    marketdata = workers.marketdata(SYMBOL)
    await marketdata.wait_healthy()
    await fake.wait_for_stream_connections(1, timeout=10)
    await advance(fake, 500)
    await eventually(lambda: len(probe.ticks) >= 450, what="ticks before the drop")
    fake.drop_streams(refuse_seconds=2)  # the socket dies and reconnecting fails for 2 s
    await advance(fake, 1500)  # meanwhile trades happen
    fake.silence_streams(6)  # then a socket that stays open but says nothing
    await advance(fake, 2200)
    await eventually(lambda: len(probe.ticks) >= 2200, timeout=40, what="every trade, backfilled")

    ids = [tick.trade_id for tick in probe.ticks]
    assert ids == list(range(ids[0], ids[0] + len(ids))), "no gap and no duplicate"
    assert ids[-1] == FIRST_ID + 2199
    metrics = await marketdata.metrics()
    assert metric_total(metrics, "trailingstop_marketdata_backfilled_trades_total") > 0
    assert metric_total(metrics, "trailingstop_marketdata_reconnects_total") >= 1


async def test_marketdata_stops_at_once_on_sigterm_in_a_quiet_market(
    workers: Workers, fake: FakeBinance, probe: Probe
) -> None:
    """python-binance's own socket close waits for the next message or a 10 s timeout; a pod's
    SIGTERM in a quiet market must not."""
    marketdata = workers.marketdata(SYMBOL)
    await marketdata.wait_healthy()
    await fake.wait_for_stream_connections(1, timeout=10)
    await advance(fake, 5)
    await eventually(lambda: len(probe.ticks) >= 5, what="the first ticks")
    await asyncio.sleep(1)  # then no trade for a while

    started = time.monotonic()
    assert await marketdata.stop(timeout=20) == 0
    assert time.monotonic() - started < 3
    await fake.wait_for_stream_connections(0, timeout=5)
    assert '"level": "error"' not in marketdata.log_text(), marketdata.log_text()


async def test_malformed_messages_are_dead_lettered_and_workers_carry_on(
    workers: Workers, fake: FakeBinance, operator: MemoryOperator, probe: Probe, vhost: Vhost
) -> None:
    started = await start_pipeline(workers, fake)
    # A worker is healthy once it reaches the broker, a little before it declares its queues; a
    # message sent before then would be unroutable, not malformed.
    for name in (tick_queue(SYMBOL).name, command_queue(SYMBOL).name, executor_queue("simulate").name):
        await eventually(functools.partial(_consumed, vhost, name), what=f"a consumer on {name}")
    connection = await aio_pika.connect_robust(vhost.url)
    channel = await connection.channel()
    garbage = {
        STOP_COMMANDS_EXCHANGE: (SYMBOL, b'{"v": 1, "op": "upsert", "symbol": "XRPETH", "stop": {"uid": "x"}}'),
        ORDER_COMMANDS_EXCHANGE: ("simulate", b"not json at all"),
        MARKETDATA_EXCHANGE: (SYMBOL, b'{"v": 2, "price": 1.5}'),
    }
    for exchange_name, (key, body) in garbage.items():
        exchange = await channel.get_exchange(exchange_name)
        await exchange.publish(aio_pika.Message(body), key)
    await connection.close()

    dead = await _wait_dead_letters(vhost, 3)
    assert dead == 3
    for process in started.values():
        await process.wait_healthy()
    [record] = await add_stops(operator, [("SELL", "0.5", None)])
    await advance(fake, 400)
    await eventually(lambda: record.status.phase == "Filled", what="a normal stop still fills")
    assert metric_total(await started["orchestrator"].metrics(), "trailingstop_bus_dead_lettered_total") == 2


async def test_health_and_metrics_endpoints(workers: Workers, fake: FakeBinance, operator: MemoryOperator) -> None:
    started = await start_pipeline(workers, fake)
    [record] = await add_stops(operator, [("SELL", "0.5", None)])
    await advance(fake, 400)
    await eventually(lambda: record.status.phase == "Filled", what="Filled")

    status, body = await started["marketdata"].health()
    assert status == 200 and body["checks"]["broker"]["ok"] and body["checks"]["stream"]["ok"]
    orchestrator_metrics = await started["orchestrator"].metrics()
    assert metric_total(orchestrator_metrics, "trailingstop_orchestrator_ticks_processed_total") >= 300
    assert metric_total(orchestrator_metrics, "trailingstop_orchestrator_tick_to_trigger_seconds_count") == 1
    assert metric_total(await started["marketdata"].metrics(), "trailingstop_marketdata_trades_received_total") >= 300
    assert metric_total(await started["executor"].metrics(), "trailingstop_executor_orders_total") == 1


async def _consumed(vhost: Vhost, name: str) -> bool:
    connection = await aio_pika.connect_robust(vhost.url)
    try:
        channel = await connection.channel()
        try:
            queue = await channel.declare_queue(name, passive=True)
        except aio_pika.exceptions.ChannelClosed:  # not declared yet
            return False
        return (queue.declaration_result.consumer_count or 0) > 0
    finally:
        await connection.close()


async def _wait_dead_letters(vhost: Vhost, count: int) -> int:
    """Messages in the dead-letter queue once ``count`` arrived (or after 30 s)."""
    connection = await aio_pika.connect_robust(vhost.url)
    try:
        channel = await connection.channel()
        for _ in range(300):
            queue = await channel.declare_queue(DEAD_LETTER_QUEUE, passive=True)
            waiting = queue.declaration_result.message_count or 0
            if waiting >= count:
                break
            await asyncio.sleep(0.1)
        return waiting
    finally:
        await connection.close()


def _trace_id(headers: dict[str, Any]) -> str:
    """The trace id of a W3C traceparent header: 00-<trace id>-<span id>-<flags>."""
    return str(headers["traceparent"]).split("-")[1]


async def test_one_trace_follows_a_tick_to_its_order_result_and_no_secret_is_logged(
    workers: Workers, fake: FakeBinance, operator: MemoryOperator, probe: Probe
) -> None:
    tracing = {"TRAILINGSTOP_TRACING": "on"}
    for process in (workers.executor("testnet-keys", **KEYS, **tracing), workers.orchestrator(SYMBOL, **tracing),
                    workers.marketdata(SYMBOL, **tracing)):
        await process.wait_healthy()
    await fake.wait_for_stream_connections(1, timeout=10)
    [record] = await add_stops(operator, [("SELL", "0.5", None)], **TESTNET)
    fake.faults.rate_limit(1, retry_after=1, paths=["/api/v3/order"])  # one more code path that logs
    await advance(fake, 400)

    cid = client_order_id(record.uid)
    await eventually(lambda: probe.results_for(cid), timeout=30, what="the OrderResult")
    [(_, result_headers)] = [(c, h) for c, h in probe.headers if c == cid]
    trigger = await eventually(lambda: record.status.trigger_trade_id, what="the trigger details")
    trace = _trace_id(result_headers)
    assert _trace_id(probe.tick_headers[trigger]) == trace, "the triggering tick and its order result share a trace"
    records = [r for p in workers.started for r in p.log_records()]
    assert {r["trace_id"] for r in records if "triggered at" in r["message"]} == {trace}
    assert {r["trace_id"] for r in records if r["message"].startswith(f"order {cid} FILLED")} == {trace}

    logs = "\n".join(process.log_text() for process in workers.started)
    assert "order" in logs and "rate limit" in logs.lower()
    for secret in (DEFAULT_API_KEY, DEFAULT_API_SECRET, "guest:guest"):
        assert secret not in logs, f"a log line carries {secret!r}"


async def test_marketdata_replays_a_trade_file_and_stays_up(workers: Workers, probe: Probe, tmp_path: Any) -> None:
    trades = tmp_path / "XRPETH-aggTrades-slice.csv"
    lines = demo_trades_path().read_text().splitlines()[:2000]
    trades.write_text("\n".join(lines) + "\n")
    marketdata = workers.marketdata(SYMBOL, source=f"replay:{trades}")
    await marketdata.wait_healthy()
    await eventually(lambda: len(probe.ticks) >= 2000, timeout=30, what="every trade of the file")
    assert [t.trade_id for t in probe.ticks] == [t.trade_id for t in TRADES[:2000]]
    assert [t.price for t in probe.ticks] == [t.price for t in TRADES[:2000]]
    assert {t.source for t in probe.ticks} == {"replay"}
    status, body = await marketdata.health()
    assert status == 200 and body["checks"]["stream"]["detail"] == "replay finished"
