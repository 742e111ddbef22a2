"""TrailingStop manifests read outside a cluster: validated as the CRD validates, one problem per field."""

from __future__ import annotations

import copy
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from trailingstop.manifests import ManifestError, load_manifests, parse_manifest

DATA = Path(__file__).parent / "data"
EXAMPLES = Path(__file__).parents[2] / "examples"

BASE: dict[str, Any] = {
    "apiVersion": "trailingstop.dev/v1",
    "kind": "TrailingStop",
    "metadata": {"name": "btc-protect", "namespace": "trading"},
    "spec": {"symbol": "BTCUSDT", "side": "SELL", "quantity": "0.001", "trailingPercent": "1.5"},
}


def manifest(**changes: Any) -> dict[str, Any]:
    """BASE with dotted-path changes; a value of ... deletes the key."""
    document = copy.deepcopy(BASE)
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        target = document
        for part in parents:
            target = target[part]
        if value is ...:
            target.pop(last, None)
        else:
            target[last] = value
    return document


def write_yaml(tmp_path: Path, *documents: Any, name: str = "m.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump_all(documents, sort_keys=False), encoding="utf-8")
    return path


def test_the_examples_load() -> None:
    (take_profit,), notes = load_manifests(EXAMPLES / "trailingstop.yaml")
    assert notes == []
    assert (take_profit.namespace, take_profit.name, take_profit.key) == ("default", "xrp-take-profit",
                                                                         "default/xrp-take-profit")
    spec = take_profit.spec
    assert (spec.symbol, spec.side, spec.quantity, spec.trailing_percent, spec.activation_price, spec.mode) == (
        "XRPETH", "SELL", Decimal("100"), Decimal("1"), Decimal("0.00145"), "Simulate")
    several, _ = load_manifests(EXAMPLES / "several.yaml")
    assert [m.name for m in several] == ["xrp-sell-tight", "xrp-sell-wide", "xrp-buy-the-dip"]
    (testnet,), _ = load_manifests(EXAMPLES / "testnet.yaml")
    assert testnet.spec.mode == "Testnet" and testnet.spec.route == "testnet-binance-testnet-keys"


def test_a_list_with_other_kinds_skipped_with_a_note() -> None:
    manifests, notes = load_manifests(DATA / "list.yaml")
    assert [m.key for m in manifests] == ["desk-a/tight", "desk-b/tight"]
    assert notes == [f"{DATA / 'list.yaml'} (document 2): skipped a ConfigMap"]
    first, second = manifests
    assert first.uid == "0b8c4f2e-53a1-4c7e-9d0a-3f1e2d4c5b6a" and first.generation == 3
    assert second.generation == 1
    assert second.spec.credentials_secret_ref is not None
    assert second.spec.credentials_secret_ref.name == "binance-testnet-keys"


def test_local_uids_are_stable_uuids_per_namespace_and_name(tmp_path: Path) -> None:
    (one,), _ = load_manifests(write_yaml(tmp_path, BASE, name="a.yaml"))
    (two,), _ = load_manifests(write_yaml(tmp_path, BASE, name="b.yaml"))
    assert one.uid == two.uid
    assert str(uuid.UUID(one.uid)) == one.uid
    (other,), _ = load_manifests(write_yaml(tmp_path, manifest(metadata__namespace="desk")))
    assert other.uid != one.uid


def test_namespace_defaults_to_default(tmp_path: Path) -> None:
    (only,), _ = load_manifests(write_yaml(tmp_path, manifest(metadata__namespace=...)))
    assert only.key == "default/btc-protect"


def test_multi_document_file_with_empty_documents(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text("---\n" + yaml.safe_dump(BASE) + "---\n---\n" + yaml.safe_dump(manifest(metadata__name="b")))
    manifests, notes = load_manifests(path)
    assert [m.name for m in manifests] == ["btc-protect", "b"] and notes == []


def test_duplicate_names_are_refused(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, BASE, manifest(spec__trailingPercent="3"))
    with pytest.raises(ManifestError) as caught:
        load_manifests(path)
    assert caught.value.problems == ["trading/btc-protect is defined twice"]
    assert str(caught.value) == f"{path}: trading/btc-protect is defined twice"


def test_same_name_in_two_namespaces_is_fine(tmp_path: Path) -> None:
    manifests, _ = load_manifests(write_yaml(tmp_path, BASE, manifest(metadata__namespace="other")))
    assert len(manifests) == 2


@pytest.mark.parametrize(
    ("text", "problem"),
    [("kind: ConfigMap\napiVersion: v1\n", "no TrailingStop in this file"),
     ("", "no TrailingStop in this file"),
     ("- 1\n- 2\n", "expected a Kubernetes object, got list")],
)
def test_files_without_stops(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(text)
    with pytest.raises(ManifestError) as caught:
        load_manifests(path)
    assert caught.value.problems == [problem]


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ManifestError) as caught:
        load_manifests(tmp_path / "none.yaml")
    assert str(caught.value) == f"{tmp_path / 'none.yaml'}: no such file"
    broken = tmp_path / "broken.yaml"
    broken.write_text("spec: [\n")
    with pytest.raises(ManifestError) as caught:
        load_manifests(broken)
    assert caught.value.problems[0].startswith("not valid YAML: ")


# Every bad field: (change, expected problems). Floats come from unquoted YAML numbers.
BAD_FIELDS: list[tuple[str, dict[str, Any], list[str]]] = [
    ("apiVersion", {"apiVersion": "trailingstop.dev/v2"},
     ["apiVersion must be trailingstop.dev/v1, got 'trailingstop.dev/v2'"]),
    ("no apiVersion", {"apiVersion": ...}, ["apiVersion must be trailingstop.dev/v1, got None"]),
    ("no metadata", {"metadata": ...}, ["metadata is required (with a name)", "metadata.name is required"]),
    ("no name", {"metadata__name": ...}, ["metadata.name is required"]),
    ("name", {"metadata__name": "BTC_Protect"},
     ["metadata.name must be a lower-case DNS name (a-z, 0-9, '-', '.'), got 'BTC_Protect'"]),
    ("namespace", {"metadata__namespace": "Trading.Desk"},
     ["metadata.namespace must be a lower-case DNS label, got 'Trading.Desk'"]),
    ("no spec", {"spec": ...}, ["spec is required"]),
    ("symbol", {"spec__symbol": "btcusdt"},
     ['spec.symbol must be 2-20 upper-case letters or digits, like BTCUSDT, got "btcusdt"']),
    ("side", {"spec__side": "Sell"}, ["spec.side must be one of 'SELL' or 'BUY', got 'Sell'"]),
    ("quantity float", {"spec__quantity": 0.001},
     ['spec.quantity must be a decimal string > 0, like "0.001", got the float 0.001: write it as a quoted string']),
    ("quantity zero", {"spec__quantity": "0"}, ['spec.quantity must be a decimal string > 0, like "0.001", got "0"']),
    ("quantity missing", {"spec__quantity": ...}, ["spec.quantity is required"]),
    ("trail float", {"spec__trailingPercent": 1.5},
     ['spec.trailingPercent must be > 0 and < 100, with at most 8 decimals, got the float 1.5: '
      'write it as a quoted string']),
    ("trail 0", {"spec__trailingPercent": "0"},
     ['spec.trailingPercent must be > 0 and < 100, with at most 8 decimals, got "0"']),
    ("trail 100", {"spec__trailingPercent": "100"},
     ['spec.trailingPercent must be > 0 and < 100, with at most 8 decimals, got "100"']),
    ("trail 100.5", {"spec__trailingPercent": "100.5"},
     ['spec.trailingPercent must be > 0 and < 100, with at most 8 decimals, got "100.5"']),
    ("trail -1", {"spec__trailingPercent": "-1"},
     ['spec.trailingPercent must be > 0 and < 100, with at most 8 decimals, got "-1"']),
    ("trail decimals", {"spec__trailingPercent": "0.123456789"},
     ['spec.trailingPercent must be > 0 and < 100, with at most 8 decimals, got "0.123456789"']),
    ("activation 0", {"spec__activationPrice": "0"},
     ['spec.activationPrice must be a decimal string > 0, like "65000", got "0"']),
    ("activation float", {"spec__activationPrice": 65000.0},
     ['spec.activationPrice must be a decimal string > 0, like "65000", got the float 65000.0: '
      'write it as a quoted string']),
    ("mode", {"spec__mode": "Paper"}, ["spec.mode must be one of 'Simulate', 'Testnet' or 'Live', got 'Paper'"]),
    ("credentials", {"spec__mode": "Live"},
     ["spec: credentialsSecretRef is required unless mode is Simulate (mode is Live)"]),
    ("unknown field", {"spec__trailingPct": "1"},
     ["spec.trailingPct is not a field of this object (check its spelling)"]),
]


@pytest.mark.parametrize(("label", "change", "problems"), BAD_FIELDS, ids=[b[0] for b in BAD_FIELDS])
def test_every_bad_field_has_a_clear_problem(tmp_path: Path, label: str, change: dict[str, Any],
                                             problems: list[str]) -> None:
    path = write_yaml(tmp_path, manifest(**change))
    with pytest.raises(ManifestError) as caught:
        load_manifests(path)
    assert caught.value.problems == problems
    assert caught.value.where.startswith(f"{path} (document 1)")
    assert str(caught.value) == f"{caught.value.where}: " + "; ".join(problems)


def test_the_error_names_the_object(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, BASE, manifest(metadata__name="second", spec__side="HOLD"))
    with pytest.raises(ManifestError) as caught:
        load_manifests(path)
    assert caught.value.where == f"{path} (document 2) trading/second"


def test_all_problems_of_one_object_are_listed() -> None:
    document = manifest(metadata__name="Bad_Name", spec__symbol="x", spec__quantity=1, spec__mode="Paper")
    with pytest.raises(ManifestError) as caught:
        parse_manifest(document, "here")
    assert caught.value.problems == [
        "metadata.name must be a lower-case DNS name (a-z, 0-9, '-', '.'), got 'Bad_Name'",
        'spec.symbol must be 2-20 upper-case letters or digits, like BTCUSDT, got "x"',
        'spec.quantity must be a decimal string > 0, like "0.001", got the int 1: write it as a quoted string',
        "spec.mode must be one of 'Simulate', 'Testnet' or 'Live', got 'Paper'",
    ]


def test_unquoted_yaml_number_is_refused_with_advice(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(
        "apiVersion: trailingstop.dev/v1\nkind: TrailingStop\nmetadata: {name: a}\n"
        "spec: {symbol: XRPETH, side: SELL, quantity: 100, trailingPercent: 1.5}\n"
    )
    with pytest.raises(ManifestError) as caught:
        load_manifests(path)
    assert caught.value.problems == [
        'spec.quantity must be a decimal string > 0, like "0.001", got the int 100: write it as a quoted string',
        'spec.trailingPercent must be > 0 and < 100, with at most 8 decimals, got the float 1.5: '
        "write it as a quoted string",
    ]



def test_bad_generation_is_a_manifest_error(tmp_path: Path) -> None:
    # parse_manifest does int(metadata["generation"]) after validation: "abc" raises ValueError,
    # which `trailingstop run` does not catch (traceback, exit 1 instead of `error: ...`, exit 2).
    with pytest.raises(ManifestError):
        load_manifests(write_yaml(tmp_path, manifest(metadata__generation="abc")))
