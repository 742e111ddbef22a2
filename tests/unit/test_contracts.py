"""Contracts (DESIGN §3 and §5): wire round trips, decimals as strings, and every validation rule
with the exact message a user reads."""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from trailingstop.core.contracts import (
    CLIENT_ORDER_ID_PATTERN,
    Condition,
    OrderError,
    OrderResult,
    OrderStatus,
    PlaceOrder,
    PriceTick,
    SavedState,
    SecretRef,
    StopCommand,
    StopDefinition,
    StopEvent,
    StopRef,
    TrailingStopSpec,
    TrailingStopStatus,
    client_order_id,
    deadline_ms,
    describe_errors,
    executor_route,
    ms_to_rfc3339,
    rfc3339_to_ms,
    to_wire,
)

D = Decimal
UID = "7c9e6679-7425-40de-944b-e07fc1f90ae7"


def no_floats(value: Any, path: str = "") -> None:
    """Fail if a float appears anywhere in a JSON-ready value."""
    assert not isinstance(value, float), f"float at {path or 'top'}: {value!r}"
    if isinstance(value, dict):
        for key, item in value.items():
            no_floats(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            no_floats(item, f"{path}[{index}]")


def errors_of(model: type[BaseModel], data: Any, prefix: str = "") -> list[str]:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(data)
    return describe_errors(caught.value, prefix)


def message_errors(model: type[BaseModel], body: dict[str, Any]) -> list[str]:
    with pytest.raises(ValidationError) as caught:
        model.from_json(json.dumps(body))  # type: ignore[attr-defined]
    return describe_errors(caught.value)


# --- wire fixtures: canonical JSON as the system writes it ---------------------------------------

SPEC_WIRE = {
    "symbol": "BTCUSDT",
    "side": "SELL",
    "quantity": "0.001",
    "trailingPercent": "1.5",
    "activationPrice": "65000",
    "priceSource": "BestBidAsk",
    "mode": "Live",
    "credentialsSecretRef": {"name": "binance-keys"},
}

STATUS_WIRE = {
    "phase": "Filled",
    "observedGeneration": 2,
    "message": "filled: SELL 0.001 BTCUSDT at 65128.6",
    "activatedAt": "2026-11-21T10:00:00.000Z",
    "activatedPrice": "65010.2",
    "activatedTradeId": 3001,
    "referencePrice": "66120.5",
    "stopPrice": "65128.6925",
    "lastPrice": "65128.6",
    "lastPriceAt": "2026-11-21T11:00:00.000Z",
    "lastTradeId": 3999,
    "triggeredAt": "2026-11-21T11:00:00.000Z",
    "triggerPrice": "65128.6",
    "triggerTradeId": 3999,
    "order": {
        "clientOrderId": "ts-7c9e6679742540de944be07fc1f90ae7",
        "orderId": 28457,
        "status": "FILLED",
        "executedQty": "0.001",
        "avgPrice": "65128.6",
        "cummulativeQuoteQty": "65.1286",
        "error": {"code": -2010, "message": "Account has insufficient balance for requested action."},
        "updatedAt": "2026-11-21T11:00:00.120Z",
    },
    "conditions": [
        {
            "type": "Ready",
            "status": "True",
            "reason": "Tracking",
            "message": "trailing the price",
            "lastTransitionTime": "2026-11-21T10:00:00.000Z",
            "observedGeneration": 2,
        },
        {
            "type": "Filled",
            "status": "True",
            "reason": "Filled",
            "message": "filled",
            "lastTransitionTime": "2026-11-21T11:00:00.120Z",
            "observedGeneration": 2,
        },
    ],
}

SAVED_WIRE = {
    "activated": True,
    "activatedAt": 1700000003000,
    "activatedPrice": "105.5",
    "activatedTradeId": 103,
    "referencePrice": "112",
    "triggered": True,
    "triggeredAt": 1700000007000,
    "triggerPrice": "109.76",
    "triggerTradeId": 107,
    "lastTradeId": 107,
}

STOP_WIRE = {
    "uid": UID,
    "namespace": "trading",
    "name": "btc-protect",
    "generation": 4,
    "symbol": "BTCUSDT",
    "side": "SELL",
    "quantity": "0.001",
    "trailingPercent": "2",
    "activationPrice": "105",
    "mode": "Testnet",
    "route": "testnet-binance-keys",
    "state": SAVED_WIRE,
}

MESSAGES: list[tuple[type, dict[str, Any]]] = [
    (
        PriceTick,
        {
            "v": 1,
            "symbol": "XRPETH",
            "price": "0.00141342",
            "qty": "23",
            "tradeId": 13519807,
            "tradeTime": 1570752011620,
            "receivedAt": 1570752011702,
            "source": "binance-ws",
        },
    ),
    (StopCommand, {"v": 1, "op": "upsert", "symbol": "BTCUSDT", "stop": STOP_WIRE}),
    (StopCommand, {"v": 1, "op": "cancel", "symbol": "BTCUSDT", "stop": {**STOP_WIRE, "state": None}}),
    (StopCommand, {"v": 1, "op": "synced", "symbol": "BTCUSDT"}),
    (
        StopEvent,
        {
            "v": 1,
            "type": "triggered",
            "symbol": "BTCUSDT",
            "uid": UID,
            "namespace": "trading",
            "name": "btc-protect",
            "generation": 4,
            "price": "109.76",
            "referencePrice": "112",
            "stopPrice": "109.76",
            "tradeId": 107,
            "tradeTime": 1700000007000,
            "at": 1700000007003,
        },
    ),
    (StopEvent, {"v": 1, "type": "price", "symbol": "BTCUSDT", "price": "0.00000001", "tradeId": 9,
                 "tradeTime": 5, "at": 6}),
    (StopEvent, {"v": 1, "type": "sync", "symbol": "BTCUSDT", "at": 1700000000000}),
    (StopEvent, {"v": 1, "type": "invalid", "symbol": "BTCUSDT", "uid": UID, "namespace": "n", "name": "x",
                 "generation": 1, "at": 1, "message": "BTCUSDT would refuse this order: ..."}),
    (
        PlaceOrder,
        {
            "v": 1,
            "clientOrderId": "ts-7c9e6679742540de944be07fc1f90ae7",
            "uid": UID,
            "namespace": "trading",
            "name": "btc-protect",
            "symbol": "BTCUSDT",
            "side": "SELL",
            "quantity": "0.001",
            "type": "MARKET",
            "mode": "Live",
            "route": "live-binance-keys",
            "triggerPrice": "109.76",
            "triggeredAt": 1700000007000,
            "triggerTradeId": 107,
        },
    ),
    (
        OrderResult,
        {
            "v": 1,
            "clientOrderId": "ts-7c9e6679742540de944be07fc1f90ae7",
            "uid": UID,
            "namespace": "trading",
            "name": "btc-protect",
            "symbol": "BTCUSDT",
            "side": "SELL",
            "status": "FILLED",
            "mode": "Live",
            "orderId": 28457,
            "executedQty": "0.001",
            "avgPrice": "109.75",
            "cummulativeQuoteQty": "0.10975",
            "at": 1700000007120,
        },
    ),
    (
        OrderResult,
        {
            "v": 1,
            "clientOrderId": "ts-7c9e6679742540de944be07fc1f90ae7",
            "uid": UID,
            "namespace": "",
            "name": "",
            "symbol": "BTCUSDT",
            "side": "BUY",
            "status": "REJECTED",
            "mode": "Testnet",
            "error": {"code": -2010, "message": "Account has insufficient balance for requested action."},
            "at": 1700000007120,
        },
    ),
]


def _strip_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_strip_none(v) for v in value]
    return value


