"""Every setting of every role, in one model read from the environment (pydantic-settings).

One scheme: each setting is the environment variable ``TRAILINGSTOP_<NAME>``. A few also answer to
the name the chart and users set before there was a scheme (``AMQP_URL``, ``BINANCE_API_KEY``,
``WATCH_NAMESPACES``, ...); where both are set, the ``TRAILINGSTOP_`` one wins. ``trailingstop
config`` prints every setting with its default and current value, and docs/SETTINGS.md is that
table (a test keeps them equal).

A bad value is refused with the variable's name and what it should be: load the settings with
:func:`load_settings`, which raises :class:`SettingsError` (one line per problem) instead of
pydantic's report. The roles read what they need from the one :class:`Settings` object; the
operator's, Binance's and the history downloader's views are small dataclasses built from it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from contextvars import ContextVar
from typing import Any, Literal

import pydantic_settings
from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

from trailingstop import __version__

PREFIX = "TRAILINGSTOP_"
DEFAULT_IMAGE = f"ghcr.io/trailingstop/trailingstop:{__version__}"
DEFAULT_WORKER_RESOURCES: dict[str, Any] = {
    "requests": {"cpu": "50m", "memory": "96Mi"},
    "limits": {"cpu": "1", "memory": "256Mi"},
}
LIVE_API_URL = "https://api.binance.com/api"
LIVE_STREAM_URL = "wss://stream.binance.com:9443/"
TESTNET_API_URL = "https://testnet.binance.vision/api"
TESTNET_STREAM_URL = "wss://stream.testnet.binance.vision/"
DEFAULT_DATA_URL = "https://data.binance.vision"

# Which processes read a setting (the docs table's ROLES column).
ALL = "all"
WORKERS = "marketdata, orchestrator, executor"


def _setting(default: Any, description: str, roles: str, *aliases: str, secret: bool = False, **constraints: Any
             ) -> Any:
    """A field read from ``TRAILINGSTOP_<NAME>`` (the name is filled in by :class:`Settings`) and
    from the older ``aliases``."""
    extra: dict[str, Any] = {"roles": roles, "aliases": list(aliases), "secret": secret}
    return Field(default, description=description, json_schema_extra=extra, **constraints)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", frozen=True, validate_default=True, case_sensitive=True,
                                      populate_by_name=True, allow_inf_nan=False)

    # --- every process ------------------------------------------------------------------------------
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = _setting("INFO", "log level", ALL)
    log_format: Literal["json", "text"] = _setting("json", "json: one JSON object per line; text: for people", ALL)
    tracing: Literal["off", "on", "otlp", "console"] = _setting(
        "off", "OpenTelemetry: otlp (exports with the standard OTEL_EXPORTER_OTLP_* settings), console "
        "(prints spans), on (trace ids in logs and AMQP headers only) or off", ALL)
    health_port: int = _setting(8080, "port of /livez, /readyz and /metrics (0: any free port)", ALL, ge=0, le=65535)
    amqp_url: SecretStr = _setting(
        SecretStr("amqp://guest:guest@127.0.0.1:5672/"),
        "the broker's AMQP URL: for the operator its own account, for a worker its namespace's tenant "
        "(the ts-amqp Secret)", f"operator, {WORKERS}", "AMQP_URL", secret=True)

    # --- workers ---------------------------------------------------------------------------------------
    flush_interval: float = _setting(1.0, "seconds: reference and price events are coalesced this long",
                                     "orchestrator", gt=0)
    sync_timeout: float = _setting(10.0, "seconds to wait for the operator's answer to a sync request at start "
                                   "before asking again (no tick is applied until it answers)",
                                   "orchestrator", gt=0)
    max_gap: int = _setting(1_000_000, "at most this many missing trades are refilled over REST", "orchestrator",
                            ge=0)
    tick_queue_max: int = _setting(10_000, "the tick queue keeps the newest this many ticks", "orchestrator", ge=1)
    silence_timeout: float = _setting(30.0, "seconds without a WebSocket message before REST is checked",
                                      "marketdata", gt=0)

    # --- Binance -----------------------------------------------------------------------------------------
    binance_api_url: str = _setting(
        "", "REST base URL; empty: Binance's (Testnet's for a Testnet executor). For a private endpoint or a "
        "test server", WORKERS)
    binance_stream_url: str = _setting(
        "", "WebSocket base URL; empty: Binance's (Testnet's for Testnet)", WORKERS)
    binance_timeout: float = _setting(10.0, "seconds per REST request", WORKERS, gt=0)
    binance_api_key: SecretStr | None = _setting(
        None, "API key (Testnet/Live executors; from the credentials Secret)", "executor", "BINANCE_API_KEY",
        secret=True)
    binance_api_secret: SecretStr | None = _setting(
        None, "API secret (Testnet/Live executors; from the credentials Secret)", "executor", "BINANCE_API_SECRET",
        secret=True)
    credentials_dir: str = _setting(
        "", "the credentials Secret mounted as files (apiKey, apiSecret); when they no longer match the keys "
        "the executor started with, it finishes and exits so its container starts again with the new keys "
        "(empty: not watched)", "executor")
    credentials_check_interval: float = _setting(
        10.0, "seconds between looks at TRAILINGSTOP_CREDENTIALS_DIR", "executor", gt=0)

    # --- the operator ------------------------------------------------------------------------------------
    watch_namespaces: str = _setting(
        "", "comma-separated namespaces to watch (default: the operator's own)", "operator", "WATCH_NAMESPACES")
    watch_all_namespaces: bool = _setting(False, "watch every namespace", "operator", "WATCH_ALL_NAMESPACES")
    pod_namespace: str = _setting("default", "the operator's own namespace (the chart sets it from the pod)",
                                  "operator", "POD_NAMESPACE")
    instance: str = _setting(
        "", "this release on the broker: the namespaces' vhosts and users are ts.<instance>.<namespace> "
        "(default: <pod namespace>.trailingstop; the chart: <release namespace>.<release>)", "operator")
    status_interval: float = _setting(
        5.0, "seconds: at most one reference/price status write per TrailingStop per interval", "operator", gt=0)
    broker_admin: Literal["management-api", "topology-operator"] = _setting(
        "management-api", "how namespaces' broker tenants are made", "operator")
    rabbitmq_management_url: str = _setting(
        "", "management API URL without credentials (default: http://<AMQP host>:15672)", "operator")
    rabbitmq_cluster: str = _setting(
        "", "topology-operator: the RabbitmqCluster (operator's namespace) the tenants' objects refer to", "operator")
    rabbitmq_connection_secret: str = _setting(
        "", "topology-operator: a Secret (operator's namespace) with the broker's uri/username/password, instead "
        "of a RabbitmqCluster", "operator")
    leader_election: bool = _setting(
        True, "take the Lease before working, so of several replicas one works and another stands by",
        "operator")
    lease_name: str = _setting("trailingstop-operator", "the Lease (operator's namespace) the replicas compete for",
                               "operator")
    lease_duration: float = _setting(15.0, "seconds a Lease not renewed stays the old leader's", "operator", gt=0)
    lease_renew: float = _setting(5.0, "seconds between the leader's renewals", "operator", gt=0)
    legacy_queue_grace: float = _setting(
        300.0, "seconds a drained queue of the pre-tenancy layout stays quiet before it is deleted", "operator", ge=0)
    worker_image: str = _setting(DEFAULT_IMAGE, "image of the worker pods", "operator")
    worker_image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = _setting(
        "IfNotPresent", "pull policy of the worker pods", "operator")
    worker_resources: dict[str, Any] = _setting(
        DEFAULT_WORKER_RESOURCES, "resources of every worker container (a JSON object)", "operator")
    worker_env: dict[str, str] = _setting(
        {}, "more environment of every worker container (a JSON object of strings); no secrets here", "operator")
    worker_service_account: str = _setting("", "ServiceAccount of the worker pods (none: no token)", "operator")
    worker_tolerations: list[dict[str, Any]] = _setting([], "tolerations of the worker pods (a JSON list)", "operator")
    worker_affinity: dict[str, Any] = _setting({}, "affinity of the worker pods (a JSON object)", "operator")
    worker_node_selector: dict[str, str] = _setting({}, "nodeSelector of the worker pods (a JSON object)",
                                                    "operator")
    worker_priority_class: str = _setting("", "priorityClassName of the worker pods", "operator")
    worker_image_pull_secrets: list[str] = _setting([], "imagePullSecrets of the worker pods (a JSON list of "
                                                        "Secret names, in each watched namespace)", "operator")
    worker_pod_annotations: dict[str, str] = _setting({}, "more annotations of the worker pods (a JSON object)",
                                                      "operator")
    worker_disruption_budget: bool = _setting(
        False, "a PodDisruptionBudget (minAvailable 1) per worker Deployment: a node drain then waits until you "
        "move the pod yourself", "operator")
    worker_rollout_batch: int = _setting(
        3, "how many worker Deployments may restart at once for a changed pod template (after an upgrade), "
        "each until its new pod is available", "operator", ge=1)
    worker_rollout_timeout: float = _setting(
        180.0, "seconds a restarting worker may hold its rollout slot before the next one goes", "operator", gt=0)
    executor_network_policy: bool = _setting(
        True, "a NetworkPolicy per executor (it holds the Binance keys): egress only to DNS and "
        "TRAILINGSTOP_EXECUTOR_EGRESS_PORTS, ingress only to its health port", "operator")
    executor_egress_ports: list[int] = _setting(
        [443, 5671, 5672], "the TCP ports an executor may connect to (a JSON list): the exchange's and the "
        "broker's", "operator")
    stop_metrics: bool = _setting(
        False, "per-stop price gauges (trailingstop_stop_price): one series per stop and kind", "operator")

    # --- history (run/backtest --date/--month) ---------------------------------------------------------
    data_url: str = _setting(DEFAULT_DATA_URL, "Binance public-data host (--data-url wins)", "cli")
    data_parallel: int = _setting(4, "files downloaded at once", "cli", ge=1)
    data_timeout: float = _setting(30.0, "seconds without a byte before a download is retried", "cli", gt=0)
    data_connect_timeout: float = _setting(10.0, "seconds to connect to the data host", "cli", gt=0)
    data_retries: int = _setting(4, "retries after a download's first attempt", "cli", ge=0)
    data_retry_delay: float = _setting(0.5, "seconds before the first retry, doubling, at most 8", "cli", ge=0)

    @model_validator(mode="after")
    def _one_topology_reference(self) -> Settings:
        if self.broker_admin == "topology-operator" and bool(self.rabbitmq_cluster) == bool(
            self.rabbitmq_connection_secret
        ):
            raise ValueError(
                "TRAILINGSTOP_BROKER_ADMIN=topology-operator needs exactly one of TRAILINGSTOP_RABBITMQ_CLUSTER "
                "(a RabbitmqCluster) or TRAILINGSTOP_RABBITMQ_CONNECTION_SECRET (a Secret with uri, username, "
                "password), in the operator's namespace"
            )
        return self

    @field_validator("log_level", "tracing", mode="before")
    @classmethod
    def _case_blind(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        return value.upper() if value.lower() in ("debug", "info", "warning", "error") else value.lower()

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        environ = _ENVIRON.get()
        return init_settings, (env_settings if environ is None else _MappingSource(settings_cls, environ))

    # --- derived -----------------------------------------------------------------------------------------

    @property
    def amqp(self) -> str:
        return self.amqp_url.get_secret_value()

    @property
    def namespaces(self) -> tuple[str, ...]:
        return tuple(name.strip() for name in self.watch_namespaces.split(",") if name.strip())

    @property
    def instance_name(self) -> str:
        return self.instance or f"{self.pod_namespace}.trailingstop"


def _extra(info: FieldInfo) -> dict[str, Any]:
    return info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}


def _with_env_names() -> None:
    """Give every field its variable names: TRAILINGSTOP_<NAME> first, then its older aliases."""
    for name, info in Settings.model_fields.items():
        aliases = [str(alias) for alias in _extra(info).get("aliases") or []]
        info.validation_alias = AliasChoices(PREFIX + name.upper(), *aliases)
    Settings.model_rebuild(force=True)


_with_env_names()


class SettingsError(ValueError):
    """Settings that cannot be used; one line per variable, naming it and what it should be."""


def load_settings(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """The settings from ``environ`` (default: the process environment) and ``overrides`` (e.g.
    command-line options, by field name)."""
    token = _ENVIRON.set(environ)
    seen = os.environ if environ is None else environ
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        raise SettingsError("; ".join(_describe(exc, seen))) from None
    except pydantic_settings.SettingsError as exc:  # a JSON setting that is not JSON at all
        field = next((f for f in Settings.model_fields if f'"{f}"' in str(exc)), None)
        if field is None:
            raise
        variable = _variable_set(field, seen)
        raise SettingsError(f"{variable} must be {_expected(field)}, got {seen.get(variable)!r:.60}") from None
    finally:
        _ENVIRON.reset(token)


def env_names(field: str) -> list[str]:
    """The variables a setting answers to, the ``TRAILINGSTOP_`` one first."""
    alias = Settings.model_fields[field].validation_alias
    assert isinstance(alias, AliasChoices)
    return [str(choice) for choice in alias.choices]


def secret_env_names() -> list[str]:
    return [name for field, info in Settings.model_fields.items() if _extra(info).get("secret")
            for name in env_names(field)]


def _describe(exc: ValidationError, seen: Mapping[str, str]) -> list[str]:
    lines = []
    for error in exc.errors(include_url=False):
        if not error["loc"]:  # a rule over several settings says which itself
            lines.append(str(error["msg"]).removeprefix("Value error, "))
            continue
        variable = str(error["loc"][0])
        field = _field_of(variable)
        if field is not None:
            variable = _variable_set(field, seen)
        value = seen.get(variable, error.get("input"))
        secret = field is not None and _extra(Settings.model_fields[field]).get("secret")
        shown = "" if secret else f", got {value!r:.60}"
        expected = _expected(field) if field is not None else error["msg"]
        lines.append(f"{variable} must be {expected}{shown}")
    return lines


def _variable_set(field: str, seen: Mapping[str, str]) -> str:
    """The variable the user set for ``field`` (the one that won), or its TRAILINGSTOP_ name."""
    return next((name for name in env_names(field) if name in seen), env_names(field)[0])


def _field_of(variable: str) -> str | None:
    for field in Settings.model_fields:
        if variable == field or variable in env_names(field):
            return field
    return None


def _expected(field: str) -> str:
    info = Settings.model_fields[field]
    annotation = str(info.annotation)
    bounds = [f"{word} {getattr(m, attr)}" for m in info.metadata
              for attr, word in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")) if hasattr(m, attr)]
    bound = f" ({', '.join(bounds)})" if bounds else ""
    if annotation.startswith("typing.Literal"):
        return "one of " + ", ".join(repr(v) for v in info.annotation.__args__)  # type: ignore[union-attr]
    kinds = {"<class 'float'>": "a number", "<class 'int'>": "a whole number", "<class 'bool'>": "true or false",
             "dict[str, typing.Any]": "a JSON object", "dict[str, str]": "a JSON object of strings"}
    return kinds.get(annotation, "a string") + bound


# --- the table of every setting (trailingstop config, docs/SETTINGS.md) ---------------------------------


def rows(current: Settings | None = None) -> Iterable[tuple[str, str, str, str, str]]:
    """(variables, default, current value or "", roles, description) of every setting; secrets masked."""
    for field, info in Settings.model_fields.items():
        extra = _extra(info)
        names = env_names(field)
        variables = names[0] + (f" (or {', '.join(names[1:])})" if names[1:] else "")
        default = _shown(info.default, bool(extra.get("secret")))
        value = "" if current is None else _shown(getattr(current, field), bool(extra.get("secret")))
        yield variables, default, value, str(extra.get("roles", "")), str(info.description or "")


def _shown(value: Any, secret: bool) -> str:
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if value is None or value == "":
        return ""
    if secret:
        return "(set)" if not str(value).startswith("amqp") else _masked_url(str(value))
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"))
    return str(value).lower() if isinstance(value, bool) else str(value)


def _masked_url(url: str) -> str:
    head, at, tail = url.partition("@")
    if not at or ":" not in head.split("//", 1)[-1]:
        return url
    return f"{head.rsplit(':', 1)[0]}:***@{tail}"


def markdown_table() -> str:
    """docs/SETTINGS.md's table (defaults only: it is the same on every machine)."""
    lines = ["| variable | default | read by | what |", "|---|---|---|---|"]
    for variables, default, _, roles, description in rows():
        names = " ".join(f"`{name}`" for name in variables.replace(" (or ", ", ").rstrip(")").split(", "))
        lines.append(f"| {names} | {f'`{default}`' if default else ''} | {roles} | {description} |")
    return "\n".join(lines) + "\n"


_ENVIRON: ContextVar[Mapping[str, str] | None] = ContextVar("trailingstop_settings_environ", default=None)


class _MappingSource(EnvSettingsSource):
    """Variables from a given mapping instead of the process environment (tests, tools)."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._given = dict(environ)
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return self._given
