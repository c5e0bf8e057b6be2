"""Coordinator settings: flags > XATM_* environment > TOML config file ([coordinator]) > defaults."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field

from xatm.coordinator.server.endpoints import parse_allow_list
from xatm.coordinator.txlog.etcd.client import STORE_SCHEME, parse_store_url
from xatm.participant.errors import InvalidArgumentError
from xatm.participant.runtime.allowlist import as_text
from xatm.participant.runtime.config import (
    ListenAddress,
    PeerAddress,
    PositiveFloat,
    PositiveInt,
    UsageError,
    XatmSettings,
    flag_name,
    load,
)

__all__ = [
    "APPROVABLE",
    "NODE_FILE",
    "Settings",
    "SettingsError",
    "check_node_id",
    "check_store",
    "parse_required",
    "resolve",
    "stored_node_id",
]

#: A bad configuration value; the message names the setting and its source (exit 2).
SettingsError = UsageError
#: The data dir's file holding the node id once a log exists there.
NODE_FILE = "NODE_ID"
# The node id starts every gtrid this node begins ("<node>.<36 hex digits>"), so it keeps to
# the gtrid alphabet without its separator and leaves the gtrid within its 64 characters.
_NODE = re.compile(r"^[A-Za-z0-9_-]{1,24}$")


def _check_allow_list(value: str) -> str:
    parse_allow_list(value)  # ValueError names the bad entry
    return value


#: A file setting; "" (an empty TOML string) means none, as an unset one does.
def _named_path(value: object) -> object:
    """An empty path would silently mean the working directory: refuse it."""
    if isinstance(value, str) and not value.strip():
        raise ValueError("must name a directory, not be empty")
    return value


def _directory(value: Path) -> Path:
    if value.exists() and not value.is_dir():
        raise ValueError(f"{str(value)!r} exists and is not a directory")
    return value


OptionalPath = Annotated[Path | None, BeforeValidator(lambda value: value or None)]


def check_node_id(value: str) -> str:
    """``value`` if it is a node id (1-24 characters of [A-Za-z0-9_-]) or "" (unset); else ValueError."""
    if value and not _NODE.match(value):
        shown = value if len(value) <= 40 else value[:40] + "..."
        raise ValueError(f"must be 1-24 characters of [A-Za-z0-9_-], not {shown!r}")
    return value


#: Operation names as ``--require-approval`` spells them -> the audited action.
APPROVABLE = {"force-rollback": "force_rollback", "force-commit": "force_commit", "forget": "forget"}


def parse_required(text: str) -> frozenset[str]:
    """The audited actions named by a ``--require-approval`` value (comma-separated flag names);
    ValueError naming the accepted ones for anything else."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in APPROVABLE]
    if unknown:
        raise ValueError(f"unknown operation {unknown[0]!r}; expected some of {', '.join(APPROVABLE)}")
    return frozenset(APPROVABLE[name] for name in names)


def _approvable(value: str) -> str:
    parse_required(value)
    return value


def check_store(value: str) -> str:
    """``value`` if it is "file" or an etcd:// address list; else ValueError saying why."""
    if value != "file":
        if not value.startswith(STORE_SCHEME):
            raise ValueError(f"must be file or {STORE_SCHEME}host:port[,host:port...], not {value!r}")
        try:
            parse_store_url(value)
        except InvalidArgumentError as err:
            raise ValueError(err.message) from None
    return value


#: Comma-separated networks and host names (a TOML list of them is accepted too).
AllowList = Annotated[str, BeforeValidator(as_text), AfterValidator(_check_allow_list)]


