"""The XA codes each branch answered, as the transaction log records them.

The engine keeps only a branch's last answer; operators looking at a stuck transaction want
every answer (the RMFAIL retries before the commit, the late heuristic). ``BranchHistory`` sits
between the engine and its log: it passes every call through and indexes the branch results it
sees, those replayed at start-up included. A checkpoint keeps one snapshot per transaction, so a
transaction rebuilt from a snapshot starts its history with the answer the snapshot holds; a
checkpoint also tells which transactions are still kept, and the others' histories are dropped.
A yes vote read while its transaction prepares has no record of its own: the commit decision
carries every branch's vote, and is indexed as those answers.

A transaction's answers are kept as the record bodies that carry them (a branch result, a
snapshot), each with its time, serialised one after the other in one bytes object, and turned into
``Answer`` objects only when somebody asks: a long history then holds no Python object per
answer, which would cost memory and the garbage collector's time.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from xatm.coordinator.txlog._proto import wal_pb2
from xatm.coordinator.txlog.interface import Encoded, LogStopped, TxLog, decoded
from xatm.participant.xa import BranchStatus, Phase, XaCode

__all__ = ["MAX_ANSWERS", "MAX_TRANSACTIONS", "Answer", "BranchHistory"]

#: Answers kept per branch (the newest); a branch retried for hours keeps its latest ones.
MAX_ANSWERS = 200
#: Transactions whose histories are kept at most (the least recently written are dropped first).
MAX_TRANSACTIONS = 100_000
#: Each kept record body is preceded by its length, its time (ns since the epoch) and its kind.
_ENTRY = struct.Struct("<IqB")
_RESULT, _SNAPSHOT, _DECISION = 0, 1, 2
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
        #: gtrid -> its branch results and snapshot (see the module docstring), oldest first.
        self._answers: OrderedDict[str, bytes] = OrderedDict()

    def answers(self, gtrid: str) -> dict[str, list[Answer]]:
        """bqual -> the answers of that branch, oldest first (the newest ``MAX_ANSWERS``); {} for
        an unknown gtrid."""
        answers: dict[str, list[Answer]] = {}
        for entry in _entries(self._answers.get(gtrid, b"")):
            for bqual, answer in _answers_of(entry):
                answers.setdefault(bqual, []).append(answer)
        for got in answers.values():
            del got[:-MAX_ANSWERS]
        return answers

    def _index(self, record: wal_pb2.WalRecord) -> None:
        kind = record.WhichOneof("body")
        if kind == "branch_result":
            self._add(record.gtrid, _entry(record, _RESULT, record.branch_result.SerializeToString()))
        elif kind == "decision" and record.decision.HasField("transaction"):
            self._add(record.gtrid, _entry(record, _DECISION, record.decision.SerializeToString()))
        elif kind == "snapshot":
            self._from_snapshot(record)

    def _indexing(self, records: Iterable[wal_pb2.WalRecord]) -> Iterator[wal_pb2.WalRecord]:
        """``records`` passed on as they are read, each indexed first."""
        for record in records:
            self._index(record)
            yield record

    def _from_snapshot(self, record: wal_pb2.WalRecord) -> None:
        gtrid = record.gtrid
        if gtrid in self._answers:  # already seen live: the history is longer than the snapshot
            return
        self._answers[gtrid] = b""
        snap = record.snapshot
        if any(branch.has_last_code for branch in snap.branches):
            self._add(gtrid, _entry(record, _SNAPSHOT, snap.SerializeToString()))
        else:
            self._trim_count()

    def _add(self, gtrid: str, entry: bytes) -> None:
        kept = self._answers.pop(gtrid, b"")
        grown = self._answers[gtrid] = kept + entry
        if len(grown) >= _TRIM_FROM and len(grown).bit_length() > len(kept).bit_length():
            self._answers[gtrid] = _trimmed(grown)
        self._trim_count()

    def _trim_count(self) -> None:
        while len(self._answers) > MAX_TRANSACTIONS:
            self._answers.popitem(last=False)

    # ----------------------------------------------------------------- TxLog, forwarded

    async def open(self) -> Iterable[wal_pb2.WalRecord]:
        # Indexed as the engine replays them: a long log is never held whole.
        return self._indexing(await self.inner.open())

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
            self._answers.pop(gtrid, None)
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


#: A kept entry: time (s since the epoch), kind, and the record body it holds.
_Entry = tuple[float, wal_pb2.BranchResultRecord | wal_pb2.TransactionSnapshot | wal_pb2.DecisionRecord]


def _entry(record: wal_pb2.WalRecord, kind: int, body: bytes) -> bytes:
    stamp = record.time
    return _ENTRY.pack(len(body), stamp.seconds * 1_000_000_000 + stamp.nanos, kind) + body


def _spans(kept: bytes) -> Iterator[tuple[int, int]]:
    """Where each entry of a transaction's kept bytes starts and ends, in order."""
    pos, entry_at, size = 0, _ENTRY.unpack_from, _ENTRY.size
    while pos < len(kept):
        end = pos + size + entry_at(kept, pos)[0]
        yield pos, end
        pos = end


def _entries(kept: bytes) -> Iterator[_Entry]:
    """The entries of a transaction's kept bytes, in order."""
    result, snapshot = wal_pb2.BranchResultRecord.FromString, wal_pb2.TransactionSnapshot.FromString
    for pos, end in _spans(kept):
        _, nanos, kind = _ENTRY.unpack_from(kept, pos)
        body = kept[pos + _ENTRY.size : end]
        if kind == _DECISION:
            yield nanos / 1e9, wal_pb2.DecisionRecord.FromString(body)
        else:
            yield nanos / 1e9, result(body) if kind == _RESULT else snapshot(body)


def _answers_of(entry: _Entry) -> Iterator[tuple[str, Answer]]:
    """(bqual, answer) of a kept entry: a branch result's one, a snapshot's last codes, the votes
    a commit decision carries."""
    when, body = entry
    if isinstance(body, wal_pb2.BranchResultRecord):
        yield body.bqual, _answer(when, body.phase, body.code, body.reason, body.status, snapshot=False)
        return
    if isinstance(body, wal_pb2.DecisionRecord):
        branches, snapshot = body.transaction.branches, False
    else:
        branches, snapshot = body.branches, True
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
    entries = list(zip(_spans(kept), _entries(kept), strict=True))
    left: dict[str, int] = {}
    for _, entry in entries:
        for bqual, _answer in _answers_of(entry):
            left[bqual] = left.get(bqual, 0) + 1
    out = bytearray()
    for (pos, end), (_, body) in entries:
        if isinstance(body, wal_pb2.BranchResultRecord):
            left[body.bqual] -= 1
            if left[body.bqual] >= MAX_ANSWERS:
                continue
        out += kept[pos:end]
    return bytes(out)