@pytest.mark.parametrize(("model", "wire"), MESSAGES, ids=lambda x: getattr(x, "__name__", None))
def test_bus_message_round_trip_is_identical(model: type, wire: dict[str, Any]) -> None:
    body = json.dumps(wire).encode()
    message = model.from_json(body)
    out = message.to_json()
    assert isinstance(out, bytes)
    assert json.loads(out) == _strip_none(wire)
    # Canonical: a second pass gives the very same bytes.
    assert model.from_json(out).to_json() == out
    parsed = json.loads(out)
    assert parsed["v"] == 1
    no_floats(parsed)


@pytest.mark.parametrize(
    ("model", "wire"),
    [(TrailingStopSpec, SPEC_WIRE), (TrailingStopStatus, STATUS_WIRE), (SavedState, SAVED_WIRE),
     (StopDefinition, STOP_WIRE), (StopRef, {"uid": UID, "namespace": "trading", "name": "btc-protect"}),
     (SecretRef, {"name": "a.b-c"}),
     (OrderError, {"code": -1013, "message": "Filter failure: LOT_SIZE"}),
     (OrderStatus, STATUS_WIRE["order"]), (Condition, STATUS_WIRE["conditions"][0])],
    ids=lambda x: getattr(x, "__name__", None),
)
def test_resource_model_round_trip_is_identical(model: type[BaseModel], wire: dict[str, Any]) -> None:
    value = model.model_validate(wire)
    assert value.wire() == wire  # type: ignore[attr-defined]
    assert json.loads(json.dumps(value.wire())) == wire  # type: ignore[attr-defined]
    no_floats(value.wire())  # type: ignore[attr-defined]


def test_decimals_are_decimal_inside_and_strings_on_the_wire() -> None:
    spec = TrailingStopSpec.model_validate(SPEC_WIRE)
    assert spec.quantity == D("0.001") and isinstance(spec.quantity, Decimal)
    assert spec.trailing_percent == D("1.5") and isinstance(spec.trailing_percent, Decimal)
    tick = PriceTick(symbol="XRPETH", price=D("0.00141342"), qty=D("23.00000000"), trade_id=1, trade_time=2,
                     received_at=3, source="t")
    wire = json.loads(tick.to_json())
    assert wire["price"] == "0.00141342"
    assert wire["qty"] == "23"  # canonical: no trailing zeros, no exponent
    assert next(iter(wire)) == "v"


def test_python_names_and_wire_aliases_build_the_same_model() -> None:
    by_alias = TrailingStopSpec.model_validate(SPEC_WIRE)
    by_name = TrailingStopSpec(
        symbol="BTCUSDT", side="SELL", quantity="0.001", trailing_percent="1.5", activation_price="65000",
        price_source="BestBidAsk", mode="Live", credentials_secret_ref={"name": "binance-keys"},
    )
    assert by_alias == by_name


