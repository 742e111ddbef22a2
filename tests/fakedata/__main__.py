"""``python -m tests.fakedata ROOT [--port N]``: serve ROOT in Binance's public-data layout.

Prints the base URL (for ``--data-url``) on one line, then serves until SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import threading
from pathlib import Path

from .server import FakeDataServer


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.fakedata")
    parser.add_argument("root", type=Path, help="folder holding data/spot/...")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (default)")
    parser.add_argument("--no-ranges", action="store_true", help="ignore Range headers (answer 200)")
    args = parser.parse_args()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    server = FakeDataServer(args.root, ranges=not args.no_ranges).start(args.port)
    try:
        print(server.url, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            done.wait()
    finally:
        server.stop()


if __name__ == "__main__":
    main()
