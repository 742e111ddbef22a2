"""The simulated exchange: fills an order at the trigger price and says so.

A LIMIT order (a Limit stop's) fills there too: the trigger price is never worse than its bound
(a SELL's bound is below the trigger, a BUY's above), and a simulation has no book to run out of.

Used by the executor's Simulate route and by ``trailingstop run``. It keeps Binance's one rule that
matters for exactly-once: one clientOrderId, one order. Placing the same clientOrderId again
returns the order already made instead of making a second one.
"""

from __future__ import annotations

import hashlib

from trailingstop.core.contracts import OrderResult, PlaceOrder
from trailingstop.core.decimals import EXACT
from trailingstop.core.filters import SymbolFilters


class SimulatedExchange:
    def __init__(self, filters: dict[str, SymbolFilters] | None = None) -> None:
        self._filters = filters or {}
        self._orders: dict[str, OrderResult] = {}

    def place(self, order: PlaceOrder) -> OrderResult:
        """Fill ``order`` at its trigger price (status SIMULATED); idempotent per clientOrderId.

        The result depends on the order alone (the fill is dated at the trigger, the order id
        comes from the clientOrderId), so an executor that restarts and simulates a redelivered
        order again publishes the very same result, which the operator recognises as written.
        """
        existing = self._orders.get(order.client_order_id)
        if existing is not None:
            return existing
        quantity = order.quantity
        filters = self._filters.get(order.symbol)
        if filters is not None:
            quantity = filters.floor_quantity(quantity, order.type)
        price = order.trigger_price
        result = OrderResult.for_order(
            order,
            status="SIMULATED",
            order_id=simulated_order_id(order.client_order_id),
            executed_qty=quantity,
            avg_price=price,
            cummulative_quote_qty=EXACT.multiply(quantity, price),  # up to 80 digits: exact, never rounded
            at=order.triggered_at,
        )
        self._orders[order.client_order_id] = result
        return result

    def order(self, client_order_id: str) -> OrderResult | None:
        return self._orders.get(client_order_id)

    @property
    def order_count(self) -> int:
        return len(self._orders)


def simulated_order_id(client_order_id: str) -> int:
    """A stable positive 53-bit order id for a clientOrderId (JSON-safe as a number)."""
    digest = hashlib.sha256(client_order_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 11
