"""The XA codes each branch answered, as the transaction log records them.

The engine keeps only a branch's last answer; operators looking at a stuck transaction want
every answer (the RMFAIL retries before the commit, the late heuristic). ``BranchHistory`` sits
between the engine and its log: it passes every call through and indexes the branch results it
sees, those replayed at start-up included. A checkpoint keeps one snapshot per transaction, so a
transaction rebuilt from a snapshot starts its history with the answer the snapshot holds; a
checkpoint also tells which transactions are still kept, and the others' histories are dropped.
A yes vote read while its transaction prepares has no record of its own: the commit decision
carries every branch's vote, and is indexed as those answers.

A transaction's answers are kept as the records that carry them (a branch result, a commit
decision, a snapshot), each serialised without its gtrid and preceded by its length, one after
the other in one bytes object, and turned into ``Answer`` objects only when somebody asks: a long
history then holds no Python object per answer, which would cost memory and the garbage
collector's time.

At start-up the replay tells the index of each record as it folds it (``AnswerIndex``), with the
bytes the log read it from when the log gives them (the file WAL does), so nothing is serialised
again; what a transaction adds is joined to its kept bytes once, when its end record is read (a
bounded number of records are held until then). What is kept, and which transactions are dropped
when there are too many, is the same as if every record had been indexed as it came.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from operator import attrgetter

from xatm.coordinator.journal import Indexed, seconds
from xatm.coordinator.txlog._proto import wal_pb2
from xatm.coordinator.txlog.interface import Encoded, LogStopped, TxLog, decoded
from xatm.participant.xa import BranchStatus, Phase, XaCode

__all__ = ["MAX_ANSWERS", "MAX_TRANSACTIONS", "Answer", "BranchHistory"]

#: Answers kept per branch (the newest); a branch retried for hours keeps its latest ones.
MAX_ANSWERS = 200
#: Transactions whose histories are kept at most (the least recently written are dropped first).
MAX_TRANSACTIONS = 100_000
#: Records read at start-up are held apart until their transaction ends, at most this many per
#: transaction and for this many transactions (all held are joined when there are more): the joins
#: stay short for a transaction whose end is far off or never comes.
MAX_HELD = 16
MAX_HOLDING = 1024
#: Each kept record is preceded by its length.
_LENGTH = struct.Struct("<I")
#: A transaction's kept records are trimmed to ``MAX_ANSWERS`` per branch each time their size
#: passes a power of two from this one on (so a long-retried branch stays bounded, at a cost
#: that stays proportional to what was added).
_TRIM_FROM = 1 << 16


@dataclass(frozen=True, slots=True)  # slotted: one per branch answer, up to millions kept
class Answer:
    """One answer of a branch: wall-clock ``time`` (s since the epoch, as logged), the phase it
    answered, its XA code, the reason given, the branch status it led to (None for an answer that
    came after the branch was closed) and whether it came from a checkpoint's snapshot."""

    time: float
    phase: Phase | None
    code: XaCode
    reason: str
    status: BranchStatus | None
    snapshot: bool = False


