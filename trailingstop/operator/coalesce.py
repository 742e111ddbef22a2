"""Coalesced, serialized work per key: many requests, one run with everything that changed.

A thousand TrailingStops of one symbol created at once each ask for the symbol's Deployments to
include them as owners. Applying once per request would write each Deployment a thousand times
with a growing owner list; here a request joins the next run for its key, so a burst costs a
couple of applies per child object, each with the complete owner list.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class Coalescer(Generic[K]):
    def __init__(self, run: Callable[[K], Awaitable[None]]) -> None:
        self._run = run
        self._next: dict[K, asyncio.Future[None]] = {}  # the run not yet started, per key
        self._locks: dict[K, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[None]] = set()  # the loop only holds tasks weakly

    async def request(self, key: K) -> None:
        """Return once a run for ``key`` that started after this call has finished (its error
        is raised here too)."""
        future = self._next.get(key)
        if future is None:
            future = self._next[key] = asyncio.get_running_loop().create_future()
            task = asyncio.create_task(self._start(key, future))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        await asyncio.shield(future)

    async def _start(self, key: K, future: asyncio.Future[None]) -> None:
        async with self._locks.setdefault(key, asyncio.Lock()):
            if self._next.get(key) is future:
                del self._next[key]  # requests from now on wait for the run after this one
            try:
                await self._run(key)
            except Exception as exc:  # handed to every requester, who decides what to do
                future.set_exception(exc)
            else:
                future.set_result(None)
