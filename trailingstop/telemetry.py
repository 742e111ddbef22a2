"""Metrics, traces and logs for every component.

* **Metrics** (Prometheus): defined here, once, so names stay consistent; each process serves
  them on ``/metrics`` (see :mod:`trailingstop.health`).
* **Traces** (OpenTelemetry): off unless ``TRAILINGSTOP_TRACING`` is ``otlp`` (export with the
  standard ``OTEL_EXPORTER_OTLP_*`` settings), ``console`` or ``on`` (ids in logs and headers, no
  export). The trace context rides in AMQP headers (W3C ``traceparent``), so one trace follows a
  tick to its trigger, the order, the fill and the status write.
* **Logs**: one JSON object per line with the stop's namespace/name/uid and symbol when known,
  and the trace id. Secret values from the environment are masked in every line, whatever logs
  them.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from prometheus_client import Counter, Gauge, Histogram

if TYPE_CHECKING:
    from trailingstop.settings import Settings

# --- metrics -------------------------------------------------------------------------------------

DEAD_LETTERED = Counter(
    "trailingstop_bus_dead_lettered_total", "Messages moved to the dead-letter queue", ["queue"]
)

MARKETDATA_TRADES = Counter(
    "trailingstop_marketdata_trades_received_total", "Trades received from the feed", ["symbol", "source"]
)
MARKETDATA_RECONNECTS = Counter(
    "trailingstop_marketdata_reconnects_total", "WebSocket (re)connections after the first", ["symbol"]
)
MARKETDATA_BACKFILLED = Counter(
    "trailingstop_marketdata_backfilled_trades_total", "Trades recovered over REST after a gap", ["symbol"]
)
MARKETDATA_FEED_LAG = Gauge(
    "trailingstop_marketdata_feed_lag_seconds", "Receive time minus trade time of the last trade", ["symbol"]
)
MARKETDATA_LAST_TRADE = Gauge(
    "trailingstop_marketdata_last_trade_timestamp_seconds", "Trade time of the last trade published", ["symbol"]
)

ORCHESTRATOR_TICKS = Counter(
    "trailingstop_orchestrator_ticks_processed_total", "Ticks applied to the engine", ["symbol"]
)
ORCHESTRATOR_DUPLICATES = Counter(
    "trailingstop_orchestrator_duplicate_ticks_total", "Ticks dropped as duplicate or out of order", ["symbol"]
)
ORCHESTRATOR_GAP_TRADES = Counter(
    "trailingstop_orchestrator_gap_trades_total", "Missing trades refilled over REST", ["symbol"]
)
ORCHESTRATOR_ACTIVE_STOPS = Gauge(
    "trailingstop_orchestrator_active_stops", "Stops not yet triggered", ["symbol"]
)
ORCHESTRATOR_TRIGGER_LATENCY = Histogram(
    "trailingstop_orchestrator_tick_to_trigger_seconds",
    "From the tick's receipt by marketdata to its PlaceOrder being confirmed by the broker",
    ["symbol"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
ORCHESTRATOR_EVENTS = Counter(
    "trailingstop_orchestrator_events_published_total", "StopEvents published", ["symbol", "type"]
)

EXECUTOR_ORDERS = Counter(
    "trailingstop_executor_orders_total", "Order results published", ["route", "status"]
)
EXECUTOR_EXCHANGE_LATENCY = Histogram(
    "trailingstop_executor_exchange_latency_seconds", "Binance REST call latency", ["route", "call"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
EXECUTOR_RATE_LIMIT_WAITS = Counter(
    "trailingstop_executor_rate_limit_waits_total", "Waits for Retry-After (HTTP 429/418)", ["route", "status"]
)

OPERATOR_RECONCILES = Counter(
    "trailingstop_operator_reconciles_total", "Handler runs", ["handler"]
)
OPERATOR_STATUS_WRITES = Counter(
    "trailingstop_operator_status_writes_total", "Status patches sent to the API server", ["kind"]
)
OPERATOR_API_ERRORS = Counter(
    "trailingstop_operator_api_errors_total", "Kubernetes API errors", ["operation"]
)
OPERATOR_STOPS = Gauge("trailingstop_operator_stops", "TrailingStops by phase", ["phase"])
OPERATOR_LEADING = Gauge("trailingstop_operator_leading", "1 while this replica holds the Lease and works, else 0")
# Per stop, for dashboards only (a float is fine to draw a line; no decision reads these).
STOP_PRICES = Gauge(
    "trailingstop_stop_price", "A stop's reference, stop level and last price, as written to its status",
    ["namespace", "name", "symbol", "kind"],
)
MARKETDATA_LAST_PRICE = Gauge("trailingstop_marketdata_last_price", "Price of the last trade published", ["symbol"])

# --- traces --------------------------------------------------------------------------------------

_tracing_enabled = False
tracer = trace.get_tracer("trailingstop")


def setup_tracing(service: str, mode: str = "off") -> bool:
    """Configure OpenTelemetry (``TRAILINGSTOP_TRACING``); returns whether tracing is on."""
    global _tracing_enabled
    mode = mode.lower()
    if mode in ("", "off", "0", "false"):
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    if mode == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    elif mode == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter(out=sys.stderr)))
    trace.set_tracer_provider(provider)
    _tracing_enabled = True
    return True


def tracing_enabled() -> bool:
    return _tracing_enabled


def inject_headers() -> dict[str, Any] | None:
    """The current trace context as AMQP headers (None when tracing is off: the tick path pays nothing)."""
    if not _tracing_enabled:
        return None
    carrier: dict[str, Any] = {}
    propagate.inject(carrier)
    return carrier or None


@contextmanager
def span(name: str, headers: Mapping[str, Any] | None = None, **attributes: Any) -> Iterator[Any]:
    """A span, child of the context carried in ``headers`` when given. No-op when tracing is off."""
    if not _tracing_enabled:
        yield None
        return
    parent = propagate.extract({k: str(v) for k, v in headers.items()}) if headers else None
    token = otel_context.attach(parent) if parent is not None else None
    try:
        with tracer.start_as_current_span(name, attributes=attributes) as current:
            yield current
    finally:
        if token is not None:
            otel_context.detach(token)


# --- logs ----------------------------------------------------------------------------------------

# Environment variables whose values must never appear in a log line.
# Log record attribute -> JSON key. "ts_" because LogRecord already has a "name" (the logger's).
STOP_FIELDS = {
    "ts_namespace": "namespace",
    "ts_name": "name",
    "ts_uid": "uid",
    "symbol": "symbol",
    "route": "route",
    "clientOrderId": "clientOrderId",
}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the stop's identity, trace ids."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,  # the stop's own name, if any, is "name" below
            "message": record.getMessage(),
        }
        for attribute, key in STOP_FIELDS.items():
            value = getattr(record, attribute, None)
            if value is not None:
                entry[key] = value
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            entry["trace_id"] = format(span_context.trace_id, "032x")
            entry["span_id"] = format(span_context.span_id, "016x")
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class SecretFilter(logging.Filter):
    """Masks the values of secret environment variables (and AMQP URL passwords) in every record."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s and len(s) >= 4]

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        message = record.getMessage()
        masked = message
        for secret in self.secrets:
            masked = masked.replace(secret, "***")
        if masked != message:
            record.msg, record.args = masked, None
        return True


