"""MySQL/MariaDB XA statements' pieces, without a driver: the XID literal, ``XA RECOVER`` rows,
the write counter behind the read-only vote. Shared by the PyMySQL RM and the SQLAlchemy RM."""

from __future__ import annotations

import logging
import re

from xatm.participant.errors import FailedPreconditionError
from xatm.participant.stores.branches import XID_PART, check_xid
from xatm.participant.xa import Xid

__all__ = ["SESSION_GONE", "WRITES", "MariaSetupError", "check_server_version", "decode_xid", "xid_sql"]

log = logging.getLogger(__name__)

#: The session's id and the writes it has done, from its handler counters (internal temporary
#: tables count separately, as Handler_tmp_*), for the read-only vote: a branch whose count did
#: not move between XA START and XA END wrote nothing.
WRITES = (
    "SELECT CONNECTION_ID(), COALESCE(SUM(VARIABLE_VALUE), 0) FROM information_schema.SESSION_STATUS "
    "WHERE VARIABLE_NAME IN ('HANDLER_WRITE', 'HANDLER_UPDATE', 'HANDLER_DELETE')"
)
#: Whether a session (by CONNECTION_ID()) is still on the server; one parameter.
SESSION_GONE = "SELECT COUNT(*) = 0 FROM information_schema.PROCESSLIST WHERE ID = %s"


def xid_sql(xid: Xid) -> str:
    """The XID as MySQL's ``X'gtrid',X'bqual',formatID`` (hex literals: binary-safe, no quoting)."""
    # The server stores formatID as a signed 32-bit integer.
    check_xid(xid, max_format_id=0x7FFFFFFF, format_id_range="0..2^31-1")
    gtrid, bqual, fid = xid.gtrid, xid.bqual, xid.format_id
    return f"X'{gtrid.encode().hex()}',X'{bqual.encode().hex()}',{fid}"


def decode_xid(format_id: int, gtrid_length: int, bqual_length: int, data: bytes | str) -> Xid | None:
    """An ``XA RECOVER`` row as an Xid, or None when it is not of xatm's shape (left alone)."""
    raw = data.encode("latin-1") if isinstance(data, str) else bytes(data)
    if gtrid_length + bqual_length != len(raw):
        return None
    try:
        gtrid, bqual = raw[:gtrid_length].decode("ascii"), raw[gtrid_length:].decode("ascii")
    except UnicodeDecodeError:
        return None
    if not (XID_PART.fullmatch(gtrid) and XID_PART.fullmatch(bqual)):
        return None
    return Xid(gtrid, bqual, int(format_id))


class MariaSetupError(FailedPreconditionError):
    """The server cannot host xatm branches; raised at construction, never in the middle of a commit."""

    def __init__(self, message: str):
        super().__init__(message)


def check_server_version(version: str, engine: str, where: str) -> None:
    """Refuse a server that drops a prepared branch when the session that prepared it disconnects
    (MariaDB before 10.5.2, MySQL before 5.7.7): MariaSetupError. ``version`` is ``SELECT VERSION()``."""
    numbers = tuple(int(n) for n in re.findall(r"\d+", version)[:3])
    mariadb = "mariadb" in version.lower()
    minimum = (10, 5, 2) if mariadb else (5, 7, 7)
    if numbers < minimum:
        name = "MariaDB" if mariadb else "MySQL"
        raise MariaSetupError(
            f"{name} at {where} is version {version}; xatm needs {'.'.join(map(str, minimum))} or "
            "later, where a prepared XA branch survives the disconnect of the session that prepared it"
        )
    if engine.lower() != "innodb":
        log.warning(
            "MySQL at %s: default storage engine is %s; only InnoDB tables take part in XA", where, engine
        )
