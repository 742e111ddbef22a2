"""SIGNED endpoint security, as Binance Spot does it (``rest-api.md``, "SIGNED Endpoint security").

* The API key comes in the ``X-MBX-APIKEY`` header. Missing or malformed: ``-2014 API-key format
  invalid.``; well-formed but unknown: ``-2015 Invalid API-key, IP, or permissions for action.``
  (both HTTP 401).
* ``timestamp`` is mandatory; ``recvWindow`` defaults to 5000 and may not exceed 60000
  (``-1131``). The request is processed only if
  ``timestamp < serverTime + 1000 and serverTime - timestamp <= recvWindow``; otherwise ``-1021``
  (the "ahead" message when the timestamp is in the future).
* The signature is HMAC-SHA256 (hex, case-insensitive) keyed with the secret over
  ``totalParams``: the query string *as sent* concatenated with the request body *as sent*
  (no ``&`` between them), without the ``signature`` parameter itself. A mismatch is
  ``-1022 Signature for this request is not valid.``

RSA and Ed25519 keys are not imitated.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation

from . import errors
from .market import Account

DEFAULT_RECV_WINDOW = 5000
MAX_RECV_WINDOW = 60000
_KEY_FORMAT = re.compile(r"^[A-Za-z0-9]{1,64}$")
_INTEGER = re.compile(r"^[0-9]{1,20}$")


def sign(secret: str, payload: str) -> str:
    """The hex HMAC-SHA256 Binance expects for ``payload`` (totalParams)."""
    return hmac.new(secret.encode(), payload.encode(), hashlib.sha256).hexdigest()


def strip_signature(raw: str) -> tuple[str, str | None]:
    """``raw`` (a query string or form body as sent) without its ``signature=`` parameter."""
    kept: list[str] = []
    signature: str | None = None
    for part in raw.split("&") if raw else []:
        if part.split("=", 1)[0] == "signature":
            signature = part.split("=", 1)[1] if "=" in part else ""
        else:
            kept.append(part)
    return "&".join(kept), signature


def total_params(raw_query: str, raw_body: str) -> tuple[str, str | None]:
    """Binance's totalParams (query string + body, signature removed) and the signature sent."""
    query, sig_in_query = strip_signature(raw_query)
    body, sig_in_body = strip_signature(raw_body)
    return query + body, sig_in_query if sig_in_query is not None else sig_in_body


def account_for(api_key: str | None, accounts: Mapping[str, Account]) -> Account:
    """The account an ``X-MBX-APIKEY`` header names (-2014 / -2015 otherwise)."""
    if not api_key or not _KEY_FORMAT.match(api_key):
        raise errors.bad_api_key_format()
    account = accounts.get(api_key)
    if account is None:
        raise errors.rejected_api_key()
    return account


def check_timing(params: Mapping[str, str], server_time_ms: int) -> None:
    """``timestamp`` / ``recvWindow`` checks (-1102, -1100, -1131, -1021)."""
    raw_timestamp = params.get("timestamp")
    if not raw_timestamp:
        raise errors.mandatory("timestamp")
    if not _INTEGER.match(raw_timestamp):
        raise errors.illegal_chars("timestamp", errors.LEGAL_INTEGER)
    timestamp = int(raw_timestamp)
    recv_window = Decimal(DEFAULT_RECV_WINDOW)
    if "recvWindow" in params:
        try:
            recv_window = Decimal(params["recvWindow"])
        except InvalidOperation:
            raise errors.illegal_chars("recvWindow", errors.LEGAL_DECIMAL) from None
        if not recv_window.is_finite() or recv_window < 0:
            raise errors.illegal_chars("recvWindow", errors.LEGAL_DECIMAL)
        if recv_window > MAX_RECV_WINDOW:
            raise errors.bad_recv_window()
    if timestamp >= server_time_ms + 1000:
        raise errors.timestamp_ahead()
    if server_time_ms - timestamp > recv_window:
        raise errors.timestamp_outside_recv_window()


def check_signature(account: Account, raw_query: str, raw_body: str) -> None:
    """-1102 without a signature, -1022 when it does not match the account's secret."""
    payload, signature = total_params(raw_query, raw_body)
    if not signature:
        raise errors.mandatory("signature")
    expected = sign(account.api_secret, payload)
    if not hmac.compare_digest(expected, signature.lower()):
        raise errors.invalid_signature()
