"""User input echoed in an error message, bounded.

An error names the value it refuses (``got "1e5"``), but a value can be a 30 MB string or a list
nested a thousand deep (YAML anchors make such things from a few hundred bytes). Echoes go
through these helpers: at most :data:`ECHO_CHARS` characters of the value, and its length when
it was cut, so a message stays one short line whatever the input.
"""

from __future__ import annotations

import reprlib
from typing import Any

ECHO_CHARS = 60

_REPR = reprlib.Repr()
_REPR.maxstring = ECHO_CHARS
_REPR.maxother = ECHO_CHARS
_REPR.maxlong = ECHO_CHARS
_REPR.maxlevel = 2
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = _REPR.maxfrozenset = 4


def printable(text: str) -> str:
    """``text`` with line breaks and other control characters escaped (``\\n``), so that an
    echo never breaks the one line an error is."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


def cut(text: str, limit: int = ECHO_CHARS) -> str:
    """``text``, or its first ``limit`` characters and "... (N characters)" when it is longer;
    control characters escaped."""
    if len(text) <= limit:
        return printable(text)
    return f"{printable(text[:limit])}... ({len(text):,} characters)"


def quoted(text: str) -> str:
    """``"text"`` in double quotes (as the CRD's messages write values), cut to size."""
    if len(text) <= ECHO_CHARS:
        return f'"{printable(text)}"'
    return f'"{printable(text[:ECHO_CHARS])}..." ({len(text):,} characters)'


def short_repr(value: Any) -> str:
    """``repr(value)``, bounded in length and depth (a str longer than the limit also says its length)."""
    if isinstance(value, str) and len(value) > ECHO_CHARS:
        return f"{value[:ECHO_CHARS]!r}... ({len(value):,} characters)"
    shown = _REPR.repr(value)  # each part bounded; a dict of lists can still add up
    return shown if len(shown) <= 2 * ECHO_CHARS else f"{shown[:2 * ECHO_CHARS]}..."
