"""The operator's side of the bus: StopEvents and OrderResults become statuses; syncs are answered.

Phase changes are written at once. Reference and last-price updates are coalesced: at most one
write per resource per ``interval`` (the newest wins), so API writes are bounded by
(number of resources / interval) however fast ticks arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from trailingstop import telemetry
from trailingstop.bus import OPERATOR_ORDER_EVENTS_QUEUE, OPERATOR_QUEUES, OPERATOR_STOP_EVENTS_QUEUE, Bus
from trailingstop.core.contracts import (
    OrderResult,
    Phase,
    StopCommand,
    StopEvent,
    TrailingStopStatus,
    ms_to_rfc3339,
    now_ms,
)
from trailingstop.core.lifecycle import apply_order_result, apply_stop_event, triggered_by_order
from trailingstop.operator.stops import StopRecord, StopStore
from trailingstop.telemetry import stop_fields

log = logging.getLogger(__name__)

# Called after a phase change is written: (record, status written, phase before) -> e.g. an Event.
TransitionHook = Callable[[StopRecord, TrailingStopStatus, str], Awaitable[None]]
# Called after a new status.lastGap is written (a BestBidAsk stop missed quotes): (record, status).
GapHook = Callable[[StopRecord, TrailingStopStatus], Awaitable[None]]
# Awaited before a message is acted on or a status written: returns while this replica certainly
# leads, waits otherwise (see leader.LeaderElection.fence). Without an election: returns at once.
Fence = Callable[[], Awaitable[None]]


async def no_fence() -> None:
    return None


class StatusWriter:
    """Writes statuses through the store: transitions now, the rest coalesced per resource."""

    def __init__(self, store: StopStore, interval: float = 5.0, on_transition: TransitionHook | None = None,
                 stop_metrics: bool = False, fence: Fence = no_fence) -> None:
        self.store = store
        self.fence = fence
        self.interval = interval
        self.stop_metrics = stop_metrics  # per-stop price gauges: one series per stop and kind
        self.on_transition = on_transition
        self.on_gap: GapHook | None = None
        self._dirty: dict[str, StopRecord] = {}
        self._last_write: dict[str, float] = {}
        # One write at a time per resource, so an older patch can never land after a newer one.
        self._locks: dict[str, asyncio.Lock] = {}
        self._task: asyncio.Task[None] | None = None
        self.writes = 0

    async def submit(self, record: StopRecord, status: TrailingStopStatus) -> None:
        before = record.status
        if status == before:
            return
        record.status = status
        if _milestone(before, status):
            self._dirty.pop(record.uid, None)
            await self._write(record, "transition")
            if status.phase != before.phase and self.on_transition is not None:
                await self.on_transition(record, status, before.phase)
            if status.last_gap != before.last_gap and status.last_gap is not None and self.on_gap is not None:
                await self.on_gap(record, status)
        else:
            self._dirty[record.uid] = record

    async def flush(self, force: bool = False) -> None:
        """Write every coalesced status whose interval has passed (all of them with ``force``)."""
        now = time.monotonic()
        for uid, record in list(self._dirty.items()):
            if force or now - self._last_write.get(uid, 0.0) >= self.interval:
                del self._dirty[uid]
                if self.store.get(uid) is record:
                    await self._write(record, "update")

    async def _write(self, record: StopRecord, kind: str) -> None:
        lock = self._locks.setdefault(record.uid, asyncio.Lock())
        async with lock:
            await self.fence()  # a replica that lost the Lease writes no stale status
            self._last_write[record.uid] = time.monotonic()
            status = record.status  # the newest status when our turn comes
            await self.store.write(record, status)
        self.writes += 1
        telemetry.OPERATOR_STATUS_WRITES.labels(kind=kind).inc()
        if self.stop_metrics:
            _export_prices(record, status)

    def forget(self, record: StopRecord) -> None:
        self._dirty.pop(record.uid, None)
        self._last_write.pop(record.uid, None)
        self._locks.pop(record.uid, None)
        for kind in _PRICE_KINDS:
            with contextlib.suppress(KeyError):
                telemetry.STOP_PRICES.remove(record.namespace, record.name, record.spec.symbol, kind)

    def count_phases(self) -> None:
        counts = dict.fromkeys(Phase, 0)
        for stored in self.store.all():
            counts[stored.status.phase] += 1
        for phase, count in counts.items():
            telemetry.OPERATOR_STOPS.labels(phase=str(phase)).set(count)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(min(self.interval, 1.0) / 2)
            await self.flush()
            self.count_phases()


class EventRouter:
    """Turns each tenant's ``operator.stop-events`` and ``operator.order-events`` into statuses,
    and answers its orchestrators' ``sync`` requests.

    Every tenant is one namespace (:mod:`trailingstop.operator.tenancy`): its events may only
    touch stops of that namespace, so a message naming another namespace's stop is refused, and a
    symbol-wide event (``price``, ``sync``) means that namespace's stops of the symbol.
    """

    def __init__(self, store: StopStore, writer: StatusWriter) -> None:
        self.store = store
        self.writer = writer
        self._writer_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._writer_task = asyncio.create_task(self.writer.run())

    async def attach(self, namespace: str, bus: Bus) -> None:
        """Consume the operator's queues in ``namespace``'s tenant (declared by ``bus``)."""
        stop_events, order_events = OPERATOR_QUEUES
        assert stop_events.name == OPERATOR_STOP_EVENTS_QUEUE and order_events.name == OPERATOR_ORDER_EVENTS_QUEUE

        async def on_stop_event(event: StopEvent, headers: dict[str, Any]) -> None:
            await self.on_stop_event(event, headers, namespace, bus)

        async def on_order_result(result: OrderResult, headers: dict[str, Any]) -> None:
            await self.on_order_result(result, headers, namespace)

        await bus.consume(stop_events, StopEvent, on_stop_event, prefetch=500)
        await bus.consume(order_events, OrderResult, on_order_result, prefetch=100)

    async def stop(self) -> None:
        if self._writer_task is not None:
            self._writer_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer_task
        await self.writer.flush(force=True)

    async def on_stop_event(
        self, event: StopEvent, headers: dict[str, Any], namespace: str | None, bus: Bus | None = None
    ) -> None:
        """``namespace`` None: an event from the pre-tenancy layout, which named no namespace
        (see :mod:`trailingstop.operator.legacy`); its syncs go unanswered."""
        await self.writer.fence()  # a stale leader must not ack (and so lose) what it cannot apply
        if event.type == "sync":
            if bus is not None and namespace is not None:
                await self.answer_sync(bus, namespace, event.symbol)
            return
        now = ms_to_rfc3339(now_ms())
        targets: list[StopRecord | None]
        if event.uid is None:
            targets = list(self.store.for_symbol(event.symbol, namespace))
        else:
            targets = [self._stop_of(namespace, event.uid, f"{event.type} event")]
        with telemetry.span("status write", headers, type=event.type, symbol=event.symbol):
            for record in targets:
                if record is not None:
                    await self.writer.submit(record, apply_stop_event(record.status, event, now))

    async def on_order_result(self, result: OrderResult, headers: dict[str, Any], namespace: str | None) -> None:
        await self.writer.fence()
        record = self._stop_of(namespace, result.uid, "order result")
        if record is None:
            return
        with telemetry.span("status write", headers, clientOrderId=result.client_order_id):
            now = ms_to_rfc3339(now_ms())
            step = triggered_by_order(record.status, result, now)
            if step is not None:
                await self.writer.submit(record, step)
            # From the status as it is now: the trigger's own event may have landed meanwhile.
            await self.writer.submit(record, apply_order_result(record.status, result, now))
            log.info("order %s of %s: %s; status is %s", result.client_order_id, record.key, result.status,
                     record.status.phase, extra=stop_fields(record.namespace, record.name, record.uid,
                                                            record.spec.symbol, clientOrderId=result.client_order_id))

    def _stop_of(self, namespace: str | None, uid: str, what: str) -> StopRecord | None:
        record = self.store.get(uid)
        if record is None:
            log.info("%s for unknown stop %s (deleted?)", what, uid, extra={"uid": uid})
            return None
        if namespace is not None and record.namespace != namespace:
            # Only a forged message gets here: each namespace's workers have their own vhost.
            log.warning("%s from namespace %s names stop %s of namespace %s; ignored", what, namespace, uid,
                        record.namespace, extra={"uid": uid})
            return None
        return record

    async def answer_sync(self, bus: Bus, namespace: str, symbol: str) -> None:
        """Every stop of ``symbol`` in ``namespace`` with its saved state, then ``synced``."""
        records = self.store.for_symbol(symbol, namespace)
        for record in records:
            await bus.publish_command(StopCommand.upsert(record.definition()))
        await bus.publish_command(StopCommand(op="synced", symbol=symbol))
        log.info("answered the %s orchestrator's sync in %s with %d stops", symbol, namespace, len(records),
                 extra={"symbol": symbol, "namespace": namespace})


def _milestone(before: TrailingStopStatus, after: TrailingStopStatus) -> bool:
    """A change written at once: phase, order, activation or trigger (events may arrive in any
    order, so a trigger's details can follow its Filled phase). Reference and price are coalesced."""
    return (
        before.phase != after.phase
        or before.order != after.order
        or before.activated_at != after.activated_at
        or before.triggered_at != after.triggered_at
        or before.conditions != after.conditions
        or before.last_gap != after.last_gap  # a BestBidAsk stop missed quotes: said at once
    )


_PRICE_KINDS = {"reference": "reference_price", "stop": "stop_price", "last": "last_price"}


def _export_prices(record: StopRecord, status: TrailingStopStatus) -> None:
    for kind, field in _PRICE_KINDS.items():
        value = getattr(status, field)
        if value is not None:
            telemetry.STOP_PRICES.labels(record.namespace, record.name, record.spec.symbol, kind).set(float(value))
