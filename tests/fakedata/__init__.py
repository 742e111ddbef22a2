"""A local fake of Binance's public-data host (data.binance.vision) for tests and benchmarks.

    from tests.fakedata import FakeDataServer, publish_days, synthetic_days

    publish_days(root, "ETHUSDT", synthetic_days(date(2023, 2, 1), date(2023, 2, 28), per_day=100))
    with FakeDataServer(root) as server:          # http://127.0.0.1:<port>, Binance's layout
        server.drop(after_bytes=1000)             # the next .zip download is cut short
        ... trailingstop backtest --symbol ETHUSDT --month 2023-02 --data-url server.url ...
        server.paths(".zip")                      # what was downloaded

Another process: ``python -m tests.fakedata ROOT [--port N]`` serves ROOT until interrupted.
Modules: ``archives`` (zips and checksums in the layout, from trades), ``server`` (HTTP, faults).
"""

from .archives import by_day, publish_days, remote_path, synthetic_days, tamper, write_archive, write_checksum
from .server import FakeDataServer, Request

__all__ = ["FakeDataServer", "Request", "by_day", "publish_days", "remote_path", "synthetic_days", "tamper",
           "write_archive", "write_checksum"]
