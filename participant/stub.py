"""The participant stub a microservice links: its RM's branches in global transactions.

    stub = ParticipantStub(rm, coordinator="127.0.0.1:7070", advertise="127.0.0.1:50051")
    server = grpc.server(pool, interceptors=[stub.server_interceptor()])
    stub.add_to_server(server)                      # the Participant service
    add_BankServicer_to_server(Bank(stub), server)  # business handlers use stub.branch()

Inside a handler called within a global transaction, ``with stub.branch() as xid`` opens
this RM's branch once per transaction (the first call) and joins the same branch on later calls;
outside one it is a local one-phase transaction, so the same handler serves both.

When the caller takes branch reports (an xatm initiator, directly or through other services),
the branch is not enlisted at the coordinator: it is reported back in the reply's trailing
metadata and reaches the coordinator with the initiator's Commit. Work that fails dooms the
transaction the same way, in the report. A reported branch that no coordinator ever reaches (the
initiator crashed, or never asked) is rolled back here once the transaction's deadline has
passed by ``call_timeout`` (``resolve_in_doubt``); a prepared branch is never touched that way.
Otherwise, or with ``eager=True``, the branch is enlisted at the coordinator on the first call.

The coordinator a call names in its metadata is trusted only when it is one of the stub's: the
addresses of ``coordinator`` and whatever ``allowed_coordinators`` lists. Any other is refused
(PERMISSION_DENIED) before the branch opens or anything is dialled, so a caller cannot make the
participant connect elsewhere and hand over its token. A stub given neither trusts any address
only while it sends no token (a development set-up); with a token it refuses them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field

import grpc

from xatm.participant.api.v1 import (
    coordinator_pb2,
    coordinator_pb2_grpc,
    participant_pb2_grpc,
    xa_pb2,
)
from xatm.participant.client.context import (
    Reported,
    TxContext,
    current,
    describe_failure,
    on_call_failure,
    reported,
)
from xatm.participant.client.initiator import (
    COORDINATOR_SERVICE,
    auth_metadata,
    checked_timeout,
    coordinator_channel,
    to_xatm_error,
)
from xatm.participant.client.interceptors import AioServerInterceptor, HandlerCache, ServerInterceptor
from xatm.participant.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    PermissionDeniedError,
    ResourceExhaustedError,
    Status,
    XatmError,
)
from xatm.participant.runtime import tracing
from xatm.participant.runtime.address import AddressError, callable_address
from xatm.participant.runtime.allowlist import AllowList
from xatm.participant.runtime.proto_enum import proto_enum
from xatm.participant.runtime.replies import MalformedReply, checked_reply
from xatm.participant.runtime.targets import parse_addresses
from xatm.participant.runtime.undecodable import AioRefuseUndecodable, guard
from xatm.participant.servicer import AsyncParticipantServicer, ParticipantServicer
from xatm.participant.stores.base import ResourceManager
from xatm.participant.xa import (
    FORMAT_ID,
    LOCAL_FORMAT_ID,
    Decision,
    XaCode,
    XaError,
    Xid,
    new_bqual,
)

__all__ = ["EnlistError", "ParticipantStub"]

log = logging.getLogger(__name__)

# Above this many remembered branches, those whose transaction deadline passed are dropped
# (their coordinator has rolled them back, and a late call could not enlist anyway).
_PRUNE_AT = 10_000
# Coordinator channels kept at most. Only trusted addresses get one, but a network entry of the
# allow-list (or a stub that trusts any address) covers more than anyone would use at once.
_MAX_CHANNELS = 64


class EnlistError(XatmError):
    """The coordinator did not take this RM's branch into the transaction."""

    def __init__(self, status: Status, message: str, xa_code: XaCode | None = None):
        super().__init__(message, status)
        #: The coordinator's XA answer (e.g. XAER_DUPID), None when the call itself failed.
        self.xa_code = xa_code