def test_spec_defaults_to_simulate_without_credentials() -> None:
    spec = TrailingStopSpec.model_validate({"symbol": "BTCUSDT", "side": "BUY", "quantity": "1",
                                            "trailingPercent": "0.00000001"})
    assert spec.mode == "Simulate"
    assert spec.credentials_secret_ref is None
    assert spec.route == "simulate"
    assert spec.price_source == "LastTrade" and spec.followed_price == "LastTrade"
    assert spec.wire() == {"symbol": "BTCUSDT", "side": "BUY", "quantity": "1",
                           "trailingPercent": "0.00000001", "priceSource": "LastTrade", "mode": "Simulate"}


def test_status_ignores_unknown_fields_but_spec_does_not() -> None:
    status = TrailingStopStatus.model_validate({"phase": "Armed", "futureField": 1})
    assert status.phase == "Armed" and "futureField" not in status.wire()


def test_bus_messages_ignore_unknown_fields_from_newer_senders() -> None:
    wire = {**MESSAGES[0][1], "newOptionalField": "x"}
    tick = PriceTick.from_json(json.dumps(wire))
    assert "newOptionalField" not in json.loads(tick.to_json())


@settings(max_examples=150, deadline=None)
@given(st.decimals(min_value=0, max_value=D("1e12"), places=12, allow_nan=False, allow_infinity=False))
def test_any_exchange_price_survives_the_wire_exactly(price: Decimal) -> None:
    tick = PriceTick(symbol="BTCUSDT", price=price, qty="1", trade_id=1, trade_time=1, received_at=1, source="t")
    text = json.loads(tick.to_json())["price"]
    assert isinstance(text, str)
    assert "E" not in text.upper()
    assert D(text) == price
    assert PriceTick.from_json(tick.to_json()).price == price


# --- spec validation: one test per rule, exact messages -----------------------------------------

BASE_SPEC = {"symbol": "BTCUSDT", "side": "SELL", "quantity": "0.001", "trailingPercent": "1.5"}

SPEC_REJECTIONS = [
    # symbol pattern ^[A-Z0-9]{2,20}$
    ({"symbol": "btcusdt"}, 'spec.symbol must be 2-20 upper-case letters or digits, like BTCUSDT, got "btcusdt"'),
    ({"symbol": "B"}, 'spec.symbol must be 2-20 upper-case letters or digits, like BTCUSDT, got "B"'),
    ({"symbol": "A" * 21}, f'spec.symbol must be 2-20 upper-case letters or digits, like BTCUSDT, got "{"A" * 21}"'),
    ({"symbol": "BTC-USDT"}, 'spec.symbol must be 2-20 upper-case letters or digits, like BTCUSDT, got "BTC-USDT"'),
    # side
    ({"side": "sell"}, "spec.side must be one of 'SELL' or 'BUY', got 'sell'"),
    ({"side": "HOLD"}, "spec.side must be one of 'SELL' or 'BUY', got 'HOLD'"),
    # quantity > 0, pattern, no floats
    ({"quantity": "0"}, 'spec.quantity must be a decimal string > 0, like "0.001", got "0"'),
    ({"quantity": "0.000"}, 'spec.quantity must be a decimal string > 0, like "0.001", got "0.000"'),
    ({"quantity": "-1"}, 'spec.quantity must be a decimal string > 0, like "0.001", got "-1"'),
    ({"quantity": "1e3"}, 'spec.quantity must be a decimal string > 0, like "0.001", got "1e3"'),
    ({"quantity": "1,5"}, 'spec.quantity must be a decimal string > 0, like "0.001", got "1,5"'),
    ({"quantity": ".5"}, 'spec.quantity must be a decimal string > 0, like "0.001", got ".5"'),
    ({"quantity": ""}, 'spec.quantity must be a decimal string > 0, like "0.001", got ""'),
    ({"quantity": 0.001},
     'spec.quantity must be a decimal string > 0, like "0.001", got the float 0.001: write it as a quoted string'),
    ({"quantity": 5},
     'spec.quantity must be a decimal string > 0, like "0.001", got the int 5: write it as a quoted string'),
    ({"quantity": True},
     'spec.quantity must be a decimal string > 0, like "0.001", got the bool True: write it as a quoted string'),
    # trailingPercent 0 < x < 100, at most 8 decimals
    ({"trailingPercent": "0"}, 'spec.trailingPercent must be > 0 and < 100, with at most 8 decimals, got "0"'),
    ({"trailingPercent": "0.00000000"},
     'spec.trailingPercent must be > 0 and < 100, with at most 8 decimals, got "0.00000000"'),
    ({"trailingPercent": "100"}, 'spec.trailingPercent must be > 0 and < 100, with at most 8 decimals, got "100"'),
    ({"trailingPercent": "100.5"},
     'spec.trailingPercent must be > 0 and < 100, with at most 8 decimals, got "100.5"'),
    ({"trailingPercent": "-1"}, 'spec.trailingPercent must be > 0 and < 100, with at most 8 decimals, got "-1"'),
    ({"trailingPercent": "1.123456789"},
     'spec.trailingPercent must be > 0 and < 100, with at most 8 decimals, got "1.123456789"'),
    ({"trailingPercent": 1.5}, 'spec.trailingPercent must be > 0 and < 100, with at most 8 decimals, '
                               'got the float 1.5: write it as a quoted string'),
    # activationPrice > 0
    ({"activationPrice": "0"}, 'spec.activationPrice must be a decimal string > 0, like "65000", got "0"'),
    ({"activationPrice": "-65000"},
     'spec.activationPrice must be a decimal string > 0, like "65000", got "-65000"'),
    ({"activationPrice": 65000.5}, 'spec.activationPrice must be a decimal string > 0, like "65000", '
                                   'got the float 65000.5: write it as a quoted string'),
    # mode enum
    ({"mode": "Paper"}, "spec.mode must be one of 'Simulate', 'Testnet' or 'Live', got 'Paper'"),
    ({"mode": "live"}, "spec.mode must be one of 'Simulate', 'Testnet' or 'Live', got 'live'"),
    # credentialsSecretRef required unless Simulate
    ({"mode": "Live"}, "spec: credentialsSecretRef is required unless mode is Simulate (mode is Live)"),
    ({"mode": "Testnet"}, "spec: credentialsSecretRef is required unless mode is Simulate (mode is Testnet)"),
    ({"mode": "Testnet", "credentialsSecretRef": {}}, "spec.credentialsSecretRef.name is required"),
    ({"credentialsSecretRef": {"name": "k", "key": "x"}},
     "spec.credentialsSecretRef.key is not a field of this object (check its spelling)"),
    # unknown field
    ({"trailingpercent": "1"}, "spec.trailingpercent is not a field of this object (check its spelling)"),
    ({"stopPrice": "1"}, "spec.stopPrice is not a field of this object (check its spelling)"),
]


