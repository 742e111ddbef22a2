"""The TrailingStop CustomResourceDefinition, built from the contracts.

``crds/trailingstops.trailingstop.dev.yaml`` (and the chart's copy) is this function's output,
committed; a test fails when they drift. Patterns, the "> 0" rules and their messages come from
:mod:`trailingstop.core.contracts`, so ``kubectl apply`` and ``trailingstop run`` refuse the same specs
with the same words.
"""

from __future__ import annotations

import typing
from typing import Any

import yaml

from trailingstop.core.contracts import (
    API_GROUP,
    API_VERSION,
    KIND,
    MESSAGES,
    NONZERO_DIGIT,
    PLURAL,
    PRICE_PATTERN,
    QUANTITY_PATTERN,
    SECRET_NAME_MAX,
    SECRET_NAME_PATTERN,
    SLIPPAGE_PERCENT_PATTERN,
    SYMBOL_PATTERN,
    TIME_MAX_CHARS,
    TIME_PATTERN,
    TRAILING_AMOUNT_PATTERN,
    TRAILING_PERCENT_PATTERN,
    FollowedPrice,
    Phase,
    PriceSource,
)
from trailingstop.core.decimals import PRICE_FRACTION_DIGITS, PRICE_INTEGER_DIGITS
from trailingstop.core.lifecycle import FROZEN
from trailingstop.table import PRINTER_COLUMNS

CRD_NAME = f"{PLURAL}.{API_GROUP}"
CRD_FILE = f"{CRD_NAME}.yaml"


def _string(description: str, **extra: Any) -> dict[str, Any]:
    return {"type": "string", "description": description, **extra}


def _matching(description: str, pattern: str, message: str, max_length: int, positive: bool = False) -> dict[str, Any]:
    """A string checked by a CEL rule rather than ``pattern``, so a refusal reads ``message``
    instead of a regular expression. (CEL's ``matches`` is RE2, like ``pattern``.)"""
    rule = f"self.matches('{_cel_escape(pattern)}')"
    if positive:
        rule += f" && self.matches('{NONZERO_DIGIT}')"
    validations = [{"rule": rule, "message": message}]
    return _string(description, maxLength=max_length, **{"x-kubernetes-validations": validations})


def _positive_decimal(description: str, pattern: str, message: str, max_length: int) -> dict[str, Any]:
    return _matching(description, pattern, message, max_length, positive=True)


def _cel_escape(pattern: str) -> str:
    return pattern.replace("\\", "\\\\").replace("'", "\\'")


def _immutable(schema: dict[str, Any], field: str) -> dict[str, Any]:
    rule = {"rule": "self == oldSelf", "message": MESSAGES["immutable"].format(field=field)}
    schema.setdefault("x-kubernetes-validations", []).append(rule)
    return schema


# A fired stop has placed its order, an expired one has ended: a new spec would be a new stop. The
# API server refuses the change (the operator also refuses it with a condition, should a change get
# through). The phases are the lifecycle's FROZEN, in the order the enum lists them. Until then every
# spec change is allowed: a stop not yet triggered may move its expiresAt, later or sooner.
_FROZEN_LIST = ", ".join(f"'{phase}'" for phase in Phase if phase in FROZEN)
FROZEN_AFTER_TRIGGER = {
    "rule": "!has(oldSelf.status) || !has(oldSelf.status.phase) || "
    f"!(oldSelf.status.phase in [{_FROZEN_LIST}]) || self.spec == oldSelf.spec",
    "message": "spec cannot change once the stop has triggered or expired: create a new TrailingStop instead",
}


def _cel_padded(field: str) -> str:
    """CEL for the decimal string ``self.<field>`` written with exactly 20 + 20 digits (integer part
    padded with zeros on the left, fraction on the right), so that two such strings compare as
    strings exactly as their numbers compare. CEL's numbers are doubles, which would round a
    40-digit price; strings do not (DESIGN §3 "Digits")."""
    parts = f"self.{field}.split('.')"
    integer = f"{parts}[0]"
    fraction = f"({parts}.size() > 1 ? {parts}[1] : '')"
    zeros_left, zeros_right = "'" + "0" * PRICE_INTEGER_DIGITS + "'", "'" + "0" * PRICE_FRACTION_DIGITS + "'"
    return (f"{zeros_left}.substring(size({integer})) + {integer} + "
            f"{fraction} + {zeros_right}.substring(size({fraction}))")


