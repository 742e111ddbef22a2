"""A price line for a chart in bounded memory, however many trades go by (a month: tens of millions).

Consecutive trades fall into buckets; each bucket keeps its lowest and its highest trade, so a spike
survives however much the line is thinned. When there are more than ``max_buckets`` buckets,
neighbours merge in pairs and later buckets hold twice as many trades: memory stays at most
``2 * max_buckets`` points and each trade costs two comparisons.
"""

from __future__ import annotations

from decimal import Decimal

Point = tuple[int, Decimal]  # (epoch ms, price)


class PriceSeries:
    def __init__(self, max_buckets: int = 2000) -> None:
        self.max_buckets = max_buckets
        self.bucket_size = 1  # trades per bucket
        self._buckets: list[tuple[Point, Point]] = []  # (low, high) of each full bucket
        self._low: Point | None = None
        self._high: Point | None = None
        self._filled = 0

    def add(self, time: int, price: Decimal) -> None:
        if self._low is None or self._high is None:
            self._low = self._high = (time, price)
        elif price < self._low[1]:
            self._low = (time, price)
        elif price > self._high[1]:
            self._high = (time, price)
        self._filled += 1
        if self._filled == self.bucket_size:
            self._close_bucket()

    def _close_bucket(self) -> None:
        assert self._low is not None and self._high is not None
        self._buckets.append((self._low, self._high))
        self._low = self._high = None
        self._filled = 0
        if len(self._buckets) > self.max_buckets:
            self._buckets = [_merge(self._buckets[i:i + 2]) for i in range(0, len(self._buckets), 2)]
            self.bucket_size *= 2

    def points(self) -> list[Point]:
        """Each bucket's low and high in time order (one point when they are the same trade)."""
        buckets = list(self._buckets)
        if self._low is not None and self._high is not None:
            buckets.append((self._low, self._high))
        points: list[Point] = []
        for low, high in buckets:
            points.extend(sorted({low, high}, key=lambda p: p[0]) if low != high else [low])
        return points


def _merge(pair: list[tuple[Point, Point]]) -> tuple[Point, Point]:
    low = min((b[0] for b in pair), key=lambda p: p[1])
    high = max((b[1] for b in pair), key=lambda p: p[1])
    return low, high