@pytest.mark.parametrize(("change", "expected"), SPEC_REJECTIONS, ids=lambda x: str(x)[:60])
def test_spec_rejection_has_the_exact_message(change: dict[str, Any], expected: str) -> None:
    assert errors_of(TrailingStopSpec, {**BASE_SPEC, **change}, "spec") == [expected]


@pytest.mark.parametrize("field", ["symbol", "side", "quantity"])
def test_required_spec_fields(field: str) -> None:
    data = {k: v for k, v in BASE_SPEC.items() if k != field}
    assert errors_of(TrailingStopSpec, data, "spec") == [f"spec.{field} is required"]


# --- trailingAmount, execution, expiresAt (issue 14) ----------------------------------------------------

AMOUNT_SPEC = {"symbol": "BTCUSDT", "side": "SELL", "quantity": "0.001", "trailingAmount": "250"}

NEW_FIELD_REJECTIONS = [
    ({"trailingPercent": None, "trailingAmount": None},
     "spec: exactly one of trailingPercent and trailingAmount must be set (got neither)"),
    ({"trailingAmount": "250"}, "spec: exactly one of trailingPercent and trailingAmount must be set (got both)"),
    ({"trailingPercent": None, "trailingAmount": "0"},
     'spec.trailingAmount must be a decimal string > 0 in the quote asset, like "250", got "0"'),
    ({"trailingPercent": None, "trailingAmount": "-5"},
     'spec.trailingAmount must be a decimal string > 0 in the quote asset, like "250", got "-5"'),
    ({"trailingPercent": None, "trailingAmount": 5},
     'spec.trailingAmount must be a decimal string > 0 in the quote asset, like "250", '
     "got the int 5: write it as a quoted string"),
    ({"trailingPercent": None, "trailingAmount": "1" * 21},
     'spec.trailingAmount must be a decimal string > 0 in the quote asset, like "250", got "' + "1" * 21 + '"'),
    ({"trailingPercent": None, "trailingAmount": "250", "activationPrice": "250"},
     "spec: a SELL's activationPrice must be above its trailingAmount: at the activation price its stop "
     "(activationPrice - trailingAmount) would be at or below 0, where no order can ever be placed "
     "(activationPrice 250, trailingAmount 250)"),
    ({"trailingPercent": None, "trailingAmount": "250.00000000000000000001", "activationPrice": "250.00"},
     "spec: a SELL's activationPrice must be above its trailingAmount: at the activation price its stop "
     "(activationPrice - trailingAmount) would be at or below 0, where no order can ever be placed "
     "(activationPrice 250, trailingAmount 250.00000000000000000001)"),
    ({"execution": {"type": "Limit"}},
     "spec.execution: maxSlippagePercent is required with type Limit, and only with Limit"),
    ({"execution": {"type": "Market", "maxSlippagePercent": "1"}},
     "spec.execution: maxSlippagePercent is required with type Limit, and only with Limit"),
    ({"execution": {"type": "Stop"}}, "spec.execution.type must be one of 'Market' or 'Limit', got 'Stop'"),
    ({"execution": {"type": "Limit", "maxSlippagePercent": "100"}},
     'spec.execution.maxSlippagePercent must be >= 0 and < 100, with at most 8 decimals, got "100"'),
    ({"execution": {"type": "Limit", "maxSlippagePercent": "0.123456789"}},
     'spec.execution.maxSlippagePercent must be >= 0 and < 100, with at most 8 decimals, got "0.123456789"'),
    ({"execution": {"type": "Limit", "maxSlippagePercent": 0.5}},
     'spec.execution.maxSlippagePercent must be >= 0 and < 100, with at most 8 decimals, '
     "got the float 0.5: write it as a quoted string"),
    ({"execution": {"type": "Limit", "maxSlippage": "1"}},
     "spec.execution.maxSlippage is not a field of this object (check its spelling)"),
    ({"expiresAt": "2026-12-31"}, 'spec.expiresAt must be an RFC 3339 time like "2026-12-31T23:59:59Z", '
                                  'got "2026-12-31"'),
    ({"expiresAt": "2026-12-31T23:59:59"},
     'spec.expiresAt must be an RFC 3339 time like "2026-12-31T23:59:59Z", got "2026-12-31T23:59:59"'),
    ({"expiresAt": "2026-13-01T00:00:00Z"},
     'spec.expiresAt must be an RFC 3339 time like "2026-12-31T23:59:59Z", got "2026-13-01T00:00:00Z"'),
    ({"expiresAt": "2026-02-30T00:00:00Z"},
     'spec.expiresAt must be an RFC 3339 time like "2026-12-31T23:59:59Z" (day is out of range for month), '
     'got "2026-02-30T00:00:00Z"'),
    ({"expiresAt": 1767225600000},
     "spec.expiresAt: Input should be a valid string"),
]