# A SELL's stop starts at activationPrice - trailingAmount (or above, as the reference only rises):
# at or below 0 no order could ever be placed, so such a spec is refused. Exact: the comparison is of
# padded decimal strings; values that fail their own pattern are left to that field's rule.


def _sell_amount_rule() -> dict[str, str]:
    pattern = _cel_escape(PRICE_PATTERN)
    applies = "has(self.trailingAmount) && has(self.activationPrice) && self.side == 'SELL'"
    well_formed = f"self.trailingAmount.matches('{pattern}') && self.activationPrice.matches('{pattern}')"
    above = f"{_cel_padded('activationPrice')} > {_cel_padded('trailingAmount')}"
    return {"rule": f"!({applies}) || !({well_formed}) || {above}", "message": MESSAGES["sellAmount"]}


def _time_rule(description: str) -> dict[str, Any]:
    """An RFC 3339 string checked by the same pattern as ``run`` (not ``format: date-time``, which
    accepts other layouts and makes CEL see a timestamp); CEL's ``timestamp()`` then refuses a day
    the month does not have (the pattern already bounds every field)."""
    schema = _matching(description, TIME_PATTERN, MESSAGES["expiresAt"], TIME_MAX_CHARS)
    rule = schema["x-kubernetes-validations"][0]
    rule["rule"] += " && timestamp(self) >= timestamp('0001-01-01T00:00:00Z')"
    return schema


def _execution_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "description": "How the order is placed at the trigger. Market (the default): one MARKET order. "
        "Limit: one LIMIT order, timeInForce IOC, at the trigger price minus maxSlippagePercent (SELL) or "
        "plus it (BUY), rounded to the tick size in the direction that never passes that bound; what it "
        "cannot fill at once is not sold or bought (phase PartiallyFilled or Unfilled), and no second "
        "order is placed.",
        "properties": {
            "type": _string("Market or Limit.", enum=["Market", "Limit"], default="Market"),
            "maxSlippagePercent": _matching(
                "Limit only: how far below (SELL) or above (BUY) the trigger price the order may fill, "
                "in percent, 0 <= x < 100 with at most 8 decimals (\"0.5\" = 0.5 %).",
                SLIPPAGE_PERCENT_PATTERN, MESSAGES["maxSlippagePercent"], 11,
            ),
        },
        "x-kubernetes-validations": [
            {"rule": "(self.type == 'Limit') == has(self.maxSlippagePercent)",
             "message": MESSAGES["slippageWithLimit"]},
        ],
    }


