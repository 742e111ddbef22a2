"""asyncio helpers for stopping promptly.

On Python 3.11, ``asyncio.wait_for`` can lose a cancellation: when the awaited thing completes in
the same loop iteration as the cancel, it returns the result and the task carries on
(python/cpython#86296, fixed in 3.12). python-binance awaits every socket message through
``wait_for``, so on a busy machine a task cancelled at shutdown sometimes receives one more trade
instead of its ``CancelledError``, and then blocks for good (on a full queue, on a socket that has
nothing more to say). A loop that may be cancelled calls :func:`stop_if_cancelled` once per item:
a cancellation requested and not acted on is raised there.
"""

from __future__ import annotations

import asyncio


def stop_if_cancelled() -> None:
    """Raise ``CancelledError`` if the current task has been asked to stop and has not stopped."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
