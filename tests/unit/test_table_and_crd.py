"""The kubectl-like table and the CRD generated from the contracts (with a drift test)."""

from __future__ import annotations

import re
import typing
from datetime import UTC, date
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
    SLIPPAGE_PERCENT_PATTERN,
    SYMBOL_PATTERN,
    TIME_MAX_CHARS,
    TIME_PATTERN,
    TRAILING_PERCENT_PATTERN,
    Condition,
    Execution,
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
                   "TRAIL%": "1", "TRAILAMOUNT": "", "PHASE": "Filled", "REFERENCE": "0.00149267",
                   "STOP": "0.0014777433", "LAST": "0.0014772", "AGE": "16h"}
    wide = stop_row(_manifest(), FILLED, 0, wide=True)
    assert list(wide)[-6:] == ["EXECUTION", "EXPIRES", "SOURCE", "ACTIVATION", "MODE", "ORDER"]
    assert (wide["ACTIVATION"], wide["MODE"], wide["ORDER"]) == ("0.00145", "Simulate", "SIMULATED")
    assert (wide["EXECUTION"], wide["EXPIRES"]) == ("", "")
    assert list(wide)[-4] == "SOURCE" and wide["SOURCE"] == "LastTrade"
    book = stop_row(_manifest(priceSource="BestBidAsk"), FILLED, 0, wide=True)
    assert book["SOURCE"] == "BestBidAsk"


def test_an_amount_stop_shows_its_amount_and_a_limit_its_execution_and_expiry() -> None:
    manifest = _manifest(trailingPercent=None, trailingAmount="0.00002", activationPrice=None,
                         execution={"type": "Limit", "maxSlippagePercent": "0.5"}, expiresAt="2019-10-12T00:00:00Z")
    row = stop_row(manifest, TrailingStopStatus(phase="Expired", stopPrice="-0.00001"), 0, wide=True)
    assert (row["TRAIL%"], row["TRAILAMOUNT"], row["PHASE"], row["STOP"]) == ("", "0.00002", "Expired", "-0.00001")
    assert (row["EXECUTION"], row["EXPIRES"]) == ("Limit", "2019-10-12T00:00:00Z")


def test_empty_cells_for_a_pending_stop() -> None:
    row = stop_row(_manifest(activationPrice=None), TrailingStopStatus(), 5 * S, wide=True)
    assert (row["PHASE"], row["REFERENCE"], row["STOP"], row["LAST"], row["AGE"]) == ("Pending", "", "", "", "5s")
    assert (row["ACTIVATION"], row["ORDER"]) == ("", "")


def test_render_table_pads_like_kubectl() -> None:
    rows = [stop_row(_manifest(), FILLED, 16 * H), stop_row(_manifest("b", trailingPercent="12.5"),
                                                            TrailingStopStatus(phase="Armed"), 90 * S)]
    assert render_table(rows) == "\n".join([
        "NAME              SYMBOL   SIDE   TRAIL%   TRAILAMOUNT   PHASE    REFERENCE    STOP           LAST        AGE",
        "xrp-take-profit   XRPETH   SELL   1                      Filled   0.00149267   0.0014777433   0.0014772   16h",
        "b                 XRPETH   SELL   12.5                   Armed                                            90s",
    ])
    with_ns = render_table(rows, show_namespace=True).splitlines()
    assert with_ns[0].split() == ["NAMESPACE", "NAME", "SYMBOL", "SIDE", "TRAIL%", "TRAILAMOUNT", "PHASE",
                                  "REFERENCE", "STOP", "LAST", "AGE"]
    assert with_ns[1].startswith("default     xrp-take-profit   ")
    assert render_table([]) == "No resources found."


