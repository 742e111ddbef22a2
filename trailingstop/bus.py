"""RabbitMQ: the topology of DESIGN §5, typed publish and consume of the contract models.

Each namespace's stops live in their own virtual host (a *tenant*, see
:mod:`trailingstop.operator.tenancy`), so the names below are per tenant and never meet another
namespace's or another operator release's. The operator owns the topology: it declares the
exchanges, its own queues and the dead-letter queue when it sets the tenant up. A worker only
checks that the exchanges exist and declares its own queues, which is all its broker user may do
(:func:`worker_permissions`). Queues are declared idempotently by whoever needs them first, always
with the same arguments (a queue declared twice with different arguments is a channel error):

=========================  ======  ==================================================================
exchange                   type    queues bound to it
=========================  ======  ==================================================================
``marketdata.events``      topic   ``orchestrator.<SYMBOL>.ticks``: classic, bounded, drop-head
                                  ``orchestrator.<SYMBOL>.book`` (key ``<SYMBOL>.book``): the same
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
from typing import Any, Literal, TypeVar

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractQueue,
    AbstractRobustConnection,
    ExchangeType,
)
from aio_pika.exceptions import AMQPConnectionError, AMQPException, ChannelInvalidStateError
from aiormq.abc import DeliveredMessage
from pydantic import ValidationError

from trailingstop import telemetry
from trailingstop.core.contracts import (
    BookTick,
    Message,
    OrderResult,
    PlaceOrder,
    PriceTick,
    StopCommand,
    StopEvent,
    book_routing_key,
)

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

# What a connection does with the vhost's exchanges and the operator's queues: ``declare`` them
# (the operator, in a tenant's vhost), ``check`` that they exist (a worker, whose broker user may
# not declare them), or nothing (the operator's own connection in its home vhost).
Topology = Literal["declare", "check", "none"]
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


def book_queue(symbol: str, max_length: int = TICK_QUEUE_MAX_LENGTH) -> QueueSpec:
    """The symbol's BookTicks (top-of-book quotes): declared by its orchestrator once it runs a
    BestBidAsk stop. Transient and drop-head like trades: a quote is only worth its freshness, and
    a lost one is a gap the orchestrator sees and reports."""
    return QueueSpec(
        f"orchestrator.{symbol}.book",
        MARKETDATA_EXCHANGE,
        book_routing_key(symbol),
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


def worker_permissions() -> dict[str, str]:
    """What a tenant's workers may do in its vhost, as RabbitMQ permission regexes.

    * configure: declare (and so delete) the workers' own queues, nothing else; the exchanges are
      the operator's, so a worker only checks them passively, which needs no permission.
    * write: publish ticks, stop events, orders, order results and dead letters, and bind its own
      queues. Not ``stop.commands``: only the operator tells an orchestrator what to run.
    * read: consume its own queues and bind them to the exchanges it listens to. Not the
      operator's queues: a worker never sees the operator's events or other workers' orders
      beyond its own queue.

    Topic permissions are not needed: every exchange is the tenant's alone.
    """
    own_queues = r"(orchestrator|executor)\..+"
    published = r"marketdata\.events|stop\.events|order\.commands|order\.events|trailingstop\.dead-letter"
    return {
        "configure": f"^{own_queues}$",
        "write": f"^({published}|{own_queues})$",
        "read": rf"^(marketdata\.events|stop\.commands|order\.commands|{own_queues})$",
    }


class PublishFailed(Exception):
    """A publish that could not be delivered to the broker (e.g. the connection is down)."""


class TopologyMissing(Exception):
    """The vhost lacks the exchanges a worker needs: its operator has not set the tenant up yet."""


class Bus:
    """One robust connection with a confirming channel, a fast channel and consumer channels.

    aio-pika holds channels weakly, so this object keeps a reference to each; after a reconnect
    the robust connection re-declares exchanges, queues, bindings and consumers by itself.
    """

    def __init__(self, url: str, name: str, *, topology: Topology = "declare") -> None:
        self.url = url
        self.name = name
        self.topology = topology
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
        if self.topology == "declare":
            await self.declare_topology()
        elif self.topology == "check":
            await self._check_topology()
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

    async def _check_topology(self) -> None:
        """Passive declarations (no permission needed): a missing exchange closes only a probe
        channel, and says the operator has not finished setting up the tenant."""
        assert self.connection is not None
        probe = await self.connection.channel(publisher_confirms=False)
        try:
            for name in EXCHANGES:
                await probe.declare_exchange(name, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity as exc:
            raise TopologyMissing(f"exchange {name} does not exist in this vhost yet") from exc
        finally:
            if not probe.is_closed:
                await probe.close()

    async def queue_state(self, name: str) -> tuple[int, int] | None:
        """(messages, consumers) of an existing queue, None if there is none (a passive
        declaration, on a channel of its own because the broker closes it when the queue is missing)."""
        assert self.connection is not None
        probe = await self.connection.channel(publisher_confirms=False)
        try:
            queue = await probe.declare_queue(name, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            return None
        finally:
            if not probe.is_closed:
                await probe.close()
        declared = queue.declaration_result
        return int(declared.message_count or 0), int(declared.consumer_count or 0)

    async def delete_queue(self, name: str) -> None:
        """Delete a queue, messages and all. (``if_empty``/``if_unused`` would be atomic, but
        RabbitMQ refuses them for quorum queues by closing the whole connection: callers check
        :meth:`queue_state` first.)"""
        assert self.connection is not None
        channel = await self.connection.channel(publisher_confirms=False)
        try:
            await channel.queue_delete(name)
        finally:
            if not channel.is_closed:
                await channel.close()

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

    async def publish_book(self, tick: BookTick) -> None:
        """Like ticks: transient, unconfirmed, never retried (a lost quote is a reported gap)."""
        await self.publish(tick, MARKETDATA_EXCHANGE, tick.routing_key, persistent=False, confirm=False, retry=False)

    async def publish_command(self, command: StopCommand) -> None:
        await self._declare_once(command_queue(command.symbol))
        await self.publish(command, STOP_COMMANDS_EXCHANGE, command.symbol)

    async def publish_stop_event(self, event: StopEvent) -> None:
        await self.publish(event, STOP_EVENTS_EXCHANGE, event.routing_key)

    async def publish_order(self, order: PlaceOrder) -> None:
        await self._declare_once(executor_queue(order.route))
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
        consumer = _Consumer(self, channel, spec.name, model, handler, ordered, ack_every)
        await consumer.start()
        self._drains.append(consumer)
        return queue

    async def stop_consuming(self, queue: str) -> None:
        """Cancel this connection's consumers of ``queue`` (before deleting it, say)."""
        for consumer in [c for c in self._drains if c.queue == queue]:
            await consumer.cancel()
            self._drains.remove(consumer)

    async def retry_or_park(self, delivery: Delivery, queue: str, exc: Exception) -> None:
        """A quorum queue counts deliveries and dead-letters past its ``x-delivery-limit``, so it
        is simply requeued (after a pause growing with the count); elsewhere one retry is given."""
        deliveries = delivery.headers.get("x-delivery-count")
        if isinstance(deliveries, int):
            log.exception("handler failed on a message from %s (delivery %d); requeueing", queue, deliveries + 1)
            await asyncio.sleep(min(0.5 * (deliveries + 1), 5.0))
            await delivery.nack(requeue=True)
        elif delivery.redelivered:
            log.exception("handler failed twice on a message from %s; dead-lettering it", queue)
            await self.dead_letter(delivery, queue, f"handler failed: {exc!r}")
        else:
            log.exception("handler failed on a message from %s; it will be redelivered", queue)
            await delivery.nack(requeue=True)

    async def dead_letter(self, delivery: Delivery, queue: str, reason: str) -> None:
        """Copy a message we cannot use to the dead-letter exchange, reason in its headers; ack and
        count it (it never stops a consumer)."""
        self.malformed += 1
        telemetry.DEAD_LETTERED.labels(queue=queue).inc()
        log.warning("dead-lettering a message from %s: %s", queue, reason[:500])
        copy = aio_pika.Message(
            delivery.body,
            content_type=delivery.content_type,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            headers={**delivery.headers, "x-trailingstop-queue": queue, "x-trailingstop-error": reason[:1000]},
        )
        exchange = await self._exchange(DEAD_LETTER_EXCHANGE, True)
        await exchange.publish(copy, "", mandatory=False)
        await delivery.ack()

    # --- internals ---------------------------------------------------------------------------------

    async def _declare_once(self, spec: QueueSpec) -> None:
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


