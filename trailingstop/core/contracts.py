"""The project's contracts (DESIGN §3 and §5): the TrailingStop spec and status, and every bus message.

Rules that hold everywhere:

* Prices and quantities are :class:`~decimal.Decimal` in Python and decimal *strings* on the wire
  and in the resource. A float is refused: it has already lost the exchange's digits.
* Every bus message carries its wire version, ``"v": 1`` or ``"v": 2``: a message that uses a
  feature version 1 lacks (a trailingAmount, Limit execution, an expiresAt, a LIMIT order, the
  ``expired`` event) says 2, so that a component of the first version refuses it (dead letter)
  instead of silently running it as a percent or MARKET stop; every other message still says 1,
  and both are read (DESIGN §5). Times on the bus are epoch milliseconds, times in the resource
  status are RFC 3339 strings (what ``kubectl`` shows).
* Validation errors read like ``trailingPercent must be > 0 and < 100, got "0"``; use
  :func:`describe_errors` to turn a :class:`pydantic.ValidationError` into such lines.

The CRD schema in ``crds/`` is generated from the constants below (see
``trailingstop.operator.crd``), so the API server and this module accept exactly the same specs.
"""

from __future__ import annotations

import hashlib
import re
import time
import uuid
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    SerializerFunctionWrapHandler,
    ValidationError,
    ValidationInfo,
    model_serializer,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from trailingstop.core.decimals import (
    EXACT,
    NONZERO_DIGIT,
    PRICE_PATTERN,
    QUANTITY_PATTERN,
    SLIPPAGE_PERCENT_PATTERN,
    TRAILING_AMOUNT_PATTERN,
    TRAILING_PERCENT_PATTERN,
    WIRE_FRACTION_DIGITS,
    WIRE_INTEGER_DIGITS,
    WIRE_MAX_CHARS,
    digits,
    to_wire,
)
from trailingstop.core.echo import cut, quoted, short_repr
from trailingstop.core.quote import Quote
from trailingstop.core.trade import Trade

# Re-exported from trailingstop.core.decimals: the CRD generator and callers import them from here.
__all__ = [
    "NONZERO_DIGIT",
    "PRICE_PATTERN",
    "QUANTITY_PATTERN",
    "SLIPPAGE_PERCENT_PATTERN",
    "TRAILING_AMOUNT_PATTERN",
    "TRAILING_PERCENT_PATTERN",
    "to_wire",
]

API_GROUP = "trailingstop.dev"
API_VERSION = "v1"
KIND = "TrailingStop"
PLURAL = "trailingstops"
WIRE_VERSION = 2  # what a message using this version's features says; version 1 is still read
WIRE_VERSIONS = (1, 2)

Side = Literal["SELL", "BUY"]
Mode = Literal["Simulate", "Testnet", "Live"]
ExecutionType = Literal["Market", "Limit"]
OrderType = Literal["MARKET", "LIMIT"]
# Which price drives a stop (spec.priceSource): the symbol's trades, or the top of its order book
# (a SELL follows the best bid, a BUY the best ask: the price it would actually trade at).
PriceSource = Literal["LastTrade", "BestBidAsk"]
# The price series one stop follows, as status.priceSource and the bus say it.
FollowedPrice = Literal["LastTrade", "BestBid", "BestAsk"]


class Phase(StrEnum):
    """Where a TrailingStop stands (``status.phase``). Which moves are allowed between them, and
    which phases are final, is :mod:`trailingstop.core.lifecycle`'s to say."""

    PENDING = "Pending"
    ARMED = "Armed"
    TRACKING = "Tracking"
    # The exchange would refuse the stop's order (e.g. quantity off the symbol's stepSize); not
    # final: fixing the spec arms the stop again.
    INVALID = "Invalid"
    TRIGGERED = "Triggered"
    FILLED = "Filled"
    REJECTED = "Rejected"
    # Written by earlier versions for an order that ended with nothing filled; Unfilled says it now.
    FAILED = "Failed"
    # The order ended (expired, e.g. a LIMIT IOC's unfilled rest, or canceled) with part of the
    # quantity filled, or none of it. Final: no second order is ever placed behind the user's back.
    PARTIALLY_FILLED = "PartiallyFilled"
    UNFILLED = "Unfilled"
    # spec.expiresAt passed before the stop triggered: no order. Final.
    EXPIRED = "Expired"


# --- field rules shared with the CRD schema (contract) ---------------------------------------
# The decimal patterns (PRICE_PATTERN, QUANTITY_PATTERN, TRAILING_PERCENT_PATTERN, NONZERO_DIGIT)
# live in trailingstop.core.decimals with the digit limits they set; trade files are held to them too.
SYMBOL_PATTERN = r"^[A-Z0-9]{2,20}$"
# RFC 3339 as Kubernetes writes times (upper-case T and Z), at most nanoseconds, any offset.
TIME_PATTERN = (
    r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"
    r"(\.[0-9]{1,9})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$"
)
TIME_MAX_CHARS = 35
SECRET_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
SECRET_NAME_MAX = 253