@dataclass
class _Branch:
    xid: Xid
    #: The transaction's deadline on this process's time.monotonic(), None when it has none.
    deadline: float | None
    # Held while the first call enlists, so concurrent first calls enlist once.
    lock: threading.Lock = field(default_factory=threading.Lock)
    enlisted: bool = False
    # Why the first call could not enlist; the calls that waited for it fail the same way.
    error: XatmError | None = None
    # Marked rollback-only already: a second failure need not tell the coordinator again.
    doomed: bool = False
    # Reported to the caller instead of enlisted: no coordinator has heard of it from here.
    reported: bool = False


class ParticipantStub:
    """Ties one ResourceManager to the gRPC server of the process that owns it."""

    def __init__(
        self,
        rm: ResourceManager,
        *,
        coordinator: str | None = None,
        advertise: str,
        channel_credentials: grpc.ChannelCredentials | None = None,
        token: str | None = None,
        call_timeout: float = 10.0,
        eager: bool = False,
        allowed_coordinators: str | Iterable[str] = (),
        coordinator_token: str | None = None,
    ):
        """``coordinator`` (``HOST:PORT``, or several replicas comma-separated) is used when a
        caller's metadata names none; ``advertise`` is the host:port of this process's server,
        where the coordinator calls the Participant service. ``eager``: enlist every branch at
        the coordinator on its first call, even when the caller takes branch reports (it is
        reported as well). ``allowed_coordinators``: further coordinators a caller may name, as
        ``HOST:PORT`` addresses, IP addresses, host names (any port) or networks (CIDR),
        comma-separated text or a list; the addresses in ``coordinator`` are always allowed.
        ``coordinator_token``: the bearer token every call of the Participant service served here
        must carry (the coordinator's ``participant_token``), refused UNAUTHENTICATED otherwise;
        None serves any caller that reaches the port.

        Raises InvalidArgumentError for a malformed ``coordinator`` or ``allowed_coordinators``,
        an ``advertise`` that is not a ``HOST:PORT`` another process can call (a wildcard), or a
        ``call_timeout`` that is not a positive finite number of seconds.
        """
        self.rm = rm
        self.eager = eager
        self.coordinator = coordinator
        self.advertise = callable_address(advertise)
        checked_timeout(call_timeout, "call_timeout")
        self.call_timeout = call_timeout
        self._credentials = channel_credentials
        self._metadata = auth_metadata(token)
        self._coordinator_token = coordinator_token or None
        self._trusted = _trusted_coordinators(coordinator, allowed_coordinators)
        self._lock = threading.Lock()
        self._branches: dict[str, _Branch] = {}
        self._coordinators: dict[str, tuple[grpc.Channel, coordinator_pb2_grpc.CoordinatorStub]] = {}
        #: Branches the coordinator already reached (bounded), so a late join cannot reopen one.
        self._reached: OrderedDict[Xid, None] = OrderedDict()
        self._recovery: threading.Thread | None = None
        self._recovery_stop = threading.Event()
        #: Set once the default coordinator knows where this RM is served (see ``register``).
        self._registered = False
        #: Coordinator metadata already checked -> its canonical form (the same few values on
        #: every call: parsing and matching them once is enough).
        self._checked: dict[str, str] = {}

    # ------------------------------------------------------------ server wiring

    def add_to_server(self, server: grpc.Server | grpc.aio.Server) -> None:
        """Serve the Participant service for this RM on a threaded or grpc.aio server."""
        kind = AsyncParticipantServicer if isinstance(server, grpc.aio.Server) else ParticipantServicer
        servicer = kind(self.rm, on_complete=self._completed, caller_token=self._coordinator_token)
        participant_pb2_grpc.add_ParticipantServicer_to_server(servicer, server)

    @staticmethod
    def server_interceptor() -> grpc.ServerInterceptor:
        """For a threaded ``grpc.server``: handlers see the caller's transaction, and every method
        refuses a request whose bytes are not its message (INVALID_ARGUMENT, one log line)."""
        return _GuardedServerInterceptor()

    @staticmethod
    def aio_server_interceptor() -> grpc.aio.ServerInterceptor:
        """``server_interceptor`` for a ``grpc.aio.server``."""
        return AioRefuseUndecodable(AioServerInterceptor())

    def active_branches(self) -> int:
        """Branches remembered for transactions still in their business phase."""
        return len(self._branches)

    # ------------------------------------------------------------ branch API

    @contextmanager
    def branch(self) -> Iterator[Xid]:
        """The RM's branch of the active global transaction, or a local transaction."""
        tx = current()
        xid = self._open(tx)
        try:
            yield xid
        except BaseException as exc:
            self._finish_failed(tx, xid, exc)
            raise
        self._finish(tx, xid)

    @asynccontextmanager
    async def abranch(self) -> AsyncIterator[Xid]:
        """``branch()`` for asyncio; RM and coordinator calls run in worker threads."""
        tx = current()
        xid = await asyncio.to_thread(self._open, tx)
        try:
            yield xid
        except BaseException as exc:
            await asyncio.to_thread(self._finish_failed, tx, xid, exc)
            raise
        await asyncio.to_thread(self._finish, tx, xid)

    def _open(self, tx: TxContext | None) -> Xid:
        if tx is None:
            xid = Xid(f"local.{new_bqual()}", new_bqual(), LOCAL_FORMAT_ID)
            self.rm.start(xid)
            return xid
        self._check_coordinator(tx.coordinator)
        on_call_failure(self._call_failed)
        # Reported only with a deadline: past it, a branch nobody reached is ended here.
        collector = reported(tx) if tx.deadline is not None else None
        with self._lock:
            branch = self._branches.get(tx.gtrid)
            if branch is None:
                if len(self._branches) >= _PRUNE_AT:
                    self._prune_locked()
                branch = self._branches[tx.gtrid] = _Branch(Xid(tx.gtrid, new_bqual()), tx.deadline)
        with branch.lock:
            if branch.error is not None:
                first = branch.error
                raise EnlistError(first.status, first.message, getattr(first, "xa_code", None))
            opening = not branch.enlisted
            if opening and (collector is None or self.eager or tx.enlist):
                self._enlist_first(tx, branch)
            elif opening:
                branch.enlisted = branch.reported = True
            elif branch.reported and collector is None:
                # Joined through a caller that takes no reports: the coordinator must hear of it.
                self._enlist_joined(tx, branch)
            if collector is not None:
                # Every call reports it again: the reply of an earlier one may not have got back.
                collector.add(branch.xid.bqual, self.rm.rm_id, self.advertise)
            if opening and not branch.reported:
                return branch.xid  # enlisted and started by ``_enlist_first``
        self._start(tx, branch.xid)
        return branch.xid

    def _enlist_first(self, tx: TxContext, branch: _Branch) -> None:
        try:
            self._enlist(tx, branch.xid)
        except BaseException as error:
            if not isinstance(error, XatmError):
                error = XatmError(f"{type(error).__name__}: {error}")
            branch.error = error
            with self._lock:
                if self._branches.get(tx.gtrid) is branch:
                    del self._branches[tx.gtrid]
            raise
        branch.enlisted = True
        self._start(tx, branch.xid)
        with self._lock:
            overtaken = branch.xid in self._reached
        if overtaken:
            # The coordinator finished the transaction between Enlist and start: the branch the
            # RM just opened would hold its locks with nobody left to end it.
            with contextlib.suppress(XaError):
                self.rm.rollback(branch.xid)
            raise XatmError(
                f"transaction {tx.gtrid} ended while {self.rm.rm_id} was joining it", Status.ABORTED
            )

    def _enlist_joined(self, tx: TxContext, branch: _Branch) -> None:
        """Enlist a branch so far only reported (XAER_DUPID: its report got there first)."""
        try:
            self._enlist(tx, branch.xid)
        except EnlistError as error:
            if error.xa_code is not XaCode.XAER_DUPID:
                raise
        branch.reported = False

    def _start(self, tx: TxContext, xid: Xid) -> None:
        try:
            self.rm.start(xid)
        except BaseException as error:
            self._abandon(tx, xid, error)
            raise

    def _finish(self, tx: TxContext | None, xid: Xid) -> None:
        """The block succeeded: end the unit of work; a local transaction commits now."""
        try:
            self.rm.end(xid)
            if tx is None:
                self.rm.commit(xid, one_phase=True)
        except BaseException as error:
            self._abandon(tx, xid, error)
            raise

    def _finish_failed(self, tx: TxContext | None, xid: Xid, failure: BaseException) -> None:
        try:
            self.rm.end(xid)
        except Exception as error:
            log.warning("end of branch %s failed after %s: %s", xid, type(failure).__name__, error)
        self._abandon(tx, xid, failure)

    def _abandon(self, tx: TxContext | None, xid: Xid, failure: BaseException) -> None:
        """The block's work must not commit: roll a local transaction back, doom a global one.

        Best effort: the caller re-raises ``failure``, which is what the business code must
        see; a global transaction that cannot be marked loses this RM's branch here, so its
        prepare votes no.
        """
        try:
            if tx is None:
                with contextlib.suppress(XaError):  # an RB failure may have rolled it back already
                    self.rm.rollback(xid)
            else:
                self._doom(tx, describe_failure(failure))
        except Exception as error:
            log.warning("could not abandon branch %s after %s: %s", xid, type(failure).__name__, error)

    # ------------------------------------------------------------ coordinator calls

    def _check_coordinator(self, named: str) -> str:
        """``named`` (a caller's coordinator metadata) in the form channels are kept under, if
        the stub may call it; "" stays "" (the stub's own coordinator is meant).

        Raises InvalidArgumentError when it is not ``HOST:PORT[,HOST:PORT...]``,
        PermissionDeniedError when an address in it is not trusted. The message names the
        address, never the token.
        """
        if not named:
            return named
        known = self._checked.get(named)
        if known is not None:
            return known
        addresses = parse_addresses(named)
        if self._trusted is None:
            if self._metadata:
                raise PermissionDeniedError(
                    f"coordinator {named} named by the caller is refused: this participant has a "
                    "token and trusts no coordinator (give it coordinator or allowed_coordinators)"
                )
        else:
            for address in addresses:
                if not self._trusted.allows(address):
                    raise PermissionDeniedError(
                        f"coordinator {address} named by the caller is not among the coordinators "
                        "this participant trusts (its coordinator and allowed_coordinators)"
                    )
        canonical = ",".join(str(address) for address in addresses)
        if len(self._checked) >= _MAX_CHANNELS:
            self._checked.clear()  # bounded: a caller naming ever new coordinators costs parsing only
        self._checked[named] = canonical
        return canonical

    def _coordinator(self, tx: TxContext) -> tuple[str, coordinator_pb2_grpc.CoordinatorStub]:
        address = self._check_coordinator(tx.coordinator) or self.coordinator
        if not address:
            raise FailedPreconditionError(
                f"transaction {tx.gtrid} names no coordinator and the stub was given none"
            )
        with self._lock:
            if address not in self._coordinators:
                if len(self._coordinators) >= _MAX_CHANNELS:
                    raise ResourceExhaustedError(
                        f"coordinator {address} refused: this participant already keeps channels "
                        f"to {_MAX_CHANNELS} coordinators"
                    )
                channel = coordinator_channel(address, self._credentials, call_timeout=self.call_timeout)
                self._coordinators[address] = (channel, coordinator_pb2_grpc.CoordinatorStub(channel))
            return address, self._coordinators[address][1]

    def _timeout(self, tx: TxContext) -> float:
        remaining = tx.remaining()
        return self.call_timeout if remaining is None else min(self.call_timeout, remaining)

    def _enlist(self, tx: TxContext, xid: Xid) -> None:
        address, coordinator = self._coordinator(tx)
        remaining = tx.remaining()
        request = coordinator_pb2.EnlistRequest(
            gtrid=xid.gtrid,
            bqual=xid.bqual,
            rm_id=self.rm.rm_id,
            endpoint=self.advertise,
            # The first the coordinator may hear of an initiator-made gtrid: what remains of it.
            timeout_ms=0 if remaining is None else max(1, round(remaining * 1000)),
        )
        what = f"{self.rm.rm_id} in transaction {xid.gtrid} at coordinator {address}"
        span = tracing.span("xatm.stub.enlist", gtrid=xid.gtrid, bqual=xid.bqual, rm_id=self.rm.rm_id)
        try:
            with span:
                call = coordinator.Enlist(
                    request, timeout=self._timeout(tx), metadata=(*self._metadata, *tracing.inject())
                )
            reply = checked_reply(
                call,
                COORDINATOR_SERVICE,
                "Enlist",
                f"coordinator {address}",
            )
        except (grpc.RpcError, MalformedReply) as error:
            failure = to_xatm_error(error)
            raise EnlistError(failure.status, f"cannot enlist {what}: {failure.message}") from None
        if reply.code != XaCode.XA_OK:
            code = XaCode(reply.code)
            status = Status.ALREADY_EXISTS if code is XaCode.XAER_DUPID else Status.ABORTED
            detail = f": {reply.reason}" if reply.reason else ""
            raise EnlistError(status, f"coordinator refused to enlist {what}: {code.name}{detail}", code)

    def _call_failed(self, tx: TxContext, reason: str) -> None:
        """A handler that opened this RM's branch failed, maybe after its block ended well
        (``set_code`` and return): the work it did must not commit either."""
        with self._lock:
            branch = self._branches.get(tx.gtrid)
        if branch is not None and branch.enlisted:
            self._doom(tx, reason)

    def _doom(self, tx: TxContext, reason: str) -> None:
        """Mark ``tx`` rollback-only (once per branch) because work of this RM in it failed: in
        the report to the caller when it takes one, else at the coordinator."""
        with self._lock:
            branch = self._branches.get(tx.gtrid)
            if branch is not None:
                if branch.doomed:
                    return
                branch.doomed = True
        # Eager transactions are marked at the coordinator, which times them out by itself.
        collector: Reported | None = None if tx.enlist else reported(tx)
        if collector is not None:
            collector.doom(f"{self.rm.rm_id}: {reason}")
            return
        try:
            self._mark_rollback_only(tx, reason)
        except Exception:
            # The coordinator was not told: the branch must vote no by itself, so its work goes now.
            if branch is not None:
                with contextlib.suppress(XaError):
                    self.rm.rollback(branch.xid)
            raise

    def _mark_rollback_only(self, tx: TxContext, why: str) -> None:
        _, coordinator = self._coordinator(tx)
        reason = f"{self.rm.rm_id}: {why}"[:500]
        request = coordinator_pb2.MarkRollbackOnlyRequest(gtrid=tx.gtrid, reason=reason)
        try:
            coordinator.MarkRollbackOnly(request, timeout=self._timeout(tx), metadata=self._metadata)
        except grpc.RpcError as error:
            raise to_xatm_error(error) from None

    # ------------------------------------------------------------ bookkeeping

    def _completed(self, xid: Xid) -> None:
        """The coordinator reached the branch (prepare/commit/rollback): stop remembering it."""
        with self._lock:
            branch = self._branches.get(xid.gtrid)
            if branch is not None and branch.xid.bqual == xid.bqual:
                del self._branches[xid.gtrid]
            self._reached[xid] = None
            while len(self._reached) > _PRUNE_AT:
                self._reached.popitem(last=False)

    def _prune_locked(self) -> None:
        # A reported branch stays until ``resolve_in_doubt`` ends it: nobody else would.
        now = time.monotonic()
        expired = [g for g, b in self._branches.items() if b.deadline is not None and b.deadline < now]
        for gtrid in expired:
            if not self._branches[gtrid].reported:
                del self._branches[gtrid]

    # ------------------------------------------------------------ in-doubt resolution

    def resolve_in_doubt(self) -> dict[str, int]:
        """Ask the coordinator the outcome of every prepared xatm branch the RM holds, and apply it.

        Run at start-up (a participant that crashed with prepared branches) and periodically
        (a coordinator that lost an undecided transaction answers rollback: presumed abort).
        Branches still undecided are left to the coordinator. Returns counts by action.
        """
        counts = {"commit": 0, "rollback": 0, "pending": 0, "unreachable": 0, "foreign": 0, "expired": 0}
        if not self.coordinator:
            return counts
        if not self._registered:
            self.register()
        for xid in self.rm.recover():
            if xid.format_id != FORMAT_ID:
                continue
            action = self._resolve(xid)
            counts[action] += 1
        # Active branches past their deadline that the coordinator never reached. One only reported
        # was never heard of unless a commit got there, which would have reached it by now: it
        # ends here. One enlisted may have been lost in a coordinator crash: ask, and a rollback
        # answer ends it here.
        horizon = time.monotonic() - self.call_timeout
        with self._lock:
            stale = [b for b in self._branches.values() if b.deadline is not None and b.deadline < horizon]
        for branch in stale:
            if branch.reported:
                counts["expired"] += self._expire(branch)
        for xid in [b.xid for b in stale if not b.reported]:
            action = self._resolve(xid)
            counts[action] += 1
            if action == "rollback":
                self._completed(xid)
        if counts["commit"] or counts["rollback"] or counts["expired"]:
            log.info("resolved in-doubt branches of %s: %s", self.rm.rm_id, counts)
        return counts

    def _expire(self, branch: _Branch) -> int:
        """Roll back a reported branch whose transaction is past its deadline and that no
        coordinator reached; 1 when it was rolled back here.

        Under the stub's lock, which the Participant service takes (``_completed``) before it
        prepares or commits a branch: either the coordinator reached the branch first, and it is
        left alone (it may be prepared), or the rollback happens first, and a late prepare finds
        no branch (XAER_NOTA, a no vote), a late one-phase commit likewise.
        """
        with self._lock:
            if self._branches.get(branch.xid.gtrid) is not branch:
                return 0  # the coordinator reached it, or it was ended meanwhile
            del self._branches[branch.xid.gtrid]
            self._reached[branch.xid] = None
            try:
                self.rm.rollback(branch.xid)
            except XaError as error:
                if error.code != XaCode.XAER_NOTA and not error.code.is_rollback:
                    log.warning("could not roll back expired branch %s: %s", branch.xid, error)
                    return 0
        log.warning(
            "rolled back branch %s of %s: past the transaction's deadline and no coordinator asked for it",
            branch.xid.bqual,
            branch.xid.gtrid,
        )
        return 1

    def register(self) -> bool:
        """Tell the default coordinator where this RM is served now, so that branches it still
        drives at an address this process no longer has (it restarted elsewhere) move here.

        Done by the first in-doubt pass (at start-up) and retried by later passes until the
        coordinator has answered; True once it has. Never raises: a failure is logged.
        """
        _, coordinator = self._coordinator(TxContext("", self.coordinator or ""))
        request = coordinator_pb2.RegisterParticipantRequest(rm_id=self.rm.rm_id, endpoint=self.advertise)
        try:
            reply = coordinator.RegisterParticipant(
                request, timeout=self.call_timeout, metadata=self._metadata
            )
        except grpc.RpcError as error:
            failure = to_xatm_error(error)
            if failure.status == Status.UNIMPLEMENTED:
                # An older coordinator: asking again on every pass would only repeat the refusal.
                log.info("coordinator %s does not take registrations", self.coordinator)
                self._registered = True
                return False
            log.warning(
                "could not register %s at %s with coordinator %s: %s",
                self.rm.rm_id,
                self.advertise,
                self.coordinator,
                failure.message,
            )
            return False
        self._registered = True
        if reply.moved:
            log.info(
                "coordinator moved %d branch(es) of %s to %s", reply.moved, self.rm.rm_id, self.advertise
            )
        return True

    def _resolve(self, xid: Xid) -> str:
        address, coordinator = self._coordinator(TxContext(xid.gtrid, self.coordinator or ""))
        wire = xa_pb2.Xid(format_id=xid.format_id, gtrid=xid.gtrid, bqual=xid.bqual)
        # Saying who asks and where it is served lets the coordinator follow a move.
        request = coordinator_pb2.QueryOutcomeRequest(xid=wire, rm_id=self.rm.rm_id, endpoint=self.advertise)
        peer = f"coordinator {address}"
        try:
            reply = checked_reply(
                coordinator.QueryOutcome(request, timeout=self.call_timeout, metadata=self._metadata),
                COORDINATOR_SERVICE,
                "QueryOutcome",
                peer,
            )
            if reply.decision == xa_pb2.DECISION_UNSPECIFIED:
                raise MalformedReply(f"{peer} answered QueryOutcome without a decision")
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
                return "foreign"  # begun by another coordinator: not ours to decide
            return "unreachable"
        except MalformedReply as error:
            log.warning("in-doubt %s left as it is: %s", xid, error.message)
            return "unreachable"
        decision = Decision(reply.decision)
        if decision == Decision.PENDING:
            return "pending"
        code = XaCode.XA_OK
        try:
            if decision == Decision.COMMIT:
                self.rm.commit(xid, one_phase=False)
            else:
                self.rm.rollback(xid)
        except XaError as error:
            if error.code != XaCode.XAER_NOTA:  # NOTA: the coordinator got there first
                log.warning("could not apply %s to in-doubt %s: %s", decision.name, xid, error)
                return "unreachable"
            code = error.code
        self._report(coordinator, wire, decision, code)
        return decision.name.lower()

    def _report(
        self,
        coordinator: coordinator_pb2_grpc.CoordinatorStub,
        wire: xa_pb2.Xid,
        decision: Decision,
        code: XaCode,
    ) -> None:
        """Tell the coordinator what the RM answered to the outcome applied here, so it records the
        branch as done instead of calling an address this process may no longer have.

        Best effort: if the report is lost, the coordinator's own call gets XAER_NOTA and ends the same.
        """
        phase = xa_pb2.PHASE_COMMIT if decision == Decision.COMMIT else xa_pb2.PHASE_ROLLBACK
        request = coordinator_pb2.ReportOutcomeRequest(
            xid=wire,
            rm_id=self.rm.rm_id,
            phase=phase,
            code=proto_enum(code, xa_pb2.XaCode),
            reason="in-doubt resolution",
        )
        try:
            coordinator.ReportOutcome(request, timeout=self.call_timeout, metadata=self._metadata)
        except grpc.RpcError as error:
            failure = to_xatm_error(error)
            if failure.status != Status.NOT_FOUND:  # NOT_FOUND: presumed abort, nothing to tell
                log.warning("could not report %s of %s: %s", decision.name, wire.gtrid, failure.message)

    def start_recovery(self, interval: float = 30.0) -> None:
        """Resolve in-doubt branches now and then every ``interval`` seconds, in a daemon thread."""
        if self._recovery is not None:
            return
        stop = self._recovery_stop

        def loop() -> None:
            while True:
                try:
                    self.resolve_in_doubt()
                except Exception:
                    log.exception("in-doubt resolution of %s failed; will retry", self.rm.rm_id)
                if stop.wait(interval):
                    return

        self._recovery = threading.Thread(target=loop, name=f"xatm-recovery-{self.rm.rm_id}", daemon=True)
        self._recovery.start()

    def close(self) -> None:
        """Stop recovery and close the coordinator channels (the RM is the caller's to close)."""
        self._recovery_stop.set()
        if self._recovery is not None:
            self._recovery.join(timeout=5)
        with self._lock:
            channels, self._coordinators = self._coordinators, {}
        for channel, _ in channels.values():
            channel.close()


