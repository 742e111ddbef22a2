"""Files named on the command line: read within a size limit, every failure said in a few words.

A user can point ``run`` or ``backtest`` at anything: a folder, a file they may not read, a FIFO,
``/dev/zero``, a file that is not UTF-8. Each of these becomes one short phrase ("is a directory,
not a file"), which the caller puts after the file name; none of them is a traceback.
"""

from __future__ import annotations

import errno
from pathlib import Path


class UserFileError(ValueError):
    """A file could not be read; ``problem`` says why in a few words (no file name)."""

    def __init__(self, problem: str, line: int | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.line = line


def os_problem(exc: OSError, doing: str = "read") -> str:
    """What went wrong opening, reading (or writing) a file, in a few words."""
    if doing != "read":
        return f"cannot {doing}: {exc.strerror or exc}"
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if isinstance(exc, IsADirectoryError):
        return "is a directory, not a file"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if exc.errno == errno.ENOTDIR:
        return "no such file (a part of the path is not a directory)"
    return f"cannot {doing}: {exc.strerror or exc}"


def read_bytes(path: Path, limit: int, what: str) -> bytes:
    """The bytes of ``path``, refusing more than ``limit`` (read at most ``limit + 1``)."""
    try:
        with path.open("rb") as stream:
            data = stream.read(limit + 1)
    except OSError as exc:
        raise UserFileError(os_problem(exc)) from None
    if len(data) > limit:
        raise UserFileError(f"larger than {_size(limit)}, the limit for {what}")
    return data


def _size(count: int) -> str:
    mib = 1024 * 1024
    return f"{count // mib} MiB" if count % mib == 0 else f"{count:,} bytes"


def decode_utf8(data: bytes) -> str:
    """``data`` as UTF-8 text (a leading byte-order mark is dropped); refused with the line of the
    first byte that is not UTF-8."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise UserFileError(f"not UTF-8 text: byte 0x{data[exc.start]:02x} cannot be decoded "
                            "(save the file as UTF-8)", line) from None
