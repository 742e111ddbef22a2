"""The columns of ``kubectl get trailingstops``, defined once.

The CRD's ``additionalPrinterColumns`` are generated from :data:`PRINTER_COLUMNS`, and
``trailingstop run`` prints its final table with the same columns, so both look alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from trailingstop.core.contracts import TrailingStopStatus
from trailingstop.stopfiles import Manifest


@dataclass(frozen=True)
class Column:
    name: str
    json_path: str
    type: str = "string"
    description: str = ""
    priority: int = 0  # 1: only with -o wide


PRINTER_COLUMNS: tuple[Column, ...] = (
    Column("Symbol", ".spec.symbol", description="Binance symbol"),
    Column("Side", ".spec.side", description="SELL: sell on a fall from the high; BUY: buy on a rise from the low"),
    # A stop trails by a percent or by an amount: exactly one of these two is filled (kubectl's
    # columns are simple JSON paths, one field each).
    Column("Trail%", ".spec.trailingPercent", description="Trailing distance in percent"),
    Column("TrailAmount", ".spec.trailingAmount", description="Trailing distance in the quote asset"),
    Column("Phase", ".status.phase", description="Pending, Armed, Tracking, Triggered, Filled, Expired, ..."),
    Column("Reference", ".status.referencePrice", description="High (SELL) or low (BUY) since activation"),
    Column("Stop", ".status.stopPrice", description="Price at which the stop triggers"),
    Column("Last", ".status.lastPrice", description="Last price seen: the last trade, or the best bid/ask"),
    Column("Age", ".metadata.creationTimestamp", type="date"),
    # Added with issue 14 ahead of the older wide columns, which keep their place at the end.
    Column("Execution", ".spec.execution.type", description="Market (default, when empty) or Limit", priority=1),
    Column("Expires", ".spec.expiresAt", description="When the stop expires if it has not triggered", priority=1),
    Column("Source", ".spec.priceSource", description="LastTrade, or BestBidAsk (a SELL follows the best bid, "
           "a BUY the best ask)", priority=1),
    Column("Activation", ".spec.activationPrice", description="Activation price", priority=1),
    Column("Mode", ".spec.mode", description="Simulate, Testnet or Live", priority=1),
    Column("Order", ".status.order.status", description="Status of the order placed at the trigger", priority=1),
)


def stop_row(manifest: Manifest, status: TrailingStopStatus, age_ms: int, wide: bool = False) -> dict[str, str]:
    """One table row (column name -> cell) for a stop held outside a cluster."""
    resource: dict[str, Any] = {
        "metadata": {"name": manifest.name, "namespace": manifest.namespace},
        "spec": manifest.spec.wire(),
        "status": status.wire(),
    }
    row = {"NAMESPACE": manifest.namespace, "NAME": manifest.name}
    for column in PRINTER_COLUMNS:
        if column.priority and not wide:
            continue
        if column.type == "date":
            row[column.name.upper()] = human_duration(age_ms)
        else:
            value = _lookup(resource, column.json_path)
            row[column.name.upper()] = "" if value is None else str(value)
    return row


def render_table(rows: list[dict[str, str]], show_namespace: bool = False) -> str:
    """Rows as kubectl prints them: upper-case headers, columns padded with three spaces."""
    if not rows:
        return "No resources found."
    headers = [h for h in rows[0] if show_namespace or h != "NAMESPACE"]
    widths = {h: max(len(h), *(len(r.get(h, "")) for r in rows)) for h in headers}
    lines = ["   ".join(h.ljust(widths[h]) for h in headers).rstrip()]
    for row in rows:
        lines.append("   ".join(row.get(h, "").ljust(widths[h]) for h in headers).rstrip())
    return "\n".join(lines)


def human_duration(ms: int) -> str:
    """kubectl's short ages: 45s, 12m, 5h30m, 3d4h."""
    seconds = max(0, ms // 1000)
    if seconds < 120:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 10:
        rest = seconds % 60
        return f"{minutes}m{rest}s" if rest else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 8:
        rest = minutes % 60
        return f"{hours}h{rest}m" if rest else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    days = hours // 24
    rest = hours % 24
    return f"{days}d{rest}h" if rest and days < 8 else f"{days}d"


def _lookup(resource: dict[str, Any], json_path: str) -> Any:
    value: Any = resource
    for part in json_path.strip(".").split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value