class _GuardedServerInterceptor(grpc.ServerInterceptor):
    """``RefuseUndecodable(ServerInterceptor())`` with each method's handler wrapped once, not on
    every call: neither wrapping depends on the call."""

    def __init__(self) -> None:
        self._inner = ServerInterceptor()
        self._guarded = HandlerCache(lambda handler, method: guard(handler, method, aio=False) or handler)

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = self._inner.intercept_service(continuation, handler_call_details)
        return self._guarded.get(handler, handler_call_details.method)


def _trusted_coordinators(coordinator: str | None, allowed: str | Iterable[str]) -> AllowList | None:
    """The coordinators a caller may name: the addresses of ``coordinator`` and the entries of
    ``allowed``; None when both are empty (trust depends on the token, see ``_check_coordinator``).

    Raises InvalidArgumentError naming a malformed entry.
    """
    if coordinator:
        try:
            parse_addresses(coordinator)  # a host name without a port is no coordinator address
        except AddressError as err:
            raise InvalidArgumentError(f"coordinator {err.message}") from None
    text = allowed if isinstance(allowed, str) else ",".join(allowed)
    try:
        trusted = AllowList.parse(f"{coordinator or ''},{text}", ports=True)
    except ValueError as err:
        raise InvalidArgumentError(f"allowed_coordinators: {err}") from None
    return trusted or None
