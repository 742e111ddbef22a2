"""Fuzzing what users hand to ``run`` and ``backtest``: manifests and trade files (issue 11).

Random bytes, random YAML structure, and mutations of good manifests, CSV rows and JSON trades go
through the readers. Only :class:`ManifestError` / :class:`TradeFileError` may come out, each one
short line; anything else (a traceback a user would see) fails the test. Example counts are
bounded so this stays a few seconds of the unit suite; ``FUZZ_EXAMPLES=2000`` runs it harder.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trailingstop.cli import main
from trailingstop.core.trade import Trade
from trailingstop.stopfiles import ManifestError, load_manifests
from trailingstop.tradefiles import TradeFileError, load_trades

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "60"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                             HealthCheck.too_slow])
MAX_MESSAGE = 1000

GOOD_MANIFEST = """\
apiVersion: trailingstop.dev/v1
kind: TrailingStop
metadata:
  name: btc-protect
  namespace: trading
spec:
  symbol: BTCUSDT
  side: SELL
  quantity: "0.001"
  trailingPercent: "1.5"
  activationPrice: "65000"
  mode: Simulate
"""
GOOD_ROW = "13519807,0.00141342,23.00000000,15373518,15373518,1570752011620,True,True"
GOOD_PAYLOAD: dict[str, Any] = {"a": 26129, "p": "0.01633102", "q": "4.70443515", "f": 27781, "l": 27781,
                                "T": 1498793709153, "m": True, "M": True}

# Pieces that have broken parsers before: YAML indicators, anchors, tags, numbers at the edges.
YAML_PIECES = ["&a ", "*a", "<<: *a\n", "!!binary ", "!!python/object ", "? ", "- ", ": ", "{", "}", "[", "]",
               "'", '"', "#", "---\n", "...\n", "\t", "\x00", "\ufeff", "\u2028", "9" * 5000, "2024-13-45", "1e999",
               ".nan", "~", "yes", "0x1F", "0o17", "1_000", "spec:", "kind: List\nitems:\n", "  ", "\n"]
CSV_PIECES = ["", "-1", "1e5", "NaN", "Infinity", "0", "0.0", "9" * 30, "\u0661\u0660", " 1", "1 ", "true", "maybe",
              '"', '"1,2"', "\x00", "253402300800000000", "99999999999999999999.999999999999999999999", "\xe9"]


def one_line(message: str) -> None:
    assert "\n" not in message and len(message) < MAX_MESSAGE, message


def load_manifest_text(folder: Path, data: bytes) -> None:
    path = folder / "fuzz.yaml"
    path.write_bytes(data)
    try:
        load_manifests(path)
    except ManifestError as error:  # printed as one line, or one line per problem of an object
        for line in (error.where, *error.problems):
            one_line(line)


def load_trade_bytes(folder: Path, name: str, data: bytes) -> list[Trade]:
    path = folder / name
    path.write_bytes(data)
    try:
        return load_trades(path)
    except TradeFileError as error:
        one_line(str(error))
        return []


def mutate(text: str, edits: list[tuple[int, int, str]]) -> str:
    """Apply (position, delete count, insertion) edits, positions taken modulo the length."""
    for position, delete, insert in edits:
        at = position % (len(text) + 1)
        text = text[:at] + insert + text[at + delete:]
    return text


EDITS = st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 8), st.text(max_size=12)), max_size=6)
YAML_EDITS = st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 8), st.sampled_from(YAML_PIECES)),
                      min_size=1, max_size=6)
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20),
                    st.sampled_from(["TrailingStop", "trailingstop.dev/v1", "SELL", "BUY", "1", "0.001"]))
JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(10**25), 10**25),
                         st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20))
KEYS = st.sampled_from(["apiVersion", "kind", "metadata", "spec", "name", "namespace", "symbol", "side", "quantity",
                        "trailingPercent", "activationPrice", "mode", "items", "uid", "generation", "x"])
STRUCTURE = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    KEYS | st.text(max_size=8), inner, max_size=5), max_leaves=20)
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.text(max_size=4), inner, max_size=3), max_leaves=10)


# --- manifests ---------------------------------------------------------------------------------------


@FUZZ
@given(data=st.binary(max_size=3000))
def test_manifest_loader_on_random_bytes(tmp_path: Path, data: bytes) -> None:
    load_manifest_text(tmp_path, data)


@FUZZ
@given(documents=st.lists(STRUCTURE, min_size=1, max_size=3))
def test_manifest_loader_on_random_yaml_structure(tmp_path: Path, documents: list[Any]) -> None:
    load_manifest_text(tmp_path, yaml.safe_dump_all(documents).encode())


@FUZZ
@given(edits=YAML_EDITS)
def test_manifest_loader_on_mutated_manifests(tmp_path: Path, edits: list[tuple[int, int, str]]) -> None:
    load_manifest_text(tmp_path, mutate(GOOD_MANIFEST * 2, edits).encode("utf-8", "surrogatepass"))


@FUZZ
@given(fields=st.dictionaries(st.sampled_from(["symbol", "side", "quantity", "trailingPercent", "activationPrice",
                                               "mode", "credentialsSecretRef", "x"]), STRUCTURE, max_size=4))
def test_manifest_loader_on_random_spec_values(tmp_path: Path, fields: dict[str, Any]) -> None:
    document = yaml.safe_load(GOOD_MANIFEST)
    document["spec"].update(fields)
    load_manifest_text(tmp_path, yaml.safe_dump(document).encode())


# --- trade files -------------------------------------------------------------------------------------


@FUZZ
@given(data=st.binary(max_size=3000), name=st.sampled_from(["t.csv", "t.jsonl", "t.json", "t", "t.csv.gz", "t.zip"]))
def test_trade_readers_on_random_bytes(tmp_path: Path, data: bytes, name: str) -> None:
    load_trade_bytes(tmp_path, name, data)


@FUZZ
@given(cells=st.lists(st.tuples(st.integers(0, 7), st.sampled_from(CSV_PIECES) | st.text(max_size=10)), max_size=4),
       edits=EDITS, rows=st.integers(1, 4))
def test_trade_readers_on_mutated_csv(tmp_path: Path, cells: list[tuple[int, str]],
                                      edits: list[tuple[int, int, str]], rows: int) -> None:
    row = GOOD_ROW.split(",")
    for column, value in cells:
        row[column] = value
    text = mutate("\n".join([GOOD_ROW, ",".join(row)] * rows) + "\n", edits)
    trades = load_trade_bytes(tmp_path, "t.csv", text.encode("utf-8", "surrogatepass"))
    assert all(t.price > 0 and t.qty >= 0 and 0 <= t.time <= 253_402_300_799_999 for t in trades)


@FUZZ
@given(changes=st.dictionaries(st.sampled_from(["a", "p", "q", "f", "l", "T", "m", "M", "e", "data"]), JSON_VALUES,
                               max_size=3),
       layout=st.sampled_from(["jsonl", "json", "envelope"]))
def test_trade_readers_on_mutated_json(tmp_path: Path, changes: dict[str, Any], layout: str) -> None:
    payload = {**GOOD_PAYLOAD, **changes}
    if layout == "jsonl":
        data, name = (json.dumps(GOOD_PAYLOAD) + "\n" + json.dumps(payload) + "\n").encode(), "t.jsonl"
    elif layout == "json":
        data, name = json.dumps([GOOD_PAYLOAD, payload]).encode(), "t.json"
    else:
        data, name = json.dumps({"stream": "x@aggTrade", "data": payload}).encode(), "t.ndjson"
    load_trade_bytes(tmp_path, name, data)


@FUZZ
@given(cut=st.integers(0, 400), archive=st.sampled_from(["gz", "zip"]))
def test_trade_readers_on_truncated_archives(tmp_path: Path, cut: int, archive: str) -> None:
    text = ("\n".join([GOOD_ROW.replace("13519807", str(13519807 + i)) for i in range(40)]) + "\n").encode()
    if archive == "gz":
        data, name = gzip.compress(text), "t.csv.gz"
    else:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as packed:
            packed.writestr("t.csv", text)
        data, name = buffer.getvalue(), "t.zip"
    load_trade_bytes(tmp_path, name, data[: len(data) - cut])


# --- the command line ----------------------------------------------------------------------------------


@FUZZ
@given(flag=st.sampled_from(["--trailing-percent", "--activation-price", "--side"]),
       value=st.text(max_size=30).filter(lambda v: not v.startswith("-")))
def test_backtest_values_exit_0_or_2_with_one_line(capsys: pytest.CaptureFixture[str], flag: str, value: str) -> None:
    data = Path(__file__).parent / "data" / "worked_sell.csv"
    args = {"--trailing-percent": "1", "--activation-price": "none", "--side": "SELL", flag: value}
    try:
        code = main(["backtest", "--trades", str(data), *[x for pair in args.items() for x in pair], "--json"])
    except SystemExit as exit_:  # argparse refuses an unknown --side
        code = exit_.code  # type: ignore[assignment]
    err = capsys.readouterr().err
    assert code in (0, 2)
    if code == 2:
        assert err.count("\n") == 1 and err.startswith("error: ") and len(err) < MAX_MESSAGE, err


# --- the two ways safeyaml builds documents agree with PyYAML's safe_load --------------------------


def _built(text: str, path: str) -> list[Any]:
    from trailingstop import safeyaml

    loader = safeyaml._Loader(text)
    position = safeyaml._Position()
    try:
        if path == "events":
            return list(safeyaml._from_events(loader, position))
        return list(safeyaml._from_nodes(loader, position, anchors=path == "checked nodes"))
    finally:
        loader.dispose()


@FUZZ
@given(documents=st.lists(STRUCTURE, min_size=1, max_size=3), flow=st.booleans())
def test_events_and_nodes_build_what_safe_load_builds(documents: list[Any], flow: bool) -> None:
    text = yaml.safe_dump_all(documents, default_flow_style=flow)
    expected = list(yaml.safe_load_all(text))
    for path in ("events", "plain nodes", "checked nodes"):
        assert _built(text, path) == expected, path


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("a: 1\nb:\n  c: 2\n  c: 3\n", "b.c: key already set in this map (on line 3); kubectl refuses duplicate keys"),
        ("a:\n- {x: 1, x: 2}\n", "a[0].x: key already set in this map (on line 2); kubectl refuses duplicate keys"),
        ("n: " + "9" * 5000 + "\n", "n: cannot be read: Exceeds the limit (4300 digits) for integer string "
                                    "conversio... (140 characters)"),
        ("? [a]\n: 1\n", "the document: a key must be a string or a number, not a list"),
    ],
)
def test_events_and_nodes_refuse_alike(text: str, problem: str) -> None:
    from trailingstop.safeyaml import YamlProblem

    for path in ("events", "plain nodes", "checked nodes"):
        with pytest.raises(YamlProblem) as caught:
            _built(text, path)
        assert caught.value.problem == problem, path
