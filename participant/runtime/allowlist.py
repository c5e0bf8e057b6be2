"""Allow-lists of peers: which hosts (and, for some lists, which ``HOST:PORT``) a program trusts.

One syntax for every xatm list of trusted peers (the coordinator's ``--allow-participants``, the
participant's ``--allow-coordinators``): comma-separated entries, each a network in CIDR
notation, an IP address or a host name (any port of it), and, where the list takes them, an
exact ``HOST:PORT``. A config file may give a TOML list of entries instead of one text.

Host names are matched by name and never resolved here: resolving on every call would be slow,
and the answer could change before anyone dials. An IP address matches a network entry.
Standard library only.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from xatm.participant.runtime.address import Address, AddressError

__all__ = ["AllowList", "Network", "as_text", "parse_allow_list"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class AllowList:
    """Trusted networks, host names (lower case) and exact addresses; empty trusts nothing by itself."""

    networks: tuple[Network, ...] = ()
    hosts: frozenset[str] = frozenset()
    addresses: frozenset[Address] = frozenset()

    @classmethod
    def parse(cls, text: str, *, ports: bool = False) -> AllowList:
        """``text``: comma-separated entries (empty ones ignored); ``ports``: ``HOST:PORT`` entries
        are accepted too, matching that address only.

        Raises ValueError naming the first entry that is none of these.
        """
        networks: list[Network] = []
        hosts: set[str] = set()
        addresses: set[Address] = set()
        for entry in (part.strip() for part in text.split(",")):
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
                continue
            except ValueError:
                pass
            if ports and ":" in entry:
                try:
                    address = Address.parse(entry)
                except AddressError as err:
                    raise ValueError(err.message) from None
                addresses.add(Address(address.host.lower(), address.port))
                continue
            try:
                Address.parse(f"{entry}:1")
            except AddressError:
                last = ", a host name or HOST:PORT" if ports else " or a host name"
                kinds = "a network (CIDR), an IP address" + last
                raise ValueError(f"{entry[:60]!r} is not {kinds}") from None
            hosts.add(entry.lower())
        return cls(tuple(networks), frozenset(hosts), frozenset(addresses))

    def __bool__(self) -> bool:
        return bool(self.networks or self.hosts or self.addresses)

    def allows_host(self, host: str) -> bool:
        """Whether every port of ``host`` (a name or an IP address, no brackets) is trusted."""
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return host.lower() in self.hosts
        return any(ip in network for network in self.networks)

    def allows(self, address: Address) -> bool:
        """Whether ``address`` is trusted: listed as it is, or its host is."""
        return Address(address.host.lower(), address.port) in self.addresses or self.allows_host(address.host)


def parse_allow_list(text: str) -> tuple[tuple[Network, ...], frozenset[str]]:
    """``text``: comma-separated CIDRs, IP addresses and host names -> (networks, host names).

    Raises ValueError naming the first entry that is none of these.
    """
    allowed = AllowList.parse(text)
    return allowed.networks, allowed.hosts


def as_text(value: Any) -> Any:
    """A settings rule: a TOML list of entries becomes the comma-separated text a flag gives."""
    return ",".join(str(item) for item in value) if isinstance(value, list) else value
