"""``HOST:PORT``: the one parser of network addresses for every xatm program.

Flags, environment variables, config files and the CLIs all name a gRPC or HTTP endpoint as
``HOST:PORT``: a host name, an IPv4 address, or an IPv6 address in brackets (``[::1]:7070``).
Standard library only: ``xactl`` and every ``xatm`` command import it.
"""

from __future__ import annotations

import argparse
import ipaddress
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass

from xatm.participant.errors import InvalidArgumentError

__all__ = ["Address", "AddressError", "argument", "callable_address", "check_free"]

# Letters, digits, '-', '_' and dots: DNS names (and the names of containers and Kubernetes services).
_HOSTNAME = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,252})$")
_WILDCARDS = frozenset({"0.0.0.0", "::"})
# gRPC reads ``<scheme>:<rest>`` as a URI when the scheme names one of its resolvers, so
# ``unix:7070`` would dial the Unix socket "7070", not a host called "unix".
_GRPC_SCHEMES = frozenset({"dns", "ipv4", "ipv6", "unix", "unix-abstract", "vsock", "xds", "google-c2p"})


class AddressError(InvalidArgumentError, ValueError):
    """A malformed address; the message reads ``'<text>' must be HOST:PORT (<why>)``."""


@dataclass(frozen=True)
class Address:
    """A parsed ``HOST:PORT``; ``host`` never has brackets, ``str()`` puts them back for IPv6."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: str, *, listen: bool = False) -> Address:
        """Parse ``HOST:PORT``; port 1-65535, or 0 (any free port) when ``listen`` is true.

        Raises AddressError: no port, a port out of range or not decimal, an IPv6 address
        without brackets, whitespace or control characters, an empty or malformed host, a host
        that gRPC would read as a URI scheme (``unix:``, ``dns:``...).
        """
        if not isinstance(text, str):
            raise AddressError(f"{text!r} must be HOST:PORT (not a string)")
        if any(not c.isprintable() or c.isspace() for c in text):
            raise cls._bad(text, "no spaces or control characters allowed")
        host, colon, port = text.rpartition(":")
        if not colon:
            raise cls._bad(text, "no port")
        if host.startswith("["):
            if not host.endswith("]"):
                raise cls._bad(text, "unclosed bracket")
            host = host[1:-1]
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                raise cls._bad(text, "brackets hold an IPv6 address") from None
        elif ":" in host:
            raise cls._bad(text, "an IPv6 address goes in brackets, as [::1]:7070")
        elif not _HOSTNAME.match(host):
            raise cls._bad(text, "no host" if not host else "malformed host")
        elif host.lower() in _GRPC_SCHEMES:
            raise cls._bad(text, f"{host}: is a gRPC target scheme, not a host")
        lowest = 0 if listen else 1
        if not (port.isascii() and port.isdigit()) or not lowest <= int(port) <= 65535:
            raise cls._bad(text, f"port must be a number from {lowest} to 65535")
        return cls(host, int(port))

    @staticmethod
    def _bad(text: str, why: str) -> AddressError:
        shown = text if len(text) <= 80 else text[:80] + "..."
        return AddressError(f"{shown!r} must be HOST:PORT ({why})")

    def __str__(self) -> str:
        """``host:port``, with an IPv6 host in brackets: what gRPC targets and binds take."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def family(self) -> socket.AddressFamily:
        """AF_INET6 for an IPv6 host, else AF_INET (a host name resolves to IPv4 for binding)."""
        return socket.AF_INET6 if ":" in self.host else socket.AF_INET

    @property
    def is_wildcard(self) -> bool:
        """Every interface (0.0.0.0 or ::): not an address another process can call."""
        return self.host in _WILDCARDS


def callable_address(text: str) -> str:
    """``text`` normalised if another process can call it there: ``HOST:PORT``, port 1-65535, not
    a wildcard. For what a process advertises (a participant's endpoint). Raises AddressError."""
    where = Address.parse(text)
    if where.is_wildcard:
        raise Address._bad(
            text, "a wildcard listens everywhere but cannot be called: give this host's name or address"
        )
    return str(where)


def argument(*, listen: bool = False) -> Callable[[str], Address]:
    """An argparse ``type=`` for an address flag: a malformed one is a usage error (exit 2)."""

    def parse(text: str) -> Address:
        try:
            return Address.parse(text, listen=listen)
        except AddressError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    return parse


def check_free(listen: str, flag: str) -> None:
    """Raise OSError naming ``flag`` when ``listen`` (HOST:PORT) cannot be bound here now.

    Asked before gRPC binds, so a port in use is one line (gRPC core would also print its own log
    line). Port 0 always passes. The answer can change before gRPC binds; gRPC's own failure
    stays the final word.
    """
    where = Address.parse(listen)
    if where.port == 0:
        return
    try:
        socket.create_server((where.host, where.port), family=where.family).close()
    except OSError as err:
        raise OSError(f"{flag} {listen}: {err.strerror or err}") from None
