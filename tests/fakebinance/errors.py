"""Binance Spot error answers: HTTP status, JSON body ``{"code": ..., "msg": ...}`` and headers.

Codes and messages are the ones Binance documents in ``errors.md`` of binance-spot-api-docs
(and that clients see in the wild); HTTP statuses follow Binance's "HTTP Return Codes":
4XX for the sender's mistakes (400 for rejected requests, 401 for API-key problems), 429 for a
broken rate limit, 418 for an IP banned after ignoring 429s, 5XX for Binance's own failures
(execution status UNKNOWN: the order may have been executed).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Messages that appear in more than one place.
MSG_DUPLICATE_ORDER = "Duplicate order sent."
MSG_INSUFFICIENT_BALANCE = "Account has insufficient balance for requested action."
MSG_UNKNOWN_ORDER = "Unknown order sent."
MSG_TIMEOUT = "Timeout waiting for response from backend server. Send status unknown; execution status unknown."
MSG_SERVICE_UNAVAILABLE = "Service Unavailable."
# The legal ranges Binance prints in -1100 answers.
LEGAL_DECIMAL = r"^([0-9]{1,20})(\.[0-9]{1,20})?$"
LEGAL_INTEGER = r"^[0-9]{1,20}$"
LEGAL_CLIENT_ORDER_ID = r"^[a-zA-Z0-9-_]{1,36}$"


class BinanceError(Exception):
    """An error answer, raised anywhere in a handler and rendered by the server."""

    def __init__(
        self,
        status: int,
        code: int | None,
        msg: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(f"HTTP {status} {code}: {msg}")
        self.status = status
        self.code = code
        self.msg = msg
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {"code": self.code, "msg": self.msg}


def _bad(code: int, msg: str) -> BinanceError:
    return BinanceError(400, code, msg)


# --- 10xx: general server or network issues -------------------------------------------------


def unknown() -> BinanceError:
    return _bad(-1000, "An unknown error occurred while processing the request.")


def too_much_weight(limit: int, retry_after: int) -> BinanceError:
    """HTTP 429 -1003: a request rate limit was broken; Retry-After says how long to back off."""
    return BinanceError(
        429,
        -1003,
        f"Too much request weight used; current limit is {limit} request weight per 1 MINUTE. "
        "Please use WebSocket Streams for live updates to avoid polling the API.",
        {"Retry-After": str(retry_after)},
    )


def ip_banned(until_ms: int, retry_after: int) -> BinanceError:
    """HTTP 418 -1003: the IP kept sending after a 429 and is banned until ``until_ms``."""
    return BinanceError(
        418,
        -1003,
        f"Way too much request weight used; IP banned until {until_ms}. "
        "Please use WebSocket Streams for live updates to avoid bans.",
        {"Retry-After": str(retry_after)},
    )


def backend_failure(status: int = 503, code: int | None = -1007, msg: str | None = None) -> BinanceError:
    """A 5XX: by default -1007 TIMEOUT, Binance's "execution status unknown" answer."""
    if msg is None:
        msg = MSG_TIMEOUT if code == -1007 else MSG_SERVICE_UNAVAILABLE
    return BinanceError(status, code, msg)


def filter_failure(filter_type: str) -> BinanceError:
    """-1013 INVALID_MESSAGE for a symbol filter (the request never reached the engine)."""
    return _bad(-1013, f"Filter failure: {filter_type}")


def invalid_message(msg: str) -> BinanceError:
    return _bad(-1013, msg)


def timestamp_outside_recv_window() -> BinanceError:
    return _bad(-1021, "Timestamp for this request is outside of the recvWindow.")


def timestamp_ahead() -> BinanceError:
    return _bad(-1021, "Timestamp for this request was 1000ms ahead of the server's time.")


def invalid_signature() -> BinanceError:
    return _bad(-1022, "Signature for this request is not valid.")


# --- 11xx: request issues --------------------------------------------------------------------


def illegal_chars(param: str, legal: str) -> BinanceError:
    return _bad(-1100, f"Illegal characters found in parameter '{param}'; legal range is '{legal}'.")


def duplicate_parameter() -> BinanceError:
    return _bad(-1101, "Duplicate values for a parameter detected.")


def mandatory(param: str) -> BinanceError:
    return _bad(-1102, f"Mandatory parameter '{param}' was not sent, was empty/null, or malformed.")


def mandatory_one_of(first: str, second: str) -> BinanceError:
    return _bad(-1102, f"Param '{first}' or '{second}' must be sent, but both were empty/null!")


def unread_parameters(read: int, sent: int) -> BinanceError:
    return _bad(
        -1104,
        f"Not all sent parameters were read; read '{read}' parameter(s) but was sent '{sent}'.",
    )


def param_empty(param: str) -> BinanceError:
    return _bad(-1105, f"Parameter '{param}' was empty.")


def param_not_required(param: str) -> BinanceError:
    return _bad(-1106, f"Parameter '{param}' sent when not required.")


def too_much_precision(param: str) -> BinanceError:
    return _bad(-1111, f"Parameter '{param}' has too much precision.")


def invalid_time_in_force() -> BinanceError:
    return _bad(-1115, "Invalid timeInForce.")


def empty_new_client_order_id() -> BinanceError:
    return _bad(-1118, "New client order ID was empty.")


def empty_orig_client_order_id() -> BinanceError:
    return _bad(-1119, "Original client order ID was empty.")


def invalid_order_type() -> BinanceError:
    return _bad(-1116, "Invalid orderType.")


def invalid_side() -> BinanceError:
    return _bad(-1117, "Invalid side.")


def bad_symbol() -> BinanceError:
    return _bad(-1121, "Invalid symbol.")


def more_than_hours(hours: int) -> BinanceError:
    return _bad(-1127, f"More than {hours} hours between startTime and endTime.")


def invalid_parameter(param: str) -> BinanceError:
    return _bad(-1130, f"Data sent for parameter '{param}' is not valid.")


def bad_recv_window() -> BinanceError:
    return _bad(-1131, "recvWindow must be less than 60000")


# --- 20xx: order and key issues --------------------------------------------------------------


def new_order_rejected(msg: str) -> BinanceError:
    """-2010 NEW_ORDER_REJECTED with the matching engine's reason."""
    return _bad(-2010, msg)


def cancel_rejected(msg: str = MSG_UNKNOWN_ORDER) -> BinanceError:
    return _bad(-2011, msg)


def no_such_order() -> BinanceError:
    return _bad(-2013, "Order does not exist.")


def bad_api_key_format() -> BinanceError:
    return BinanceError(401, -2014, "API-key format invalid.")


def rejected_api_key() -> BinanceError:
    return BinanceError(401, -2015, "Invalid API-key, IP, or permissions for action.")
