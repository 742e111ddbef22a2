"""Broker tenancy on the real RabbitMQ: each namespace in its own vhost, with its own user.

The tenants are made the way the operator makes them (``ManagementApi.put_tenant``, the
operator's own connection declaring the topology); the workers are real processes given only the
tenant's credentials, exactly what the ``ts-amqp`` Secret of their namespace holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aio_pika
import aiormq
import pytest

from tests.fakebinance import DEFAULT_API_KEY, DEFAULT_API_SECRET, DEFAULT_BALANCES, FakeBinance
from tests.fakebinance.market import Account
from tests.harness import MemoryOperator, Workers, eventually
from tests.integration.test_workers import SYMBOL, add_stops, advance, expected_triggers, start_pipeline
from trailingstop.bus import (
    OPERATOR_ORDER_EVENTS_QUEUE,
    ORDER_COMMANDS_EXCHANGE,
    STOP_COMMANDS_EXCHANGE,
    Bus,
    tick_queue,
)
from trailingstop.core.contracts import StopCommand, client_order_id
from trailingstop.operator.brokeradmin import ManagementApi, credentials_of
from trailingstop.operator.tenancy import amqp_url as tenant_url
from trailingstop.operator.tenancy import tenant_name

pytestmark = pytest.mark.timeout(240)

# One stop per tenant, each triggering at a different trade of the shared tape.
STOP_A = ("SELL", "0.5", None)
STOP_B = ("SELL", "1", "0.00145")
OTHER_KEY, OTHER_SECRET = "tenantBApiKey", "tenantBApiSecret"


@dataclass
class TenantUnderTest:
    namespace: str
    name: str
    worker_url: str
    operator_bus: Bus  # the operator's own (admin) connection, which declared the topology


@pytest.fixture
async def admin(amqp_url: str, management_url: str) -> AsyncIterator[ManagementApi]:
    user, password = credentials_of(amqp_url)
    api = ManagementApi(management_url, user, password)
    await api.check()
    yield api
    await api.close()


@pytest.fixture
async def tenants(amqp_url: str, admin: ManagementApi) -> AsyncIterator[dict[str, TenantUnderTest]]:
    """Tenants ``a`` and ``b`` of one operator release (a fresh instance name per test)."""
    instance = f"it{uuid.uuid4().hex[:8]}.trailingstop"
    made: dict[str, TenantUnderTest] = {}
    try:
        for namespace in ("a", "b"):
            name = tenant_name(instance, namespace)
            password = uuid.uuid4().hex
            await admin.put_tenant(name, name, password)
            bus = await Bus(tenant_url(amqp_url, name), f"operator/{namespace}").connect()
            made[namespace] = TenantUnderTest(namespace, name, tenant_url(amqp_url, name, name, password), bus)
        yield made
    finally:
        for tenant in made.values():
            await tenant.operator_bus.close()
            await admin.remove_tenant(tenant.name, tenant.name)


async def test_tenancy_workers_run_the_whole_flow_with_least_privilege_credentials(
    tenants: dict[str, TenantUnderTest], fake: FakeBinance, tmp_path: Path
) -> None:
    """Marketdata, orchestrator and a Testnet executor, each with nothing but the tenant's user."""
    tenant = tenants["a"]
    workers = Workers(tenant.worker_url, fake, tmp_path)
    operator = await MemoryOperator(tenant.operator_bus, namespace="a").start()
    try:
        started = await start_pipeline(workers, fake, "testnet-keys")
        keys = {"mode": "Testnet", "credentialsSecretRef": {"name": "keys"}}
        [record] = await add_stops(operator, [STOP_A], **keys)
        await advance(fake, 600)
        await eventually(lambda: record.status.phase == "Filled", what="Filled")
        assert record.status.trigger_trade_id == expected_triggers([STOP_A], 600)[0]
        cid = client_order_id(record.uid)
        assert (fake.order_count(cid), fake.orders(cid)[0].api_key) == (1, DEFAULT_API_KEY)
        for process in started.values():
            assert "ACCESS_REFUSED" not in process.log_text(), process.log_tail()
    finally:
        await operator.stop()
        await workers.stop_all()