async def connect_bus(url: str, name: str, *, topology: Topology = "declare", attempts: int | None = None) -> Bus:
    """Connect, retrying with backoff: the broker, or the tenant's topology, may come after us
    (a pod would restart otherwise)."""
    delay, attempt = 0.5, 0
    while True:
        attempt += 1
        bus = Bus(url, name, topology=topology)
        try:
            return await bus.connect()
        except (TimeoutError, AMQPConnectionError, OSError, TopologyMissing) as exc:
            await bus.close()
            if attempts is not None and attempt >= attempts:
                raise
            log.warning("broker not ready (%s: %s); retrying in %.1fs", type(exc).__name__, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0 if isinstance(exc, TopologyMissing) else 10.0)


class Delivery:
    """One message as the broker delivered it, settled through the consumer that received it."""

    __slots__ = ("body", "consumer", "content_type", "generation", "headers", "redelivered", "tag")

    def __init__(self, consumer: _Consumer, message: DeliveredMessage) -> None:
        properties = message.header.properties
        self.consumer = consumer
        self.generation = consumer.generation
        self.body = message.body
        self.headers: dict[str, Any] = dict(properties.headers) if properties.headers else {}
        self.content_type = properties.content_type
        deliver = message.delivery
        self.tag = int(deliver.delivery_tag or 0)  # type: ignore[union-attr]
        self.redelivered = bool(deliver.redelivered)  # type: ignore[union-attr]

    async def ack(self, multiple: bool = False) -> None:
        await self.consumer.settle(self, "ack", multiple=multiple)

    async def nack(self, requeue: bool) -> None:
        await self.consumer.settle(self, "nack", requeue=requeue)