@pytest.mark.parametrize(("change", "expected"), NEW_FIELD_REJECTIONS, ids=lambda x: str(x)[:60])
def test_new_field_rejection_has_the_exact_message(change: dict[str, Any], expected: str) -> None:
    data = {k: v for k, v in {**BASE_SPEC, **change}.items() if v is not None}
    assert errors_of(TrailingStopSpec, data, "spec") == [expected]


@pytest.mark.parametrize(
    "change",
    [{"trailingAmount": "0.00000000000000000001"}, {"trailingAmount": "99999999999999999999.99999999999999999999"},
     {"trailingAmount": "250", "activationPrice": "250.00000000000000000001"},
     {"side": "BUY", "trailingAmount": "250", "activationPrice": "1"},  # a BUY's stop is R + a: always > 0
     {"execution": {"type": "Limit", "maxSlippagePercent": "0"}},
     {"execution": {"type": "Limit", "maxSlippagePercent": "99.99999999"}},
     {"execution": {"type": "Market"}},
     {"expiresAt": "2026-12-31T23:59:59Z"}, {"expiresAt": "2026-12-31T23:59:59.123456789+05:30"},
     {"expiresAt": "1970-01-01T00:00:00-00:00"}],
)
def test_new_fields_accepted(change: dict[str, Any]) -> None:
    spec = TrailingStopSpec.model_validate({**AMOUNT_SPEC, **change})
    assert TrailingStopSpec.model_validate(spec.wire()) == spec


def test_the_trail_reads_as_percent_or_amount() -> None:
    assert TrailingStopSpec.model_validate(BASE_SPEC).trail_text == "1.5%"
    assert TrailingStopSpec.model_validate(AMOUNT_SPEC).trail_text == "250"


@pytest.mark.parametrize(
    ("text", "ms"),
    [("1970-01-01T00:00:00Z", 0), ("1970-01-01T00:00:00.001Z", 1), ("1970-01-01T00:00:00.0001Z", 1),
     ("1970-01-01T00:00:00.000000001Z", 1), ("1970-01-01T00:00:00.999Z", 999),
     ("1970-01-01T00:00:00.9991Z", 1000), ("1970-01-01T01:00:00+01:00", 0), ("1970-01-01T00:00:00-00:30", 1_800_000),
     ("2026-12-31T23:59:59Z", 1_798_761_599_000), ("1969-12-31T23:59:59.9995Z", 0)],
)
def test_a_deadline_is_rounded_up_to_the_millisecond(text: str, ms: int) -> None:
    # A trade at t (whole ms) comes before the deadline D exactly when t < ceil(D).
    assert deadline_ms(text) == ms


def test_a_stop_definition_carries_the_new_fields_and_is_version_2() -> None:
    spec = TrailingStopSpec.model_validate({
        **AMOUNT_SPEC, "execution": {"type": "Limit", "maxSlippagePercent": "0.5"},
        "expiresAt": "2026-12-31T23:59:59.0001Z"})
    stop = StopDefinition.from_spec(spec, uid=UID, namespace="trading", name="s")
    assert (stop.trailing_amount, stop.trailing_percent, stop.limit_slippage, stop.expires_at) == (
        D("250"), None, D("0.5"), 1_798_761_599_001)
    wire = json.loads(StopCommand.upsert(stop).to_json())
    assert wire["v"] == 2
    assert (wire["stop"]["trailingAmount"], wire["stop"]["execution"], wire["stop"]["expiresAt"]) == (
        "250", {"type": "Limit", "maxSlippagePercent": "0.5"}, 1_798_761_599_001)
    assert StopCommand.from_json(json.dumps(wire)).stop == stop


def test_a_stop_without_new_features_is_still_version_1_and_reads_as_before() -> None:
    stop = StopDefinition.from_spec(TrailingStopSpec.model_validate(BASE_SPEC), uid=UID, namespace="t", name="s")
    wire = json.loads(StopCommand.upsert(stop).to_json())
    assert wire["v"] == 1
    assert set(wire["stop"]) == {"uid", "namespace", "name", "generation", "symbol", "side", "quantity",
                                 "trailingPercent", "mode", "route"}


