"""The kubectl-like table and the CRD generated from the contracts (with a drift test)."""

from __future__ import annotations

import re
import typing
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from trailingstop.core.contracts import (
    MESSAGES,
    PRICE_PATTERN,
    QUANTITY_PATTERN,
    SECRET_NAME_PATTERN,
    SYMBOL_PATTERN,
    TRAILING_PERCENT_PATTERN,
    Condition,
    Mode,
    OrderStatus,
    Phase,
    TrailingStopSpec,
    TrailingStopStatus,
)
from trailingstop.operator.crd import CRD_FILE, crd, crd_yaml
from trailingstop.stopfiles import Manifest
from trailingstop.table import PRINTER_COLUMNS, human_duration, render_table, stop_row

ROOT = Path(__file__).parents[2]
CRD_PATH = ROOT / "crds" / CRD_FILE


# --- human_duration: kubectl's ages ---------------------------------------------------------------

S, M, H, DAY = 1000, 60_000, 3_600_000, 86_400_000


@pytest.mark.parametrize(
    ("ms", "text"),
    [(-5000, "0s"), (0, "0s"), (999, "0s"), (45 * S, "45s"), (119 * S + 999, "119s"), (120 * S, "2m"),
     (150 * S, "2m30s"), (9 * M + 59 * S, "9m59s"), (10 * M, "10m"), (10 * M + 30 * S, "10m"), (179 * M, "179m"),
     (180 * M, "3h"), (5 * H + 30 * M, "5h30m"), (7 * H + 59 * M, "7h59m"), (8 * H, "8h"), (16 * H + 41 * M, "16h"),
     (47 * H, "47h"), (48 * H, "2d"), (3 * DAY + 4 * H, "3d4h"), (7 * DAY + 23 * H, "7d23h"), (8 * DAY + 5 * H, "8d"),
     (100 * DAY, "100d")],
)
def test_human_duration(ms: int, text: str) -> None:
    assert human_duration(ms) == text


# --- rows and the table ---------------------------------------------------------------------------


def _manifest(name: str = "xrp-take-profit", namespace: str = "default", **spec: Any) -> Manifest:
    fields = {"symbol": "XRPETH", "side": "SELL", "quantity": "100", "trailingPercent": "1",
              "activationPrice": "0.00145", **spec}
    return Manifest(namespace=namespace, name=name, spec=TrailingStopSpec.model_validate(fields),
                    uid="0b8c4f2e-53a1-4c7e-9d0a-3f1e2d4c5b6a")


FILLED = TrailingStopStatus.model_validate({
    "phase": "Filled", "referencePrice": "0.00149267", "stopPrice": "0.0014777433", "lastPrice": "0.0014772",
    "order": {"clientOrderId": "ts-x", "status": "SIMULATED"},
})


def test_stop_row_columns() -> None:
    row = stop_row(_manifest(), FILLED, 16 * H + 41 * M)
    assert row == {"NAMESPACE": "default", "NAME": "xrp-take-profit", "SYMBOL": "XRPETH", "SIDE": "SELL",
                   "TRAIL%": "1", "PHASE": "Filled", "REFERENCE": "0.00149267", "STOP": "0.0014777433",
                   "LAST": "0.0014772", "AGE": "16h"}
    wide = stop_row(_manifest(), FILLED, 0, wide=True)
    assert list(wide)[-3:] == ["ACTIVATION", "MODE", "ORDER"]
    assert (wide["ACTIVATION"], wide["MODE"], wide["ORDER"]) == ("0.00145", "Simulate", "SIMULATED")
    assert list(wide)[-4] == "SOURCE" and wide["SOURCE"] == "LastTrade"
    book = stop_row(_manifest(priceSource="BestBidAsk"), FILLED, 0, wide=True)
    assert book["SOURCE"] == "BestBidAsk"


def test_empty_cells_for_a_pending_stop() -> None:
    row = stop_row(_manifest(activationPrice=None), TrailingStopStatus(), 5 * S, wide=True)
    assert (row["PHASE"], row["REFERENCE"], row["STOP"], row["LAST"], row["AGE"]) == ("Pending", "", "", "", "5s")
    assert (row["ACTIVATION"], row["ORDER"]) == ("", "")