MESSAGES = {
    "symbol": "symbol must be 2-20 upper-case letters or digits, like BTCUSDT",
    "quantity": "quantity must be a decimal string > 0, like \"0.001\"",
    "trailingPercent": "trailingPercent must be > 0 and < 100, with at most 8 decimals",
    "trailingAmount": "trailingAmount must be a decimal string > 0 in the quote asset, like \"250\"",
    "trail": "exactly one of trailingPercent and trailingAmount must be set",
    "sellAmount": "a SELL's activationPrice must be above its trailingAmount: at the activation price its stop "
    "(activationPrice - trailingAmount) would be at or below 0, where no order can ever be placed",
    "maxSlippagePercent": "maxSlippagePercent must be >= 0 and < 100, with at most 8 decimals",
    "slippageWithLimit": "maxSlippagePercent is required with type Limit, and only with Limit",
    "expiresAt": "expiresAt must be an RFC 3339 time like \"2026-12-31T23:59:59Z\"",
    "activationPrice": "activationPrice must be a decimal string > 0, like \"65000\"",
    "credentialsSecretRef": "credentialsSecretRef is required unless mode is Simulate",
    "secretName": "name must be a Secret name: lower-case letters, digits, '-' and '.', at most 253",
    "immutable": "{field} is immutable: delete the TrailingStop and create a new one",
}

CLIENT_ORDER_ID_PATTERN = r"^[A-Za-z0-9_-]{1,36}$"


# --- decimals --------------------------------------------------------------------------------


def _decimal_checker(pattern: str, message: str, *, positive: bool) -> Any:
    compiled = re.compile(pattern)

    def check(value: Any) -> Decimal:
        if isinstance(value, Decimal):
            value = format(value, "f")
        if isinstance(value, bool) or not isinstance(value, str):
            raise PydanticCustomError(
                "decimal_string",
                f"{message}, got the {type(value).__name__} {short_repr(value)}: write it as a quoted string",
            )
        if not compiled.fullmatch(value) or (positive and not _NONZERO.search(value)):
            raise PydanticCustomError("decimal_value", f"{message}, got {quoted(value)}")
        return Decimal(value)

    return BeforeValidator(check)


def _wire_decimal() -> PlainSerializer:
    return PlainSerializer(to_wire, return_type=str, when_used="always")


def _check_wire_decimal(value: Any) -> Decimal:
    """A non-negative finite decimal (bus messages: exchange prices, computed levels), within the
    wire's digit limits, so that serializing it back is exact and bounded (DESIGN §3, "Digits")."""
    if isinstance(value, Decimal):
        number = value
    elif isinstance(value, str) and len(value) <= WIRE_MAX_CHARS:
        try:
            number = Decimal(value)
        except ArithmeticError:
            raise PydanticCustomError("decimal_string", f"must be a decimal string, got {quoted(value)}") from None
    elif isinstance(value, str):
        raise PydanticCustomError(
            "decimal_value", f"must have at most {WIRE_MAX_CHARS} characters, got {quoted(value)}"
        )
    else:
        raise PydanticCustomError(
            "decimal_string", f"must be a decimal string, got the {type(value).__name__} {short_repr(value)}"
        )
    if not number.is_finite() or number < 0:
        raise PydanticCustomError("decimal_value", f"must be a finite decimal >= 0, got {quoted(str(value))}")
    integer_digits, fraction_digits = digits(number)
    if integer_digits > WIRE_INTEGER_DIGITS or fraction_digits > WIRE_FRACTION_DIGITS:
        raise PydanticCustomError(
            "decimal_value",
            f"must have at most {WIRE_INTEGER_DIGITS} digits before the point and {WIRE_FRACTION_DIGITS} after it, "
            f"got {quoted(str(value))}",
        )
    return number


Quantity = Annotated[
    Decimal, _decimal_checker(QUANTITY_PATTERN, MESSAGES["quantity"], positive=True), _wire_decimal()
]
TrailingPercent = Annotated[
    Decimal,
    _decimal_checker(TRAILING_PERCENT_PATTERN, MESSAGES["trailingPercent"], positive=True),
    _wire_decimal(),
]
ActivationPrice = Annotated[
    Decimal, _decimal_checker(PRICE_PATTERN, MESSAGES["activationPrice"], positive=True), _wire_decimal()
]
TrailingAmount = Annotated[
    Decimal,
    _decimal_checker(TRAILING_AMOUNT_PATTERN, MESSAGES["trailingAmount"], positive=True),
    _wire_decimal(),
]
SlippagePercent = Annotated[
    Decimal,
    _decimal_checker(SLIPPAGE_PERCENT_PATTERN, MESSAGES["maxSlippagePercent"], positive=False),
    _wire_decimal(),
]
WireDecimal = Annotated[Decimal, BeforeValidator(_check_wire_decimal), _wire_decimal()]


