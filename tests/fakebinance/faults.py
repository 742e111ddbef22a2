"""Injected faults: the ways Binance misbehaves that a client has to survive.

* ``fail_orders``: the next N ``POST /api/v3/order`` get an HTTP 5XX. By default the order is
  executed first and then ``503 {"code": -1007, "msg": "Timeout waiting for response from backend
  server. Send status unknown; execution status unknown."}`` is answered, which is what makes
  Binance's rule "5XX: execution status UNKNOWN" matter. ``execute=False`` fails without executing
  (``Service Unavailable.``); ``code=None`` answers a non-JSON gateway page.
* ``rate_limit``: the next N REST requests get ``429`` ``-1003`` with ``Retry-After``; a request
  that arrives while that Retry-After window is still open gets the IP banned: ``418`` with
  ``Retry-After`` until the ban ends, as Binance does to clients that keep hammering.
* ``delay``: answers are held back (before or after handling) to trigger client timeouts; with
  ``after_handling`` an order is executed even though the client gave up waiting.
* Stream faults (``drop_streams``, ``silence_streams``, reconnect refusal) live here as state; the
  stream hub (``streams.py``) applies them.

Every fault can be limited to some paths (``/api/v3/order``); admin routes are never affected.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from . import errors


def _matches(paths: tuple[str, ...] | None, path: str) -> bool:
    return paths is None or any(path == p or path.endswith("/" + p.lstrip("/")) for p in paths)


@dataclass
class OrderFailure:
    remaining: int
    status: int
    code: int | None
    msg: str | None
    execute: bool

    def error(self) -> errors.BinanceError:
        return errors.backend_failure(self.status, self.code, self.msg)


@dataclass
class RateLimit:
    remaining: int
    retry_after: int
    ban_seconds: int
    paths: tuple[str, ...] | None
    window_until: float = 0.0  # Retry-After window of the last 429 (monotonic seconds)
    banned_until: float = 0.0


@dataclass
class Delay:
    seconds: float
    remaining: int | None
    paths: tuple[str, ...] | None
    after_handling: bool


@dataclass
class Faults:
    """All fault state of one fake. Mutate through the methods; the server reads it."""

    order_failures: list[OrderFailure] = field(default_factory=list)
    rate_limit_state: RateLimit | None = None
    delays: list[Delay] = field(default_factory=list)
    silent_until: float | None = None  # monotonic; inf = until resumed
    refuse_streams_until: float = 0.0

    # --- REST -------------------------------------------------------------------------------

    def fail_orders(
        self,
        count: int = 1,
        status: int = 503,
        code: int | None = -1007,
        msg: str | None = None,
        execute: bool = True,
    ) -> None:
        """Answer the next ``count`` order POSTs with HTTP ``status`` (after executing them)."""
        self.order_failures.append(OrderFailure(count, status, code, msg, execute))

    def take_order_failure(self) -> OrderFailure | None:
        while self.order_failures:
            failure = self.order_failures[0]
            if failure.remaining > 0:
                failure.remaining -= 1
                if failure.remaining == 0:
                    self.order_failures.pop(0)
                return failure
            self.order_failures.pop(0)
        return None

    def rate_limit(
        self,
        count: int = 1,
        retry_after: int = 2,
        ban_seconds: int = 120,
        paths: list[str] | tuple[str, ...] | None = None,
    ) -> None:
        """429 the next ``count`` requests; hammering inside Retry-After earns a 418 ban."""
        self.rate_limit_state = RateLimit(count, retry_after, ban_seconds, tuple(paths) if paths else None)

    def check_rate_limit(self, path: str, now_ms: int) -> None:
        """Raise the 429 / 418 this request deserves, if any."""
        state = self.rate_limit_state
        if state is None or not _matches(state.paths, path):
            return
        now = time.monotonic()
        if now < state.banned_until:
            remaining = max(1, round(state.banned_until - now))
            raise errors.ip_banned(now_ms + int((state.banned_until - now) * 1000), remaining)
        if now < state.window_until:
            state.banned_until = now + state.ban_seconds
            raise errors.ip_banned(now_ms + state.ban_seconds * 1000, state.ban_seconds)
        if state.remaining > 0:
            state.remaining -= 1
            state.window_until = now + state.retry_after
            raise errors.too_much_weight(6000, state.retry_after)

    def delay(
        self,
        seconds: float,
        count: int | None = None,
        paths: list[str] | tuple[str, ...] | None = None,
        after_handling: bool = False,
    ) -> None:
        """Hold back the next ``count`` answers (all when None) by ``seconds``."""
        self.delays.append(Delay(seconds, count, tuple(paths) if paths else None, after_handling))

    def take_delay(self, path: str, after_handling: bool) -> float:
        for delay in list(self.delays):
            if delay.after_handling != after_handling or not _matches(delay.paths, path):
                continue
            if delay.remaining is not None:
                delay.remaining -= 1
                if delay.remaining <= 0:
                    self.delays.remove(delay)
            return delay.seconds
        return 0.0

    # --- streams ----------------------------------------------------------------------------

    def silence_streams(self, seconds: float | None = None) -> None:
        """Keep sockets open but send nothing (and answer no pings) for ``seconds`` / until
        ``resume_streams``. Trades that happen meanwhile are lost to the sockets."""
        self.silent_until = float("inf") if seconds is None else time.monotonic() + seconds

    def resume_streams(self) -> None:
        self.silent_until = None

    @property
    def silent(self) -> bool:
        return self.silent_until is not None and time.monotonic() < self.silent_until

    def refuse_streams(self, seconds: float) -> None:
        """Refuse WebSocket handshakes (HTTP 503) for ``seconds``."""
        self.refuse_streams_until = time.monotonic() + seconds

    @property
    def refusing_streams(self) -> bool:
        return time.monotonic() < self.refuse_streams_until

    # --- all --------------------------------------------------------------------------------

    def clear(self) -> None:
        self.order_failures.clear()
        self.rate_limit_state = None
        self.delays.clear()
        self.silent_until = None
        self.refuse_streams_until = 0.0

    def describe(self) -> dict[str, Any]:
        return {
            "orderFailures": [vars(f) for f in self.order_failures],
            "rateLimit": vars(self.rate_limit_state) if self.rate_limit_state else None,
            "delays": [vars(d) for d in self.delays],
            "silent": self.silent,
            "refusingStreams": self.refusing_streams,
        }