def test_printer_columns_are_the_design_columns() -> None:
    names = [c.name.upper() for c in PRINTER_COLUMNS if not c.priority]
    assert names == ["SYMBOL", "SIDE", "TRAIL%", "TRAILAMOUNT", "PHASE", "REFERENCE", "STOP", "LAST", "AGE"]
    assert [c.name.upper() for c in PRINTER_COLUMNS if c.priority] == [
        "EXECUTION", "EXPIRES", "SOURCE", "ACTIVATION", "MODE", "ORDER"]


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
    assert columns[8] == {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}


def test_spec_schema_mirrors_the_contract() -> None:
    spec = _schema("spec")
    assert set(spec["properties"]) == _aliases(TrailingStopSpec)
    assert spec["required"] == ["symbol", "side", "quantity"]
    assert sorted(spec["required"]) == sorted(
        f.alias for f in TrailingStopSpec.model_fields.values() if f.is_required()
    )
    props = spec["properties"]
    assert _cel_pattern(props["symbol"]) == SYMBOL_PATTERN
    assert _cel_pattern(props["quantity"]) == QUANTITY_PATTERN
    assert _cel_pattern(props["trailingPercent"]) == TRAILING_PERCENT_PATTERN
    assert _cel_pattern(props["trailingAmount"]) == PRICE_PATTERN
    assert _cel_pattern(props["activationPrice"]) == PRICE_PATTERN
    assert _cel_pattern(props["expiresAt"]) == TIME_PATTERN
    assert props["expiresAt"]["maxLength"] == TIME_MAX_CHARS and "format" not in props["expiresAt"]
    execution = props["execution"]
    assert set(execution["properties"]) == _aliases(Execution)
    assert execution["properties"]["type"]["enum"] == ["Market", "Limit"]
    assert _cel_pattern(execution["properties"]["maxSlippagePercent"]) == SLIPPAGE_PERCENT_PATTERN
    assert _cel_pattern(props["credentialsSecretRef"]["properties"]["name"]) == SECRET_NAME_PATTERN
    assert props["credentialsSecretRef"]["properties"]["name"]["maxLength"] == 253
    assert props["side"]["enum"] == ["SELL", "BUY"]
    assert props["mode"]["enum"] == list(typing.get_args(Mode)) and props["mode"]["default"] == "Simulate"
    for field in ("quantity", "trailingPercent", "trailingAmount", "activationPrice"):
        assert props[field]["type"] == "string"
        [rule] = props[field]["x-kubernetes-validations"]
        assert rule["rule"].endswith(" && self.matches('[1-9]')") and rule["message"] == MESSAGES[field]
    assert props["priceSource"]["enum"] == ["LastTrade", "BestBidAsk"]
    assert props["priceSource"]["default"] == "LastTrade"
    for field in ("symbol", "side", "priceSource"):
        assert {"rule": "self == oldSelf",
                "message": f"{field} is immutable: delete the TrailingStop and create a new one"} in (
            props[field]["x-kubernetes-validations"])
    rules = spec["x-kubernetes-validations"]
    assert rules[:2] == [{
        "rule": "self.mode == 'Simulate' || has(self.credentialsSecretRef)",
        "message": "credentialsSecretRef is required unless mode is Simulate",
    }, {"rule": "has(self.trailingPercent) != has(self.trailingAmount)",
        "message": "exactly one of trailingPercent and trailingAmount must be set"}]
    assert rules[2]["message"] == MESSAGES["sellAmount"]
    assert "double(" not in rules[2]["rule"] and "int(" not in rules[2]["rule"]  # strings, exact


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


# --- the rules of issue 14's fields: the CRD and the contract agree ------------------------------------


def _amount_contract_accepts(value: str) -> bool:
    try:
        TrailingStopSpec.model_validate({"symbol": "BTCUSDT", "side": "BUY", "quantity": "1", "trailingAmount": value})
    except ValidationError:
        return False
    return True


@settings(max_examples=300, deadline=None)
@given(st.one_of(DECIMAL_TEXT, st.decimals(min_value=0, max_value=10 ** 6, places=10).map(str),
                 st.sampled_from(["0", "0.0", "1" * 20 + "." + "1" * 20, "1" * 21, "0." + "0" * 19 + "1"])))