def _check_signed_wire_decimal(value: Any) -> Decimal:
    """A :data:`WireDecimal` that may be negative: a SELL's stop level ``R - trailingAmount`` while
    the reference is at or below the amount (shown as it is; nothing can trigger it, DESIGN §4)."""
    if isinstance(value, str) and value.startswith("-"):
        return _check_wire_decimal(value[1:]).copy_negate()
    if isinstance(value, Decimal) and value.is_signed():
        return _check_wire_decimal(value.copy_negate()).copy_negate()
    return _check_wire_decimal(value)


SignedWireDecimal = Annotated[Decimal, BeforeValidator(_check_signed_wire_decimal), _wire_decimal()]


_NONZERO = re.compile(NONZERO_DIGIT)
_SYMBOL = re.compile(SYMBOL_PATTERN)
_SECRET_NAME = re.compile(SECRET_NAME_PATTERN)


def _check_symbol(value: str) -> str:
    if not _SYMBOL.fullmatch(value):
        raise PydanticCustomError("symbol", f'{MESSAGES["symbol"]}, got {quoted(value)}')
    return value


Symbol = Annotated[str, AfterValidator(_check_symbol)]


# --- times -----------------------------------------------------------------------------------

_TIME = re.compile(
    r"^([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]{1,9}))?(Z|([+-])([0-9]{2}):([0-9]{2}))$"
)
_TIME_RULE = re.compile(TIME_PATTERN)  # the CRD's: month, day, hour, minute, second and offset in range