@pytest.mark.parametrize("change", [
    {"trailingAmount": "1"}, {"execution": {"type": "Limit", "maxSlippagePercent": "1"}},
    {"expiresAt": 5}, {"state": {"expired": True}},
])
def test_each_new_feature_makes_a_definition_version_2(change: dict[str, Any]) -> None:
    base = {"uid": UID, "symbol": "BTCUSDT", "side": "BUY", "quantity": "1", "trailingPercent": "1"}
    if "trailingAmount" in change:
        base.pop("trailingPercent")
    stop = StopDefinition.model_validate({**base, **change})
    assert StopCommand.upsert(stop).wire_version == 2


def test_a_version_1_reader_of_a_version_2_message_refuses_it() -> None:
    """What an orchestrator of the first version does with a stop it could not honour: its
    ``v: Literal[1]`` refuses the message, which goes to the dead letters (instead of placing a
    MARKET order for a Limit stop). Shown with the first version's rule itself."""
    from typing import Literal

    from pydantic import TypeAdapter
    v1 = TypeAdapter(Literal[1])
    order = PlaceOrder(client_order_id="ts-a", uid=UID, symbol="BTCUSDT", side="SELL", quantity=D("1"),
                       type="LIMIT", price=D("99.5"), time_in_force="IOC", mode="Simulate", route="simulate",
                       trigger_price=D("100"), triggered_at=1)
    with pytest.raises(ValidationError):
        v1.validate_python(json.loads(order.to_json())["v"])


@pytest.mark.parametrize(
    ("fields", "expected"),
    [({"type": "LIMIT"}, "a LIMIT order needs its price and timeInForce IOC; a MARKET order has neither"),
     ({"type": "LIMIT", "price": "1"}, "a LIMIT order needs its price and timeInForce IOC; a MARKET order has neither"),
     ({"price": "1", "timeInForce": "IOC"},
      "a LIMIT order needs its price and timeInForce IOC; a MARKET order has neither"),
     ({"type": "LIMIT", "price": "1", "timeInForce": "GTC"}, "timeInForce must be one of 'IOC', got 'GTC'"),
     ({"type": "STOP_LOSS"}, "type must be one of 'MARKET' or 'LIMIT', got 'STOP_LOSS'")],
)
def test_place_order_type_rules(fields: dict[str, Any], expected: str) -> None:
    assert message_errors(PlaceOrder, {**MESSAGES[8][1], **fields}) == [expected]


def test_a_limit_order_and_its_result_are_version_2() -> None:
    wire = {**MESSAGES[8][1], "type": "LIMIT", "price": "64000.5", "timeInForce": "IOC"}
    order = PlaceOrder.from_json(json.dumps(wire))
    assert json.loads(order.to_json()) == {**wire, "v": 2}
    result = OrderResult.for_order(order, status="EXPIRED", executed_qty=D("0.0004"), orig_qty=D("0.001"), at=5)
    out = json.loads(result.to_json())
    assert (out["v"], out["type"], out["price"], out["origQty"], out["executedQty"]) == (
        2, "LIMIT", "64000.5", "0.001", "0.0004")


def test_a_negative_stop_level_is_carried_exactly() -> None:
    event = StopEvent(type="activated", symbol="BTCUSDT", uid=UID, price=D("50"), reference_price=D("50"),
                      stop_price=D("-50.00000000000000000001"), at=1)
    out = json.loads(event.to_json())
    assert (out["v"], out["stopPrice"]) == (2, "-50.00000000000000000001")
    assert StopEvent.from_json(event.to_json()).model_dump(exclude={"v"}) == event.model_dump(exclude={"v"})
    assert TrailingStopStatus(stop_price=D("-1")).wire()["stopPrice"] == "-1"


def test_every_problem_is_reported_not_just_the_first() -> None:
    lines = errors_of(
        TrailingStopSpec,
        {"symbol": "x", "side": "SELL", "quantity": 1.0, "trailingPercent": "0", "bogus": 1},
        "spec",
    )
    assert lines == [
        'spec.symbol must be 2-20 upper-case letters or digits, like BTCUSDT, got "x"',
        'spec.quantity must be a decimal string > 0, like "0.001", got the float 1.0: write it as a quoted string',
        'spec.trailingPercent must be > 0 and < 100, with at most 8 decimals, got "0"',
        "spec.bogus is not a field of this object (check its spelling)",
    ]


def test_describe_errors_without_prefix() -> None:
    assert errors_of(TrailingStopSpec, {**BASE_SPEC, "trailingPercent": "0"}) == [
        'trailingPercent must be > 0 and < 100, with at most 8 decimals, got "0"'
    ]


@pytest.mark.parametrize(
    "change",
    [{"trailingPercent": "99.99999999"}, {"trailingPercent": "0.00000001"}, {"trailingPercent": "05"},
     {"quantity": "00000000000000000001"}, {"quantity": "0.00000000000000000001"},
     {"activationPrice": "0.00000001"}, {"mode": "Testnet", "credentialsSecretRef": {"name": "binance-keys"}},
     {"mode": "Live", "credentialsSecretRef": {"name": "a" * 253}},
     {"credentialsSecretRef": {"name": "keys.team-a"}}, {"symbol": "1INCHUSDT"}, {"symbol": "A" * 20}],
)
def test_spec_edges_that_are_accepted(change: dict[str, Any]) -> None:
    TrailingStopSpec.model_validate({**BASE_SPEC, **change})


