"""The coordinator's collector settings once started."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from xatm.coordinator import heap


@pytest.fixture
def restored() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


@pytest.mark.usefixtures("restored")
def test_what_start_up_built_is_frozen_and_young_passes_are_spaced() -> None:
    kept = [[n] for n in range(1000)]  # containers alive at start-up
    older, oldest = gc.get_threshold()[1:]
    heap.settle()
    assert gc.get_freeze_count() >= len(kept)
    assert gc.get_threshold() == (heap.YOUNG_THRESHOLD, older, oldest)