def secret_values(settings: Settings) -> list[str]:
    """What must never be printed: the API keys and the broker password (as written in the URL and
    decoded)."""
    values = [secret.get_secret_value() for secret in (settings.binance_api_key, settings.binance_api_secret) if secret]
    password = urlsplit(settings.amqp).password
    if password:
        values += [password, unquote(password)]
    return [v for v in values if v]


def setup(settings: Settings, service: str) -> None:
    """Logs and traces of a process, as its settings say."""
    setup_logging(settings.log_level, settings.log_format == "json", secret_values(settings))
    setup_tracing(service, settings.tracing)


def setup_logging(level: str = "INFO", json_logs: bool = True, secrets: list[str] | None = None) -> None:
    """JSON logs to stderr (``text`` for humans), ``secrets`` masked in every line."""
    handler = logging.StreamHandler(sys.stderr)
    text = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler.setFormatter(JsonFormatter() if json_logs else text)
    handler.addFilter(SecretFilter(secrets or []))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("aiormq", "aio_pika", "websockets", "asyncio", "kubernetes_asyncio", "urllib3"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def stop_fields(namespace: str | None = None, name: str | None = None, uid: str | None = None,
                symbol: str | None = None, **extra: Any) -> dict[str, Any]:
    """``extra=`` for a log call about one stop (shown as namespace/name/uid/symbol in JSON)."""
    return {"ts_namespace": namespace, "ts_name": name, "ts_uid": uid, "symbol": symbol, **extra}