@pytest.mark.parametrize("name", ["Bad_Name", "-keys", "keys-", "keys..a", "a" * 254, ""])
def test_secret_name_pattern_is_refused(name: str) -> None:
    lines = errors_of(TrailingStopSpec, {**BASE_SPEC, "mode": "Live", "credentialsSecretRef": {"name": name}}, "spec")
    assert len(lines) == 1
    assert lines[0].startswith("spec.credentialsSecretRef.name")



def test_secret_name_error_is_human() -> None:
    # Every other spec rule reads `<field> must be ..., got "<value>"`; this one prints
    # `spec.credentialsSecretRef.name: String should match pattern '^[a-z0-9]([-a-z0-9]*...'`.
    lines = errors_of(TrailingStopSpec, {**BASE_SPEC, "mode": "Live", "credentialsSecretRef": {"name": "Bad_Name"}},
                      "spec")
    assert len(lines) == 1
    assert "Bad_Name" in lines[0]
    assert "String should match pattern" not in lines[0]



@pytest.mark.parametrize(
    "change",
    [{"symbol": "BTCUSDT\n"}, {"quantity": "1\n"}, {"trailingPercent": "1.5\n"}, {"activationPrice": "65000\n"}],
    ids=["symbol", "quantity", "trailingPercent", "activationPrice"],
)
def test_trailing_newline_is_refused_like_the_crd_does(change: dict[str, Any]) -> None:
    # `symbol: |` block scalars in YAML give exactly "BTCUSDT\n".
    with pytest.raises(ValidationError):
        TrailingStopSpec.model_validate({**BASE_SPEC, **change})


# --- bus message validation ---------------------------------------------------------------------


def test_message_version_other_than_1_or_2_is_refused() -> None:
    wire = dict(MESSAGES[0][1])
    assert message_errors(PriceTick, {**wire, "v": 3}) == ["v must be one of 1 or 2, got 3"]
    assert message_errors(PriceTick, {**wire, "v": 0}) == ["v must be one of 1 or 2, got 0"]
    event = {"v": 3, "type": "sync", "symbol": "BTCUSDT", "at": 1}
    assert message_errors(StopEvent, event) == ["v must be one of 1 or 2, got 3"]
    # Version 2 is read; a message is written with the version its content needs.
    assert json.loads(PriceTick.from_json(json.dumps({**wire, "v": 2})).to_json())["v"] == 1


def test_messages_carry_v_1_even_when_built_in_python() -> None:
    event = StopEvent(type="sync", symbol="BTCUSDT", at=1)
    assert json.loads(event.to_json()) == {"v": 1, "type": "sync", "symbol": "BTCUSDT", "at": 1}


@pytest.mark.parametrize(
    ("price", "expected"),
    [(0.5, "price must be a decimal string, got the float 0.5"),
     ("abc", 'price must be a decimal string, got "abc"'),
     ("-1", 'price must be a finite decimal >= 0, got "-1"'),
     ("NaN", 'price must be a finite decimal >= 0, got "NaN"'),
     ("Infinity", 'price must be a finite decimal >= 0, got "Infinity"')],
)
def test_message_decimals_must_be_finite_non_negative_strings(price: Any, expected: str) -> None:
    assert message_errors(PriceTick, {**MESSAGES[0][1], "price": price}) == [expected]


@pytest.mark.parametrize("bad", ["bad id!", "x" * 37, "", "ts/abc", "ts.abc", "ts abc"])
def test_place_order_client_order_id_pattern(bad: str) -> None:
    wire = {**MESSAGES[8][1], "clientOrderId": bad}
    assert message_errors(PlaceOrder, wire) == [
        "clientOrderId: String should match pattern '^[A-Za-z0-9_-]{1,36}$'"
    ]




def test_stop_command_needs_a_stop_unless_synced() -> None:
    upsert = message_errors(StopCommand, {"v": 1, "op": "upsert", "symbol": "BTCUSDT"})
    assert upsert == ["the upsert command needs its stop"]
    assert message_errors(StopCommand, {"v": 1, "op": "cancel", "symbol": "BTCUSDT"}) == [
        "the cancel command needs its stop"
    ]
    assert StopCommand.from_json('{"v": 1, "op": "synced", "symbol": "BTCUSDT"}').stop is None


def test_stop_command_op_and_symbol_agreement() -> None:
    assert message_errors(StopCommand, {"v": 1, "op": "delete", "symbol": "BTCUSDT", "stop": STOP_WIRE}) == [
        "op must be one of 'upsert', 'cancel' or 'synced', got 'delete'"
    ]
    assert message_errors(StopCommand, {"v": 1, "op": "upsert", "symbol": "XRPETH", "stop": STOP_WIRE}) == [
        "stop.symbol must equal the command's symbol"
    ]


def test_stop_command_validates_the_stop_like_the_spec() -> None:
    stop = {**STOP_WIRE, "trailingPercent": "100", "quantity": 0.5}
    assert message_errors(StopCommand, {"v": 1, "op": "upsert", "symbol": "BTCUSDT", "stop": stop}) == [
        'stop.quantity must be a decimal string > 0, like "0.001", got the float 0.5: write it as a quoted string',
        'stop.trailingPercent must be > 0 and < 100, with at most 8 decimals, got "100"',
    ]


