"""RabbitMQ: the topology of DESIGN §5, typed publish and consume of the contract models.

Everything is declared idempotently by whoever needs it first, always with the same arguments (a
queue declared twice with different arguments is a channel error), so start-up order never matters:

=========================  ======  ==================================================================
exchange                   type    queues bound to it
=========================  ======  ==================================================================
``marketdata.events``      topic   ``orchestrator.<SYMBOL>.ticks``: classic, bounded, drop-head
``stop.commands``          direct  ``orchestrator.<SYMBOL>.commands``: quorum
``stop.events``            topic   ``operator.stop-events`` (``#``): quorum
``order.commands``         direct  ``executor.<route>.orders``: quorum, delivery limit
``order.events``           fanout  ``operator.order-events``: quorum
``trailingstop.dead-letter`` fanout ``trailingstop.dead-letters``: every message we could not use
=========================  ======  ==================================================================

Ticks are transient and their queue drops the oldest when full, so a slow orchestrator acts on
fresh prices (it refills any gap from Binance's REST API by trade id). Everything else is
persistent and published with confirms. A message that does not parse is copied to the
dead-letter exchange with the reason in its headers, acked, and counted; it never stops a worker.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
    ExchangeType,
)
from aio_pika.exceptions import AMQPException, ChannelInvalidStateError
from pydantic import ValidationError

from trailingstop import telemetry
from trailingstop.contracts import Message, OrderResult, PlaceOrder, PriceTick, StopCommand, StopEvent

log = logging.getLogger(__name__)

MARKETDATA_EXCHANGE = "marketdata.events"
STOP_COMMANDS_EXCHANGE = "stop.commands"
STOP_EVENTS_EXCHANGE = "stop.events"
ORDER_COMMANDS_EXCHANGE = "order.commands"
ORDER_EVENTS_EXCHANGE = "order.events"
DEAD_LETTER_EXCHANGE = "trailingstop.dead-letter"

OPERATOR_STOP_EVENTS_QUEUE = "operator.stop-events"
OPERATOR_ORDER_EVENTS_QUEUE = "operator.order-events"
DEAD_LETTER_QUEUE = "trailingstop.dead-letters"

TICK_QUEUE_MAX_LENGTH = 10_000
ORDER_DELIVERY_LIMIT = 20

EXCHANGES: dict[str, ExchangeType] = {
    MARKETDATA_EXCHANGE: ExchangeType.TOPIC,
    STOP_COMMANDS_EXCHANGE: ExchangeType.DIRECT,
    STOP_EVENTS_EXCHANGE: ExchangeType.TOPIC,
    ORDER_COMMANDS_EXCHANGE: ExchangeType.DIRECT,
    ORDER_EVENTS_EXCHANGE: ExchangeType.FANOUT,
    DEAD_LETTER_EXCHANGE: ExchangeType.FANOUT,
}

_QUORUM: dict[str, Any] = {"x-queue-type": "quorum", "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE}

M = TypeVar("M", bound=Message)
Handler = Callable[[M, dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True)
class QueueSpec:
    """A queue, its arguments and its binding: the one definition every declarer uses."""

    name: str
    exchange: str
    routing_key: str
    arguments: dict[str, Any] = field(default_factory=dict)


def tick_queue(symbol: str, max_length: int = TICK_QUEUE_MAX_LENGTH) -> QueueSpec:
    """Only the symbol's orchestrator declares it (``TRAILINGSTOP_TICK_QUEUE_MAX`` sets the bound)."""
    return QueueSpec(
        f"orchestrator.{symbol}.ticks",
        MARKETDATA_EXCHANGE,
        symbol,
        {"x-max-length": max_length, "x-overflow": "drop-head"},
    )


def command_queue(symbol: str) -> QueueSpec:
    return QueueSpec(f"orchestrator.{symbol}.commands", STOP_COMMANDS_EXCHANGE, symbol, dict(_QUORUM))


