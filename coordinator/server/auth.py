"""Bearer tokens, roles and who is calling: shared by the gRPC interceptor and the REST API.

The token file (``--auth-file``, TOML) names each token and stores only its SHA-256::

    [[tokens]]
    name = "ops"            # recorded in the audit log; 1-64 characters of [A-Za-z0-9._@-]
    role = "operator"       # viewer | operator | service
    sha256 = "5e88...d1a"   # hex SHA-256 of the token's UTF-8 bytes (`xatm hash-token`)
    max_open = 100          # optional, service tokens: transactions it may have open at once

Roles: ``viewer`` reads (list, show, audit); ``operator`` also forces commit and rollback and
forgets; ``service`` calls the Coordinator service (initiators and participants). A presented
token is hashed and compared in constant time with every stored hash, so neither the file nor
a timing side channel gives a token away. Tokens and hashes are never logged.

``Authenticator.reload`` reads the file again (the coordinator does on SIGHUP and when the file
changes): the new entries replace the old at once, so a removed token is refused from its next
call; a file that no longer loads leaves the previous entries in force.

The coordinator's own calls to participants carry no token, and participants check none:
keep that hop on a trusted network.
"""

from __future__ import annotations

import argparse
import enum
import hashlib
import hmac
import re
import secrets
import sys
import tomllib
import uuid
from dataclasses import dataclass
from pathlib import Path

from xatm.participant.errors import InvalidArgumentError, PermissionDeniedError, UnauthenticatedError

__all__ = [
    "ANONYMOUS",
    "AuthFileError",
    "Authenticator",
    "Caller",
    "Permission",
    "Principal",
    "Role",
    "add_parser",
    "bearer_token",
    "hash_token",
    "trace_id",
]


class AuthFileError(InvalidArgumentError, ValueError):
    """The token file is missing or malformed; the message names the file and the entry."""


class Permission(enum.Enum):
    READ = "read transactions and the audit log"
    OPERATE = "force commit, force rollback and forget"
    SERVICE = "call the Coordinator service"


class Role(enum.Enum):
    VIEWER = "viewer"
    OPERATOR = "operator"
    SERVICE = "service"

    @property
    def permissions(self) -> frozenset[Permission]:
        return _GRANTS[self]


_GRANTS = {
    Role.VIEWER: frozenset({Permission.READ}),
    Role.OPERATOR: frozenset({Permission.READ, Permission.OPERATE}),
    Role.SERVICE: frozenset({Permission.SERVICE}),
}


@dataclass(frozen=True)
class Principal:
    """Who a request runs as: a token's name and role, or anonymous when auth is off."""

    name: str
    role: Role | None  # None: no auth file, everything is allowed
    #: Transactions this token may have open at once (begun, not yet Committed or Rolledback).
    max_open: int | None = None

    def require(self, permission: Permission) -> None:
        if self.role is None or permission in self.role.permissions:
            return
        roles = ", ".join(r.value for r in Role if permission in r.permissions)
        raise PermissionDeniedError(
            f"token {self.name!r} has role {self.role.value}; to {permission.value} use a token "
            f"with role {roles}",
        )


ANONYMOUS = Principal("anonymous", None)


@dataclass(frozen=True)
class Caller:
    """One admin request: who, from where, and the trace id that ties it to its audit record."""

    principal: Principal
    peer: str
    trace_id: str