def spec_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "description": "What to protect and how: the stop follows the price and places one order (MARKET, "
        "or LIMIT with a slippage bound) when the price moves trailingPercent or trailingAmount against the "
        "best price since activation.",
        "required": ["symbol", "side", "quantity"],
        "properties": {
            "symbol": _immutable(
                _matching("Binance Spot symbol, e.g. BTCUSDT. Immutable.", SYMBOL_PATTERN, MESSAGES["symbol"], 20),
                "symbol",
            ),
            "side": _immutable(
                _string(
                    "SELL: sell when the price falls trailingPercent from its high since activation. "
                    "BUY: buy when the price rises trailingPercent from its low. Immutable.",
                    enum=["SELL", "BUY"],
                ),
                "side",
            ),
            "quantity": _positive_decimal(
                "Order quantity in the base asset, a decimal string > 0 such as \"0.001\". "
                "It must fit the symbol's LOT_SIZE stepSize and minQty.",
                QUANTITY_PATTERN, MESSAGES["quantity"], 41,
            ),
            "trailingPercent": _positive_decimal(
                "Trailing distance in percent, a decimal string, 0 < x < 100 with at most 8 decimals "
                "(\"1.5\" = 1.5 %). Exactly one of trailingPercent and trailingAmount.",
                TRAILING_PERCENT_PATTERN, MESSAGES["trailingPercent"], 11,
            ),
            "trailingAmount": _positive_decimal(
                "Trailing distance in the quote asset, a decimal string > 0 (\"250\" = 250 USDT on BTCUSDT): "
                "SELL stop = reference - amount, BUY stop = reference + amount. A SELL's activationPrice must "
                "be above it. Exactly one of trailingPercent and trailingAmount.",
                TRAILING_AMOUNT_PATTERN, MESSAGES["trailingAmount"], 41,
            ),
            "activationPrice": _positive_decimal(
                "Optional. Trailing starts only once a trade reaches this price (SELL: >=, BUY: <=). "
                "Without it the stop activates on the first trade.",
                PRICE_PATTERN, MESSAGES["activationPrice"], 41,
            ),
            "execution": _execution_schema(),
            "expiresAt": _time_rule(
                "Optional RFC 3339 time (\"2026-12-31T23:59:59Z\"). A stop that has not triggered by then "
                "ends in phase Expired with no order. Judged on the exchange's trade times: a trade before "
                "it may still trigger the stop; the first trade at or after it expires the stop. It may be "
                "changed until the stop triggers or expires.",
            ),
            "priceSource": _immutable(
                _string(
                    "The price that drives the stop. LastTrade (default): the symbol's trades. BestBidAsk: the top "
                    "of the order book (Binance's bookTicker): a SELL tracks and triggers on the best bid, a BUY on "
                    "the best ask, the prices a MARKET order would meet. The book has no history: after a lost "
                    "stream the stop goes on from the first fresh quote and status.lastGap says what it missed. "
                    "Immutable.",
                    enum=list(typing.get_args(PriceSource)),
                    default="LastTrade",
                ),
                "priceSource",
            ),
            "mode": _string(
                "Simulate (default): fills are simulated at the trigger price. Testnet: orders go to the "
                "Binance Spot Testnet. Live: real orders on Binance.",
                enum=["Simulate", "Testnet", "Live"],
                default="Simulate",
            ),
            "credentialsSecretRef": {
                "type": "object",
                "description": "Secret in the same namespace with keys apiKey and apiSecret. Required "
                "unless mode is Simulate. The keys are passed to the executor as environment variables only.",
                "required": ["name"],
                "properties": {
                    "name": _matching(
                        "Name of the Secret.", SECRET_NAME_PATTERN, f"credentialsSecretRef.{MESSAGES['secretName']}",
                        SECRET_NAME_MAX,
                    ),
                },
            },
        },
        "x-kubernetes-validations": [
            {
                "rule": "self.mode == 'Simulate' || has(self.credentialsSecretRef)",
                "message": MESSAGES["credentialsSecretRef"],
            },
            {"rule": "has(self.trailingPercent) != has(self.trailingAmount)", "message": MESSAGES["trail"]},
            _sell_amount_rule(),
        ],
    }


def _time(description: str) -> dict[str, Any]:
    return _string(description, format="date-time")


def _decimal(description: str) -> dict[str, Any]:
    return _string(description + " (decimal string)")


def _integer(description: str) -> dict[str, Any]:
    return {"type": "integer", "format": "int64", "description": description}


