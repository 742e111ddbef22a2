"""``ThreadedFakeBinance``: the fake in a background thread, for synchronous callers.

The fake runs in its own event loop on a daemon thread; every method marshals into that loop,
so the state is only ever touched from one thread::

    with ThreadedFakeBinance() as fake:          # same keyword arguments as FakeBinance
        Client.API_URL = fake.api_url            # python-binance's synchronous Client
        fake.advance("XRPETH", 5)
        fake.call(lambda f: f.faults.fail_orders(1))
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from trailingstop.core.trade import Trade

from .fake import FakeBinance
from .market import Order

T = TypeVar("T")


class ThreadedFakeBinance:
    def __init__(self, **kwargs: Any) -> None:
        self._kwargs = kwargs
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._fake: FakeBinance | None = None

    # --- lifecycle --------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> ThreadedFakeBinance:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            try:
                self._fake = loop.run_until_complete(self._make())
            except BaseException as exc:  # reported to the starting thread
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._fake.stop())
            loop.close()

        self._thread = threading.Thread(target=run, name="fakebinance", daemon=True)
        self._thread.start()
        if not ready.wait(timeout):
            raise TimeoutError("the fake did not start")
        if failure:
            raise failure[0]
        return self

    async def _make(self) -> FakeBinance:
        fake = FakeBinance(**self._kwargs)
        await fake.start()
        return fake

    def stop(self, timeout: float = 10.0) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)
        self._loop = self._thread = None

    def __enter__(self) -> ThreadedFakeBinance:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- running things in the fake's loop ---------------------------------------------------

    @property
    def fake(self) -> FakeBinance:
        """The fake itself; touch its state only through ``call``/``run``."""
        assert self._fake is not None, "not started"
        return self._fake

    def call(self, fn: Callable[[FakeBinance], T], timeout: float = 10.0) -> T:
        """Run ``fn(fake)`` in the fake's loop and return its result."""

        async def wrapper() -> T:
            return fn(self.fake)

        return self.run(wrapper(), timeout)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        assert self._loop is not None, "not started"
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    # --- the common operations, synchronously -------------------------------------------------

    @property
    def api_url(self) -> str:
        return self.fake.api_url

    @property
    def stream_url(self) -> str:
        return self.fake.stream_url

    @property
    def admin_url(self) -> str:
        return self.fake.admin_url

    def advance(self, symbol: str, n: int = 1) -> list[Trade]:
        return self.run(self.fake.advance(symbol, n))

    def advance_to(self, symbol: str, trade_id: int) -> list[Trade]:
        return self.run(self.fake.advance_to(symbol, trade_id))

    def orders(self, client_order_id: str | None = None) -> list[Order]:
        return self.call(lambda f: f.orders(client_order_id))

    def order_count(self, client_order_id: str | None = None) -> int:
        return self.call(lambda f: f.order_count(client_order_id))
