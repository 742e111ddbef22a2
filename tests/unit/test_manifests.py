"""TrailingStop manifests read outside a cluster: validated as the CRD validates, one problem per field."""

from __future__ import annotations

import copy
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from trailingstop.stopfiles import ManifestError, load_manifests, parse_manifest

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


# --- bounded, kubectl-strict reading (issue 11) ---------------------------------------------------

STOP = ('apiVersion: trailingstop.dev/v1\nkind: TrailingStop\nmetadata: {name: a}\n'
        'spec: {symbol: BTCUSDT, side: SELL, quantity: "1", trailingPercent: "1"}\n')


def refused(tmp_path: Path, text: str | bytes, name: str = "m.yaml") -> ManifestError:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    with pytest.raises(ManifestError) as caught:
        load_manifests(path)
    message = str(caught.value)
    assert "\n" not in message and len(message) < 1000, message
    return caught.value


@pytest.mark.parametrize(
    ("text", "where", "problem"),
    [
        (STOP.replace('side: SELL,', 'side: SELL, side: BUY,'), ":4 (document 1)",
         "spec.side: key already set in this map (on line 4); kubectl refuses duplicate keys"),
        (STOP + "kind: TrailingStop\n", ":5 (document 1)",
         "kind: key already set in this map (on line 2); kubectl refuses duplicate keys"),
        ("---\n" + STOP + "---\n" + STOP.replace("metadata: {name: a}", "metadata:\n  name: b\n  name: c"),
         ":11 (document 2)", "metadata.name: key already set in this map (on line 10); kubectl refuses duplicate keys"),
        ("a: &x [*x]\n", ":1 (document 1)", "a: an alias contains itself"),
        ("a: [1,\n  b: 2\n", ":3 (document 1)",
         "not valid YAML: did not find expected ',' or ']' (while parsing a flow sequence), column 1"),
        ("a: 1\x07\n", ":1 (document 1)", "not valid YAML: control characters are not allowed"),
        ("n: " + "9" * 5000 + "\n", ":1 (document 1)", "n: cannot be read: Exceeds the limit (4300 digits) for "
                                                       "integer string conversio... (140 characters)"),
        ("when: 2024-13-45\n", ":1 (document 1)", "when: cannot be read: month must be in 1..12"),
        ("? [a, b]\n: 1\n", ":1 (document 1)", "the document: a key must be a string or a number, not a list"),
        ("x: !!python/object:os.system {}\n", ":1 (document 1)",
         "not valid YAML: could not determine a constructor for the tag 'tag:yaml.org,2002:python/object:os.system'"
         ", column 4"),
    ],
    ids=["duplicate spec key", "duplicate top key", "duplicate in document 2", "recursive alias", "syntax",
         "control character", "huge integer", "impossible date", "list as key", "python tag"],
)
def test_yaml_problems_name_file_line_and_field(tmp_path: Path, text: str, where: str, problem: str) -> None:
    error = refused(tmp_path, text)
    assert (error.where, error.problems) == (f"{tmp_path / 'm.yaml'}{where}", [problem])


def test_merge_keys_and_small_aliases_are_fine(tmp_path: Path) -> None:
    base = "x-base: &base {symbol: BTCUSDT, side: SELL, quantity: '1'}\n"
    stop = "apiVersion: trailingstop.dev/v1\nkind: TrailingStop\nmetadata: {name: %s}\nspec:\n  <<: *base\n  %s\n"
    path = tmp_path / "m.yaml"
    path.write_text(base + stop % ("a", "trailingPercent: '2'") + "---\n" + base
                    + stop % ("b", "trailingPercent: '3'\n  quantity: '5'"))
    (a, b), _ = load_manifests(path)
    assert (a.spec.symbol, a.spec.quantity, a.spec.trailing_percent) == ("BTCUSDT", Decimal("1"), Decimal("2"))
    assert (b.spec.quantity, b.spec.trailing_percent) == (Decimal("5"), Decimal("3"))  # an explicit key wins


