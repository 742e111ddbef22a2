"""The exchange state: the trade tape per symbol, accounts and balances, orders and fills.

What it imitates on Binance Spot:

* **The tape.** A symbol's public trades happen in order, one aggregate trade at a time. Only
  trades that have happened are visible (``aggTrades``, the ticker, the WebSocket). A trade that
  happens while nobody listens still happened: REST ``aggTrades?fromId=`` returns it later. The
  fake replays a recorded trade list; with ``rebase_times`` each trade is stamped with the
  server time at which it happens (so ``T`` is close to ``serverTime`` as on Binance).
* **The market price** is the last trade's price, or a price the test sets.
* **MARKET orders** fill at once, fully, at the market price (one fill, taker commission); with no
  price at all they expire unfilled, as a MARKET order on an empty book does.
* **LIMIT orders** that cross the market fill at once at the market price; otherwise GTC ones rest
  on the book (funds locked) and fill at their own price when a trade reaches it; IOC/FOK expire.
  LIMIT_MAKER orders that would take are rejected.
* **A configured book** (``Exchange.books``, :mod:`.book`) limits what MARKET and LIMIT IOC/FOK
  orders can take: they walk its levels, fill partly, and the rest expires (status EXPIRED with
  the partial ``executedQty``), as on Binance.
* **newClientOrderId** must be unique among the account's *open* orders on the symbol: a reuse
  while such an order is open is ``-2010 Duplicate order sent.``, a reuse after it filled (or was
  canceled) is accepted, as Binance documents.
* **Balances** move with every fill: the spent asset leaves ``free`` (or ``locked`` for resting
  orders), the received asset arrives minus the commission (charged in the received asset).

The account's own fills are not printed on the public tape: the tape is a replay of real trades.
"""

from __future__ import annotations

import bisect
import dataclasses
import secrets
import string
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import ROUND_UP, Decimal
from typing import Any

from trailingstop.core.trade import Trade

from . import errors
from .book import Book
from .symbols import EIGHT_PLACES, SUPPORTED_ORDER_TYPES, SymbolSpec, fmt

OPEN_STATUSES = ("NEW", "PARTIALLY_FILLED")
UNSUPPORTED_TYPE_MESSAGES = {
    "STOP_LOSS": "Stop loss orders are not supported for this symbol.",
    "STOP_LOSS_LIMIT": "Stop loss limit orders are not supported for this symbol.",
    "TAKE_PROFIT": "Take profit orders are not supported for this symbol.",
    "TAKE_PROFIT_LIMIT": "Take profit limit orders are not supported for this symbol.",
    "MARKET": "Market orders are not supported for this symbol.",
    "LIMIT": "Unsupported order combination",
    "LIMIT_MAKER": "Unsupported order combination",
}
_ID_ALPHABET = string.ascii_letters + string.digits


def new_client_order_id() -> str:
    """An id like the ones Binance generates when newClientOrderId is not sent (22 chars)."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(22))


# --- the tape --------------------------------------------------------------------------------


class Tape:
    """One symbol's trades: those that happened (visible) and those still to come."""

    def __init__(self, symbol: str, trades: Iterable[Trade], rebase_times: bool = True) -> None:
        self.symbol = symbol
        self.rebase_times = rebase_times
        self._upcoming: list[Trade] = sorted(trades, key=lambda t: t.trade_id)
        self._next = 0
        self.happened: list[Trade] = []
        self._ids: list[int] = []
        self._times: list[int] = []
        self.price_override: Decimal | None = None

    @property
    def position(self) -> int:
        """How many trades have happened."""
        return self._next

    @property
    def total(self) -> int:
        return len(self._upcoming)

    @property
    def remaining(self) -> int:
        return len(self._upcoming) - self._next

    def upcoming(self, n: int = 1) -> list[Trade]:
        """The next ``n`` trades, as they are in the file (not yet happened)."""
        return self._upcoming[self._next : self._next + n]

    @property
    def last_trade(self) -> Trade | None:
        return self.happened[-1] if self.happened else None

    @property
    def last_price(self) -> Decimal | None:
        """The market price: the test's override, else the last trade's price."""
        if self.price_override is not None:
            return self.price_override
        return self.happened[-1].price if self.happened else None

    def advance(self, n: int, now_ms: int) -> list[Trade]:
        """Make the next ``n`` trades happen (fewer when the tape runs out)."""
        done: list[Trade] = []
        for _ in range(max(0, n)):
            if self._next >= len(self._upcoming):
                break
            trade = self._upcoming[self._next]
            self._next += 1
            if self.rebase_times:
                when = max(now_ms, self._times[-1]) if self._times else now_ms
                trade = dataclasses.replace(trade, time=when)
            self.happened.append(trade)
            self._ids.append(trade.trade_id)
            self._times.append(trade.time)
            done.append(trade)
        return done

    def advance_to(self, trade_id: int, now_ms: int) -> list[Trade]:
        """Make every trade up to and including ``trade_id`` happen."""
        count = 0
        for trade in self._upcoming[self._next :]:
            if trade.trade_id > trade_id:
                break
            count += 1
        return self.advance(count, now_ms)

    def agg_trades(
        self,
        from_id: int | None = None,
        start_time: int | None = None,
        end_time: int | None = None,
        limit: int = 500,
    ) -> list[Trade]:
        """``GET aggTrades`` over the trades that happened (ids and times inclusive); ``limit``
        0 means no limit."""
        if from_id is None and start_time is None and end_time is None:
            return self.happened[-limit:] if limit else list(self.happened)
        first = 0
        if from_id is not None:
            first = bisect.bisect_left(self._ids, from_id)
        if start_time is not None:
            first = max(first, bisect.bisect_left(self._times, start_time))
        last = len(self.happened)
        if end_time is not None:
            last = bisect.bisect_right(self._times, end_time)
        selected = self.happened[first:last]
        return selected[:limit] if limit else selected


