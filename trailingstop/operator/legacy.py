"""Upgrading from the pre-tenancy layout (0.1): one shared vhost, queues named without a namespace.

What an install running 0.1 may hold in the operator's home vhost when the new operator starts,
and what becomes of it (DESIGN §5.1, docs/INSTALL.md "Upgrading"):

* ``operator.stop-events`` and ``operator.order-events``: events the old operator had not yet
  written. They are drained and applied like any other event (they name their stop by uid); the
  symbol-wide ``price`` and ``sync`` events are skipped, since the new orchestrators send fresh ones.
* ``executor.<route>.orders``: orders an old orchestrator published that no executor had placed.
  Each is handed, confirmed, to the executor of its stop's namespace tenant under the stop's
  current route, then acked. Its clientOrderId, derived from the stop's uid, and the executor's
  lookup before placing make sure the exchange gets one order, whichever executor (old or new)
  took it. An order whose stop this operator does not know is put back (another release may own
  it) and, after the queue's delivery limit, dead-lettered with the reason.
* ``orchestrator.<SYMBOL>.ticks`` / ``.commands``: nothing in them matters (the new orchestrators
  sync from the resources' status and refill missed trades by id); they are deleted once no old
  orchestrator consumes them.

The old worker pods roll (each Deployment's pod template changed). Once no old orchestrator
consumes its queues they are deleted; then each drained queue is deleted once it is empty, has no
consumer but us (no old executor) and has been quiet for ``quiet`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from trailingstop.bus import OPERATOR_QUEUES, Bus, QueueSpec, executor_queue
from trailingstop.core.contracts import OrderResult, PlaceOrder, StopEvent, TrailingStopSpec
from trailingstop.operator.events import EventRouter
from trailingstop.operator.stops import StopStore
from trailingstop.operator.tenancy import Tenants

log = logging.getLogger(__name__)

QUIET = 300.0
CHECK_EVERY = 15.0


class NotOurs(Exception):
    """A legacy order of a stop this operator does not know: back to the queue for its owner."""


def legacy_route(spec: TrailingStopSpec) -> str:
    """The route name 0.1 gave an executor: ``simulate`` or ``<mode>-<secret name>``, uncut."""
    if spec.mode == "Simulate" or spec.credentials_secret_ref is None:
        return "simulate"
    return f"{spec.mode.lower()}-{spec.credentials_secret_ref.name}"


def legacy_worker_queues(store: StopStore) -> list[str]:
    symbols = sorted({record.spec.symbol for record in store.all()})
    return [f"orchestrator.{symbol}.{kind}" for symbol in symbols for kind in ("ticks", "commands")]


class LegacyDrain:
    def __init__(
        self, home: Bus, store: StopStore, router: EventRouter, tenants: Tenants, quiet: float = QUIET
    ) -> None:
        self.home = home
        self.store = store
        self.router = router
        self.tenants = tenants
        self.quiet = quiet
        self.drained: dict[str, float] = {}  # queue -> when it last gave us a message
        self.leftover: list[str] = []  # queues deleted once no old worker uses them
        self.moved = 0  # orders handed to a tenant's executor
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> LegacyDrain:
        stop_events, order_events = OPERATOR_QUEUES
        drains: list[tuple[QueueSpec, type[Any], Callable[[Any, dict[str, Any]], Awaitable[None]]]] = [
            (stop_events, StopEvent, self._on_stop_event),
            (order_events, OrderResult, self._on_order_result),
        ]
        routes = {legacy_route(record.spec) for record in self.store.all()} | {"simulate"}
        drains += [(executor_queue(route), PlaceOrder, self._on_order) for route in sorted(routes)]
        for spec, model, handler in drains:
            if await self.home.queue_state(spec.name) is not None:
                self.drained[spec.name] = time.monotonic()
                await self.home.consume(spec, model, self._touching(spec.name, handler), prefetch=50, ordered=True)
        for name in legacy_worker_queues(self.store):
            if await self.home.queue_state(name) is not None:
                self.leftover.append(name)
        if self.drained or self.leftover:
            log.warning("found queues of the pre-tenancy layout (%s); draining them into the namespaces' tenants",
                        ", ".join([*self.drained, *self.leftover]))
            self._task = asyncio.create_task(self._retire_loop())
        return self

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    @property
    def done(self) -> bool:
        return not self.drained and not self.leftover

    def _touching(
        self, queue: str, handler: Callable[[Any, dict[str, Any]], Awaitable[None]]
    ) -> Callable[[Any, dict[str, Any]], Awaitable[None]]:
        async def handle(message: Any, headers: dict[str, Any]) -> None:
            self.drained[queue] = time.monotonic()
            await handler(message, headers)

        return handle

    async def _on_stop_event(self, event: StopEvent, headers: dict[str, Any]) -> None:
        if event.uid is not None:
            await self.router.on_stop_event(event, headers, None)

    async def _on_order_result(self, result: OrderResult, headers: dict[str, Any]) -> None:
        await self.router.on_order_result(result, headers, None)

    async def _on_order(self, order: PlaceOrder, headers: dict[str, Any]) -> None:
        record = self.store.get(order.uid)
        if record is None:
            raise NotOurs(f"legacy order {order.client_order_id} of unknown stop {order.uid}")
        tenant = await self.tenants.provision(record.namespace)
        moved = order.model_copy(update={"route": record.spec.route})
        await tenant.bus.publish_order(moved)
        self.moved += 1
        log.info("legacy order %s handed to executor %s of %s", order.client_order_id, record.spec.route,
                 record.namespace, extra={"uid": order.uid, "clientOrderId": order.client_order_id})

    async def _retire_loop(self) -> None:
        while not self.done:
            await asyncio.sleep(min(CHECK_EVERY, self.quiet))
            await self.retire_quiet()
        log.info("the pre-tenancy queues are gone; %d orders were handed over", self.moved)

    async def retire_quiet(self) -> None:
        """Delete the old orchestrators' queues once none consumes them, then each drained queue
        once it is empty, quiet, and read by nobody but us: with no old orchestrator and no old
        executor left, nothing can publish into it any more."""
        for name in list(self.leftover):
            state = await self.home.queue_state(name)
            if state is None or state[1] == 0:
                await self._delete(name)
                self.leftover.remove(name)
        if self.leftover:
            return
        now = time.monotonic()
        for name, last in list(self.drained.items()):
            state = await self.home.queue_state(name)
            if state is None or (state[0] == 0 and state[1] <= 1 and now - last >= self.quiet):
                await self.home.stop_consuming(name)
                await self._delete(name)
                del self.drained[name]

    async def _delete(self, name: str) -> None:
        await self.home.delete_queue(name)
        log.info("deleted the legacy queue %s", name)