_NAME = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_TRACE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_KEYS = frozenset({"name", "role", "sha256", "max_open"})


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def trace_id(offered: str | None = None) -> str:
    """The caller's trace id when it is well-formed, else a new one."""
    return offered if offered and _TRACE.match(offered) else uuid.uuid4().hex


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` value (None if absent or not Bearer)."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


class Authenticator:
    """Maps a presented token to a Principal; ``enabled`` is False without a token file."""

    def __init__(self, entries: list[tuple[bytes, Principal]] | None = None):
        self._entries = entries
        self.enabled = entries is not None

    def reload(self, path: Path) -> list[str]:
        """Replace the entries with ``path``'s, at once; returns the names of the entries that
        were removed or changed (their old token or role no longer works).

        Raises AuthFileError, the entries unchanged, when the file does not load or auth is off.
        """
        if self._entries is None:
            raise AuthFileError("authentication is off (no --auth-file): nothing to reload")
        fresh = Authenticator.load(path)._entries
        assert fresh is not None
        kept = {(digest, principal) for digest, principal in fresh}
        changed = sorted({p.name for digest, p in self._entries if (digest, p) not in kept})
        self._entries = fresh
        return changed

    @classmethod
    def load(cls, path: Path | None) -> Authenticator:
        if path is None:
            return cls()
        try:
            data = tomllib.loads(Path(path).read_text())
        except OSError as err:
            raise AuthFileError(f"auth file {path}: {err.strerror or err}") from None
        except tomllib.TOMLDecodeError as err:
            raise AuthFileError(f"auth file {path}: {err}") from None
        tokens = data.get("tokens")
        if not isinstance(tokens, list) or not tokens:
            raise AuthFileError(f"auth file {path}: needs at least one [[tokens]] entry")
        entries: list[tuple[bytes, Principal]] = []
        names: set[str] = set()
        roles = ", ".join(r.value for r in Role)
        for i, entry in enumerate(tokens, 1):
            where = f"auth file {path}: [[tokens]] entry {i}"
            if not isinstance(entry, dict) or not {"name", "role", "sha256"} <= set(entry) <= _KEYS:
                raise AuthFileError(
                    f"{where} must have exactly the keys name, role and sha256 (and optionally max_open)"
                )
            name, role, digest = entry["name"], entry["role"], entry["sha256"]
            max_open = entry.get("max_open")
            if not isinstance(name, str) or not _NAME.match(name) or name in names:
                raise AuthFileError(f"{where}: name must be unique, 1-64 characters of [A-Za-z0-9._@-]")
            if role not in {r.value for r in Role}:
                raise AuthFileError(f"{where} ({name}): role must be one of {roles}")
            if not isinstance(digest, str) or not _SHA256.match(digest):
                raise AuthFileError(
                    f"{where} ({name}): sha256 must be 64 lowercase hex digits (see `xatm hash-token`)"
                )
            if max_open is not None and (
                role != Role.SERVICE.value or type(max_open) is not int or not 1 <= max_open <= 10**9
            ):
                raise AuthFileError(f"{where} ({name}): max_open is a whole number >= 1, for a service token")
            names.add(name)
            entries.append((bytes.fromhex(digest), Principal(name, Role(role), max_open)))
        return cls(entries)

    def authenticate(self, token: str | None) -> Principal:
        if self._entries is None:
            return ANONYMOUS
        if not token:
            raise UnauthenticatedError(
                "this coordinator requires a bearer token (Authorization: Bearer <token>)"
            )
        presented = hashlib.sha256(token.encode(errors="replace")).digest()
        found: Principal | None = None
        for digest, principal in self._entries:
            # No early exit: every entry costs the same whether or not it matches.
            if hmac.compare_digest(digest, presented):
                found = principal
        if found is None:
            raise UnauthenticatedError("the bearer token is not valid here")
        return found


# --------------------------------------------------------------------- `xatm hash-token`


def _hash_token_command(args: argparse.Namespace) -> int:
    if not _NAME.match(args.name):
        print("xatm hash-token: --name must be 1-64 characters of [A-Za-z0-9._@-]", file=sys.stderr)
        return 2
    if args.generate:
        token = secrets.token_urlsafe(32)
        print(f"# token (hand it to the client; only its hash below goes in the auth file): {token}")
    else:
        if sys.stdin.isatty():
            import getpass

            token = getpass.getpass("token: ")
        else:
            token = sys.stdin.readline().rstrip("\r\n")
        if not token:
            print("xatm hash-token: empty token on standard input", file=sys.stderr)
            return 2
    print(f'[[tokens]]\nname = "{args.name}"\nrole = "{args.role}"\nsha256 = "{hash_token(token)}"')
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``xatm hash-token``: the auth-file entry for a token read from stdin (or a new one)."""
    p = sub.add_parser(
        "hash-token",
        help="print the auth-file entry for a token",
        description="Read a token from standard input (never the command line, which other users "
        "can see) and print its [[tokens]] entry for --auth-file.",
    )
    # Both required: a token made without saying whose it is or what it may do would be an
    # anonymous operator.
    p.add_argument("--name", required=True, help="whose token: the name recorded in the audit log")
    p.add_argument("--role", required=True, choices=[r.value for r in Role], help="what the token may do")
    p.add_argument("--generate", action="store_true", help="make a new random token instead")
    p.set_defaults(func=_hash_token_command)