# --- accounts --------------------------------------------------------------------------------


@dataclass
class Balance:
    free: Decimal = Decimal(0)
    locked: Decimal = Decimal(0)


@dataclass
class Account:
    """An API key pair and its spot wallet. ``balances`` maps asset -> free amount."""

    api_key: str
    api_secret: str
    balances: Mapping[str, Any] = field(default_factory=dict)
    maker_commission: Decimal = Decimal("0.001")
    taker_commission: Decimal = Decimal("0.001")
    can_trade: bool = True
    uid: int = 354937868
    wallet: dict[str, Balance] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.maker_commission = Decimal(str(self.maker_commission))
        self.taker_commission = Decimal(str(self.taker_commission))
        self.wallet = {}
        for asset, amount in self.balances.items():
            self.wallet[asset.upper()] = Balance(Decimal(str(amount)))

    def balance(self, asset: str) -> Balance:
        return self.wallet.setdefault(asset, Balance())

    def set_balances(self, balances: Mapping[str, Any]) -> None:
        """Set the free amount of some assets (locked amounts are kept)."""
        for asset, amount in balances.items():
            self.balance(asset.upper()).free = Decimal(str(amount))

    def snapshot(self) -> dict[str, dict[str, Decimal]]:
        return {a: {"free": b.free, "locked": b.locked} for a, b in sorted(self.wallet.items())}


# --- orders ----------------------------------------------------------------------------------


@dataclass
class Fill:
    price: Decimal
    qty: Decimal
    commission: Decimal
    commission_asset: str
    trade_id: int

    def payload(self) -> dict[str, Any]:
        return {
            "price": fmt(self.price),
            "qty": fmt(self.qty),
            "commission": fmt(self.commission),
            "commissionAsset": self.commission_asset,
            "tradeId": self.trade_id,
        }


@dataclass
class OrderRequest:
    """A validated ``POST /api/v3/order``, already parsed into typed values."""

    symbol: str
    side: str
    type: str
    quantity: Decimal | None = None
    quote_order_qty: Decimal | None = None
    price: Decimal | None = None
    time_in_force: str | None = None
    client_order_id: str | None = None
    stp_mode: str | None = None


