"""The one settings model: names, aliases, errors that name the variable, the generated docs table."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from trailingstop import settings as settings_module
from trailingstop.cli import main
from trailingstop.exchange.binance import BinanceSettings
from trailingstop.operator.config import OperatorConfig
from trailingstop.settings import Settings, SettingsError, env_names, load_settings, markdown_table

REPO = Path(__file__).resolve().parents[2]


def test_every_setting_is_trailingstop_name_first_and_the_old_names_still_work() -> None:
    for field in Settings.model_fields:
        assert env_names(field)[0] == f"TRAILINGSTOP_{field.upper()}"
    old = load_settings({"AMQP_URL": "amqp://u:p@broker/", "WATCH_NAMESPACES": "a, b", "POD_NAMESPACE": "ops",
                         "BINANCE_API_KEY": "k" * 16, "WATCH_ALL_NAMESPACES": "true"})
    assert (old.amqp, old.namespaces, old.pod_namespace, old.watch_all_namespaces) == (
        "amqp://u:p@broker/", ("a", "b"), "ops", True)
    assert old.binance_api_key is not None and old.binance_api_key.get_secret_value() == "k" * 16
    both = load_settings({"AMQP_URL": "amqp://old/", "TRAILINGSTOP_AMQP_URL": "amqp://new/"})
    assert both.amqp == "amqp://new/"


@pytest.mark.parametrize("variable,value,expected", [
    ("TRAILINGSTOP_FLUSH_INTERVAL", "1s", "a number (> 0), got '1s'"),
    ("TRAILINGSTOP_FLUSH_INTERVAL", "nan", "a number (> 0), got 'nan'"),
    ("TRAILINGSTOP_STATUS_INTERVAL", "inf", "a number (> 0), got 'inf'"),
    ("TRAILINGSTOP_MAX_GAP", "-1", "a whole number (>= 0), got '-1'"),
    ("TRAILINGSTOP_HEALTH_PORT", "70000", "a whole number (>= 0, <= 65535), got '70000'"),
    ("TRAILINGSTOP_BROKER_ADMIN", "magic", "one of 'management-api', 'topology-operator', got 'magic'"),
    ("TRAILINGSTOP_WORKER_ENV", "[1]", "a JSON object of strings, got '[1]'"),
    ("TRAILINGSTOP_WORKER_ENV", '{"A": 1}', "a JSON object of strings, got '{\"A\": 1}'"),
    ("TRAILINGSTOP_WORKER_RESOURCES", "{", "a JSON object, got '{'"),
    ("WATCH_ALL_NAMESPACES", "maybe", "true or false, got 'maybe'"),
    ("TRAILINGSTOP_LOG_FORMAT", "xml", "one of 'json', 'text', got 'xml'"),
])
def test_a_bad_value_is_one_line_naming_the_variable_and_what_it_must_be(
    variable: str, value: str, expected: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({variable: value})
    assert str(caught.value) == f"{variable} must be {expected}"


def test_a_bad_secret_is_named_but_never_shown() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({"AMQP_URL": 12345})  # type: ignore[dict-item]
    assert "AMQP_URL" in str(caught.value) and "12345" not in str(caught.value)


def test_the_roles_views_come_from_the_one_model() -> None:
    env = {"AMQP_URL": "amqp://a:b@h/", "TRAILINGSTOP_BINANCE_API_URL": "http://x/api", "POD_NAMESPACE": "ops",
           "TRAILINGSTOP_WORKER_ENV": '{"A": "1"}', "TRAILINGSTOP_STATUS_INTERVAL": "2"}
    one = load_settings(env)
    config = OperatorConfig.from_settings(one, standalone=None)
    assert (config.amqp_url, config.namespaces, config.worker_env, config.status_interval, config.instance) == (
        "amqp://a:b@h/", ("ops",), {"A": "1"}, 2.0, "ops.trailingstop")
    assert BinanceSettings.from_settings(one, "Testnet").api_url == "http://x/api"
    assert BinanceSettings.from_settings(load_settings({}), "Testnet").api_url == "https://testnet.binance.vision/api"


def test_trailingstop_config_prints_every_setting_with_secrets_masked(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AMQP_URL", "amqp://worker:s3cr3t-pw@broker:5672/vhost")
    monkeypatch.setenv("BINANCE_API_KEY", "key-that-must-not-show")
    monkeypatch.setenv("TRAILINGSTOP_FLUSH_INTERVAL", "0.25")
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    assert "s3cr3t-pw" not in out and "key-that-must-not-show" not in out
    assert "amqp://worker:***@broker:5672/vhost" in out and "(set)" in out
    assert re.search(r"^TRAILINGSTOP_FLUSH_INTERVAL +1\.0 +0\.25 +orchestrator$", out, re.M)
    assert len(out.splitlines()) == len(Settings.model_fields) + 1


def test_trailingstop_config_refuses_bad_settings_in_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRAILINGSTOP_SYNC_TIMEOUT", "soon")
    assert main(["config"]) == 2
    assert capsys.readouterr().err == "error: TRAILINGSTOP_SYNC_TIMEOUT must be a number (> 0), got 'soon'\n"


def test_the_docs_table_is_generated_from_the_model() -> None:
    """docs/SETTINGS.md holds `trailingstop config --markdown`: regenerate it when this fails."""
    text = (REPO / "docs" / "SETTINGS.md").read_text()
    assert markdown_table() in text, "docs/SETTINGS.md drifted: trailingstop config --markdown"


def test_every_trailingstop_variable_the_code_or_chart_sets_is_a_setting() -> None:
    """A variable the chart, the operator's builders or any module names must be in the model
    (and so in the docs): none reads the environment on its own any more."""
    known = {name for field in Settings.model_fields for name in env_names(field)}
    sources = [*(REPO / "trailingstop").rglob("*.py"), *(REPO / "charts").rglob("*.yaml"),
               *(REPO / "charts").rglob("*.tpl")]
    named = set()
    for path in sources:
        named |= set(re.findall(r"\bTRAILINGSTOP_[A-Z][A-Z_]*[A-Z]\b", path.read_text()))
    assert named - known == set()


def test_no_module_but_settings_reads_the_environment() -> None:
    readers = [path.relative_to(REPO) for path in (REPO / "trailingstop").rglob("*.py")
               if re.search(r"os\.environ|os\.getenv", path.read_text())]
    allowed = {
        Path("trailingstop/operator/kube.py"),  # KUBERNETES_SERVICE_HOST: the in-cluster client's own
        Path("trailingstop/history.py"),  # XDG_CACHE_HOME: where every tool caches, not ours to rename
        Path("trailingstop/settings.py"),
    }
    assert set(readers) <= allowed, readers
    assert settings_module.PREFIX == "TRAILINGSTOP_"