class BranchHistory(TxLog):
    """A TxLog that forwards to ``inner`` and remembers every branch's answers by gtrid."""

    def __init__(self, inner: TxLog):
        self.inner = inner
        #: gtrid -> its answer records, framed (see the module docstring), oldest first; ordered
        #: by when each was last written to. A replay gives the engine's history and this the
        #: same gtrid strings, not copies.
        self._answers: OrderedDict[str, bytes] = OrderedDict()
        #: gtrid -> records replayed for it and not yet joined to its bytes in ``_answers``, each
        #: as it is kept, oldest first.
        self._pending: dict[str, list[bytes]] = {}

    def answers(self, gtrid: str) -> dict[str, list[Answer]]:
        """bqual -> the answers of that branch, oldest first (the newest ``MAX_ANSWERS``); {} for
        an unknown gtrid."""
        self._settle(gtrid)
        answers: dict[str, list[Answer]] = {}
        for record in _records(self._answers.get(gtrid, b"")):
            for bqual, answer in _answers_of(record):
                answers.setdefault(bqual, []).append(answer)
        for got in answers.values():
            del got[:-MAX_ANSWERS]
        return answers

    def _index(self, record: wal_pb2.WalRecord) -> None:
        """Index a record as it is appended."""
        kind = record.WhichOneof("body")
        if kind == "branch_result" or (kind == "decision" and record.decision.HasField("transaction")):
            self._add(record.gtrid, _kept(record.SerializeToString()))
        elif kind == "snapshot":
            self._from_snapshot(record)

    def _from_snapshot(self, record: wal_pb2.WalRecord) -> None:
        gtrid = record.gtrid
        if gtrid in self._answers:  # already seen live: the history is longer than the snapshot
            return
        self._answers[gtrid] = b""
        payload = record.SerializeToString()
        if _has_answers(record, payload):
            self._add(gtrid, _kept(payload))
        else:
            self._trim_count()

    def _add(self, gtrid: str, kept: bytes) -> None:
        before = self._answers.pop(gtrid, b"")
        self._grow(gtrid, before, before + kept)
        self._trim_count()

    # ----------------------------------------------------------------- fed by the replay

    def answered(self, gtrid: str, record: wal_pb2.WalRecord, kind: str, payload: memoryview | None) -> None:
        """Index a replayed record as ``_index`` would, from the bytes it was read from when the
        log gives them; what is added for a transaction is joined to its kept bytes once, when
        its end record is read (see the module docstring)."""
        answers = self._answers
        data: bytes | memoryview = record.SerializeToString() if payload is None else payload
        if kind == "snapshot":  # as ``_from_snapshot``
            if gtrid in answers:
                return
            answers[gtrid] = b""
            self._trim_count()
            if not _has_answers(record, bytes(data)):
                return
        if gtrid in answers:
            answers.move_to_end(gtrid)
        else:
            answers[gtrid] = b""
            self._trim_count()
        held = self._pending.get(gtrid)
        if held is not None:
            held.append(_kept(data))
            if len(held) > MAX_HELD:
                self._settle(gtrid)
        else:
            self._pending[gtrid] = [_kept(data)]
            if len(self._pending) > MAX_HOLDING:
                self.replayed()

    def ended(self, gtrid: str) -> None:
        """The replay has read ``gtrid``'s end record: what is held for it is kept now."""
        self._settle(gtrid)

    def replayed(self) -> None:
        """Every record is replayed (or records of too many transactions are held): what is
        held is kept now."""
        for gtrid in list(self._pending):
            self._settle(gtrid)

    def _settle(self, gtrid: str) -> None:
        """Join the records held for ``gtrid`` to its kept bytes (whose place they keep)."""
        held = self._pending.pop(gtrid, None)
        if held is not None:
            kept = self._answers[gtrid]  # dropping a transaction drops what was held for it
            held.insert(0, kept)
            self._grow(gtrid, kept, b"".join(held))

    def _grow(self, gtrid: str, kept: bytes, grown: bytes) -> None:
        """``gtrid``'s kept bytes are now ``grown`` (``kept`` and more), trimmed when their size
        passes a power of two from ``_TRIM_FROM`` on."""
        if len(grown) >= _TRIM_FROM and len(grown).bit_length() > len(kept).bit_length():
            grown = _trimmed(grown)
        self._answers[gtrid] = grown

    def _trim_count(self) -> None:
        while len(self._answers) > MAX_TRANSACTIONS:
            self._drop(next(iter(self._answers)))

    def _drop(self, gtrid: str) -> None:
        """Forget ``gtrid``'s answers, those held included."""
        self._answers.pop(gtrid, None)
        self._pending.pop(gtrid, None)

    # ----------------------------------------------------------------- TxLog, forwarded

    async def open(self) -> Iterable[wal_pb2.WalRecord]:
        # Indexed as the engine replays them: a long log is never held whole.
        return Indexed(await self.inner.open(), self)

    async def append(self, record: wal_pb2.WalRecord, *, force: bool = False) -> None:
        await self.inner.append(record, force=force)
        self._index(record)

    async def checkpoint(self, snapshot: Iterable[wal_pb2.WalRecord | Encoded]) -> None:
        # Only what the engine dropped goes: a transaction begun while the checkpoint is written
        # is in neither the snapshot nor ``before``.
        before = set(self._answers)
        kept: set[str] = set()
        unseen: list[wal_pb2.WalRecord | Encoded] = []

        def watched() -> Iterator[wal_pb2.WalRecord | Encoded]:
            # Runs where the log consumes the snapshot (possibly another thread): it reads only
            # the records and ``before``, a copy, and leaves ``_answers`` to the loop.
            for item in snapshot:
                body = item.body if isinstance(item, Encoded) else item.WhichOneof("body")
                if body == "snapshot":
                    kept.add(item.gtrid)
                    if item.gtrid not in before:
                        unseen.append(item)
                yield item

        await self.inner.checkpoint(watched())
        for gtrid in before - kept:
            self._drop(gtrid)
        for item in unseen:
            self._from_snapshot(decoded(item))

    async def watch(self, interval: float) -> LogStopped:
        return await self.inner.watch(interval)

    @property
    def stopped(self) -> LogStopped | None:
        return self.inner.stopped

    @property
    def available(self) -> bool:
        """Whether the inner log takes new transactions now (False while a replicated log has no
        quorum); a log that never refuses has no such property."""
        return bool(getattr(self.inner, "available", True))

    async def close(self) -> None:
        await self.inner.close()


