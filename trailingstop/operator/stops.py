"""What the operator knows of each TrailingStop, and where statuses go.

:class:`StopStore` keeps the operator's own view (spec from the watch, status as last computed),
because the watch lags behind our own writes. Subclasses decide where a status is written: the
Kubernetes status subresource (:mod:`trailingstop.operator.kube`) or memory (tests of the workers).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from trailingstop.core.contracts import StopDefinition, TrailingStopSpec, TrailingStopStatus
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
        state = saved_state(self.status) if with_state and self.status.phase != "Pending" else None
        return StopDefinition.from_spec(
            self.spec, uid=self.uid, namespace=self.namespace, name=self.name, generation=self.generation, state=state
        )


class StopStore:
    """Records by uid, plus a symbol index. ``write`` is where a status leaves the process."""

    def __init__(self) -> None:
        self._records: dict[str, StopRecord] = {}

    def get(self, uid: str) -> StopRecord | None:
        return self._records.get(uid)

    def put(self, record: StopRecord, on_server: Mapping[str, Any] | None = None) -> StopRecord:
        """Add or refresh a record from the watch; our newer status is kept over the watch's.
        ``on_server`` is the raw status read from the API (what a store that writes it needs)."""
        known = self._records.get(record.uid)
        if known is not None:
            known.spec, known.generation = record.spec, record.generation
            known.namespace, known.name = record.namespace, record.name
            return known
        self._records[record.uid] = record
        return record

    def remove(self, uid: str) -> StopRecord | None:
        return self._records.pop(uid, None)

    def for_symbol(self, symbol: str, namespace: str | None = None) -> list[StopRecord]:
        """The stops of ``symbol`` (in ``namespace``, unless None)."""
        return [
            r for r in self._records.values()
            if r.spec.symbol == symbol and (namespace is None or r.namespace == namespace)
        ]

    def in_namespace(self, namespace: str) -> list[StopRecord]:
        return [r for r in self._records.values() if r.namespace == namespace]

    def all(self) -> list[StopRecord]:
        return list(self._records.values())

    async def write(self, record: StopRecord, status: TrailingStopStatus) -> None:
        """Persist ``status`` (the in-memory record is already updated). In memory: nothing to do."""