class Settings(XatmSettings):
    """Everything ``xatm coordinator`` is configured with; durations are in seconds."""

    section = "coordinator"

    listen: ListenAddress = Field(default="127.0.0.1:7070", description="gRPC listen address")
    http_listen: ListenAddress = Field(
        default="127.0.0.1:7071", description="HTTP address for the REST admin API, /metrics and /healthz"
    )
    data_dir: Annotated[Path, BeforeValidator(_named_path), AfterValidator(_directory)] = Field(
        default=Path("./xatm-data"), description="directory of the write-ahead log"
    )
    store: Annotated[str, AfterValidator(check_store)] = Field(
        default="file",
        description="transaction log: file (the WAL in data_dir) or etcd://h1:2379,h2:2379 (replicas)",
    )
    lease_ttl: Annotated[int, Field(ge=2, le=300)] = Field(
        default=5, description="etcd store: how long a dead replica keeps its transactions (s)"
    )
    advertise: PeerAddress = Field(
        default="",
        description="etcd store: gRPC address other replicas and operators reach this replica at "
        "(default: the listen address)",
    )
    http_advertise: PeerAddress = Field(
        default="", description="etcd store: HTTP address published for operators (default: --http-listen)"
    )
    auth_file: OptionalPath = Field(default=None, description="token file (TOML) enabling authentication")
    allow_participants: AllowList = Field(
        default="",
        description="participant endpoints the coordinator may call: comma-separated CIDRs, IP addresses "
        "and host names (default: any)",
        json_schema_extra={"metavar": "LIST"},
    )
    node_id: Annotated[str, AfterValidator(check_node_id)] = Field(
        default="", description="node id embedded in gtrids (default: kept in the data dir)"
    )
    default_timeout: PositiveFloat = Field(
        default=60.0, description="transaction timeout when begin gives none (s)"
    )
    max_timeout: PositiveFloat = Field(
        default=600.0, description="largest transaction timeout (s): a longer one asked for is cut to it"
    )
    call_timeout: PositiveFloat = Field(default=5.0, description="deadline of one call to a participant (s)")
    participant_token: str = Field(
        default="",
        description="bearer token sent on every call to participants (their coordinator_token)",
        repr=False,
    )
    commit_wait: PositiveFloat = Field(
        default=10.0, description="how long commit/rollback wait for phase two before answering (s)"
    )
    retry_initial: PositiveFloat = Field(default=0.05, description="first phase-two retry delay (s)")
    retry_max: PositiveFloat = Field(default=5.0, description="cap of the phase-two retry delay (s)")
    history_retention: PositiveFloat = Field(
        default=600.0, description="how long completed transactions stay visible (s)"
    )
    max_history: PositiveInt = Field(default=100_000, description="completed transactions kept at most")
    checkpoint_interval: PositiveFloat = Field(default=30.0, description="seconds between log checkpoints")
    recovery_interval: PositiveFloat = Field(
        default=30.0, description="seconds between recover scans of known participants"
    )
    max_open_transactions: PositiveInt = Field(
        default=100_000, description="open transactions before begin refuses"
    )
    max_message_bytes: PositiveInt = Field(
        default=4 * 1024 * 1024, description="largest gRPC message accepted"
    )
    tls_cert: OptionalPath = Field(default=None, description="server certificate (PEM) enabling TLS")
    tls_key: OptionalPath = Field(default=None, description="server private key (PEM)")
    tls_client_ca: OptionalPath = Field(default=None, description="CA (PEM) requiring client certificates")
    log_json: bool = Field(default=False, description="log one JSON object per line")
    require_approval: Annotated[str, AfterValidator(_approvable)] = Field(
        default="",
        description="forced operations a second operator must approve: any of force-rollback, "
        "force-commit, forget (comma-separated; needs --auth-file)",
    )
    approval_ttl: PositiveFloat = Field(default=900.0, description="how long an approval request waits (s)")
    # Bounds that keep one huge transaction or one dead participant from costing everyone else.
    max_branches: PositiveInt = Field(default=1000, description="branches one transaction may enlist")
    max_calls_in_flight: PositiveInt = Field(default=256, description="participant calls out at once, in all")
    max_calls_per_participant: PositiveInt = Field(default=32, description="calls out at once to an endpoint")
    max_calls_per_transaction: PositiveInt = Field(default=16, description="calls of one tx out at once")
    unreachable_summary_interval: PositiveFloat = Field(
        default=60.0, description="seconds between log summaries of participants that do not answer"
    )


def resolve(flags: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Settings:
    """The coordinator's settings; ``flags`` holds the command line's options (None = not given).

    Raises SettingsError naming the bad setting and its source, or the two settings (from any
    sources) that contradict each other.
    """
    settings = load(Settings, flags, environ)
    for low, high in (("default_timeout", "max_timeout"), ("retry_initial", "retry_max")):
        if getattr(settings, low) > getattr(settings, high):
            raise UsageError(
                f"{flag_name(low)} ({getattr(settings, low):g} s) is above {flag_name(high)} "
                f"({getattr(settings, high):g} s): lower the one or raise the other"
            )
    return settings


def stored_node_id(data_dir: Path) -> str | None:
    """The node id kept in ``data_dir``, or None; SettingsError if the file holds no valid id."""
    path = data_dir / NODE_FILE
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as err:
        raise SettingsError(f"{path}: cannot be read as a node id: {err}") from None
    try:
        check_node_id(text or " ")  # an empty file holds no id either
    except ValueError as err:
        raise SettingsError(f"{path}: the node id {err}") from None
    return text