class _Consumer:
    """One queue's messages to one handler, straight from the underlying aiormq channel.

    aio-pika's consumer wraps every delivery in two tasks and a rich message object; on the tick
    path that costs more than everything the orchestrator does with a tick, so deliveries are
    taken from aiormq directly (and re-subscribed when the robust channel reopens after a broker
    restart). For ordered handling a delivery is appended to an inbox that one task drains; acks
    are batched (``basic.ack`` with ``multiple``). A delivery from a channel that has since been
    replaced is never acked on the new one: the broker redelivers it, and consumers drop what
    they have already seen.
    """

    def __init__(self, bus: Bus, channel: AbstractChannel, queue: str, model: type[Any],
                 handler: Handler[Any], ordered: bool, ack_every: int) -> None:
        self.bus = bus
        self.channel = channel
        self.queue = queue
        self.model = model
        self.handler = handler
        self.ordered = ordered
        self.ack_every = ack_every
        self.generation = 0
        self.underlay: aiormq.abc.AbstractChannel | None = None
        self.inbox: collections.deque[Delivery] = collections.deque()
        self.wakeup = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.tag: str | None = None
        self.cancelled = False

    async def start(self) -> None:
        if self.ordered:
            self.task = asyncio.create_task(self._drain())
        self.channel.reopen_callbacks.add(self._resubscribe)  # type: ignore[attr-defined]
        await self._subscribe()

    async def _subscribe(self) -> None:
        if self.cancelled:
            return
        self.generation += 1
        self.underlay = await self.channel.get_underlay_channel()
        ok = await self.underlay.basic_consume(self.queue, self._on_delivery, no_ack=False)
        self.tag = ok.consumer_tag

    async def cancel(self) -> None:
        """Stop receiving from the queue (for good: a reopened channel does not subscribe again)."""
        self.cancelled = True
        if self.underlay is not None and self.tag and not self.underlay.is_closed:
            await self.underlay.basic_cancel(self.tag)
        await self.stop()

    async def _resubscribe(self, channel: Any = None) -> None:
        self.inbox.clear()  # delivered on the closed channel: the broker gives them again
        await self._subscribe()

    async def _on_delivery(self, message: DeliveredMessage) -> None:
        delivery = Delivery(self, message)
        if self.ordered:
            self.inbox.append(delivery)
            self.wakeup.set()
        elif await self._handle(delivery):
            await delivery.ack()

    async def _handle(self, delivery: Delivery) -> bool:
        """Parse and handle one message. True when it is the caller's to ack; False when it was
        settled here (dead-lettered or put back)."""
        try:
            parsed = self.model.from_json(delivery.body)
        except ValidationError as exc:
            await self.bus.dead_letter(delivery, self.queue, f"malformed {self.model.__name__}: {exc}")
            return False
        try:
            await self.handler(parsed, delivery.headers)
        except Exception as exc:  # the consumer boundary: log, retry, then park the message
            await self.bus.retry_or_park(delivery, self.queue, exc)
            return False
        return True

    async def _drain(self) -> None:
        unacked: Delivery | None = None
        count = 0
        while True:
            await self.wakeup.wait()
            self.wakeup.clear()
            while self.inbox:
                delivery = self.inbox.popleft()
                if await self._handle(delivery):
                    unacked, count = delivery, count + 1
                if count >= self.ack_every and unacked is not None:
                    await unacked.ack(multiple=True)
                    unacked, count = None, 0
            if unacked is not None:  # caught up: settle what was handled
                await unacked.ack(multiple=True)
                unacked, count = None, 0

    async def settle(self, delivery: Delivery, how: str, multiple: bool = False, requeue: bool = False) -> None:
        underlay = self.underlay
        if underlay is None or delivery.generation != self.generation:
            return  # its channel is gone; the broker redelivers it
        try:
            if how == "ack":
                await underlay.basic_ack(delivery.tag, multiple=multiple)
            else:
                await underlay.basic_nack(delivery.tag, multiple=False, requeue=requeue)
        except (AMQPException, ChannelInvalidStateError, RuntimeError) as exc:
            log.info("could not settle a delivery after a channel loss (%r); the broker will redeliver", exc)

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