def executor_queue(route: str) -> QueueSpec:
    return QueueSpec(
        f"executor.{route}.orders",
        ORDER_COMMANDS_EXCHANGE,
        route,
        {**_QUORUM, "x-delivery-limit": ORDER_DELIVERY_LIMIT},
    )


OPERATOR_QUEUES = (
    QueueSpec(OPERATOR_STOP_EVENTS_QUEUE, STOP_EVENTS_EXCHANGE, "#", dict(_QUORUM)),
    QueueSpec(OPERATOR_ORDER_EVENTS_QUEUE, ORDER_EVENTS_EXCHANGE, "", dict(_QUORUM)),
)
DEAD_LETTERS = QueueSpec(DEAD_LETTER_QUEUE, DEAD_LETTER_EXCHANGE, "", {"x-queue-type": "quorum"})


class PublishFailed(Exception):
    """A publish that could not be delivered to the broker (e.g. the connection is down)."""


class Bus:
    """One robust connection with a confirming channel, a fast channel and consumer channels.

    aio-pika holds channels weakly, so this object keeps a reference to each; after a reconnect
    the robust connection re-declares exchanges, queues, bindings and consumers by itself.
    """

    def __init__(self, url: str, name: str) -> None:
        self.url = url
        self.name = name
        self.connection: AbstractRobustConnection | None = None
        self._confirming: AbstractChannel | None = None
        self._fast: AbstractChannel | None = None
        self._consumers: list[AbstractChannel] = []
        self._exchanges: dict[tuple[str, bool], AbstractExchange] = {}
        self.malformed = 0  # messages dead-lettered because they did not parse
        self._declared: set[str] = set()
        self._drains: list[_Consumer] = []

    # --- connection ------------------------------------------------------------------------------

    async def connect(self, timeout: float = 30.0) -> Bus:
        self.connection = await asyncio.wait_for(
            aio_pika.connect_robust(self.url, client_properties={"connection_name": self.name}),
            timeout,
        )
        self._confirming = await self.connection.channel(publisher_confirms=True)
        self._fast = await self.connection.channel(publisher_confirms=False)
        await self.declare_topology()
        return self

    async def close(self) -> None:
        for consumer in self._drains:
            await consumer.stop()
        if self.connection is not None:
            await self.connection.close()
            self.connection = None

    @property
    def connected(self) -> bool:
        connection = self.connection
        return connection is not None and not connection.is_closed and connection.connected.is_set()

    async def wait_connected(self) -> None:
        if self.connection is not None:
            await self.connection.connected.wait()

    # --- topology ----------------------------------------------------------------------------------

    async def declare_topology(self) -> None:
        """Exchanges, the operator's queues and the dead-letter queue: what every component needs."""
        channel = self._channel(confirm=True)
        for name, kind in EXCHANGES.items():
            exchange = await channel.declare_exchange(name, kind, durable=True)
            self._exchanges[(name, True)] = exchange
        for spec in (*OPERATOR_QUEUES, DEAD_LETTERS):
            await self.declare(spec)

    async def declare(self, spec: QueueSpec, channel: AbstractChannel | None = None) -> AbstractQueue:
        channel = channel or self._channel(confirm=True)
        queue = await channel.declare_queue(spec.name, durable=True, arguments=spec.arguments)
        await queue.bind(spec.exchange, spec.routing_key)
        return queue

    # --- publishing ------------------------------------------------------------------------------

    async def publish(
        self,
        message: Message,
        exchange: str,
        routing_key: str,
        *,
        persistent: bool = True,
        confirm: bool = True,
        retry: bool = True,
    ) -> None:
        """Publish ``message``. With ``confirm``, wait for the broker's ack; with ``retry``, keep
        trying through a broker outage (the caller's input stays unacked meanwhile)."""
        body = aio_pika.Message(
            message.to_json(),
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT if persistent else aio_pika.DeliveryMode.NOT_PERSISTENT,
            headers=telemetry.inject_headers(),
            type=type(message).__name__,
        )
        delay = 0.2
        while True:
            try:
                target = await self._exchange(exchange, confirm)
                await target.publish(body, routing_key, mandatory=False)
                return
            except (AMQPException, ChannelInvalidStateError, ConnectionError, RuntimeError) as exc:
                if not retry:
                    raise PublishFailed(f"publish to {exchange}/{routing_key} failed: {exc!r}") from exc
                log.warning("publish to %s/%s failed (%r); retrying in %.1fs", exchange, routing_key, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                await self.wait_connected()

    async def publish_tick(self, tick: PriceTick) -> None:
        """Fast path: transient, unconfirmed, never retried (the orchestrator refills gaps)."""
        await self.publish(tick, MARKETDATA_EXCHANGE, tick.symbol, persistent=False, confirm=False, retry=False)

    async def publish_command(self, command: StopCommand) -> None:
        await self._ensure(command_queue(command.symbol))
        await self.publish(command, STOP_COMMANDS_EXCHANGE, command.symbol)

    async def publish_stop_event(self, event: StopEvent) -> None:
        await self.publish(event, STOP_EVENTS_EXCHANGE, event.routing_key)

    async def publish_order(self, order: PlaceOrder) -> None:
        await self._ensure(executor_queue(order.route))
        await self.publish(order, ORDER_COMMANDS_EXCHANGE, order.route)

    async def publish_result(self, result: OrderResult) -> None:
        await self.publish(result, ORDER_EVENTS_EXCHANGE, "")

    # --- consuming -------------------------------------------------------------------------------

    async def consume(
        self,
        spec: QueueSpec,
        model: type[M],
        handler: Handler[M],
        *,
        prefetch: int = 100,
        ordered: bool = True,
        ack_every: int = 1,
    ) -> AbstractQueue:
        """Declare ``spec`` on its own channel and feed each parsed message to ``handler``.

        A message is acked once its handler returned (with ``ack_every`` > 1, in batches, and
        always when the consumer has caught up). A message that does not parse is dead-lettered;
        one whose handler fails is retried, then dead-lettered. With ``ordered`` (the default)
        handlers run one at a time in delivery order; otherwise concurrently.
        """
        assert self.connection is not None, "connect() first"
        assert ordered or ack_every == 1, "batched acks need ordered handling"
        channel = await self.connection.channel(publisher_confirms=False)
        await channel.set_qos(prefetch_count=prefetch)
        self._consumers.append(channel)
        queue = await self.declare(spec, channel)
        consumer = _Consumer(self, spec.name, model, handler, ordered, ack_every)
        self._drains.append(consumer)
        await queue.consume(consumer.on_message)
        return queue

    async def _handle(
        self, incoming: AbstractIncomingMessage, queue: str, model: type[M], handler: Handler[M]
    ) -> bool:
        """Parse and handle one message. True when it is the caller's to ack; False when it was
        settled here (dead-lettered or put back)."""
        try:
            parsed = model.from_json(incoming.body)
        except ValidationError as exc:
            await self._dead_letter(incoming, queue, f"malformed {model.__name__}: {exc}")
            return False
        try:
            await handler(parsed, dict(incoming.headers) if incoming.headers else {})
        except Exception as exc:  # the consumer boundary: log, retry, then park the message
            await self._retry_or_park(incoming, queue, exc)
            return False
        return True

    async def _retry_or_park(self, incoming: AbstractIncomingMessage, queue: str, exc: Exception) -> None:
        """A quorum queue counts deliveries and dead-letters past its ``x-delivery-limit``, so it
        is simply requeued (after a pause growing with the count); elsewhere one retry is given."""
        deliveries = (incoming.headers or {}).get("x-delivery-count")
        if isinstance(deliveries, int):
            log.exception("handler failed on a message from %s (delivery %d); requeueing", queue, deliveries + 1)
            await asyncio.sleep(min(0.5 * (deliveries + 1), 5.0))
            await incoming.nack(requeue=True)
        elif incoming.redelivered:
            log.exception("handler failed twice on a message from %s; dead-lettering it", queue)
            await self._dead_letter(incoming, queue, f"handler failed: {exc!r}")
        else:
            log.exception("handler failed on a message from %s; it will be redelivered", queue)
            await incoming.nack(requeue=True)

    async def _dead_letter(self, incoming: AbstractIncomingMessage, queue: str, reason: str) -> None:
        self.malformed += 1
        telemetry.DEAD_LETTERED.labels(queue=queue).inc()
        log.warning("dead-lettering a message from %s: %s", queue, reason[:500])
        copy = aio_pika.Message(
            incoming.body,
            content_type=incoming.content_type,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            headers={**(incoming.headers or {}), "x-trailingstop-queue": queue, "x-trailingstop-error": reason[:1000]},
        )
        exchange = await self._exchange(DEAD_LETTER_EXCHANGE, True)
        await exchange.publish(copy, "", mandatory=False)
        await incoming.ack()

    # --- internals ---------------------------------------------------------------------------------

    async def _ensure(self, spec: QueueSpec) -> None:
        """Declare a consumer's queue before the first publish to it, so nothing is unroutable
        while its consumer is still starting (queues are durable: once is enough)."""
        if spec.name not in self._declared:
            await self.declare(spec)
            self._declared.add(spec.name)

    def _channel(self, confirm: bool) -> AbstractChannel:
        channel = self._confirming if confirm else self._fast
        if channel is None:
            raise RuntimeError("the bus is not connected")
        return channel

    async def _exchange(self, name: str, confirm: bool) -> AbstractExchange:
        exchange = self._exchanges.get((name, confirm))
        if exchange is None:
            exchange = await self._channel(confirm).get_exchange(name, ensure=False)
            self._exchanges[(name, confirm)] = exchange
        return exchange


class _Consumer:
    """One queue's messages to one handler. aio-pika runs each delivery as its own task; for
    ordered handling the delivery task only appends to an inbox that a single task drains, which
    costs less than handing a lock from task to task and keeps delivery order."""

    def __init__(self, bus: Bus, queue: str, model: type[Any], handler: Handler[Any], ordered: bool,
                 ack_every: int) -> None:
        self.bus = bus
        self.queue = queue
        self.model = model
        self.handler = handler
        self.ordered = ordered
        self.ack_every = ack_every
        self.inbox: collections.deque[AbstractIncomingMessage] = collections.deque()
        self.wakeup = asyncio.Event()
        self.task = asyncio.create_task(self._drain()) if ordered else None

    async def on_message(self, incoming: AbstractIncomingMessage) -> None:
        if self.ordered:
            self.inbox.append(incoming)
            self.wakeup.set()
        elif await self.bus._handle(incoming, self.queue, self.model, self.handler):
            await incoming.ack()

    async def _drain(self) -> None:
        unacked: AbstractIncomingMessage | None = None
        count = 0
        while True:
            await self.wakeup.wait()
            self.wakeup.clear()
            while self.inbox:
                incoming = self.inbox.popleft()
                if await self.bus._handle(incoming, self.queue, self.model, self.handler):
                    unacked, count = incoming, count + 1
                if count >= self.ack_every and unacked is not None:
                    await _ack_through(unacked)
                    unacked, count = None, 0
            if unacked is not None:  # caught up: settle what was handled
                await _ack_through(unacked)
                unacked, count = None, 0

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task


async def _ack_through(incoming: AbstractIncomingMessage) -> None:
    """Ack this delivery and every earlier one of its channel (all handled, in order)."""
    try:
        await incoming.ack(multiple=True)
    except (AMQPException, ChannelInvalidStateError, RuntimeError) as exc:
        # The channel this came on is gone (broker restart): the broker redelivers what was not
        # acked, and consumers drop what they have already seen.
        log.info("could not ack after a channel loss (%r); the broker will redeliver", exc)