def _kept(payload: bytes | memoryview) -> bytes:
    """A serialised record as it is kept: without its gtrid (the key it is kept under says it),
    preceded by its length.

    Cut from the bytes: a record's time and gtrid come first (fields 1 and 2, as protobuf writes
    them, in field order), and a whole field taken out leaves the rest a record all the same; bytes
    that do not start so are kept whole."""
    size = len(payload)
    at = 2 + payload[1] if size > 1 and payload[0] == 0x0A and payload[1] < 0x80 else 0
    if at + 1 < size and payload[at] == 0x12 and payload[at + 1] < 0x80:
        cut = at + 2 + payload[at + 1]
        if cut <= size:
            return b"".join((_LENGTH.pack(size - cut + at), payload[:at], payload[cut:]))
    return _LENGTH.pack(size) + payload


def _has_answers(record: wal_pb2.WalRecord, payload: bytes) -> bool:
    """Whether a snapshot record (serialised as ``payload``) holds an answer of any branch (one
    without is not kept). A branch with an answer has ``has_last_code`` (field 10, true) written
    as these two bytes, so most snapshots without one are told from their bytes alone."""
    return _HAS_CODE_BYTES in payload and any(map(_HAS_CODE, record.snapshot.branches))


_HAS_CODE_BYTES = b"\x50\x01"
_HAS_CODE = attrgetter("has_last_code")


def _spans(kept: bytes) -> Iterator[tuple[int, int]]:
    """Where each framed record of a transaction's kept bytes starts and ends, in order."""
    pos, length_at, size = 0, _LENGTH.unpack_from, _LENGTH.size
    while pos < len(kept):
        end = pos + size + length_at(kept, pos)[0]
        yield pos, end
        pos = end


def _records(kept: bytes) -> Iterator[wal_pb2.WalRecord]:
    """The records of a transaction's kept bytes, in order."""
    parse = wal_pb2.WalRecord.FromString
    for pos, end in _spans(kept):
        yield parse(kept[pos + _LENGTH.size : end])


def _answers_of(record: wal_pb2.WalRecord) -> Iterator[tuple[str, Answer]]:
    """(bqual, answer) of a kept record: a branch result's one, a snapshot's last codes, the
    votes a commit decision carries."""
    when = seconds(record.time)
    kind = record.WhichOneof("body")
    if kind == "branch_result":
        r = record.branch_result
        yield r.bqual, _answer(when, r.phase, r.code, r.reason, r.status, snapshot=False)
        return
    if kind == "decision":
        branches, snapshot = record.decision.transaction.branches, False
    else:
        branches, snapshot = record.snapshot.branches, True
    for b in branches:
        if b.has_last_code:
            yield (
                b.bqual,
                _answer(when, b.last_phase, b.last_code, b.last_reason, b.status, snapshot=snapshot),
            )


def _answer(when: float, phase: int, code: int, reason: str, status: int, *, snapshot: bool) -> Answer:
    """An ``Answer`` from the wire values (0: no phase, no status)."""
    return Answer(
        when,
        Phase(phase) if phase else None,
        XaCode(code),
        reason,
        BranchStatus(status) if status else None,
        snapshot=snapshot,
    )


def _trimmed(kept: bytes) -> bytes:
    """``kept`` without the branch results older than each branch's newest ``MAX_ANSWERS``
    answers."""
    spans = list(_spans(kept))
    records = list(_records(kept))
    left: dict[str, int] = {}
    for record in records:
        for bqual, _answer in _answers_of(record):
            left[bqual] = left.get(bqual, 0) + 1
    out = bytearray()
    for (pos, end), record in zip(spans, records, strict=True):
        if record.WhichOneof("body") == "branch_result":
            bqual = record.branch_result.bqual
            left[bqual] -= 1
            if left[bqual] >= MAX_ANSWERS:
                continue
        out += kept[pos:end]
    return bytes(out)
