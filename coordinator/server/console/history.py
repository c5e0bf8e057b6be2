"""The XA codes each branch answered, as the transaction log records them.

The engine keeps only a branch's last answer; operators looking at a stuck transaction want
every answer (the RMFAIL retries before the commit, the late heuristic). ``BranchHistory`` sits
between the engine and its log: it passes every call through and indexes the branch results it
sees, those replayed at start-up included. A checkpoint keeps one snapshot per transaction, so a
transaction rebuilt from a snapshot starts its history with the answer the snapshot holds; a
checkpoint also tells which transactions are still kept, and the others' histories are dropped.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from xatm.coordinator.journal import seconds
from xatm.coordinator.txlog._proto import wal_pb2
from xatm.coordinator.txlog.interface import Encoded, LogStopped, TxLog, decoded
from xatm.participant.xa import BranchStatus, Phase, XaCode

__all__ = ["MAX_ANSWERS", "MAX_TRANSACTIONS", "Answer", "BranchHistory"]

#: Answers kept per branch (the newest); a branch retried for hours keeps its latest ones.
MAX_ANSWERS = 200
#: Transactions whose histories are kept at most (the least recently written are dropped first).
MAX_TRANSACTIONS = 100_000


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
        self._answers: OrderedDict[str, dict[str, list[Answer]]] = OrderedDict()

    def answers(self, gtrid: str) -> dict[str, list[Answer]]:
        """bqual -> the answers of that branch, oldest first; {} for an unknown gtrid."""
        return {bqual: list(got) for bqual, got in self._answers.get(gtrid, {}).items()}

    def _index(self, record: wal_pb2.WalRecord) -> None:
        kind = record.WhichOneof("body")
        if kind == "branch_result":
            result = record.branch_result
            self._add(
                record.gtrid,
                result.bqual,
                Answer(
                    seconds(record.time),
                    Phase(result.phase) if result.phase else None,
                    XaCode(result.code),
                    result.reason,
                    BranchStatus(result.status) if result.status else None,
                ),
            )
        elif kind == "snapshot":
            self._from_snapshot(record)

    def _indexing(self, records: Iterable[wal_pb2.WalRecord]) -> Iterator[wal_pb2.WalRecord]:
        """``records`` passed on as they are read, each indexed first."""
        for record in records:
            self._index(record)
            yield record

    def _from_snapshot(self, record: wal_pb2.WalRecord) -> None:
        snap = record.snapshot
        if snap.gtrid in self._answers:  # already seen live: the history is longer than the snapshot
            return
        self._answers[snap.gtrid] = {}
        for branch in snap.branches:
            if branch.has_last_code:
                answer = Answer(
                    seconds(record.time),
                    Phase(branch.last_phase) if branch.last_phase else None,
                    XaCode(branch.last_code),
                    branch.last_reason,
                    BranchStatus(branch.status) if branch.status else None,
                    snapshot=True,
                )
                self._add(snap.gtrid, branch.bqual, answer)

    def _add(self, gtrid: str, bqual: str, answer: Answer) -> None:
        branches = self._answers.setdefault(gtrid, {})
        self._answers.move_to_end(gtrid)
        kept = branches.setdefault(bqual, [])
        kept.append(answer)
        del kept[:-MAX_ANSWERS]
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
