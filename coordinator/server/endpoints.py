"""Which participant endpoints the coordinator agrees to dial.

A participant names the ``HOST:PORT`` of its Participant service when it enlists a branch,
registers after a move or asks for an outcome; the coordinator then calls that address until
the branch is done. So the address is checked where it enters, at the RPC edge: it must be
``HOST:PORT`` as every xatm program parses it (port 1-65535, no control characters, no gRPC
URI scheme such as ``unix:``, not a wildcard), and, when ``--allow-participants`` is set, lie
in one of the allowed networks or be one of the allowed host names.

Host names are matched by name and never resolved here: resolving on every enlist would be slow,
and the answer could change before the coordinator dials. An IP address matches a network entry.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from xatm.participant.errors import InvalidArgumentError, PermissionDeniedError
from xatm.participant.runtime.address import Address, AddressError
from xatm.participant.runtime.allowlist import AllowList, Network, parse_allow_list

__all__ = ["PASSED_KEPT", "EndpointPolicy", "parse_allow_list"]

#: Endpoints remembered as passing the policy at most (then forgotten all at once).
PASSED_KEPT = 4096


@dataclass(frozen=True)
class EndpointPolicy:
    """The rule for participant endpoints; without networks or hosts, any well-formed one passes."""

    networks: tuple[Network, ...] = ()
    hosts: frozenset[str] = frozenset()
    #: Endpoints that passed already: every commit names its branches' endpoints again, and the
    #: answer for one never changes (the policy is fixed), so each is parsed once, not per call.
    _passed: set[str] = field(default_factory=set, init=False, repr=False, compare=False)

    @classmethod
    def from_setting(cls, allow: str) -> EndpointPolicy:
        """From ``--allow-participants`` (already checked by the settings)."""
        networks, hosts = parse_allow_list(allow)
        return cls(networks, hosts)

    @property
    def restricted(self) -> bool:
        return bool(self.networks or self.hosts)

    def check(self, endpoint: str, what: str = "endpoint") -> str:
        """``endpoint`` unchanged if the coordinator may dial it.

        Raises InvalidArgumentError when it is not a callable ``HOST:PORT``, PermissionDeniedError
        when it lies outside the allow-list.
        """
        if endpoint in self._passed:
            return endpoint
        try:
            address = Address.parse(endpoint)
        except AddressError as err:
            raise InvalidArgumentError(f"{what} {err}") from None
        if address.is_wildcard:
            raise InvalidArgumentError(f"{what} {endpoint!r} is a wildcard address, which cannot be dialled")
        if self.restricted and not self._allowed(address.host):
            raise PermissionDeniedError(
                f"{what} {endpoint!r} is not among the participants this coordinator may call "
                "(--allow-participants)"
            )
        if len(self._passed) >= PASSED_KEPT:
            self._passed.clear()  # bounded: endpoints named by callers are not
        self._passed.add(endpoint)
        return endpoint

    def _allowed(self, host: str) -> bool:
        return AllowList(self.networks, self.hosts).allows_host(host)
