"""The router's settings, declared once: each field is a flag, an environment variable and a
key of the TOML config file.

A field reads::

    replicas: Count = setting(1, "JetStream replicas of ...", env="IPC_REPLICAS")

and that one line gives ``--replicas`` (the field name in kebab case, or ``flag=``), the
variable ``IPC_REPLICAS``, the file key ``replicas``, the help text and the validation.
``config.py`` builds the command line from these fields and merges the sources with
pydantic-settings: flag > environment > file > default.
"""

from __future__ import annotations

from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BeforeValidator, Field, PositiveInt
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from ipc_client_sdk.protocol import CREDENTIAL_ENV_VARS, DEFAULT_PREFIX, validate_prefix
from ipc_router.infrastructure.jetstream_setup import DEFAULT_LEASE_TTL, StorageLimits
from ipc_router.infrastructure.sizes import format_size, parse_size

DEFAULT_DATA_DIR = Path(".ipc")
DEFAULT_EMBEDDED_PORT = 4222
DEFAULT_METRICS_HOST = "127.0.0.1"

LIMITS = "storage limits"
CREDENTIALS = "NATS credentials"
METRICS = "metrics and health probes"
GROUP_HELP = {
    METRICS: "An HTTP port serving /metrics (Prometheus), /healthz and /readyz.",
    LIMITS: "Caps on the router's JetStream streams and buckets; sizes in bytes or with a "
    "unit (512MiB, 2GiB; KB/MB/GB are powers of 1000). Their sum is reserved in JetStream "
    "and must fit nats-server's max_file_store.",
    CREDENTIALS: "At most one identity (NKey, .creds, user and password, or token), plus "
    "TLS. The help never shows a value; a password or token in the config file must be "
    "readable by its owner only (a warning says so otherwise).",
}


def _size(value: Any) -> Any:
    return parse_size(value) if isinstance(value, str) else value


def _upper(value: Any) -> Any:
    return value.upper() if isinstance(value, str) else value


def _prefix(value: Any) -> Any:
    return validate_prefix(value) if isinstance(value, str) else value


Size = Annotated[PositiveInt, BeforeValidator(_size)]
"""Bytes: a whole number, or a string with a unit (``"512MiB"``)."""
Count = PositiveInt
Port = Annotated[int, Field(ge=1, le=65535)]
Seconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Prefix = Annotated[str, BeforeValidator(_prefix)]
LogLevel = Annotated[Literal["DEBUG", "INFO", "WARNING", "ERROR"], BeforeValidator(_upper)]


def setting(
    default: Any,
    help: str,
    *,
    env: str,
    flag: str | None = None,
    metavar: str | None = None,
    group: str | None = None,
    secret: bool = False,
    **constraints: Any,
) -> Any:
    """One router setting.

    Args:
        default: its value when no flag, variable or file key gives one.
        help: the ``--help`` text (the variable and the default are appended).
        env: its environment variable.
        flag: its flag, when not ``--`` and the field name in kebab case.
        metavar: the value's name in ``--help``.
        group: the ``--help`` section it is listed in.
        secret: a value never shown, and worth a warning in a file others can read.
        constraints: pydantic ``Field`` constraints (``ge=``, ``le=``).
    """
    extra = {"flag": flag, "metavar": metavar, "group": group, "secret": secret}
    return Field(
        default,
        description=help,
        validation_alias=AliasChoices(env),
        json_schema_extra={k: v for k, v in extra.items() if v},
        **constraints,
    )


def _limit(help: str, env: str) -> Any:
    return setting(None, help, env=env, group=LIMITS)


def _credential(help: str, name: str, metavar: str = "FILE") -> Any:
    """A ``Credentials`` setting, with the variable the SDK and ``ipc`` read too."""
    secret = metavar == "SECRET"
    env = CREDENTIAL_ENV_VARS[name]
    return setting(None, help, env=env, metavar=metavar, group=CREDENTIALS, secret=secret)


CONFIG_FILE: ContextVar[Path | None] = ContextVar("CONFIG_FILE", default=None)
"""The TOML file ``RouterSettings`` reads, set by ``config.load_settings`` around it."""