def test_saved_state_must_be_consistent() -> None:
    assert errors_of(SavedState, {"activated": True}) == ["an activated stop needs its referencePrice"]
    cmd = {"v": 1, "op": "upsert", "symbol": "BTCUSDT", "stop": {**STOP_WIRE, "state": {"activated": True}}}
    assert message_errors(StopCommand, cmd) == ["stop.state: an activated stop needs its referencePrice"]
    # Events can arrive out of order: a stop known to have triggered is final, activation details or not.
    assert SavedState.model_validate({"triggered": True}).triggered is True


def test_upsert_and_cancel_constructors() -> None:
    stop = StopDefinition.model_validate(STOP_WIRE)
    assert StopCommand.upsert(stop).op == "upsert" and StopCommand.upsert(stop).symbol == "BTCUSDT"
    assert StopCommand.cancel(stop).op == "cancel" and StopCommand.cancel(stop).stop == stop


def test_stop_definition_from_spec_carries_the_route() -> None:
    spec = TrailingStopSpec.model_validate(SPEC_WIRE)
    stop = StopDefinition.from_spec(spec, uid=UID, namespace="trading", name="btc", generation=7)
    assert stop.route == "live-binance-keys"
    assert (stop.symbol, stop.side, stop.quantity, stop.trailing_percent, stop.activation_price, stop.mode) == (
        "BTCUSDT", "SELL", D("0.001"), D("1.5"), D("65000"), "Live")
    assert stop.generation == 7 and stop.state is None


def test_event_routing_key_and_order_result_filled() -> None:
    event = StopEvent.from_json(json.dumps(MESSAGES[4][1]))
    assert event.routing_key == "BTCUSDT.triggered"
    assert OrderResult.from_json(json.dumps(MESSAGES[9][1])).filled
    assert not OrderResult.from_json(json.dumps(MESSAGES[10][1])).filled
    simulated = {**MESSAGES[9][1], "status": "SIMULATED"}
    assert OrderResult.from_json(json.dumps(simulated)).filled


# --- helpers --------------------------------------------------------------------------------------


def test_client_order_id_from_a_kubernetes_uid() -> None:
    assert client_order_id(UID) == "ts-7c9e6679742540de944be07fc1f90ae7"
    assert client_order_id(UID.upper()) == client_order_id(UID)
    assert len(client_order_id(UID)) == 35


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1, max_size=128))
def test_client_order_id_always_fits_binance(uid: str) -> None:
    first = client_order_id(uid)
    assert re.fullmatch(CLIENT_ORDER_ID_PATTERN, first)
    assert client_order_id(uid) == first  # deterministic


@settings(max_examples=100, deadline=None)
@given(st.uuids())
def test_distinct_kubernetes_uids_get_distinct_client_order_ids(uid: Any) -> None:
    other = str(uid)[:-1] + ("0" if str(uid)[-1] != "0" else "1")
    assert client_order_id(str(uid)) != client_order_id(other)



def test_distinct_non_uuid_uids_get_distinct_client_order_ids() -> None:
    # StopRef.uid accepts any 1-128 characters; these two stops would share one clientOrderId, so the
    # executor (which places only when no order with that id exists) would never place the second.
    first = "stop-for-the-trading-desk-number-0001"
    second = "stop-for-the-trading-desk-number-0002"
    assert client_order_id(first) != client_order_id(second)


def test_executor_route() -> None:
    assert executor_route("Simulate", None) == "simulate"
    assert executor_route("Simulate", "ignored") == "simulate"
    assert executor_route("Testnet", "binance-keys") == "testnet-binance-keys"
    assert executor_route("Live", "keys") == "live-keys"


@pytest.mark.parametrize(
    ("number", "text"),
    [("1.500", "1.5"), ("1E+3", "1000"), ("100", "100"), ("0.000", "0"), ("0", "0"), ("1E-10", "0.0000000001"),
     ("0.00141342", "0.00141342"), ("65128.69250", "65128.6925")],
)
def test_to_wire_is_canonical_fixed_point(number: str, text: str) -> None:
    assert to_wire(D(number)) == text


@pytest.mark.parametrize(
    ("ms", "text"),
    [(0, "1970-01-01T00:00:00.000Z"), (1, "1970-01-01T00:00:00.001Z"),
     (1570752011620, "2019-10-11T00:00:11.620Z"), (1700000007999, "2023-11-14T22:13:27.999Z")],
)
def test_ms_and_rfc3339(ms: int, text: str) -> None:
    assert ms_to_rfc3339(ms) == text
    assert rfc3339_to_ms(text) == ms


def test_rfc3339_without_fraction_or_with_offset() -> None:
    assert rfc3339_to_ms("2019-10-11T00:00:11Z") == 1570752011000
    assert rfc3339_to_ms("2019-10-11T02:00:11.620+02:00") == 1570752011620


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=1_500_000_000_000, max_value=1_900_000_000_000))
def test_ms_round_trip_in_this_era(ms: int) -> None:
    assert rfc3339_to_ms(ms_to_rfc3339(ms)) == ms



@pytest.mark.parametrize("ms", [1074729709649, 2154548192811])
def test_ms_round_trip_everywhere(ms: int) -> None:
    # "2004-01-22T00:01:49.649Z" -> 1074729709648: int(timestamp() * 1000) truncates 1074729709648.9999.
    assert rfc3339_to_ms(ms_to_rfc3339(ms)) == ms
