"""The executor's key rotation: it stops once the mounted credentials Secret holds other keys."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from trailingstop.workers.credentials import fingerprint, mounted_fingerprint, wait_for_rotation


def mount(directory: Path, key: str, secret: str) -> None:
    """Like the kubelet: new files in a new directory, swapped in by renaming a symlink."""
    version = directory / f"..{key}"
    version.mkdir()
    (version / "apiKey").write_text(key)
    (version / "apiSecret").write_text(secret)
    link = directory / "..data.tmp"
    link.symlink_to(version.name)
    os.replace(link, directory / "..data")
    for name in ("apiKey", "apiSecret"):
        if not (directory / name).is_symlink():
            (directory / name).symlink_to(f"..data/{name}")


def test_the_fingerprint_is_of_both_keys_and_never_the_keys_themselves(tmp_path: Path) -> None:
    mount(tmp_path, "key-1", "secret-1")
    running = fingerprint("key-1", "secret-1")
    assert mounted_fingerprint(tmp_path) == running
    assert "key-1" not in running and "secret-1" not in running
    assert fingerprint("key-1", "secret-2") != running != fingerprint("key-2", "secret-1")
    assert fingerprint("ab", "c") != fingerprint("a", "bc")  # the separator keeps the parts apart


def test_a_secret_without_both_keys_is_not_a_rotation(tmp_path: Path) -> None:
    (tmp_path / "apiKey").write_text("key-1")
    assert mounted_fingerprint(tmp_path) is None


async def test_the_wait_ends_when_the_mounted_keys_change(tmp_path: Path) -> None:
    mount(tmp_path, "key-1", "secret-1")
    waiting = asyncio.create_task(wait_for_rotation(tmp_path, fingerprint("key-1", "secret-1"), 0.01))
    await asyncio.sleep(0.05)
    assert not waiting.done()  # the same keys: keep going
    mount(tmp_path, "key-2", "secret-2")
    await asyncio.wait_for(waiting, 5)


async def test_keys_rotated_before_the_start_are_the_running_ones(tmp_path: Path) -> None:
    """The environment and the files agree when the container started after the rotation."""
    mount(tmp_path, "key-2", "secret-2")
    waiting = asyncio.create_task(wait_for_rotation(tmp_path, fingerprint("key-2", "secret-2"), 0.01))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