class RouterSettings(BaseSettings):
    """Every ``ipc-router`` setting, with its flag, variable and file key."""

    model_config = SettingsConfigDict(
        extra="forbid", populate_by_name=True, env_ignore_empty=True, frozen=True
    )

    nats_url: str | None = setting(
        None,
        "NATS server URL(s), comma-separated; unset: run the bundled nats-server",
        env="IPC_NATS_URL",
        metavar="URL",
    )
    prefix: Prefix = setting(
        DEFAULT_PREFIX, "subject prefix (default: the --auth-dir's)", env="IPC_SUBJECT_PREFIX"
    )
    auth_dir: Path | None = setting(
        None,
        "an 'ipc auth init' folder: connect as its router.nk, and run the embedded "
        "nats-server with its identities and permissions and at its address",
        env="IPC_AUTH_DIR",
        metavar="DIR",
    )
    router_id: str = setting("", "this router's id; default: generated", env="IPC_ROUTER_ID")
    data_dir: Path = setting(
        DEFAULT_DATA_DIR, "embedded nats-server data folder", env="IPC_DATA_DIR"
    )
    embedded_host: str = setting(
        "127.0.0.1",
        "embedded nats-server address (default: the --auth-dir's)",
        env="IPC_EMBEDDED_HOST",
    )
    embedded_port: Count = setting(
        DEFAULT_EMBEDDED_PORT,
        "embedded nats-server client port (default: the --auth-dir's)",
        env="IPC_EMBEDDED_PORT",
    )
    replicas: Count = setting(
        1,
        "JetStream replicas of the router's streams and buckets (3 on a 3-node cluster)",
        env="IPC_REPLICAS",
    )
    connect_timeout: Seconds = setting(
        5.0, "seconds to reach NATS at start", env="IPC_CONNECT_TIMEOUT"
    )
    heartbeat_timeout: Seconds = setting(
        1.5,
        "seconds without a heartbeat before an instance is unhealthy and its roles fail "
        "over; instances fence themselves after 0.8 of it (0.3 to 60)",
        env="IPC_HEARTBEAT_TIMEOUT",
        ge=0.3,
        le=60,
    )
    call_ack_wait: Seconds = setting(
        1.0,
        "seconds before a call taken by a router that died is delivered again; calls in "
        "hand longer are kept alive",
        env="IPC_CALL_ACK_WAIT",
    )
    standby_routing: Literal["on", "off"] = setting(
        "on",
        "whether standby routers route calls too, from their copy of the routing table "
        "(routing capacity grows with the routers; what a standby cannot route at once it "
        "leaves to the leader)",
        env="IPC_STANDBY_ROUTING",
    )
    lease_ttl: Seconds = setting(
        DEFAULT_LEASE_TTL,
        "seconds the router leadership lease lives without renewal: a standby leads about "
        "this long after the leader dies. Set when the leases bucket is created (0.5 to 60)",
        env="IPC_LEASE_TTL",
        ge=0.5,
        le=60,
    )
    log_level: LogLevel = setting("INFO", "log level", env="IPC_LOG_LEVEL")
    log_format: Literal["text", "json"] = setting(
        "text", "log lines as text, or one JSON object per line", env="IPC_LOG_FORMAT"
    )
    metrics_port: Port | None = setting(
        None,
        "serve /metrics, /healthz and /readyz on this port (default: off)",
        env="IPC_METRICS_PORT",
        metavar="PORT",
        group=METRICS,
    )
    metrics_host: str = setting(
        DEFAULT_METRICS_HOST,
        "address of the metrics port: this machine only by default; 0.0.0.0 in a container",
        env="IPC_METRICS_HOST",
        metavar="HOST",
        group=METRICS,
    )

    calls_max_bytes: Size | None = _limit(
        "the calls stream; full: a new call is refused (the caller gets StoreFullError), "
        "an accepted one is never dropped",
        "IPC_CALLS_MAX_BYTES",
    )
    calls_max_msgs: Count | None = _limit(
        "calls waiting in the calls stream; full: as above", "IPC_CALLS_MAX_MSGS"
    )
    events_max_bytes: Size | None = _limit(
        "the events stream; full: the oldest events are discarded", "IPC_EVENTS_MAX_BYTES"
    )
    events_max_msgs: Count | None = _limit(
        "events kept; full: the oldest are discarded", "IPC_EVENTS_MAX_MSGS"
    )
    dead_letters_max_bytes: Size | None = _limit(
        "the dead-letter stream; full: the oldest are discarded", "IPC_DEAD_LETTERS_MAX_BYTES"
    )
    dead_letters_max_msgs: Count | None = _limit(
        "dead letters kept; full: the oldest are discarded", "IPC_DEAD_LETTERS_MAX_MSGS"
    )
    registry_max_bytes: Size | None = _limit(
        "the registry bucket; full: new instances are not saved", "IPC_REGISTRY_MAX_BYTES"
    )
    contracts_max_bytes: Size | None = _limit(
        "the contracts bucket; full: new instances' method contracts are not saved (they "
        "are registered all the same)",
        "IPC_CONTRACTS_MAX_BYTES",
    )
    routes_max_bytes: Size | None = _limit(
        "the routes bucket; full: new claims and assignments are not saved",
        "IPC_ROUTES_MAX_BYTES",
    )
    leases_max_bytes: Size | None = _limit("the router lease bucket", "IPC_LEASES_MAX_BYTES")
    results_max_bytes: Size | None = _limit(
        "the results bucket; full: new calls are refused unrun (StoreFullError), never run "
        "twice",
        "IPC_RESULTS_MAX_BYTES",
    )
    max_message_size: Size | None = _limit(
        "the largest call, event or result a stream or bucket stores", "IPC_MAX_MESSAGE_SIZE"
    )

    nats_nkey: str | None = _credential("NKey seed file to authenticate with", "nkey_seed_file")
    nats_creds: str | None = _credential("NATS .creds file (user JWT and seed)", "creds_file")
    nats_user: str | None = _credential("user name (with a password)", "user", "NAME")
    nats_password: str | None = _credential(
        "password; prefer the variable: flags show in ps", "password", "SECRET"
    )
    nats_token: str | None = _credential(
        "token; prefer the variable: flags show in ps", "token", "SECRET"
    )
    tls_ca: str | None = _credential(
        "PEM bundle of the CAs that sign the NATS servers' certs", "tls_ca"
    )
    tls_cert: str | None = _credential("PEM client certificate (with --tls-key)", "tls_cert")
    tls_key: str | None = _credential("PEM key of the client certificate", "tls_key")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Flags (passed as init arguments), then the environment, then the TOML file."""
        sources = [init_settings, env_settings]
        toml_file = CONFIG_FILE.get()
        if toml_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_file))
        return tuple(sources)

    def storage_limits(self) -> StorageLimits:
        """The storage caps: those given, the others at their defaults.

        Raises:
            ValueError: a stream could not hold one message of ``max_message_size``.
        """
        given = {
            name: value
            for name in StorageLimits.__dataclass_fields__
            if (value := getattr(self, name)) is not None
        }
        return StorageLimits(**given)


def env_var(field: FieldInfo) -> str:
    """The environment variable of a settings field."""
    alias = field.validation_alias
    assert isinstance(alias, AliasChoices), "declare settings with setting()"
    name = alias.choices[0]
    assert isinstance(name, str)
    return name


def option(name: str, field: FieldInfo, key: str) -> Any:
    """One of the ``setting()`` options of a field (``flag``, ``metavar``, ``group``...)."""
    extra = field.json_schema_extra
    value = extra.get(key) if isinstance(extra, dict) else None
    if key == "flag" and value is None:
        return "--" + name.replace("_", "-")
    return value


def shown_default(name: str, field: FieldInfo) -> str | None:
    """A field's default as ``--help`` shows it; None for none or a secret."""
    if name in StorageLimits.__dataclass_fields__:
        default = getattr(StorageLimits(), name)
        return str(default) if name.endswith("_msgs") else format_size(default)
    if field.default in (None, "") or option(name, field, "secret"):
        return None
    return str(field.default)
