"""Coordinator settings: defaults < TOML config file < XATM_* environment < command-line flags."""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

__all__ = ["Settings", "SettingsError", "resolve"]


class SettingsError(ValueError):
    """A bad configuration value; the message names the source and the key."""


@dataclass
class Settings:
    listen: str = field(default="127.0.0.1:7070", metadata={"help": "gRPC listen address"})
    http_listen: str = field(
        default="127.0.0.1:7071",
        metadata={"help": "HTTP address for the REST admin API, /metrics and /healthz"},
    )
    data_dir: Path = field(default=Path("./xatm-data"), metadata={"help": "directory of the write-ahead log"})
    auth_file: Path | None = field(
        default=None, metadata={"help": "token file (TOML) enabling authentication"}
    )
    node_id: str = field(
        default="", metadata={"help": "node id embedded in gtrids (default: kept in the data dir)"}
    )
    default_timeout: float = field(
        default=60.0, metadata={"help": "transaction timeout when begin gives none (s)"}
    )
    max_timeout: float = field(default=600.0, metadata={"help": "largest transaction timeout accepted (s)"})
    call_timeout: float = field(default=5.0, metadata={"help": "deadline of one call to a participant (s)"})
    commit_wait: float = field(
        default=10.0, metadata={"help": "how long commit/rollback wait for phase two before answering (s)"}
    )
    retry_initial: float = field(default=0.05, metadata={"help": "first phase-two retry delay (s)"})
    retry_max: float = field(default=5.0, metadata={"help": "cap of the phase-two retry delay (s)"})
    history_retention: float = field(
        default=600.0, metadata={"help": "how long completed transactions stay visible (s)"}
    )
    max_history: int = field(default=100_000, metadata={"help": "completed transactions kept at most"})
    checkpoint_interval: float = field(default=30.0, metadata={"help": "seconds between log checkpoints"})
    recovery_interval: float = field(
        default=30.0, metadata={"help": "seconds between recover scans of known participants"}
    )
    max_open_transactions: int = field(
        default=100_000, metadata={"help": "open transactions before begin refuses"}
    )
    max_message_bytes: int = field(
        default=4 * 1024 * 1024, metadata={"help": "largest gRPC message accepted"}
    )
    tls_cert: Path | None = field(default=None, metadata={"help": "server certificate (PEM) enabling TLS"})
    tls_key: Path | None = field(default=None, metadata={"help": "server private key (PEM)"})
    tls_client_ca: Path | None = field(
        default=None, metadata={"help": "CA (PEM) requiring client certificates"}
    )
    log_json: bool = field(default=False, metadata={"help": "log one JSON object per line"})


def _convert(name: str, raw: Any, source: str) -> Any:
    kind = {f.name: f.type for f in fields(Settings)}[name]
    try:
        if "bool" in str(kind):
            if isinstance(raw, bool):
                return raw
            if str(raw).lower() in ("1", "true", "yes", "on"):
                return True
            if str(raw).lower() in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(raw)
        if "Path" in str(kind):
            return Path(raw) if raw not in (None, "") else None
        if "float" in str(kind):
            value = float(raw)
            if value <= 0:
                raise ValueError(raw)
            return value
        if "int" in str(kind):
            value = int(raw)
            if value <= 0:
                raise ValueError(raw)
            return value
        return str(raw)
    except (TypeError, ValueError):
        raise SettingsError(f"{source}: invalid value {raw!r} for {name}") from None


def resolve(flags: dict[str, Any], environ: dict[str, str] | None = None) -> Settings:
    """Merge the sources; ``flags`` holds only the options given on the command line."""
    environ = os.environ if environ is None else environ
    names = {f.name for f in fields(Settings)}
    merged: dict[str, Any] = {}
    config = flags.get("config") or environ.get("XATM_CONFIG")
    if config:
        try:
            data = tomllib.loads(Path(config).read_text())
        except FileNotFoundError:
            raise SettingsError(f"config file {config} does not exist") from None
        except tomllib.TOMLDecodeError as err:
            raise SettingsError(f"config file {config}: {err}") from None
        section = data.get("coordinator", data)
        for key, value in section.items():
            name = key.replace("-", "_")
            if name not in names:
                raise SettingsError(f"config file {config}: unknown key {key!r}")
            merged[name] = _convert(name, value, f"config file {config}")
    for name in names:
        env = environ.get(f"XATM_{name.upper()}")
        if env is not None:
            merged[name] = _convert(name, env, f"XATM_{name.upper()}")
    for name, value in flags.items():
        if name in names and value is not None:
            merged[name] = _convert(name, value, f"--{name.replace('_', '-')}")
    return dataclasses.replace(Settings(), **merged)
