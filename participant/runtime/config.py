"""One settings loader for the coordinator and the participant agent (pydantic-settings).

Each program declares its settings as a subclass of ``XatmSettings``; ``load`` fills it from,
highest first:

1. command-line flags (``--call-timeout 2``),
2. ``XATM_*`` environment variables (``XATM_CALL_TIMEOUT=2``),
3. the TOML config file named by ``--config FILE`` or ``XATM_CONFIG`` (``call_timeout = 2``;
   in a file shared by several programs, under the program's table: ``[coordinator]``),
4. the defaults.

Every value from every source is checked, also one that a higher source overrides; the first
bad one raises ``UsageError`` with one line naming the setting and where it came from, and the
program exits 2. A settings object built directly (``Settings(node_id="n1")``) takes only its
arguments and defaults: the environment and files count only through ``load``.
"""

from __future__ import annotations

import argparse
import math
import os
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, TypeVar, get_args

from pydantic import AfterValidator, ValidationError, ValidationInfo, field_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from xatm.participant.errors import InvalidArgumentError
from xatm.participant.runtime.address import Address

__all__ = [
    "ENV_PREFIX",
    "ListenAddress",
    "PeerAddress",
    "PositiveFloat",
    "PositiveInt",
    "UsageError",
    "XatmSettings",
    "add_flags",
    "at_least",
    "env_name",
    "flag_name",
    "load",
]

ENV_PREFIX = "XATM_"
#: Tables of a config file shared by several programs; each program reads its own.
SECTIONS = ("coordinator", "participant")

S = TypeVar("S", bound="XatmSettings")


class UsageError(InvalidArgumentError, ValueError):
    """A bad flag, environment variable or config value: the command exits 2 with this one line."""


class XatmSettings(BaseSettings):
    """Base of every program's settings: immutable, unknown names refused, ``XATM_`` env prefix."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", frozen=True, env_ignore_empty=True
    )
    #: This program's table in a shared config file.
    section: ClassVar[str] = ""

    @field_validator("*", mode="before")
    @classmethod
    def _no_truth_for_a_number(cls, value: Any, info: ValidationInfo) -> Any:
        """A TOML ``true`` is not a number, though pydantic would read it as 1."""
        if isinstance(value, bool) and info.field_name is not None:
            kinds = get_args(cls.model_fields[info.field_name].annotation) or (
                cls.model_fields[info.field_name].annotation,
            )
            if bool not in kinds and (int in kinds or float in kinds):
                raise ValueError(f"must be a number, not {str(value).lower()}")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Built directly, settings take their arguments only; ``load`` adds env and file."""
        return (init_settings,)


# ------------------------------------------------------------------ value rules
# A rule raises ValueError whose text follows the setting's name: "--pool-size must be >= 1, not 0".


def _positive(value: float) -> float:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"must be > 0, not {value}")
    return value


def at_least(lowest: int) -> AfterValidator:
    """A rule for whole numbers: ``lowest`` or more."""

    def check(value: int) -> int:
        if value < lowest:
            raise ValueError(f"must be >= {lowest}, not {value}")
        return value

    return AfterValidator(check)


def _address(listen: bool) -> Callable[[str], str]:
    def check(value: str) -> str:
        return str(Address.parse(value, listen=listen)) if value else value

    return check


PositiveFloat = Annotated[float, AfterValidator(_positive)]
PositiveInt = Annotated[int, at_least(1)]
#: An address to bind: port 0 picks a free one. Kept as normalised text ("" = unset).
ListenAddress = Annotated[str, AfterValidator(_address(listen=True))]
#: An address to call: port 1-65535. Kept as normalised text ("" = unset).
PeerAddress = Annotated[str, AfterValidator(_address(listen=False))]


# ------------------------------------------------------------------ sources


class _Environment(EnvSettingsSource):
    """``XATM_*`` variables of a given mapping (the process environment unless a test passes one)."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]):
        self._environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {name.lower(): value for name, value in self._environ.items() if value != ""}


def _config_file(cls: type[XatmSettings], path: Path) -> dict[str, Any]:
    """The file's values for ``cls`` (its own table if the file has program tables), names as fields."""
    if not path.is_file():
        raise UsageError(f"config file {path} does not exist")
    try:
        data = TomlConfigSettingsSource(cls, toml_file=path).toml_data
    except tomllib.TOMLDecodeError as err:
        raise UsageError(f"config file {path}: {err}") from None
    except OSError as err:
        raise UsageError(f"config file {path}: {err.strerror}") from None
    if any(key in SECTIONS for key in data):
        data = data.get(cls.section, {})
        if not isinstance(data, dict):
            raise UsageError(f"config file {path}: [{cls.section}] must be a table")
    values = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in cls.model_fields:
            raise UsageError(f"config file {path}: unknown key {key!r}")
        values[name] = value
    return values


def _check(cls: type[XatmSettings], values: dict[str, Any], where: Callable[[str], str]) -> None:
    """Validate one source's values alone, so that an error names that source."""
    try:
        cls.model_validate(values)
    except ValidationError as err:
        first = err.errors()[0]
        name = str(first["loc"][0]) if first["loc"] else ""
        raw = values.get(name, first.get("input"))
        if first["type"] == "value_error":  # one of the rules above, or an Address
            raise UsageError(f"{where(name)} {first['ctx']['error']}") from None
        reason = first["msg"][:1].lower() + first["msg"][1:]
        raise UsageError(f"{where(name)}: invalid value {raw!r} ({reason})") from None


def flag_name(name: str) -> str:
    """The command-line flag of a setting: ``call_timeout`` -> ``--call-timeout``."""
    return "--" + name.replace("_", "-")


def env_name(name: str) -> str:
    """The environment variable of a setting: ``call_timeout`` -> ``XATM_CALL_TIMEOUT``."""
    return ENV_PREFIX + name.upper()


def load(cls: type[S], flags: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> S:
    """``cls`` from flags (None = not given) > ``XATM_*`` env > the config file > defaults.

    ``flags`` may hold other options (``config``, subcommand flags); only settings count.
    Raises UsageError for a missing or malformed config file, an unknown key in it, or the
    first bad value of any source.
    """
    environ = os.environ if environ is None else environ
    given = {name: value for name, value in flags.items() if name in cls.model_fields and value is not None}
    env = _Environment(cls, environ)()
    config = flags.get("config") or environ.get(env_name("config"))
    in_file = _config_file(cls, Path(config)) if config else {}
    _check(cls, in_file, lambda name: f"config file {config}: {name}")
    _check(cls, env, env_name)
    _check(cls, given, flag_name)
    return cls.model_validate({**in_file, **env, **given})


def add_flags(parser: argparse.ArgumentParser, cls: type[XatmSettings]) -> None:
    """One flag per setting (default None: "not given", so env and file values show through).

    Help text comes from each field's description; a field's ``json_schema_extra`` may name a
    ``metavar``.
    """
    for name, info in cls.model_fields.items():
        default = "" if info.default in ("", None, False) else f"; default {info.default}"
        help_text = f"{info.description} (env {env_name(name)}{default})"
        if info.annotation is bool:
            parser.add_argument(
                flag_name(name), action="store_const", const=True, default=None, help=help_text
            )
        else:
            extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
            metavar = str(extra.get("metavar") or name.split("_")[-1].upper())
            parser.add_argument(flag_name(name), default=None, metavar=metavar, help=help_text)