def test_render_table_pads_like_kubectl() -> None:
    rows = [stop_row(_manifest(), FILLED, 16 * H), stop_row(_manifest("b", trailingPercent="12.5"),
                                                            TrailingStopStatus(phase="Armed"), 90 * S)]
    assert render_table(rows) == "\n".join([
        "NAME              SYMBOL   SIDE   TRAIL%   PHASE    REFERENCE    STOP           LAST        AGE",
        "xrp-take-profit   XRPETH   SELL   1        Filled   0.00149267   0.0014777433   0.0014772   16h",
        "b                 XRPETH   SELL   12.5     Armed                                            90s",
    ])
    with_ns = render_table(rows, show_namespace=True).splitlines()
    assert with_ns[0].split() == ["NAMESPACE", "NAME", "SYMBOL", "SIDE", "TRAIL%", "PHASE", "REFERENCE", "STOP",
                                  "LAST", "AGE"]
    assert with_ns[1].startswith("default     xrp-take-profit   ")
    assert render_table([]) == "No resources found."


def test_printer_columns_are_the_design_columns() -> None:
    names = [c.name.upper() for c in PRINTER_COLUMNS if not c.priority]
    assert names == ["SYMBOL", "SIDE", "TRAIL%", "PHASE", "REFERENCE", "STOP", "LAST", "AGE"]
    assert [c.name.upper() for c in PRINTER_COLUMNS if c.priority] == ["SOURCE", "ACTIVATION", "MODE", "ORDER"]


# --- the CRD --------------------------------------------------------------------------------------


def _version() -> dict[str, Any]:
    (version,) = crd()["spec"]["versions"]
    return version


def _schema(part: str) -> dict[str, Any]:
    return _version()["schema"]["openAPIV3Schema"]["properties"][part]


def _aliases(model: type) -> set[str]:
    return {field.alias or name for name, field in model.model_fields.items()}


def test_crd_identity() -> None:
    document = crd()
    assert document["apiVersion"] == "apiextensions.k8s.io/v1" and document["kind"] == "CustomResourceDefinition"
    assert document["metadata"]["name"] == "trailingstops.trailingstop.dev"
    spec = document["spec"]
    assert (spec["group"], spec["scope"]) == ("trailingstop.dev", "Namespaced")
    assert spec["names"] == {"kind": "TrailingStop", "listKind": "TrailingStopList", "plural": "trailingstops",
                             "singular": "trailingstop", "shortNames": ["ts"], "categories": ["trading"]}
    version = _version()
    assert (version["name"], version["served"], version["storage"]) == ("v1", True, True)
    assert version["subresources"] == {"status": {}}
    assert version["schema"]["openAPIV3Schema"]["required"] == ["spec"]


def test_printer_columns_come_from_the_table() -> None:
    columns = _version()["additionalPrinterColumns"]
    assert [(c["name"], c["jsonPath"], c["type"], c.get("priority", 0)) for c in columns] == [
        (c.name, c.json_path, c.type, c.priority) for c in PRINTER_COLUMNS
    ]
    assert columns[7] == {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}


def test_spec_schema_mirrors_the_contract() -> None:
    spec = _schema("spec")
    assert set(spec["properties"]) == _aliases(TrailingStopSpec)
    assert spec["required"] == ["symbol", "side", "quantity", "trailingPercent"]
    assert sorted(spec["required"]) == sorted(
        f.alias for f in TrailingStopSpec.model_fields.values() if f.is_required()
    )
    props = spec["properties"]
    assert _cel_pattern(props["symbol"]) == SYMBOL_PATTERN
    assert _cel_pattern(props["quantity"]) == QUANTITY_PATTERN
    assert _cel_pattern(props["trailingPercent"]) == TRAILING_PERCENT_PATTERN
    assert _cel_pattern(props["activationPrice"]) == PRICE_PATTERN
    assert _cel_pattern(props["credentialsSecretRef"]["properties"]["name"]) == SECRET_NAME_PATTERN
    assert props["credentialsSecretRef"]["properties"]["name"]["maxLength"] == 253
    assert props["side"]["enum"] == ["SELL", "BUY"]
    assert props["mode"]["enum"] == list(typing.get_args(Mode)) and props["mode"]["default"] == "Simulate"
    for field in ("quantity", "trailingPercent", "activationPrice"):
        assert props[field]["type"] == "string"
        [rule] = props[field]["x-kubernetes-validations"]
        assert rule["rule"].endswith(" && self.matches('[1-9]')") and rule["message"] == MESSAGES[field]
    assert props["priceSource"]["enum"] == ["LastTrade", "BestBidAsk"]
    assert props["priceSource"]["default"] == "LastTrade"
    for field in ("symbol", "side", "priceSource"):
        assert {"rule": "self == oldSelf",
                "message": f"{field} is immutable: delete the TrailingStop and create a new one"} in (
            props[field]["x-kubernetes-validations"])
    assert spec["x-kubernetes-validations"] == [{
        "rule": "self.mode == 'Simulate' || has(self.credentialsSecretRef)",
        "message": "credentialsSecretRef is required unless mode is Simulate",
    }]


