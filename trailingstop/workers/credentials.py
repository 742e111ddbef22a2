"""Key rotation for the executor.

The Binance keys reach the executor as environment variables from the stop's credentials Secret,
resolved when its container starts, so a rotated Secret needs a new container. A checksum
annotation on the Deployment would roll it, but computing one means reading the Secret, and the
operator deliberately has no right to read key Secrets. So the Secret is also mounted as files,
which the kubelet refreshes when it changes; when they no longer match the keys this process runs
with, the executor stops consuming and exits cleanly, and the kubelet starts it again with the new
keys. An order being placed at that moment is redelivered and queried first (exactly once, as
after any restart). Key material never leaves this module: only a digest is compared.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from pathlib import Path

log = logging.getLogger(__name__)

KEY_FILES = ("apiKey", "apiSecret")


def fingerprint(api_key: str, api_secret: str) -> str:
    return hashlib.sha256(f"{api_key}\0{api_secret}".encode()).hexdigest()


def mounted_fingerprint(directory: Path) -> str | None:
    """The digest of the mounted keys; None while a file is missing (the kubelet swaps them
    atomically, but a Secret may lack a key: the running keys then stay)."""
    try:
        key, secret = ((directory / name).read_text().strip() for name in KEY_FILES)
    except FileNotFoundError:
        return None
    return fingerprint(key, secret)


async def wait_for_rotation(directory: Path, running: str, interval: float) -> None:
    """Return once the mounted keys differ from the ``running`` ones."""
    while True:
        mounted = mounted_fingerprint(directory)
        if mounted is not None and mounted != running:
            log.warning("the credentials Secret changed: stopping so the container starts again with the new keys")
            return
        await asyncio.sleep(interval)
