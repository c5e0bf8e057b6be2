"""What a transaction held open costs the engine: nothing made before it is needed, strings shared."""

from __future__ import annotations

import gc
import tracemalloc

from tests.component.conftest import Rig
from xatm.participant.xa import TxStatus as S

#: Bytes the engine may hold per transaction begun with two branches enlisted eagerly and left
#: open (gtrid, transaction, branches, lookups; about 770 with CPython 3.11, 1,600 with a loop timer each).
OPEN_TRANSACTION_BYTES = 1100


async def test_an_open_transaction_holds_no_prepare_set_or_savepoints_until_needed(rig: Rig) -> None:
    engine = await rig.start()
    tx = await rig.tx("a", "b")
    assert tx.awaiting_prepare is None and tx.savepoints is None
    savepoint = await engine.create_savepoint(tx.gtrid)
    assert tx.savepoints is not None and list(tx.savepoints) == [savepoint]
    result = await engine.commit(tx.gtrid)
    assert tx.status == S.COMMITTED and result.tx is tx
    assert tx.awaiting_prepare == set()  # made for the prepares, emptied by their answers


async def test_branches_of_open_transactions_share_rm_id_and_endpoint_strings(rig: Rig) -> None:
    engine = await rig.start()
    branches = []
    for n in range(2):
        tx = await engine.begin()
        # Built at run time, as a decoded request's strings are: equal, not the same object.
        rm_id, endpoint = "".join(["rm-", "a"]), "".join(["a.test:", "1"])
        await engine.enlist(tx.gtrid, f"b{n}", rm_id, endpoint)
        branches.append(tx.branches[f"b{n}"])
    first, second = branches
    assert first.rm_id is second.rm_id and first.endpoint is second.endpoint


async def test_transactions_held_open_cost_the_engine_a_bounded_number_of_bytes(rig: Rig) -> None:
    engine = await rig.start()
    for _ in range(20):  # one-off allocations (first transaction, first branch) done before measuring
        await rig.tx("a", "b", timeout_ms=600_000)
    count = 2000
    gc.collect()
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        for _ in range(count):
            tx = await engine.begin(600_000)
            for bqual in ("a", "b"):
                # Fresh strings per call, as a decoded request brings them.
                await engine.enlist(tx.gtrid, bqual * 1, "".join(["rm-", bqual]), "".join([bqual, ".test:1"]))
        del tx
        gc.collect()
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert engine.registry.open == count + 20
    assert (after - before) / count <= OPEN_TRANSACTION_BYTES
