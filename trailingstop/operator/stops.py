"""What the operator knows of each TrailingStop, and where statuses go.

:class:`StopStore` keeps the operator's own view (spec from the watch, status as last computed),
because the watch lags behind our own writes. Subclasses decide where a status is written: the
Kubernetes status subresource (:mod:`trailingstop.operator.kube`) or memory (tests of the workers).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from trailingstop.core.contracts import Phase, StopDefinition, TrailingStopSpec, TrailingStopStatus
from trailingstop.core.lifecycle import saved_state


@dataclass
class StopRecord:
    uid: str
    namespace: str
    name: str
    generation: int
    spec: TrailingStopSpec
    status: TrailingStopStatus = field(default_factory=TrailingStopStatus)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def definition(self, with_state: bool = True) -> StopDefinition:
        """The StopDefinition an orchestrator needs, with the saved state when there is progress."""
        state = saved_state(self.status) if with_state and self.status.phase != Phase.PENDING else None
        return StopDefinition.from_spec(
            self.spec, uid=self.uid, namespace=self.namespace, name=self.name, generation=self.generation, state=state
        )


class StopStore:
    """Records by uid, indexed by symbol and by namespace. ``write`` is where a status leaves the process.

    The indexes serve the per-tick paths (a ``price`` event names only its symbol; a sync answers
    for one namespace's symbol) without looking at every stop the operator knows.
    """

    def __init__(self) -> None:
        self._records: dict[str, StopRecord] = {}
        self._by_symbol: dict[str, dict[str, StopRecord]] = {}
        self._by_namespace: dict[str, dict[str, StopRecord]] = {}

    def get(self, uid: str) -> StopRecord | None:
        return self._records.get(uid)

    def put(self, record: StopRecord, on_server: Mapping[str, Any] | None = None) -> StopRecord:
        """Add or refresh a record from the watch; our newer status is kept over the watch's.
        ``on_server`` is the raw status read from the API (what a store that writes it needs)."""
        known = self._records.get(record.uid)
        if known is not None:
            self._unindex(known)
            known.spec, known.generation = record.spec, record.generation
            known.namespace, known.name = record.namespace, record.name
            self._index(known)
            return known
        self._records[record.uid] = record
        self._index(record)
        return record

    def remove(self, uid: str) -> StopRecord | None:
        record = self._records.pop(uid, None)
        if record is not None:
            self._unindex(record)
        return record

    def for_symbol(self, symbol: str, namespace: str | None = None) -> list[StopRecord]:
        """The stops of ``symbol`` (in ``namespace``, unless None)."""
        records = self._by_symbol.get(symbol, {}).values()
        return [r for r in records if namespace is None or r.namespace == namespace]

    def in_namespace(self, namespace: str) -> list[StopRecord]:
        return list(self._by_namespace.get(namespace, {}).values())

    def all(self) -> list[StopRecord]:
        return list(self._records.values())

    def _index(self, record: StopRecord) -> None:
        self._by_symbol.setdefault(record.spec.symbol, {})[record.uid] = record
        self._by_namespace.setdefault(record.namespace, {})[record.uid] = record

    def _unindex(self, record: StopRecord) -> None:
        for index, key in ((self._by_symbol, record.spec.symbol), (self._by_namespace, record.namespace)):
            bucket = index.get(key, {})
            bucket.pop(record.uid, None)
            if not bucket:
                index.pop(key, None)

    async def write(self, record: StopRecord, status: TrailingStopStatus) -> None:
        """Persist ``status`` (the in-memory record is already updated). In memory: nothing to do."""