def deadline_ms(text: str) -> int:
    """An RFC 3339 time as epoch milliseconds, rounded *up* to the next whole millisecond.

    Trade times are whole milliseconds, and a trade at ``t`` comes before the deadline ``D``
    exactly when ``t < ceil(D)``; so the deadline is exact whatever its sub-millisecond digits.
    Raises ValueError (with :data:`MESSAGES`' wording) for anything but RFC 3339.
    """
    match = _TIME.fullmatch(text) if len(text) <= TIME_MAX_CHARS and _TIME_RULE.fullmatch(text) else None
    if match is None:
        raise ValueError(MESSAGES["expiresAt"])
    year, month, day, hour, minute, second = (int(match.group(i)) for i in range(1, 7))
    fraction, zone, sign, zone_hours, zone_minutes = match.group(7, 8, 9, 10, 11)
    try:
        offset = timedelta(0) if zone == "Z" else timedelta(hours=int(zone_hours), minutes=int(zone_minutes))
        moment = datetime(year, month, day, hour, minute, second,
                          tzinfo=timezone(-offset if sign == "-" else offset))
    except ValueError as exc:  # month 13, 25:00, an offset of 24 hours or more, ...
        raise ValueError(f"{MESSAGES['expiresAt']} ({exc})") from None
    nanoseconds = (moment - _EPOCH) // timedelta(seconds=1) * 1_000_000_000 + int((fraction or "").ljust(9, "0"))
    return -(-nanoseconds // 1_000_000)


def _check_time(value: str) -> str:
    try:
        deadline_ms(value)
    except ValueError as exc:
        raise PydanticCustomError("time", f"{exc}, got {quoted(value)}") from None
    return value


Rfc3339 = Annotated[str, AfterValidator(_check_time)]


# --- base models -----------------------------------------------------------------------------

_WIRE: dict[str, bool] = {"wire": True}  # validation context of messages read from the bus


class _CamelModel(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, frozen=True, extra="forbid"
    )

    def wire(self) -> dict[str, Any]:
        """JSON-ready dict with camelCase keys, decimals as strings, None fields left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class Message(_CamelModel):
    """A bus message. Unknown fields are ignored so that a newer sender can add optional fields.

    ``v`` on the wire is :attr:`wire_version`: 2 when the message uses a feature of version 2,
    else 1, whatever ``v`` it was read with (DESIGN §5).
    """

    model_config = ConfigDict(extra="ignore")
    v: Literal[1, 2] = 1

    @property
    def wire_version(self) -> int:
        """1, unless the message needs version 2 to be understood (subclasses say when)."""
        return 1

    @model_serializer(mode="wrap")
    def _versioned(self, handler: SerializerFunctionWrapHandler) -> Any:
        data = handler(self)
        if isinstance(data, dict):
            data["v"] = self.wire_version
        return data

    def to_json(self) -> bytes:
        return self.model_dump_json(by_alias=True, exclude_none=True).encode()

    @classmethod
    def from_json(cls, body: bytes | str) -> Any:
        """Parse a message from the bus; it must say ``"v": 1`` or ``2`` (a missing version is refused)."""
        return cls.model_validate_json(body, context=_WIRE)

    @model_validator(mode="before")
    @classmethod
    def _version_on_the_wire(cls, data: Any, info: ValidationInfo) -> Any:
        if info.context is _WIRE and isinstance(data, dict) and "v" not in data:
            raise PydanticCustomError("version", 'a bus message must carry "v": 1 or 2')
        return data


# --- the TrailingStop resource (DESIGN §3) ---------------------------------------------------


def _check_secret_name(value: str) -> str:
    if len(value) > SECRET_NAME_MAX or not _SECRET_NAME.fullmatch(value):
        raise PydanticCustomError("secret_name", f'{MESSAGES["secretName"]}, got {quoted(value)}')
    return value


class SecretRef(_CamelModel):
    name: Annotated[str, AfterValidator(_check_secret_name)]


class Execution(_CamelModel):
    """``spec.execution``: how the order is placed at the trigger.

    ``Market`` (the default): one MARKET order. ``Limit``: one LIMIT order, timeInForce IOC, at the
    trigger price minus ``maxSlippagePercent`` (SELL) or plus it (BUY), rounded to the symbol's
    tick size in the direction that never passes that bound (DESIGN §4 "Execution").
    """

    type: ExecutionType = "Market"
    max_slippage_percent: SlippagePercent | None = None

    @model_validator(mode="after")
    def _slippage_with_limit(self) -> Execution:
        if (self.type == "Limit") != (self.max_slippage_percent is not None):
            raise PydanticCustomError("execution", MESSAGES["slippageWithLimit"])
        return self

    @property
    def is_limit(self) -> bool:
        return self.type == "Limit"


def check_trail(
    side: str, trailing_percent: Decimal | None, trailing_amount: Decimal | None, activation_price: Decimal | None
) -> None:
    """The rules between fields of a trail, shared by the spec and the bus's StopDefinition: exactly
    one kind of trail; a SELL amount below its activation price (else its stop would start <= 0)."""
    if (trailing_percent is None) == (trailing_amount is None):
        got = "neither" if trailing_percent is None else "both"
        raise PydanticCustomError("trail", f"{MESSAGES['trail']} (got {got})")
    if trailing_amount is None or activation_price is None or side != "SELL":
        return
    if EXACT.compare(activation_price, trailing_amount) <= 0:
        raise PydanticCustomError(
            "trail",
            f"{MESSAGES['sellAmount']} (activationPrice {to_wire(activation_price)}, "
            f"trailingAmount {to_wire(trailing_amount)})",
        )


class TrailingStopSpec(_CamelModel):
    """``spec`` of a TrailingStop. Field rules mirror the CRD schema and its CEL rules."""

    symbol: Symbol
    side: Side
    quantity: Quantity
    trailing_percent: TrailingPercent | None = None
    trailing_amount: TrailingAmount | None = None
    activation_price: ActivationPrice | None = None
    execution: Execution | None = None
    expires_at: Rfc3339 | None = None
    price_source: PriceSource = "LastTrade"
    mode: Mode = "Simulate"
    credentials_secret_ref: SecretRef | None = None

    @model_validator(mode="after")
    def _credentials_unless_simulate(self) -> TrailingStopSpec:
        if self.mode != "Simulate" and self.credentials_secret_ref is None:
            raise PydanticCustomError(
                "credentials", f"{MESSAGES['credentialsSecretRef']} (mode is {self.mode})"
            )
        return self

    @model_validator(mode="after")
    def _one_trail(self) -> TrailingStopSpec:
        check_trail(self.side, self.trailing_percent, self.trailing_amount, self.activation_price)
        return self

    @property
    def expires_at_ms(self) -> int | None:
        return None if self.expires_at is None else deadline_ms(self.expires_at)

    @property
    def trail_text(self) -> str:
        """The trail as people read it: ``1.5%`` or ``250`` (quote units)."""
        return trail_text(self.trailing_percent, self.trailing_amount)

    @property
    def route(self) -> str:
        """The executor route: one executor per credentials Secret and mode."""
        return executor_route(self.mode, self.credentials_secret_ref.name if self.credentials_secret_ref else None)

    @property
    def followed_price(self) -> FollowedPrice:
        return followed_price(self.price_source, self.side)


def followed_price(price_source: PriceSource, side: Side) -> FollowedPrice:
    """The series a stop follows: the last trade, or the side of the book it would trade against
    (a SELL sells to the best bid, a BUY buys from the best ask)."""
    if price_source == "LastTrade":
        return "LastTrade"
    return "BestBid" if side == "SELL" else "BestAsk"


class OrderError(_CamelModel):
    """An exchange rejection, with Binance's own code and message."""

    code: int
    message: str


class OrderStatus(_CamelModel):
    """``status.order``: the order placed for a triggered stop."""

    client_order_id: str
    order_id: int | None = None
    status: str
    type: OrderType | None = None
    price: WireDecimal | None = None  # a LIMIT order's price
    orig_qty: WireDecimal | None = None  # the quantity ordered
    executed_qty: WireDecimal | None = None
    remaining_qty: WireDecimal | None = None  # ordered minus executed, once the order has ended
    avg_price: WireDecimal | None = None
    cummulative_quote_qty: WireDecimal | None = None
    error: OrderError | None = None
    updated_at: str | None = None


class PriceGap(_CamelModel):
    """``status.lastGap``: a stretch of the book with no quote (a lost stream). The book has no
    history to fetch, so the stop went on from the first fresh quote; this says what it missed."""

    model_config = ConfigDict(extra="ignore")

    from_: str = Field(alias="from")  # RFC 3339: the last quote before the gap
    to: str  # RFC 3339: the first fresh quote
    seconds: WireDecimal
    from_update_id: int | None = None
    to_update_id: int


class Condition(_CamelModel):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str = ""
    last_transition_time: str
    observed_generation: int | None = None


class TrailingStopStatus(_CamelModel):
    """``status`` of a TrailingStop: where the stop stands. Times are RFC 3339."""

    model_config = ConfigDict(extra="ignore")

    phase: Phase = Phase.PENDING
    observed_generation: int | None = None
    message: str | None = None
    activated_at: str | None = None
    activated_price: WireDecimal | None = None
    activated_trade_id: int | None = None
    reference_price: WireDecimal | None = None
    stop_price: SignedWireDecimal | None = None
    last_price: WireDecimal | None = None
    last_price_at: str | None = None
    last_trade_id: int | None = None
    triggered_at: str | None = None
    trigger_price: WireDecimal | None = None
    trigger_trade_id: int | None = None
    order: OrderStatus | None = None
    conditions: list[Condition] = Field(default_factory=list)
    # BestBidAsk stops (added): the series followed and the book's updateIds, the counterparts
    # of the trade ids above (which stay unset for them: the two id sequences never mix).
    price_source: FollowedPrice | None = None
    activated_update_id: int | None = None
    last_update_id: int | None = None
    trigger_update_id: int | None = None
    last_gap: PriceGap | None = None
    gap_count: int | None = None


# --- bus messages (DESIGN §5) ----------------------------------------------------------------


class PriceTick(Message):
    """One trade of a symbol, as seen by marketdata. Routing key: the symbol."""

    symbol: Symbol
    price: WireDecimal
    qty: WireDecimal
    trade_id: int
    trade_time: int
    received_at: int
    source: str

    @classmethod
    def from_trade(cls, symbol: str, trade: Trade, received_at: int, source: str) -> PriceTick:
        return cls(
            symbol=symbol,
            price=trade.price,
            qty=trade.qty,
            trade_id=trade.trade_id,
            trade_time=trade.time,
            received_at=received_at,
            source=source,
        )


class BookTick(Message):
    """The top of a symbol's order book (Binance's bookTicker), as seen by marketdata. Routing
    key: ``<SYMBOL>.book``, so a consumer of ``<SYMBOL>`` (trades) never receives one.

    ``updateId`` rises with every change of the book. The book has no history to fetch, so the
    stream's continuity is stated instead: ``previousUpdateId`` is the quote marketdata published
    just before this one on an unbroken stream, and null on the first after a (re)connect. A
    consumer whose last quote is not ``previousUpdateId`` missed some: a gap. The quote has no
    exchange time: ``receivedAt`` is its time.
    """

    symbol: Symbol
    update_id: int
    bid_price: WireDecimal
    bid_qty: WireDecimal
    ask_price: WireDecimal
    ask_qty: WireDecimal
    received_at: int
    source: str
    previous_update_id: int | None = None

    @property
    def routing_key(self) -> str:
        return book_routing_key(self.symbol)

    @classmethod
    def from_quote(cls, symbol: str, quote: Quote, source: str) -> BookTick:
        return cls(
            symbol=symbol,
            update_id=quote.update_id,
            bid_price=quote.bid,
            bid_qty=quote.bid_qty,
            ask_price=quote.ask,
            ask_qty=quote.ask_qty,
            received_at=quote.time,
            source=source,
            previous_update_id=quote.previous_update_id,
        )

    def price(self, followed: FollowedPrice) -> Decimal:
        """The best bid (``BestBid``) or best ask (``BestAsk``)."""
        return self.bid_price if followed == "BestBid" else self.ask_price


def book_routing_key(symbol: str) -> str:
    return f"{symbol}.book"


class SavedState(_CamelModel):
    """A stop's progress, saved in the CR status and handed back to a restarting orchestrator."""

    model_config = ConfigDict(extra="ignore")

    activated: bool = False
    activated_at: int | None = None
    activated_price: WireDecimal | None = None
    activated_trade_id: int | None = None
    reference_price: WireDecimal | None = None
    triggered: bool = False
    # Expired (version 2): final, without an order; a restarted orchestrator must not revive it.
    # None, not False, when it has not expired: a version-1 state reads as it did.
    expired: bool | None = None
    triggered_at: int | None = None
    trigger_price: WireDecimal | None = None
    trigger_trade_id: int | None = None
    last_trade_id: int | None = None
    # A BestBidAsk stop's place in the book (added): where to resume, and since when.
    activated_update_id: int | None = None
    trigger_update_id: int | None = None
    last_update_id: int | None = None
    last_price_at: int | None = None

    @model_validator(mode="after")
    def _consistent(self) -> SavedState:
        # A triggered stop may lack activation details (its events can arrive out of order); it is
        # final either way. A stop that is tracking needs its reference to go on tracking.
        if self.activated and not (self.triggered or self.expired) and self.reference_price is None:
            raise PydanticCustomError("saved_state", "an activated stop needs its referencePrice")
        return self


class StopRef(_CamelModel):
    """Which TrailingStop a message is about."""

    model_config = ConfigDict(extra="ignore")

    uid: Annotated[str, Field(min_length=1, max_length=128)]
    namespace: str = ""
    name: str = ""


class StopDefinition(StopRef):
    """What an orchestrator needs to run a stop: the spec, identity, route and saved state.

    ``trailingAmount``, ``execution`` and ``expiresAt`` (epoch ms, rounded up: :func:`deadline_ms`)
    are version 2; a definition without them means what version 1 meant.
    """

    generation: int = 1
    symbol: Symbol
    side: Side
    quantity: Quantity
    trailing_percent: TrailingPercent | None = None
    trailing_amount: TrailingAmount | None = None
    activation_price: ActivationPrice | None = None
    execution: Execution | None = None
    expires_at: int | None = None
    price_source: PriceSource | None = None  # none (an operator before book stops): LastTrade
    mode: Mode = "Simulate"
    route: str = "simulate"
    state: SavedState | None = None

    @model_validator(mode="after")
    def _one_trail(self) -> StopDefinition:
        check_trail(self.side, self.trailing_percent, self.trailing_amount, self.activation_price)
        return self

    @property
    def needs_v2(self) -> bool:
        limit = self.execution is not None and self.execution.is_limit
        expired = self.state is not None and bool(self.state.expired)
        # BestBidAsk too: an older orchestrator would follow the last trade instead, so it must refuse it
        book = self.price_source == "BestBidAsk"
        return self.trailing_amount is not None or limit or self.expires_at is not None or expired or book

    @property
    def limit_slippage(self) -> Decimal | None:
        """maxSlippagePercent of a Limit stop; None for a Market one."""
        return self.execution.max_slippage_percent if self.execution is not None else None

    @property
    def followed_price(self) -> FollowedPrice:
        return followed_price(self.price_source or "LastTrade", self.side)

    @classmethod
    def from_spec(
        cls,
        spec: TrailingStopSpec,
        *,
        uid: str,
        namespace: str,
        name: str,
        generation: int = 1,
        state: SavedState | None = None,
    ) -> StopDefinition:
        return cls(
            uid=uid,
            namespace=namespace,
            name=name,
            generation=generation,
            symbol=spec.symbol,
            side=spec.side,
            quantity=spec.quantity,
            trailing_percent=spec.trailing_percent,
            trailing_amount=spec.trailing_amount,
            activation_price=spec.activation_price,
            execution=spec.execution,
            expires_at=spec.expires_at_ms,
            # LastTrade is said by saying nothing: the wire of a stop without new features is unchanged
            price_source=None if spec.price_source == "LastTrade" else spec.price_source,
            mode=spec.mode,
            route=spec.route,
            state=state,
        )


class StopCommand(Message):
    """Operator -> orchestrator (``stop.commands``, routing key = symbol).

    ``synced`` closes the operator's answer to a sync request: every stop of the symbol has been
    sent, so the orchestrator may start acting on ticks.
    """

    op: Literal["upsert", "cancel", "synced"]
    symbol: Symbol
    stop: StopDefinition | None = None

    @model_validator(mode="after")
    def _stop_unless_synced(self) -> StopCommand:
        if self.op != "synced" and self.stop is None:
            raise PydanticCustomError("command", f"the {self.op} command needs its stop")
        if self.stop is not None and self.stop.symbol != self.symbol:
            raise PydanticCustomError("command", "stop.symbol must equal the command's symbol")
        return self

    @property
    def wire_version(self) -> int:
        return 2 if self.stop is not None and self.stop.needs_v2 else 1

    @classmethod
    def upsert(cls, stop: StopDefinition) -> StopCommand:
        return cls(op="upsert", symbol=stop.symbol, stop=stop)

    @classmethod
    def cancel(cls, stop: StopDefinition) -> StopCommand:
        return cls(op="cancel", symbol=stop.symbol, stop=stop)


StopEventType = Literal["armed", "activated", "reference", "price", "triggered", "invalid", "expired", "sync", "gap"]


class StopEvent(Message):
    """Orchestrator -> operator (``stop.events``, routing key ``<symbol>.<type>``).

    Per stop: ``armed``, ``activated``, ``reference`` (coalesced), ``triggered``, ``invalid`` (the
    reason in ``message``), ``expired`` (version 2: spec.expiresAt passed before a trigger; the
    trade that told, if a trade did). Per symbol (no uid): ``price``, the last trade, at most once per
    flush interval, and ``sync``, the request of a starting orchestrator, which the operator
    answers with an upsert of every stop of the symbol followed by ``synced``.

    BestBidAsk stops (added): ``priceSource`` names the series the prices are of (none: the last
    trade) and ``updateId`` the book update they are as of (instead of ``tradeId``). A per-symbol
    ``price`` of ``BestBid`` is for the symbol's BestBidAsk SELL stops, ``BestAsk`` for its BUY
    stops. ``gap`` (per symbol for the stops of its series, or per stop for one restored after a
    gap) says quotes were lost from ``gapFrom`` (ms, update ``gapFromUpdateId``) to
    ``tradeTime`` (the first fresh quote, ``updateId``).
    """

    type: StopEventType
    symbol: Symbol
    uid: str | None = None
    namespace: str | None = None
    name: str | None = None
    generation: int | None = None
    price: WireDecimal | None = None
    reference_price: WireDecimal | None = None
    stop_price: SignedWireDecimal | None = None
    trade_id: int | None = None
    trade_time: int | None = None
    at: int
    message: str | None = None
    price_source: FollowedPrice | None = None
    update_id: int | None = None
    gap_from: int | None = None
    gap_from_update_id: int | None = None

    @property
    def wire_version(self) -> int:
        return 2 if self.type == "expired" or (self.stop_price is not None and self.stop_price < 0) else 1

    @property
    def routing_key(self) -> str:
        return f"{self.symbol}.{self.type}"

    @property
    def followed(self) -> FollowedPrice:
        return self.price_source or "LastTrade"


class PlaceOrder(Message):
    """Orchestrator -> executor (``order.commands``, routing key = executor route).

    ``type`` LIMIT (version 2) carries its ``price`` (the user's bound, already on the tick size
    when the orchestrator knew the symbol's filters) and ``timeInForce`` IOC.
    """

    client_order_id: Annotated[str, Field(pattern=CLIENT_ORDER_ID_PATTERN)]
    uid: str
    namespace: str = ""
    name: str = ""
    symbol: Symbol
    side: Side
    quantity: Quantity
    type: OrderType = "MARKET"
    price: WireDecimal | None = None
    time_in_force: Literal["IOC"] | None = None
    mode: Mode
    route: str
    trigger_price: WireDecimal
    triggered_at: int
    trigger_trade_id: int | None = None
    # The levels at the trigger, so the order's result can tell the whole trigger even when the
    # orchestrator died before its ``triggered`` event went out (added; absent from older senders).
    reference_price: WireDecimal | None = None
    stop_price: WireDecimal | None = None
    # A BestBidAsk stop's trigger (added): the book update and the side of the book it followed.
    trigger_update_id: int | None = None
    price_source: FollowedPrice | None = None

    @model_validator(mode="after")
    def _limit_has_price(self) -> PlaceOrder:
        if (self.type == "LIMIT") != (self.price is not None and self.time_in_force == "IOC"):
            raise PydanticCustomError("command", "a LIMIT order needs its price and timeInForce IOC; a MARKET "
                                                 "order has neither")
        return self

    @property
    def wire_version(self) -> int:
        return 2 if self.type == "LIMIT" else 1


OrderResultStatus = Literal[
    "NEW",
    "PARTIALLY_FILLED",
    "FILLED",
    "CANCELED",
    "PENDING_CANCEL",
    "REJECTED",
    "EXPIRED",
    "EXPIRED_IN_MATCH",
    "SIMULATED",
]


class OrderResult(Message):
    """Executor -> everyone (``order.events``, fanout)."""

    client_order_id: str
    uid: str
    namespace: str = ""
    name: str = ""
    symbol: Symbol
    side: Side
    status: OrderResultStatus
    mode: Mode = "Simulate"
    order_id: int | None = None
    # The order as placed (added; absent from older senders): its type, a LIMIT's price, the
    # quantity ordered.
    type: OrderType | None = None
    price: WireDecimal | None = None
    orig_qty: WireDecimal | None = None
    executed_qty: WireDecimal | None = None
    avg_price: WireDecimal | None = None
    cummulative_quote_qty: WireDecimal | None = None
    error: OrderError | None = None
    at: int
    # The trigger, copied from the PlaceOrder (added; absent from older senders).
    trigger_price: WireDecimal | None = None
    triggered_at: int | None = None
    trigger_trade_id: int | None = None
    reference_price: WireDecimal | None = None
    stop_price: WireDecimal | None = None
    trigger_update_id: int | None = None
    price_source: FollowedPrice | None = None

    @property
    def filled(self) -> bool:
        return self.status in ("FILLED", "SIMULATED")

    @property
    def wire_version(self) -> int:
        return 2 if self.type == "LIMIT" else 1

    @classmethod
    def for_order(cls, order: PlaceOrder, **outcome: Any) -> OrderResult:
        """The result of ``order``: its identity, plus ``outcome`` (status, fills, error, at; the
        price and quantity placed when they differ from the command's)."""
        outcome.setdefault("price", order.price)
        outcome.setdefault("orig_qty", order.quantity)
        return cls(
            client_order_id=order.client_order_id,
            uid=order.uid,
            namespace=order.namespace,
            name=order.name,
            symbol=order.symbol,
            side=order.side,
            mode=order.mode,
            type=order.type,
            trigger_price=order.trigger_price,
            triggered_at=order.triggered_at,
            trigger_trade_id=order.trigger_trade_id,
            reference_price=order.reference_price,
            stop_price=order.stop_price,
            trigger_update_id=order.trigger_update_id,
            price_source=order.price_source,
            **outcome,
        )


# --- helpers ---------------------------------------------------------------------------------


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def ms_to_rfc3339(ms: int) -> str:
    """Epoch milliseconds as RFC 3339 UTC, millisecond precision (``2019-10-11T00:00:11.620Z``)."""
    moment = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def rfc3339_to_ms(text: str) -> int:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return (moment - _EPOCH) // timedelta(milliseconds=1)


def trail_text(trailing_percent: Decimal | None, trailing_amount: Decimal | None) -> str:
    """A trail as people read it: ``1.5%`` for a percent, the bare amount (quote units) otherwise."""
    if trailing_percent is not None:
        return f"{to_wire(trailing_percent)}%"
    return "-" if trailing_amount is None else to_wire(trailing_amount)


def client_order_id(uid: str) -> str:
    """The one clientOrderId a stop's order will ever have (<= 36 chars of [A-Za-z0-9_-])."""
    try:
        return "ts-" + uuid.UUID(uid).hex
    except ValueError:
        # Not a Kubernetes uid: a digest keeps distinct uids distinct within 36 characters.
        return "ts-" + hashlib.sha256(uid.encode()).hexdigest()[:32]


# ``ts-executor-<route>`` must stay a 63-character label value and DNS label: routes are cut to 50.
ROUTE_MAX = 50


def executor_route(mode: str, secret_name: str | None) -> str:
    """``simulate`` for Simulate, else ``<mode>-<secret>`` (lower case).

    A Secret name may be 253 characters long; a route longer than :data:`ROUTE_MAX` keeps the
    name's start and ends with a digest of the whole name, so it is short, stable and still tells
    different Secrets apart. The route names an executor within one namespace's tenant only: the
    same Secret name in two namespaces never shares a queue or a process.
    """
    if mode == "Simulate":
        return "simulate"
    prefix = f"{mode.lower()}-"
    route = f"{prefix}{secret_name}"
    if len(route) <= ROUTE_MAX:
        return route
    digest = hashlib.sha256(str(secret_name).encode()).hexdigest()[:10]
    kept = str(secret_name)[: ROUTE_MAX - len(prefix) - len(digest) - 1].rstrip(".-")
    return f"{prefix}{kept}-{digest}"


def describe_errors(error: ValidationError, prefix: str = "") -> list[str]:
    """One readable line per problem: ``spec.trailingPercent must be > 0 and < 100, got "0"``."""
    lines = []
    for item in error.errors(include_url=False):
        location = ".".join(cut(str(part)) for part in item["loc"] if part not in ("function-after",))
        location = f"{prefix}.{location}" if prefix and location else (prefix or location)
        lines.append(_describe_one(location, item))
    return lines


def _describe_one(location: str, item: Any) -> str:
    kind, message = item["type"], item["msg"]
    field = location.rsplit(".", 1)[-1] if location else ""
    if kind in ("decimal_value", "decimal_string", "symbol", "secret_name", "time"):
        # Our own messages already start with the field name; anchor them at the full path.
        if field and message.startswith(field):
            return f"{location.removesuffix(field)}{message}"
        return f"{location} {message}"
    if kind == "missing":
        return f"{location} is required"
    if kind == "extra_forbidden":
        return f"{location} is not a field of this object (check its spelling)"
    if kind == "literal_error":
        expected = item.get("ctx", {}).get("expected", "")
        return f"{location} must be one of {expected}, got {short_repr(item['input'])}"
    if kind in ("credentials", "saved_state", "command", "version", "trail", "execution"):
        return f"{location + ': ' if location else ''}{message}"
    if location:
        return f"{location}: {message}"
    return message