def test_status_schema_mirrors_the_contract() -> None:
    status = _schema("status")
    assert set(status["properties"]) == _aliases(TrailingStopStatus)
    assert status["properties"]["phase"]["enum"] == [str(phase) for phase in Phase]
    assert set(status["properties"]["order"]["properties"]) == _aliases(OrderStatus)
    condition = status["properties"]["conditions"]
    assert set(condition["items"]["properties"]) == _aliases(Condition)
    assert condition["x-kubernetes-list-type"] == "map" and condition["x-kubernetes-list-map-keys"] == ["type"]
    for name in ("activatedPrice", "referencePrice", "stopPrice", "lastPrice", "triggerPrice"):
        assert status["properties"][name]["type"] == "string"  # decimals are strings
    assert status["properties"]["priceSource"]["enum"] == ["LastTrade", "BestBid", "BestAsk"]
    gap = status["properties"]["lastGap"]
    assert set(gap["properties"]) == {"from", "to", "seconds", "fromUpdateId", "toUpdateId"}
    assert gap["properties"]["seconds"]["type"] == "string"
    for name in ("activatedUpdateId", "lastUpdateId", "triggerUpdateId", "gapCount"):
        assert status["properties"][name]["type"] == "integer"


def _without_descriptions(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_descriptions(v) for k, v in value.items() if k != "description"}
    if isinstance(value, list):
        return [_without_descriptions(v) for v in value]
    return value


def test_committed_crd_has_the_generated_rules() -> None:
    committed = yaml.safe_load(CRD_PATH.read_text())
    assert _without_descriptions(committed) == _without_descriptions(crd())



def test_committed_crd_is_exactly_the_generated_one() -> None:
    # table.py says "Pending, Armed, Tracking, Triggered, Filled, ..."; the committed file says
    # "... Filled, Rejected, Failed or Invalid". Regenerate with `trailingstop crd > crds/...`.
    assert CRD_PATH.read_text() == crd_yaml()


def test_crd_yaml_is_the_crd() -> None:
    text = crd_yaml()
    assert text.startswith("# Generated by `trailingstop crd`")
    assert yaml.safe_load(text) == crd()


# The API server checks the pattern with RE2 (anchored, `$` at the very end), the CEL rule and
# maxLength; the contracts must accept exactly the same strings.
DECIMAL_TEXT = st.text(alphabet="0123456789.-+eE ,", max_size=45)


def _cel_pattern(props: dict[str, Any]) -> str:
    """The regular expression of a field's first CEL rule, ``self.matches('<pattern>')``."""
    rule = props["x-kubernetes-validations"][0]["rule"]
    match = re.match(r"self\.matches\('((?:[^'\\]|\\.)*)'\)", rule)
    assert match is not None, rule
    return match.group(1).replace("\\\\", "\\").replace("\\'", "'")


def _crd_accepts(props: dict[str, Any], value: str) -> bool:
    return (re.fullmatch(_cel_pattern(props).strip("^$"), value) is not None
            and len(value) <= props["maxLength"] and re.search("[1-9]", value) is not None)


def _contract_accepts(field: str, value: str) -> bool:
    try:
        TrailingStopSpec.model_validate({"symbol": "BTCUSDT", "side": "SELL", "quantity": "1",
                                         "trailingPercent": "1", field: value})
    except ValidationError:
        return False
    return True


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["quantity", "trailingPercent", "activationPrice"]),
       st.one_of(DECIMAL_TEXT, st.decimals(min_value=0, max_value=10 ** 6, places=10).map(str),
                 st.sampled_from(["0", "00", "0.0", "99.99999999", "100", "1" * 20 + "." + "1" * 20, "1" * 21])))
def test_crd_and_contract_accept_the_same_decimals(field: str, value: str) -> None:
    props = _schema("spec")["properties"][field]
    assert _crd_accepts(props, value) == _contract_accepts(field, value)
    if _contract_accepts(field, value):
        assert Decimal(value) > 0