def test_a_billion_laughs_is_refused_at_once(tmp_path: Path) -> None:
    lines = ['x0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"x{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    text = "\n".join(lines) + "\n" + STOP.replace("symbol: BTCUSDT", "symbol: *a8")
    assert len(text) < 1000
    started = time.monotonic()
    error = refused(tmp_path, text)
    assert time.monotonic() - started < 5
    assert error.problems == ["aliases expand this document by more than 1,000,000 nodes and characters; "
                              "write it out, or use fewer aliases"]
    assert error.where == f"{tmp_path / 'm.yaml'}:1 (document 1)"


def test_values_echoed_in_errors_are_cut_short(tmp_path: Path) -> None:
    huge = "x" * 5_000_000
    error = refused(tmp_path, STOP.replace("name: a", f"name: {huge}").replace('"1"}', f'"{huge}"}}'))
    assert error.where == f"{tmp_path / 'm.yaml'} (document 1) default/{'x' * 60}... (5,000,000 characters)"
    assert error.problems[0] == ("metadata.name must be a lower-case DNS name (a-z, 0-9, '-', '.'), "
                                 f"got '{'x' * 60}'... (5,000,000 characters)")
    assert error.problems[1] == (f'spec.trailingPercent must be > 0 and < 100, with at most 8 decimals, '
                                 f'got "{"x" * 60}..." (5,000,000 characters)')
    error = refused(tmp_path, STOP.replace("kind: TrailingStop", "kind: [" + "[1, 2, 3, 4, 5]," * 1000 + "]"))
    assert error.problems == ["no TrailingStop in this file"]


def test_a_kind_that_is_no_string_is_noted_briefly(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text("kind: [" + "[1, 2, 3, 4, 5]," * 1000 + "]\n---\n" + STOP)
    _, notes = load_manifests(path)
    assert notes == [f"{path} (document 1): skipped a document whose kind is [[1, 2, 3, 4, ...], [1, 2, 3, 4, ...], "
                     "[1, 2, 3, 4, ...], [1, 2, 3, 4, ...], ...]"]


@pytest.mark.parametrize(
    ("content", "problem", "line"),
    [
        (b"a: \xff\n", "not UTF-8 text: byte 0xff cannot be decoded (save the file as UTF-8)", 1),
        (STOP.encode() + b"# caf\xe9\n", "not UTF-8 text: byte 0xe9 cannot be decoded (save the file as UTF-8)", 5),
        ("\ufeff".encode() + STOP.encode("utf-8"), None, None),  # a byte-order mark is fine
        (STOP.encode("utf-16"), "not UTF-8 text: byte 0xff cannot be decoded (save the file as UTF-8)", 1),
    ],
    ids=["latin-1 byte", "later line", "BOM", "UTF-16"],
)
def test_encodings(tmp_path: Path, content: bytes, problem: str | None, line: int | None) -> None:
    path = tmp_path / "m.yaml"
    path.write_bytes(content)
    if problem is None:
        (stop,), _ = load_manifests(path)
        assert stop.name == "a"
        return
    with pytest.raises(ManifestError) as caught:
        load_manifests(path)
    assert (caught.value.where, caught.value.problems) == (f"{path}:{line}", [problem])


def test_paths_that_are_not_readable_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for path, problem in [(tmp_path, "is a directory, not a file"), (tmp_path / "none.yaml", "no such file"),
                          (tmp_path / "none" / "m.yaml", "no such file")]:
        with pytest.raises(ManifestError) as caught:
            load_manifests(path)
        assert str(caught.value) == f"{path}: {problem}"
    blocked = tmp_path / "blocked.yaml"
    blocked.write_text(STOP)
    real_open = Path.open

    def open_refused(self: Path, *args: Any, **kwargs: Any) -> Any:
        if self == blocked:
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", open_refused)  # root reads any file: refuse the way the OS would
    with pytest.raises(ManifestError) as caught:
        load_manifests(blocked)
    assert str(caught.value) == f"{blocked}: permission denied"


def test_size_and_document_limits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import trailingstop.safeyaml as safeyaml
    import trailingstop.stopfiles as manifests

    path = tmp_path / "m.yaml"
    path.write_text("---\n".join(STOP.replace("name: a", f"name: s{i}") for i in range(5)))
    monkeypatch.setattr(manifests, "MAX_FILE_BYTES", 1024 * 1024)
    assert len(load_manifests(path)[0]) == 5
    monkeypatch.setattr(manifests, "MAX_FILE_BYTES", 100)
    with pytest.raises(ManifestError) as caught:
        load_manifests(path)
    assert str(caught.value) == f"{path}: larger than 100 bytes, the limit for a manifest file"
    monkeypatch.setattr(manifests, "MAX_FILE_BYTES", 1024 * 1024)
    monkeypatch.setattr(safeyaml, "MAX_DOCUMENTS", 3)
    with pytest.raises(ManifestError) as caught:
        load_manifests(path)
    assert str(caught.value) == f"{path}:15 (document 4): more than 3 documents, the limit for one file"
    with pytest.raises(ManifestError):
        load_manifests("/dev/zero")
