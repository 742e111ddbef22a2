"""Reading TrailingStop manifests (YAML) outside a cluster, validated as the CRD validates them."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from trailingstop.core.contracts import API_GROUP, API_VERSION, KIND, TrailingStopSpec, describe_errors
from trailingstop.core.echo import cut, short_repr
from trailingstop.safeyaml import MAX_DOCUMENTS, YamlProblem, load_documents
from trailingstop.userfiles import UserFileError, decode_utf8, read_bytes

# A TrailingStop name is a DNS subdomain, as for every Kubernetes object.
NAME_PATTERN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
NAMESPACE_PATTERN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# uids for stops that never saw an API server: stable per namespace/name, so reruns agree.
_LOCAL_UID_NAMESPACE = uuid.UUID("6f1c7a52-2a57-4d0e-8a43-5b7f0d7c2e11")

# Limits of one manifest file (and, in safeyaml, of its documents and aliases): a file within them
# loads in seconds and bounded memory.
MAX_FILE_BYTES = 32 * 1024 * 1024
MAX_OBJECTS = MAX_DOCUMENTS  # objects once List items are opened up
MAX_UID_CHARS = 128  # what a bus message carries (contracts.StopRef)


@dataclass(frozen=True)
class Manifest:
    namespace: str
    name: str
    spec: TrailingStopSpec
    uid: str
    generation: int = 1

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


class ManifestError(ValueError):
    """A manifest that the API server would refuse; ``problems`` has one line per field."""

    def __init__(self, where: str, problems: list[str]) -> None:
        super().__init__(f"{where}: " + "; ".join(problems))
        self.where = where
        self.problems = problems


def load_manifests(path: str | Path) -> tuple[list[Manifest], list[str]]:
    """TrailingStops of a YAML file (one or many documents) and notes about skipped documents.

    Raises :class:`ManifestError` for the first invalid TrailingStop or unreadable file. Reading is
    bounded (see the module's limits): the file's size, the number of documents, and how much YAML
    aliases may expand; duplicate keys are refused, as ``kubectl`` refuses them.
    """
    path = Path(path)
    text = _read(path)
    manifests: list[Manifest] = []
    notes: list[str] = []
    for index, document in enumerate(_flatten(_documents(path, text)), start=1):
        where = f"{path} (document {index})"
        if index > MAX_OBJECTS:
            raise ManifestError(str(path), [f"more than {MAX_OBJECTS:,} objects, the limit for one file"])
        if document is None:
            continue
        if not isinstance(document, dict):
            raise ManifestError(where, [f"expected a Kubernetes object, got {type(document).__name__}"])
        if document.get("kind") != KIND:
            notes.append(f"{where}: skipped {_kind_of(document)}")
            continue
        manifests.append(parse_manifest(document, where))
    seen: set[str] = set()
    for manifest in manifests:
        if manifest.key in seen:
            raise ManifestError(str(path), [f"{manifest.key} is defined twice"])
        seen.add(manifest.key)
    if not manifests:
        raise ManifestError(str(path), [f"no {KIND} in this file"])
    return manifests, notes


def _read(path: Path) -> str:
    try:
        return decode_utf8(read_bytes(path, MAX_FILE_BYTES, "a manifest file"))
    except UserFileError as exc:
        raise ManifestError(str(path) if exc.line is None else f"{path}:{exc.line}", [exc.problem]) from None


def _documents(path: Path, text: str) -> Iterator[Any]:
    try:
        yield from load_documents(text)
    except YamlProblem as exc:
        where = str(path) if exc.line is None else f"{path}:{exc.line}"
        if exc.document is not None:
            where += f" (document {exc.document})"
        raise ManifestError(where, [exc.problem]) from None


def _kind_of(document: dict[Any, Any]) -> str:
    """``a ConfigMap``, bounded whatever the document says its kind is."""
    kind = document.get("kind")
    if kind is None:
        return "a document without kind"
    return f"a {cut(kind)}" if isinstance(kind, str) else f"a document whose kind is {short_repr(kind)}"


def parse_manifest(document: dict[str, Any], where: str = "manifest") -> Manifest:
    problems: list[str] = []
    expected = f"{API_GROUP}/{API_VERSION}"
    if document.get("apiVersion") != expected:
        problems.append(f"apiVersion must be {expected}, got {short_repr(document.get('apiVersion'))}")
    metadata = document.get("metadata")
    if not isinstance(metadata, dict):
        problems.append("metadata is required (with a name)")
        metadata = {}
    name = metadata.get("name")
    namespace = metadata.get("namespace", "default")
    if name is None or name == "":
        problems.append("metadata.name is required")
    elif not isinstance(name, str):
        problems.append(f"metadata.name must be a string, got {short_repr(name)}")
    elif len(name) > 253 or not NAME_PATTERN.fullmatch(name):
        problems.append(f"metadata.name must be a lower-case DNS name (a-z, 0-9, '-', '.'), got {short_repr(name)}")
    if not isinstance(namespace, str) or len(namespace) > 63 or not NAMESPACE_PATTERN.fullmatch(namespace):
        problems.append(f"metadata.namespace must be a lower-case DNS label, got {short_repr(namespace)}")
    generation = metadata.get("generation", 1)
    if isinstance(generation, bool) or not isinstance(generation, int) or not 1 <= generation < 2**63:
        problems.append(f"metadata.generation must be an integer >= 1, got {short_repr(generation)}")
    spec = None
    if "spec" not in document:
        problems.append("spec is required")
    else:
        try:
            spec = TrailingStopSpec.model_validate(document["spec"])
        except ValidationError as exc:
            problems.extend(describe_errors(exc, "spec"))
    uid = metadata.get("uid") or str(uuid.uuid5(_LOCAL_UID_NAMESPACE, f"{namespace}/{name}"))
    if not isinstance(uid, str) or len(uid) > MAX_UID_CHARS:
        problems.append(f"metadata.uid must be a string of at most {MAX_UID_CHARS} characters, got {short_repr(uid)}")
    if problems or spec is None or not isinstance(name, str):
        shown_namespace = cut(namespace) if isinstance(namespace, str) else "?"
        label = f"{where} {shown_namespace}/{cut(name)}" if isinstance(name, str) and name else where
        raise ManifestError(label, problems)
    return Manifest(namespace=namespace, name=name, spec=spec, uid=uid, generation=generation)


def _flatten(documents: Iterable[Any]) -> Iterable[Any]:
    """Documents, with ``kind: List`` objects (what ``kubectl get -o yaml`` writes) opened up."""
    for document in documents:
        if isinstance(document, dict) and document.get("kind") == "List" and isinstance(document.get("items"), list):
            yield from document["items"]
        else:
            yield document