def test_crd_and_contract_accept_the_same_amounts(value: str) -> None:
    props = _schema("spec")["properties"]["trailingAmount"]
    assert _crd_accepts(props, value) == _amount_contract_accepts(value)


def _slippage_contract_accepts(value: str) -> bool:
    try:
        Execution.model_validate({"type": "Limit", "maxSlippagePercent": value})
    except ValidationError:
        return False
    return True


@settings(max_examples=300, deadline=None)
@given(st.one_of(DECIMAL_TEXT, st.sampled_from(["0", "00", "0.0", "99.99999999", "100", "0.123456789"])))
def test_crd_and_contract_accept_the_same_slippage(value: str) -> None:
    props = _schema("spec")["properties"]["execution"]["properties"]["maxSlippagePercent"]
    crd_accepts = re.fullmatch(_cel_pattern(props).strip("^$"), value) is not None and len(value) <= props["maxLength"]
    assert crd_accepts == _slippage_contract_accepts(value)


TIMES = st.one_of(
    st.datetimes(timezones=st.just(UTC)).map(lambda t: t.isoformat().replace("+00:00", "Z")),
    st.from_regex(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,10})?(Z|z|[+-][0-9]{2}:[0-9]{2})?",
                  fullmatch=True),
    st.sampled_from(["2026-12-31T23:59:59Z", "2026-02-29T00:00:00Z", "2028-02-29T00:00:00Z", "2026-12-31 23:59:59Z",
                     "2026-12-31T23:59:60Z", "2026-12-31T24:00:00Z", "2026-12-31T23:59:59+24:00"]),
)


@settings(max_examples=300, deadline=None)
@given(TIMES)
def test_crd_and_contract_accept_the_same_times(value: str) -> None:
    """The CRD's pattern plus CEL's timestamp() (a real calendar day) against the contract's."""
    props = _schema("spec")["properties"]["expiresAt"]
    crd_accepts = (re.fullmatch(_cel_pattern(props).strip("^$"), value) is not None
                   and len(value) <= props["maxLength"] and _is_a_calendar_day(value))
    try:
        TrailingStopSpec.model_validate({"symbol": "BTCUSDT", "side": "BUY", "quantity": "1", "trailingPercent": "1",
                                         "expiresAt": value})
        contract_accepts = True
    except ValidationError:
        contract_accepts = False
    assert crd_accepts == contract_accepts


def _is_a_calendar_day(value: str) -> bool:
    try:
        date(int(value[:4]), int(value[5:7]), int(value[8:10]))
    except ValueError:
        return False
    return int(value[:4]) >= 1


def _padded_like_cel(text: str) -> str:
    """What the CRD's CEL rule builds from a decimal string (operator/crd.py _cel_padded)."""
    integer, _, fraction = text.partition(".")
    return "0" * (20 - len(integer)) + integer + fraction + "0" * (20 - len(fraction))


PRICES_TEXT = st.one_of(
    st.decimals(min_value=Decimal("0.00000000000000000001"), max_value=Decimal("99999999999999999999"),
                places=20).map(lambda d: format(d, "f")),
    st.from_regex(r"0{0,3}[1-9][0-9]{0,4}(\.[0-9]{1,6})?", fullmatch=True),
)


@settings(max_examples=500, deadline=None)
@given(PRICES_TEXT, PRICES_TEXT)
def test_the_crd_compares_a_sells_activation_and_amount_exactly(activation: str, amount: str) -> None:
    rule = _schema("spec")["x-kubernetes-validations"][2]["rule"]
    assert "'00000000000000000000'.substring(size(self.activationPrice.split('.')[0]))" in rule
    assert (_padded_like_cel(activation) > _padded_like_cel(amount)) == (Decimal(activation) > Decimal(amount))
