"""The coordinator process's garbage-collector settings.

Almost everything the coordinator allocates per transaction (protobuf messages, futures,
records) is freed by reference counting as soon as the transaction moves on; the cyclic
collector finds nearly nothing, yet CPython's default runs it every 700 container
allocations, and each of its older passes walks everything kept (modules, the transaction
history). Measured in ``xatm bench`` the defaults cost a few percent of the coordinator's CPU.
So, once started: what start-up built (and the history replayed from the log) is frozen out
of every later collection, and the youngest generation is collected less often.
"""

from __future__ import annotations

import gc

__all__ = ["YOUNG_THRESHOLD", "settle"]

#: Container allocations (net of frees) between two collections of the youngest generation.
YOUNG_THRESHOLD = 20_000


def settle() -> None:
    """Call once the process has started: collect once, freeze what is left, space the passes."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)