async def test_isolation_same_symbol_and_secret_name_in_two_namespaces_never_meet(
    tenants: dict[str, TenantUnderTest], fake: FakeBinance, tmp_path: Path
) -> None:
    """Two namespaces, one symbol, Secrets of one name with different keys: every orchestrator sees
    every tick (its trigger equals the offline engine's), each order goes out with its own keys."""
    fake.add_account(Account(OTHER_KEY, OTHER_SECRET, dict(DEFAULT_BALANCES)))
    keys = {"a": (DEFAULT_API_KEY, DEFAULT_API_SECRET), "b": (OTHER_KEY, OTHER_SECRET)}
    stops = {"a": STOP_A, "b": STOP_B}
    route = "testnet-binance-keys"  # the same Secret name in both namespaces
    pools, operators, records = [], {}, {}
    try:
        for namespace, tenant in tenants.items():
            workers = Workers(tenant.worker_url, fake, tmp_path / namespace)
            (tmp_path / namespace).mkdir()
            pools.append(workers)
            key, secret = keys[namespace]
            workers.executor(route, BINANCE_API_KEY=key, BINANCE_API_SECRET=secret)
            workers.orchestrator(SYMBOL)
            workers.marketdata(SYMBOL)
            for process in workers.started:
                await process.wait_healthy()
            operators[namespace] = await MemoryOperator(tenant.operator_bus, namespace=namespace).start()
        await fake.wait_for_stream_connections(2, timeout=15)
        spec = {"mode": "Testnet", "credentialsSecretRef": {"name": "binance-keys"}}
        for namespace, operator in operators.items():
            [records[namespace]] = await add_stops(operator, [stops[namespace]], **spec)
        await advance(fake, 5000, step=100)
        for namespace, record in records.items():
            await eventually(lambda r=record: r.status.phase == "Filled", what=f"{namespace} Filled")
            assert record.status.trigger_trade_id == expected_triggers([stops[namespace]], 5000)[0], namespace
            [order] = fake.orders(client_order_id(record.uid))
            assert order.api_key == keys[namespace][0], namespace
        assert fake.order_count() == 2
    finally:
        for operator in operators.values():
            await operator.stop()
        for workers in pools:
            await workers.stop_all()


async def test_isolation_a_workers_credentials_are_refused_outside_its_own_queues(
    tenants: dict[str, TenantUnderTest],
) -> None:
    a, b = tenants["a"], tenants["b"]
    # Namespace b's vhost, with namespace a's user: the broker refuses the connection itself
    # (Connection.Close "access to vhost refused" instead of Connection.OpenOk).
    with pytest.raises(aiormq.exceptions.AMQPError):
        await aio_pika.connect(tenant_url(a.worker_url, b.name))
    await (await aio_pika.connect(b.worker_url)).close()  # the same vhost with b's own user: fine

    connection = await aio_pika.connect(a.worker_url)
    try:
        await _refused(connection, _publish_command)  # only the operator commands orchestrators
        await _refused(connection, _publish_to_operator_queue)
        await _refused(connection, _consume_operator_events)
        await _refused(connection, _declare_operator_queue)
        await _refused(connection, _delete_exchange)
        # What a worker legitimately does still works on the same connection.
        channel = await connection.channel()
        queue = await channel.declare_queue(tick_queue("BTCUSDT").name, durable=True,
                                            arguments=tick_queue("BTCUSDT").arguments)
        await queue.bind(tick_queue("BTCUSDT").exchange, "BTCUSDT")
    finally:
        await connection.close()


async def _refused(connection: aio_pika.abc.AbstractConnection, attempt: object) -> None:
    channel = await connection.channel()
    with pytest.raises(aiormq.exceptions.ChannelAccessRefused):
        await attempt(channel)  # type: ignore[operator]
        await asyncio.sleep(0.5)  # an unconfirmed refusal arrives as a channel close
        await channel.declare_queue(passive=True, name=tick_queue("BTCUSDT").name)
    with contextlib.suppress(Exception):
        await channel.close()


async def _publish_command(channel: aio_pika.abc.AbstractChannel) -> None:
    exchange = await channel.get_exchange(STOP_COMMANDS_EXCHANGE, ensure=False)
    command = StopCommand(op="synced", symbol="BTCUSDT")
    await exchange.publish(aio_pika.Message(command.to_json()), "BTCUSDT")


async def _publish_to_operator_queue(channel: aio_pika.abc.AbstractChannel) -> None:
    await channel.default_exchange.publish(aio_pika.Message(b"{}"), OPERATOR_ORDER_EVENTS_QUEUE)


async def _consume_operator_events(channel: aio_pika.abc.AbstractChannel) -> None:
    queue = await channel.get_queue(OPERATOR_ORDER_EVENTS_QUEUE, ensure=False)

    async def ignore(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        return None

    await queue.consume(ignore)


async def _declare_operator_queue(channel: aio_pika.abc.AbstractChannel) -> None:
    await channel.declare_queue("operator.stop-events-2", durable=True)


async def _delete_exchange(channel: aio_pika.abc.AbstractChannel) -> None:
    await channel.exchange_delete(ORDER_COMMANDS_EXCHANGE)
