"""Reading TrailingStop manifests (YAML) outside a cluster, validated as the CRD validates them."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from trailingstop.contracts import API_GROUP, API_VERSION, KIND, TrailingStopSpec, describe_errors

# A TrailingStop name is a DNS subdomain, as for every Kubernetes object.
NAME_PATTERN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
NAMESPACE_PATTERN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# uids for stops that never saw an API server: stable per namespace/name, so reruns agree.
_LOCAL_UID_NAMESPACE = uuid.UUID("6f1c7a52-2a57-4d0e-8a43-5b7f0d7c2e11")


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

    Raises :class:`ManifestError` for the first invalid TrailingStop or unreadable file.
    """
    path = Path(path)
    try:
        documents = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise ManifestError(str(path), ["no such file"]) from None
    except yaml.YAMLError as exc:
        raise ManifestError(str(path), [f"not valid YAML: {exc}"]) from None
    manifests: list[Manifest] = []
    notes: list[str] = []
    for index, document in enumerate(_flatten(documents), start=1):
        where = f"{path} (document {index})"
        if document is None:
            continue
        if not isinstance(document, dict):
            raise ManifestError(where, [f"expected a Kubernetes object, got {type(document).__name__}"])
        if document.get("kind") != KIND:
            notes.append(f"{where}: skipped a {document.get('kind', 'document without kind')}")
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


def parse_manifest(document: dict[str, Any], where: str = "manifest") -> Manifest:
    problems: list[str] = []
    expected = f"{API_GROUP}/{API_VERSION}"
    if document.get("apiVersion") != expected:
        problems.append(f"apiVersion must be {expected}, got {document.get('apiVersion')!r}")
    metadata = document.get("metadata")
    if not isinstance(metadata, dict):
        problems.append("metadata is required (with a name)")
        metadata = {}
    name = metadata.get("name")
    namespace = metadata.get("namespace", "default")
    if name is None or name == "":
        problems.append("metadata.name is required")
    elif not isinstance(name, str):
        problems.append(f"metadata.name must be a string, got {name!r}")
    elif len(name) > 253 or not NAME_PATTERN.fullmatch(name):
        problems.append(f"metadata.name must be a lower-case DNS name (a-z, 0-9, '-', '.'), got {name!r}")
    if not isinstance(namespace, str) or len(namespace) > 63 or not NAMESPACE_PATTERN.fullmatch(namespace):
        problems.append(f"metadata.namespace must be a lower-case DNS label, got {namespace!r}")
    generation = metadata.get("generation", 1)
    if isinstance(generation, bool) or not isinstance(generation, int) or generation < 1:
        problems.append(f"metadata.generation must be an integer >= 1, got {generation!r}")
    spec = None
    if "spec" not in document:
        problems.append("spec is required")
    else:
        try:
            spec = TrailingStopSpec.model_validate(document["spec"])
        except ValidationError as exc:
            problems.extend(describe_errors(exc, "spec"))
    if problems or spec is None or not isinstance(name, str):
        label = f"{where} {namespace}/{name}" if isinstance(name, str) and name else where
        raise ManifestError(label, problems)
    uid = str(metadata.get("uid") or uuid.uuid5(_LOCAL_UID_NAMESPACE, f"{namespace}/{name}"))
    return Manifest(namespace=namespace, name=name, spec=spec, uid=uid, generation=generation)


def _flatten(documents: Iterable[Any]) -> Iterable[Any]:
    """Documents, with ``kind: List`` objects (what ``kubectl get -o yaml`` writes) opened up."""
    for document in documents:
        if isinstance(document, dict) and document.get("kind") == "List" and isinstance(document.get("items"), list):
            yield from document["items"]
        else:
            yield document
