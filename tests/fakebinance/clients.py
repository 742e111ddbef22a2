"""Pointing the real python-binance at a fake (the only glue tests need).

python-binance builds REST URLs as ``API_URL + "/v3/" + path`` and stream URLs as
``STREAM_URL + "ws/" + stream`` (or ``"stream?streams=..."``). ``BaseClient.__init__`` formats
``API_URL`` and ``AsyncClient.create`` pings at once, so the override has to be on the class:
a subclass with ``API_URL = fake.api_url``. ``BinanceSocketManager`` reads ``self.STREAM_URL``
when a socket is created, so setting it on the instance is enough.
"""

from __future__ import annotations

from typing import Any

from binance import AsyncClient, BinanceSocketManager, Client


def async_client_class(api_url: str) -> type[AsyncClient]:
    """An ``AsyncClient`` subclass whose REST calls go to ``api_url``."""
    return type("FakeAsyncClient", (AsyncClient,), {"API_URL": api_url})


def client_class(api_url: str) -> type[Client]:
    """A synchronous ``Client`` subclass whose REST calls go to ``api_url``."""
    return type("FakeClient", (Client,), {"API_URL": api_url})


async def create_async_client(
    api_url: str, api_key: str | None = None, api_secret: str | None = None, **kwargs: Any
) -> AsyncClient:
    """``AsyncClient.create`` against the fake (pings and reads the server time)."""
    return await async_client_class(api_url).create(api_key, api_secret, **kwargs)


def socket_manager(client: AsyncClient, stream_url: str, **kwargs: Any) -> BinanceSocketManager:
    """A ``BinanceSocketManager`` whose sockets connect to ``stream_url``."""
    manager = BinanceSocketManager(client, **kwargs)
    manager.STREAM_URL = stream_url
    return manager
