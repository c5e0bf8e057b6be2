"""Per-token bounds on open transactions, kept where ``Begin`` is served.

The coordinator's ``max_open_transactions`` bounds everyone together, so one service token could
otherwise take every slot for up to the longest timeout. A service token's ``max_open`` (in the
auth file) bounds that token alone: ``Begin`` past it is refused with RESOURCE_EXHAUSTED.

A slot frees when its transaction ends. No completion callback is needed: the transactions a
token holds are looked up in the engine when it begins another, and those that ended (or are no
longer kept) drop out. Each token's set is thus never larger than its bound.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from xatm.coordinator.engine.core import Engine
from xatm.coordinator.server.auth import Principal
from xatm.participant.errors import ResourceExhaustedError

__all__ = ["OpenQuota"]


class OpenQuota:
    """Open transactions per token name, for tokens that have a ``max_open``."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._open: dict[str, set[str]] = {}
        #: Begins admitted but not yet answered: counted, so that concurrent ones cannot overshoot.
        self._starting: dict[str, int] = {}

    def open_count(self, name: str) -> int:
        """Transactions token ``name`` has open now (and has begun through this quota)."""
        held = self._open.get(name, set())
        held -= {gtrid for gtrid in held if self._ended(gtrid)}
        return len(held)

    @contextlib.contextmanager
    def admit(self, principal: Principal) -> Iterator[Callable[[str], None]]:
        """A slot for one begin by ``principal``; call the yielded function with the new gtrid.

        Raises ResourceExhaustedError when the token already holds ``max_open`` transactions.
        """
        bound, name = principal.max_open, principal.name
        if bound is None:
            yield _ignore
            return
        starting = self._starting.get(name, 0)
        if self.open_count(name) + starting >= bound:
            raise ResourceExhaustedError(
                f"token {name!r} has {bound} transactions open (its max_open); finish one first"
            )
        self._starting[name] = starting + 1
        try:
            yield self._open.setdefault(name, set()).add
        finally:
            self._starting[name] -= 1

    def _ended(self, gtrid: str) -> bool:
        tx = self.engine.known(gtrid)
        return tx is None or tx.completed_at is not None


def _ignore(gtrid: str) -> None:
    """Nothing to remember for a token without a bound."""
