"""``FakeDataServer``: Binance's public-data host on 127.0.0.1, serving a folder in its layout.

What it does like the real host (an S3 bucket behind a CDN): files at their remote paths, 404
for anything else, ``Range: bytes=N-`` answered with 206 and ``Content-Range`` (416 past the
end), no compression. Optionally (``listings``) directory pages like ``python -m http.server``
and (``s3_listing``) an S3 ``ListBucketResult`` for ``/?prefix=...``, the two ways a host can
tell which symbols exist.

Faults, each for the next ``times`` matching requests (a path suffix such as ``.zip``):

* ``delay(seconds)``: wait before answering (a slow server);
* ``stall(after_bytes, seconds)``: send part of the body, then go silent (a stalled transfer);
* ``drop(after_bytes)``: send part of the body, then close the connection (a dropped one);
* ``fail(status)``: answer an HTTP error (e.g. 503).

It records every request (path, Range header, status, body bytes sent) and the most requests it
ever served at once, so tests can check what a client downloaded and how many in parallel.
"""

from __future__ import annotations

import html
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import BinaryIO
from urllib.parse import parse_qs, unquote, urlsplit


@dataclass
class Fault:
    kind: str  # delay | stall | drop | fail
    suffix: str
    times: int
    seconds: float = 0.0
    after_bytes: int = 0
    status: int = 503


@dataclass(frozen=True)
class Request:
    path: str
    range: str | None
    status: int
    sent: int  # body bytes written
    client_port: int  # one per connection: how many connections the client used


@dataclass
class _State:
    lock: threading.Lock = field(default_factory=threading.Lock)
    faults: list[Fault] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    active: int = 0
    peak: int = 0