@dataclass
class Order:
    """One order as Binance keeps it; renders the ACK/RESULT/FULL and query payloads."""

    symbol: str
    order_id: int
    client_order_id: str
    api_key: str
    side: str
    type: str
    time_in_force: str
    price: Decimal
    orig_qty: Decimal
    orig_quote_order_qty: Decimal
    stp_mode: str
    time: int
    status: str = "NEW"
    executed_qty: Decimal = Decimal(0)
    cummulative_quote_qty: Decimal = Decimal(0)
    update_time: int = 0
    fills: list[Fill] = field(default_factory=list)
    locked: Decimal = Decimal(0)  # funds held while resting (quote for BUY, base for SELL)

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES

    def ack(self) -> dict[str, Any]:
        return {
            "symbol": self.symbol,
            "orderId": self.order_id,
            "orderListId": -1,
            "clientOrderId": self.client_order_id,
            "transactTime": self.time,
        }

    def result(self) -> dict[str, Any]:
        return {
            **self.ack(),
            "price": fmt(self.price),
            "origQty": fmt(self.orig_qty),
            "executedQty": fmt(self.executed_qty),
            "origQuoteOrderQty": fmt(self.orig_quote_order_qty),
            "cummulativeQuoteQty": fmt(self.cummulative_quote_qty),
            "status": self.status,
            "timeInForce": self.time_in_force,
            "type": self.type,
            "side": self.side,
            "workingTime": self.time,
            "selfTradePreventionMode": self.stp_mode,
        }

    def full(self) -> dict[str, Any]:
        return {**self.result(), "fills": [f.payload() for f in self.fills]}

    def response(self, resp_type: str) -> dict[str, Any]:
        return {"ACK": self.ack, "RESULT": self.result, "FULL": self.full}[resp_type]()

    def query(self) -> dict[str, Any]:
        """The ``GET /api/v3/order`` payload."""
        return {
            "symbol": self.symbol,
            "orderId": self.order_id,
            "orderListId": -1,
            "clientOrderId": self.client_order_id,
            "price": fmt(self.price),
            "origQty": fmt(self.orig_qty),
            "executedQty": fmt(self.executed_qty),
            "cummulativeQuoteQty": fmt(self.cummulative_quote_qty),
            "status": self.status,
            "timeInForce": self.time_in_force,
            "type": self.type,
            "side": self.side,
            "stopPrice": fmt(0),
            "icebergQty": fmt(0),
            "time": self.time,
            "updateTime": self.update_time or self.time,
            "isWorking": True,
            "workingTime": self.time,
            "origQuoteOrderQty": fmt(self.orig_quote_order_qty),
            "selfTradePreventionMode": self.stp_mode,
        }


# --- the exchange ----------------------------------------------------------------------------