def status_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "description": "Where the stop stands, written by the operator.",
        "properties": {
            "phase": _string(
                "Pending (not yet seen by an orchestrator), Armed (waiting for activation), Tracking, "
                "Triggered (order sent), Filled, PartiallyFilled or Unfilled (the order ended with part or "
                "none of the quantity filled; no second order), Rejected (by the exchange), Expired "
                "(expiresAt passed before a trigger; no order), Invalid (the exchange would refuse the "
                "order; fix the spec), or Failed (written by earlier versions for an unfilled order).",
                enum=[str(phase) for phase in Phase],
            ),
            "observedGeneration": _integer("The spec generation this status reflects."),
            "message": _string("Human-readable detail about the phase."),
            "activatedAt": _time("Time of the trade that activated the stop."),
            "activatedPrice": _decimal("Price of the trade that activated the stop"),
            "activatedTradeId": _integer("Binance aggregate trade id that activated the stop."),
            "referencePrice": _decimal("Highest (SELL) or lowest (BUY) price since activation"),
            "stopPrice": _decimal(
                "The stop level: reference * (1 - p/100) or reference - amount for SELL, reference * (1 + p/100) "
                "or reference + amount for BUY; a SELL's may be 0 or below while the reference is at or below "
                "its trailingAmount, and then nothing triggers it"),
            "lastPrice": _decimal("Last price seen of the series the stop follows (priceSource)"),
            "lastPriceAt": _time("Time of the last trade (or, for a book stop, quote) seen."),
            "lastTradeId": _integer("Aggregate trade id of the last trade reflected in this status."),
            "triggeredAt": _time("Time of the trade that triggered the stop."),
            "triggerPrice": _decimal("Price of the trade that triggered the stop"),
            "triggerTradeId": _integer("Aggregate trade id that triggered the stop."),
            "order": {
                "type": "object",
                "description": "The one order placed for this stop.",
                "properties": {
                    "clientOrderId": _string("Derived from this resource's uid: one order per stop, ever."),
                    "orderId": _integer("Binance order id."),
                    "status": _string("PENDING until the exchange answers; then Binance's order status, "
                                      "or SIMULATED."),
                    "type": _string("MARKET or LIMIT.", enum=["MARKET", "LIMIT"]),
                    "price": _decimal("A LIMIT order's price"),
                    "origQty": _decimal("Quantity ordered"),
                    "executedQty": _decimal("Filled quantity"),
                    "remainingQty": _decimal("Quantity ordered and not filled, once the order has ended"),
                    "avgPrice": _decimal("Average fill price"),
                    "cummulativeQuoteQty": _decimal("Quote asset spent or received"),
                    "error": {
                        "type": "object",
                        "description": "The exchange's rejection.",
                        "properties": {
                            "code": {"type": "integer", "description": "Binance error code, e.g. -2010."},
                            "message": _string("Binance error message."),
                        },
                    },
                    "updatedAt": _time("When the order status was last updated."),
                },
            },
            "priceSource": _string(
                "The price this stop follows: LastTrade, BestBid (a BestBidAsk SELL) or BestAsk (a BestBidAsk "
                "BUY). Reference, stop, last, activation and trigger prices are of this series.",
                enum=list(typing.get_args(FollowedPrice)),
            ),
            "activatedUpdateId": _integer("BestBidAsk: the order book updateId of the quote that activated the stop."),
            "lastUpdateId": _integer("BestBidAsk: the order book updateId of the last quote reflected in this status."),
            "triggerUpdateId": _integer("BestBidAsk: the order book updateId of the quote that triggered the stop."),
            "lastGap": {
                "type": "object",
                "description": "BestBidAsk: the last stretch with no quote (a lost stream or a restart). The book "
                "has no history to fetch: the stop went on from the first fresh quote.",
                "required": ["from", "to", "seconds", "toUpdateId"],
                "properties": {
                    "from": _time("The last quote before the gap."),
                    "to": _time("The first fresh quote after it."),
                    "seconds": _decimal("How long no quote arrived"),
                    "fromUpdateId": _integer("updateId of the last quote before the gap."),
                    "toUpdateId": _integer("updateId of the first fresh quote."),
                },
            },
            "gapCount": _integer("BestBidAsk: how many gaps in the quotes this stop has gone through."),
            "conditions": {
                "type": "array",
                "description": "Ready, Activated, Triggered and Filled.",
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["type"],
                "items": {
                    "type": "object",
                    "required": ["type", "status", "reason", "lastTransitionTime"],
                    "properties": {
                        "type": _string("Condition type."),
                        "status": _string("True, False or Unknown.", enum=["True", "False", "Unknown"]),
                        "reason": _string("One-word reason in CamelCase."),
                        "message": _string("Human-readable detail."),
                        "lastTransitionTime": _time("When the status last changed."),
                        "observedGeneration": _integer("The spec generation the condition reflects."),
                    },
                },
            },
        },
    }


def crd() -> dict[str, Any]:
    columns = [
        {
            "name": c.name,
            "type": c.type,
            "jsonPath": c.json_path,
            **({"description": c.description} if c.description else {}),
            **({"priority": c.priority} if c.priority else {}),
        }
        for c in PRINTER_COLUMNS
    ]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": CRD_NAME, "labels": {"app.kubernetes.io/name": "trailingstop-operator"}},
        "spec": {
            "group": API_GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": KIND.lower(),
                "shortNames": ["ts"],
                "categories": ["trading"],
            },
            "versions": [
                {
                    "name": API_VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "A trailing stop on a Binance Spot symbol.",
                            "required": ["spec"],
                            "x-kubernetes-validations": [FROZEN_AFTER_TRIGGER],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema(),
                                "status": status_schema(),
                            },
                        }
                    },
                }
            ],
        },
    }


def crd_yaml() -> str:
    header = "# Generated by `trailingstop crd` from trailingstop/core/contracts.py; do not edit by hand.\n"
    return header + yaml.safe_dump(crd(), sort_keys=False, width=120)
