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

At start-up the replay tells the index of each record that carries answers as it reads it
(``AnswerIndex``), so the least recently answered are dropped as they would have been, and hands
it each transaction's kept records when it has read them: a completed transaction's are one bytes
object, the same one the engine's history keeps, with the records that carry no answers among
them (they show none). What is shown, and which transactions are dropped when there are too many,
is the same as if every record had been indexed as it came.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from operator import attrgetter

from xatm.coordinator.journal import Indexed, seconds
from xatm.coordinator.txlog._proto import wal_pb2
from xatm.coordinator.txlog.interface import Encoded, LogStopped, TxLog, decoded
from xatm.coordinator.txlog.kept import kept_record, kept_records, kept_spans
from xatm.participant.xa import BranchStatus, Phase, XaCode

__all__ = ["MAX_ANSWERS", "MAX_TRANSACTIONS", "Answer", "BranchHistory"]

#: Answers kept per branch (the newest); a branch retried for hours keeps its latest ones.
MAX_ANSWERS = 200
#: Transactions whose histories are kept at most (the least recently written are dropped first).
MAX_TRANSACTIONS = 100_000
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
        #: gtrid -> its answer records, kept (see the module docstring), oldest first; ordered
        #: by when each was last written to. A replay gives the engine's history and this the
        #: same gtrid strings and the same bytes, not copies.
        self._answers: OrderedDict[str, bytes] = OrderedDict()

    def answers(self, gtrid: str) -> dict[str, list[Answer]]:
        """bqual -> the answers of that branch, oldest first (the newest ``MAX_ANSWERS``); {} for
        an unknown gtrid."""
        answers: dict[str, list[Answer]] = {}
        for record in kept_records(self._answers.get(gtrid, b"")):
            for bqual, answer in _answers_of(record):
                answers.setdefault(bqual, []).append(answer)
        for got in answers.values():
            del got[:-MAX_ANSWERS]
        return answers

    def _index(self, record: wal_pb2.WalRecord, payload: bytes | memoryview | None = None) -> None:
        """Index a record as it is appended (or read: ``payload``, the bytes it was read from)."""
        kind = record.WhichOneof("body")
        if kind == "branch_result" or (kind == "decision" and record.decision.HasField("transaction")):
            self._add(record.gtrid, kept_record(record.SerializeToString() if payload is None else payload))
        elif kind == "snapshot":
            self._from_snapshot(record)
        elif kind == "completed":
            self._from_completed(record.gtrid, record.completed.records)

    def _from_snapshot(self, record: wal_pb2.WalRecord) -> None:
        gtrid = record.gtrid
        if gtrid in self._answers:  # already seen live: the history is longer than the snapshot
            return
        self._answers[gtrid] = b""
        payload = record.SerializeToString()
        if _HAS_CODE_BYTES in payload and any(map(_HAS_CODE, record.snapshot.branches)):
            self._add(gtrid, kept_record(payload))
        else:
            self._trim_count()

    def _from_completed(self, gtrid: str, kept: bytes) -> None:
        """A checkpoint's completed transaction: its kept records, as a snapshot is taken (only
        for a gtrid not seen yet)."""
        if gtrid in self._answers:
            return
        self._answers[gtrid] = b""
        self._add(gtrid, kept)

    def _add(self, gtrid: str, kept: bytes) -> None:
        before = self._answers.pop(gtrid, b"")
        self._grow(gtrid, before, before + kept if before else kept)
        self._trim_count()

    # ----------------------------------------------------------------- fed by the replay

    def __contains__(self, gtrid: object) -> bool:
        return gtrid in self._answers

    def answered(self, gtrid: str) -> str | None:
        """A replayed record carries answers of ``gtrid``: it is now the most recently answered.
        Returns the gtrid dropped to make room (see ``AnswerIndex``): one at most, as there were
        no more than ``MAX_TRANSACTIONS`` before."""
        answers = self._answers
        if gtrid in answers:
            answers.move_to_end(gtrid)
            return None
        answers[gtrid] = b""
        if len(answers) <= MAX_TRANSACTIONS:
            return None
        dropped = next(iter(answers))
        del answers[dropped]
        return dropped

    def kept(self, gtrid: str, records: bytes) -> None:
        """The next kept records of ``gtrid`` (when it is kept): joined to what it has, in place."""
        before = self._answers.get(gtrid)
        if before == b"" and len(records) < _TRIM_FROM:  # most often: a transaction read whole
            self._answers[gtrid] = records
        elif before is not None:
            self._grow(gtrid, before, before + records if before else records)

    def indexed(self, record: wal_pb2.WalRecord, payload: memoryview | None) -> None:
        """A record read other than by the compact replay: indexed as it is read."""
        self._index(record, payload)

    def replayed(self) -> None:
        """Every record is replayed: nothing is left to do."""

    def _grow(self, gtrid: str, kept: bytes, grown: bytes) -> None:
        """``gtrid``'s kept bytes are now ``grown`` (``kept`` and more), trimmed when their size
        passes a power of two from ``_TRIM_FROM`` on."""
        if len(grown) >= _TRIM_FROM and len(grown).bit_length() > len(kept).bit_length():
            grown = _trimmed(grown)
        self._answers[gtrid] = grown

    def _trim_count(self) -> None:
        """Drop the least recently answered past ``MAX_TRANSACTIONS``."""
        while len(self._answers) > MAX_TRANSACTIONS:
            del self._answers[next(iter(self._answers))]

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
                if body in ("snapshot", "completed"):
                    kept.add(item.gtrid)
                    if item.gtrid not in before:
                        unseen.append(item)
                yield item

        await self.inner.checkpoint(watched())
        for gtrid in before - kept:
            self._answers.pop(gtrid, None)
        for item in unseen:
            record = decoded(item)
            if record.WhichOneof("body") == "completed":
                self._from_completed(record.gtrid, record.completed.records)
            else:
                self._from_snapshot(record)

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


#: A branch with an answer has ``has_last_code`` (field 10, true) written as these two bytes, so
#: most snapshots without one are told from their bytes alone.
_HAS_CODE_BYTES = b"\x50\x01"
_HAS_CODE = attrgetter("has_last_code")


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
    spans = list(kept_spans(kept))
    records = list(kept_records(kept))
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
