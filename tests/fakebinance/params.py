"""Request parameters the way Binance reads them.

* GET parameters come in the query string; POST/PUT/DELETE ones in the query string and/or an
  ``application/x-www-form-urlencoded`` body; a parameter in both is taken from the query string.
* A parameter repeated within one of them: ``-1101 Duplicate values for a parameter detected.``
* Mandatory and missing/empty: ``-1102``; optional but empty: ``-1105``; parameters the endpoint
  does not read: ``-1104 Not all sent parameters were read; read 'N' parameter(s) but was sent 'M'.``
* Malformed numbers: ``-1100 Illegal characters found in parameter 'x'; legal range is '...'.``
  with Binance's ranges (decimals ``^([0-9]{1,20})(\\.[0-9]{1,20})?$``, integers
  ``^[0-9]{1,20}$``); more than 8 decimals: ``-1111``.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from decimal import Decimal
from urllib.parse import parse_qsl

from . import errors

_DECIMAL = re.compile(r"^([0-9]{1,20})(\.[0-9]{1,20})?$")
_INTEGER = re.compile(r"^[0-9]{1,20}$")
SIGNED_PARAMS = frozenset({"timestamp", "recvWindow", "signature"})


def _parse(raw: str) -> dict[str, str]:
    pairs = parse_qsl(raw, keep_blank_values=True)
    values: dict[str, str] = {}
    for key, value in pairs:
        if key in values:
            raise errors.duplicate_parameter()
        values[key] = value
    return values


class Params:
    """The parameters of one request, with typed accessors that raise Binance's errors."""

    def __init__(self, raw_query: str, raw_body: str = "") -> None:
        body = _parse(raw_body)
        query = _parse(raw_query)
        self.values: dict[str, str] = {**body, **query}

    def __contains__(self, name: str) -> bool:
        return name in self.values

    def get(self, name: str) -> str | None:
        return self.values.get(name)

    def check_read(self, readable: Collection[str]) -> None:
        """-1104 when the request carries parameters this endpoint does not read."""
        sent = len(self.values)
        read = sum(1 for name in self.values if name in readable)
        if read != sent:
            raise errors.unread_parameters(read, sent)

    def required(self, name: str) -> str:
        value = self.values.get(name)
        if not value:
            raise errors.mandatory(name)
        return value

    def optional(self, name: str) -> str | None:
        if name not in self.values:
            return None
        value = self.values[name]
        if value == "":
            raise errors.param_empty(name)
        return value

    def decimal(self, name: str, required: bool = False, places: int = 8) -> Decimal | None:
        raw = self.required(name) if required else self.optional(name)
        if raw is None:
            return None
        if not _DECIMAL.match(raw):
            raise errors.illegal_chars(name, errors.LEGAL_DECIMAL)
        number = Decimal(raw)
        exponent = number.normalize().as_tuple().exponent
        if isinstance(exponent, int) and -exponent > places:
            raise errors.too_much_precision(name)
        return number

    def integer(self, name: str, required: bool = False) -> int | None:
        raw = self.required(name) if required else self.optional(name)
        if raw is None:
            return None
        if not _INTEGER.match(raw):
            raise errors.illegal_chars(name, errors.LEGAL_INTEGER)
        return int(raw)

    def forbid(self, name: str) -> None:
        """-1106 for a parameter this order type does not take."""
        if name in self.values:
            raise errors.param_not_required(name)