class Exchange:
    """Symbols, tapes, accounts and orders: the matching-engine side of the fake."""

    def __init__(
        self,
        specs: Iterable[SymbolSpec],
        tapes: Mapping[str, Tape],
        accounts: Iterable[Account],
        clock: Callable[[], int],
    ) -> None:
        self.specs: dict[str, SymbolSpec] = {s.symbol: s for s in specs}
        self.tapes: dict[str, Tape] = dict(tapes)
        for symbol in self.specs:
            self.tapes.setdefault(symbol, Tape(symbol, []))
        self.accounts: dict[str, Account] = {a.api_key: a for a in accounts}
        self.clock = clock
        self.orders: list[Order] = []
        self.books: dict[str, Book] = {}  # symbol -> the liquidity takers walk (none: unlimited)
        self._next_order_id: dict[str, int] = {}
        self._next_trade_id = 900_000_000

    def market_price(self, symbol: str) -> Decimal | None:
        return self.tapes[symbol].last_price

    def assets(self) -> set[str]:
        return {a for s in self.specs.values() for a in (s.base_asset, s.quote_asset)}

    # --- placing -----------------------------------------------------------------------------

    def place(self, account: Account, req: OrderRequest, test: bool = False) -> Order | None:
        """Validate and execute an order; with ``test`` only validate (``order/test``)."""
        spec = self.specs[req.symbol]
        if req.type not in spec.order_types or req.type not in SUPPORTED_ORDER_TYPES:
            raise errors.new_order_rejected(UNSUPPORTED_TYPE_MESSAGES[req.type])
        market_price = self.market_price(req.symbol)
        quantity = self._check_filters(spec, req, market_price)
        if test:
            return None
        if not account.can_trade:
            raise errors.new_order_rejected("This account may not place or cancel orders.")
        client_order_id = req.client_order_id or new_client_order_id()
        if any(
            o.is_open and o.client_order_id == client_order_id and o.symbol == req.symbol
            for o in self._orders_of(account)
        ):
            raise errors.new_order_rejected(errors.MSG_DUPLICATE_ORDER)
        order = self._new_order(account, req, client_order_id, quantity)
        if req.type == "MARKET":
            self._execute_market(account, spec, order, market_price)
        else:
            self._execute_limit(account, spec, order, market_price)
        self.orders.append(order)
        return order

    def _check_filters(self, spec: SymbolSpec, req: OrderRequest, market_price: Decimal | None) -> Decimal | None:
        """Symbol filters, as the API checks them before the engine (-1013 on failure)."""
        market = req.type == "MARKET"
        if req.price is not None:
            spec.check_price(req.price)
            if market_price is not None:
                spec.check_percent_price(req.side, req.price, market_price)
        quantity = req.quantity
        if quantity is None and req.quote_order_qty is not None and market_price:
            quantity = spec.round_down_to_step(req.quote_order_qty / market_price)
        if quantity is not None:
            spec.check_quantity(quantity, market)
        price = req.price if not market else market_price
        if price is not None and quantity is not None:
            spec.check_notional(price * quantity, market)
        if not market and req.time_in_force not in ("IOC", "FOK"):
            open_count = sum(1 for o in self.orders if o.is_open and o.symbol == spec.symbol)
            if open_count >= spec.max_num_orders:
                raise errors.filter_failure("MAX_NUM_ORDERS")
        return quantity

    def _new_order(self, account: Account, req: OrderRequest, client_order_id: str, quantity: Decimal | None) -> Order:
        spec = self.specs[req.symbol]
        order_id = self._next_order_id.get(req.symbol, 1)
        self._next_order_id[req.symbol] = order_id + 1
        now = self.clock()
        return Order(
            symbol=req.symbol,
            order_id=order_id,
            client_order_id=client_order_id,
            api_key=account.api_key,
            side=req.side,
            type=req.type,
            time_in_force=req.time_in_force or "GTC",
            price=req.price or Decimal(0),
            orig_qty=quantity or Decimal(0),
            orig_quote_order_qty=req.quote_order_qty or Decimal(0),
            stp_mode=req.stp_mode or spec.default_stp_mode,
            time=now,
            update_time=now,
        )

    def _execute_market(self, account: Account, spec: SymbolSpec, order: Order, price: Decimal | None) -> None:
        if spec.symbol in self.books and order.orig_qty > 0:
            self._take_from_book(account, spec, order, None)
            return
        if price is None or order.orig_qty == 0:
            order.status = "EXPIRED"  # nothing to trade against
            return
        self._require_funds(account, spec, order.side, order.orig_qty, price)
        self._fill(account, spec, order, price, account.taker_commission, from_locked=False)

    def _execute_limit(self, account: Account, spec: SymbolSpec, order: Order, market_price: Decimal | None) -> None:
        crosses = market_price is not None and (
            (order.side == "BUY" and order.price >= market_price)
            or (order.side == "SELL" and order.price <= market_price)
        )
        if order.type == "LIMIT_MAKER" and crosses:
            raise errors.new_order_rejected("Order would immediately match and take.")
        self._require_funds(account, spec, order.side, order.orig_qty, order.price)
        if spec.symbol in self.books and order.type == "LIMIT" and order.time_in_force in ("IOC", "FOK"):
            self._take_from_book(account, spec, order, order.price)
        elif crosses:
            assert market_price is not None
            self._fill(account, spec, order, market_price, account.taker_commission, False)
        elif order.time_in_force in ("IOC", "FOK"):
            order.status = "EXPIRED"
        else:
            self._lock(account, spec, order)

    def _take_from_book(self, account: Account, spec: SymbolSpec, order: Order, limit: Decimal | None) -> None:
        """Walk the configured book; what cannot fill now expires (FOK: all or nothing)."""
        book = self.books[spec.symbol]
        if order.time_in_force == "FOK" and book.available(order.side, limit) < order.orig_qty:
            order.status = "EXPIRED"
            return
        if order.type == "MARKET":  # a LIMIT order's funds were checked at its price
            best = book.asks[0].price if order.side == "BUY" and book.asks else Decimal(0)
            self._require_funds(account, spec, order.side, order.orig_qty, best)
        for price, qty in book.take(order.side, order.orig_qty, limit):
            self._fill(account, spec, order, price, account.taker_commission, from_locked=False, qty=qty)
        if order.executed_qty < order.orig_qty:
            order.status = "EXPIRED"  # the rest of an IOC or MARKET order: nothing more to take
            order.update_time = self.clock()

    def _require_funds(self, account: Account, spec: SymbolSpec, side: str, qty: Decimal, price: Decimal) -> None:
        if side == "SELL":
            enough = account.balance(spec.base_asset).free >= qty
        else:
            enough = account.balance(spec.quote_asset).free >= qty * price
        if not enough:
            raise errors.new_order_rejected(errors.MSG_INSUFFICIENT_BALANCE)

    def _lock(self, account: Account, spec: SymbolSpec, order: Order) -> None:
        if order.side == "BUY":
            order.locked = order.orig_qty * order.price
            balance = account.balance(spec.quote_asset)
        else:
            order.locked = order.orig_qty
            balance = account.balance(spec.base_asset)
        balance.free -= order.locked
        balance.locked += order.locked

    def _fill(
        self,
        account: Account,
        spec: SymbolSpec,
        order: Order,
        price: Decimal,
        rate: Decimal,
        from_locked: bool,
        qty: Decimal | None = None,
    ) -> None:
        """Fill ``qty`` (default: the whole remaining quantity) at ``price`` and move the balances."""
        if qty is None:
            qty = order.orig_qty - order.executed_qty
        quote = (price * qty).quantize(EIGHT_PLACES)
        base_balance = account.balance(spec.base_asset)
        quote_balance = account.balance(spec.quote_asset)
        if order.side == "BUY":
            commission_asset, received = spec.base_asset, qty
            if from_locked:
                quote_balance.locked -= order.locked
                quote_balance.free += order.locked - quote
                order.locked = Decimal(0)
            else:
                quote_balance.free -= quote
        else:
            commission_asset, received = spec.quote_asset, quote
            if from_locked:
                base_balance.locked -= order.locked
                order.locked = Decimal(0)
            else:
                base_balance.free -= qty
        commission = (received * rate).quantize(EIGHT_PLACES, rounding=ROUND_UP)
        account.balance(commission_asset).free += received - commission
        self._next_trade_id += 1
        order.fills.append(Fill(price, qty, commission, commission_asset, self._next_trade_id))
        order.executed_qty += qty
        order.cummulative_quote_qty += quote
        order.status = "FILLED" if order.executed_qty == order.orig_qty else "PARTIALLY_FILLED"
        order.update_time = self.clock()

    # --- resting orders meet the market -----------------------------------------------------

    def on_price(self, symbol: str, price: Decimal) -> list[Order]:
        """Fill resting LIMIT orders that a trade at ``price`` reaches (at their own price)."""
        spec = self.specs.get(symbol)
        if spec is None:
            return []
        filled = []
        for order in self.orders:
            if order.symbol != symbol or not order.is_open:
                continue
            reached = (order.side == "BUY" and price <= order.price) or (order.side == "SELL" and price >= order.price)
            if reached:
                account = self.accounts[order.api_key]
                self._fill(account, spec, order, order.price, account.maker_commission, True)
                filled.append(order)
        return filled

    # --- queries -----------------------------------------------------------------------------

    def _orders_of(self, account: Account) -> list[Order]:
        return [o for o in self.orders if o.api_key == account.api_key]

    def find(
        self,
        account: Account,
        symbol: str,
        order_id: int | None = None,
        client_order_id: str | None = None,
    ) -> Order:
        """``GET /api/v3/order``: by orderId (checked against origClientOrderId when both are
        sent) or by origClientOrderId (the latest order with that id); -2013 when none."""
        candidates = [o for o in self._orders_of(account) if o.symbol == symbol]
        if order_id is not None:
            found = [o for o in candidates if o.order_id == order_id]
            if client_order_id is not None:
                found = [o for o in found if o.client_order_id == client_order_id]
        else:
            found = [o for o in candidates if o.client_order_id == client_order_id]
        if not found:
            raise errors.no_such_order()
        return found[-1]

    def cancel(
        self,
        account: Account,
        symbol: str,
        order_id: int | None,
        client_order_id: str | None,
    ) -> Order:
        """``DELETE /api/v3/order``: orderId takes precedence; only open orders cancel."""
        candidates = [o for o in self._orders_of(account) if o.symbol == symbol]
        if order_id is not None:
            found = [o for o in candidates if o.order_id == order_id]
        else:
            found = [o for o in candidates if o.client_order_id == client_order_id]
        open_found = [o for o in found if o.is_open]
        if not open_found:
            raise errors.cancel_rejected(errors.MSG_UNKNOWN_ORDER)
        order = open_found[-1]
        spec = self.specs[symbol]
        asset = spec.quote_asset if order.side == "BUY" else spec.base_asset
        balance = account.balance(asset)
        balance.locked -= order.locked
        balance.free += order.locked
        order.locked = Decimal(0)
        order.status = "CANCELED"
        order.update_time = self.clock()
        return order

    def open_orders(self, account: Account, symbol: str | None = None) -> list[Order]:
        return [o for o in self._orders_of(account) if o.is_open and (symbol is None or o.symbol == symbol)]