class FakeDataServer:
    def __init__(self, root: Path, *, ranges: bool = True, listings: bool = True, s3_listing: bool = False,
                 chunk: int = 1 << 16, chunk_pause: float = 0.0) -> None:
        self.root = root
        self.ranges = ranges
        self.listings = listings
        self.s3_listing = s3_listing
        self.chunk = chunk
        self.chunk_pause = chunk_pause  # seconds between chunks: a slow but steady server
        self.state = _State()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self, port: int = 0) -> FakeDataServer:
        handler = type("Handler", (_Handler,), {"fake": self})
        server = _Server(("127.0.0.1", port), handler)
        server.daemon_threads = True
        server.block_on_close = False  # a stalled answer must not hold up stop()
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fakedata", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)
        self._server = self._thread = None

    def __enter__(self) -> FakeDataServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # --- faults and records -------------------------------------------------------------------

    def delay(self, seconds: float, suffix: str = "", times: int = 1_000_000) -> None:
        self._add(Fault("delay", suffix, times, seconds=seconds))

    def stall(self, after_bytes: int, seconds: float, suffix: str = ".zip", times: int = 1) -> None:
        self._add(Fault("stall", suffix, times, seconds=seconds, after_bytes=after_bytes))

    def drop(self, after_bytes: int, suffix: str = ".zip", times: int = 1) -> None:
        self._add(Fault("drop", suffix, times, after_bytes=after_bytes))

    def fail(self, status: int = 503, suffix: str = "", times: int = 1) -> None:
        self._add(Fault("fail", suffix, times, status=status))

    def _add(self, fault: Fault) -> None:
        with self.state.lock:
            self.state.faults.append(fault)

    def take_fault(self, path: str) -> Fault | None:
        with self.state.lock:
            for fault in self.state.faults:
                if fault.times > 0 and path.endswith(fault.suffix):
                    fault.times -= 1
                    return fault
        return None

    @property
    def requests(self) -> list[Request]:
        with self.state.lock:
            return list(self.state.requests)

    def paths(self, suffix: str = "") -> list[str]:
        return [r.path for r in self.requests if r.path.endswith(suffix)]

    def clear(self) -> None:
        with self.state.lock:
            self.state.requests.clear()
            self.state.faults.clear()
            self.state.peak = 0

    @property
    def peak_concurrency(self) -> int:
        with self.state.lock:
            return self.state.peak


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        """A client that closes its kept-alive connection resets it: normal, not worth a traceback."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)  # type: ignore[arg-type]


class _Handler(BaseHTTPRequestHandler):
    fake: FakeDataServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # quiet: tests read .requests
        pass

    def do_GET(self) -> None:
        state = self.fake.state
        with state.lock:
            state.active += 1
            state.peak = max(state.peak, state.active)
        try:
            self._answer()
        finally:
            with state.lock:
                state.active -= 1

    def _answer(self) -> None:
        parts = urlsplit(self.path)
        path = unquote(parts.path)
        fault = self.fake.take_fault(path)
        if fault is not None and fault.kind == "delay":
            time.sleep(fault.seconds)
        if fault is not None and fault.kind == "fail":
            return self._send_text(path, fault.status, "fault injected\n")
        if path == "/" and "prefix" in parse_qs(parts.query) and self.fake.s3_listing:
            return self._send_s3_listing(path, parse_qs(parts.query)["prefix"][0])
        local = (self.fake.root / path.lstrip("/")).resolve()
        if not local.is_relative_to(self.fake.root.resolve()):
            return self._send_text(path, 404, "not found\n")
        if local.is_dir() and self.fake.listings and path.endswith("/"):
            return self._send_listing(path, local)
        if not local.is_file():
            return self._send_text(path, 404, "<Error><Code>NoSuchKey</Code></Error>\n")
        self._send_file(path, local, fault)

    def _send_file(self, path: str, local: Path, fault: object) -> None:
        size = local.stat().st_size
        start, status = 0, 200
        wanted = self.headers.get("Range")
        if wanted and self.fake.ranges and wanted.startswith("bytes=") and wanted.endswith("-"):
            start = int(wanted.removeprefix("bytes=").removesuffix("-"))
            if start >= size:
                return self._send_text(path, 416, "range not satisfiable\n")
            status = 206
        self.send_response(status)
        self.send_header("Content-Type", "application/zip" if path.endswith(".zip") else "text/plain")
        self.send_header("Content-Length", str(size - start))
        self.send_header("Accept-Ranges", "bytes" if self.fake.ranges else "none")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        self.end_headers()
        with local.open("rb") as body:  # streamed from disk: a month's zip is never in memory here
            body.seek(start)
            self._write_body(path, status, body, size - start, fault if isinstance(fault, Fault) else None)

    def _write_body(self, path: str, status: int, body: BinaryIO, length: int, fault: Fault | None) -> None:
        sent = 0
        cut = fault.after_bytes if fault is not None and fault.kind in ("stall", "drop") else None
        try:
            while sent < length:
                if cut is not None and sent >= cut:
                    assert fault is not None
                    self._record(path, status, sent)  # now: a stalled answer may never end
                    if fault.kind == "stall":
                        time.sleep(fault.seconds)
                    self.close_connection = True
                    self.connection.shutdown(2)  # SHUT_RDWR: the client sees the connection end early
                    return
                block = body.read(min(self.fake.chunk, length - sent, (cut - sent) if cut is not None else length))
                self.wfile.write(block)
                self.wfile.flush()
                sent += len(block)
                if self.fake.chunk_pause:
                    time.sleep(self.fake.chunk_pause)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (its timeout)
            self.close_connection = True
        self._record(path, status, sent)

    def _send_listing(self, path: str, local: Path) -> None:
        names = sorted(p.name + ("/" if p.is_dir() else "") for p in local.iterdir())
        links = "\n".join(f'<li><a href="{html.escape(n)}">{html.escape(n)}</a></li>' for n in names)
        self._send_text(path, 200, f"<html><body><h1>Directory listing for {html.escape(path)}</h1>"
                                   f"<ul>\n{links}\n</ul></body></html>\n", "text/html")

    def _send_s3_listing(self, path: str, prefix: str) -> None:
        folder = self.fake.root / prefix
        keys = sorted(f"{prefix}{p.name}" for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
        contents = "".join(f"<Contents><Key>{html.escape(k)}</Key></Contents>" for k in keys[:1000])
        truncated = "true" if len(keys) > 1000 else "false"
        self._send_text(path, 200, '<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult>'
                                   f"<Prefix>{html.escape(prefix)}</Prefix><KeyCount>{min(len(keys), 1000)}</KeyCount>"
                                   f"<IsTruncated>{truncated}</IsTruncated>{contents}</ListBucketResult>",
                        "application/xml")

    def _send_text(self, path: str, status: int, text: str, content_type: str = "text/plain") -> None:
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self._record(path, status, len(body))

    def _record(self, path: str, status: int, sent: int) -> None:
        with self.fake.state.lock:
            self.fake.state.requests.append(
                Request(path, self.headers.get("Range"), status, sent, self.client_address[1]))
