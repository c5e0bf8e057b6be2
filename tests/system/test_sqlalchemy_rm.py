"""SqlAlchemyRM: ORM sessions as branches, on PostgreSQL and on MariaDB, with a real coordinator.

Each test runs once per dialect. The global-transaction tests link one SqlAlchemyRM per database
into this process through a ParticipantStub (as a service would) and let a coordinator process
drive two-phase commit across both; the verb tests drive the RM directly.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import CheckConstraint, Engine, String, create_engine, select, text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from tests.bank_system import TEST_COORDINATOR_ENV
from tests.mariadb import MariaDB, xa_prepared
from tests.pgcluster import PgCluster
from tests.system.test_rm_contract import Linked
from xatm.coordinator.tools.procs import Proc, coordinator_proc
from xatm.participant import AsyncTransactionManager, TransactionManager, TransactionRolledBack
from xatm.participant.errors import InvalidArgumentError
from xatm.participant.stores.base import BranchEnded
from xatm.participant.stores.sqlalchemy import SqlAlchemyRM
from xatm.participant.stores.sqlalchemy_async import AsyncSqlAlchemyRM
from xatm.participant.xa import XaCode, XaError, Xid, new_bqual, new_gtrid


class Base(DeclarativeBase):
    pass


class Account(Base):
    __tablename__ = "orm_accounts"
    __table_args__ = (CheckConstraint("balance >= 0", name="orm_balance_not_negative"),)

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    balance: Mapped[int]


@pytest.fixture(scope="module")
def engines(pg_cluster: PgCluster, mariadb: MariaDB) -> Iterator[dict[str, Engine]]:
    pg_cluster.create_database("orm_test")
    mariadb.create_database("orm_test")
    made = {
        "postgresql": create_engine(f"postgresql+psycopg://postgres@127.0.0.1:{pg_cluster.port}/orm_test"),
        "mariadb": create_engine(f"mysql+pymysql://root@127.0.0.1:{mariadb.port}/orm_test"),
    }
    yield made
    for engine in made.values():
        engine.dispose()


@pytest.fixture
def fresh(engines: dict[str, Engine], pg_cluster: PgCluster, mariadb: MariaDB) -> Iterator[dict[str, Engine]]:
    """Both tables {alice: 100}; afterwards nothing may be left prepared in either server."""
    for engine in engines.values():
        Base.metadata.drop_all(engine)
        Base.metadata.create_all(engine)
        with engine.begin() as conn:
            conn.execute(Account.__table__.insert(), [{"name": "alice", "balance": 100}])
    yield engines
    with pg_cluster.connect() as conn:
        assert conn.execute("SELECT gid FROM pg_prepared_xacts").fetchall() == []
    assert xa_prepared(mariadb) == []


def committed(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {
            name: balance for name, balance in conn.execute(text("SELECT name, balance FROM orm_accounts"))
        }


def new_xid() -> Xid:
    return Xid(new_gtrid("orm"), new_bqual())


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    root: Path = tmp_path_factory.mktemp("orm")
    proc = coordinator_proc(root / "coordinator", root, env=TEST_COORDINATOR_ENV)
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
def linked(fresh: dict[str, Engine], coordinator: Proc) -> Iterator[dict[str, Linked]]:
    made = {
        name: Linked.serve(SqlAlchemyRM(engine, f"orm-{name}"), coordinator.address)
        for name, engine in fresh.items()
    }
    yield made
    for one in made.values():
        one.close()


def work(one: Linked, *, debit: int, new: str | None = None, autoflush: bool = True) -> None:
    """The service's business code: the ORM inside the stub's branch."""
    rm = one.rm
    assert isinstance(rm, SqlAlchemyRM)
    with one.stub.branch() as xid:
        session = rm.session(xid, autoflush=autoflush)
        alice = session.get(Account, "alice")
        assert alice is not None
        alice.balance -= debit
        if new is not None:
            session.add(Account(name=new, balance=debit))
    del session, alice
    gc.collect()  # the service has let go of its session: the RM still flushes it before the vote


def test_orm_sessions_on_both_databases_commit_together(
    linked: dict[str, Linked], fresh: dict[str, Engine]
) -> None:
    with TransactionManager(linked["postgresql"].stub.coordinator) as tm, tm.begin():
        work(linked["postgresql"], debit=30, new="bob")
        work(linked["mariadb"], debit=20, new="carol")
    assert committed(fresh["postgresql"]) == {"alice": 70, "bob": 30}
    assert committed(fresh["mariadb"]) == {"alice": 80, "carol": 20}


def test_a_failure_elsewhere_rolls_the_orm_work_back(
    linked: dict[str, Linked], fresh: dict[str, Engine]
) -> None:
    tm = TransactionManager(linked["postgresql"].stub.coordinator)
    with tm, pytest.raises(RuntimeError), tm.begin():
        work(linked["postgresql"], debit=30, new="bob")
        work(linked["mariadb"], debit=20, new="carol")
        raise RuntimeError("the initiator gives up")
    for engine in fresh.values():
        assert committed(engine) == {"alice": 100}


def test_flush_before_prepare_votes_no_on_a_constraint(
    linked: dict[str, Linked], fresh: dict[str, Engine]
) -> None:
    tm = TransactionManager(linked["postgresql"].stub.coordinator)
    with tm, pytest.raises(TransactionRolledBack) as caught, tm.begin():
        work(linked["postgresql"], debit=30)
        work(linked["mariadb"], debit=500, autoflush=False)  # only the flush at prepare sends it
    assert XaCode.XA_RBINTEGRITY in caught.value.branch_codes.values()
    for engine in fresh.values():
        assert committed(engine) == {"alice": 100}


@pytest.mark.parametrize("dialect", ["postgresql", "mariadb"])
def test_session_is_dead_after_its_branch_ends(fresh: dict[str, Engine], dialect: str) -> None:
    rm = SqlAlchemyRM(fresh[dialect], "orm")
    xid = new_xid()
    rm.start(xid)
    session = rm.session(xid)
    alice = session.get(Account, "alice")
    assert alice is not None
    alice.balance = 1
    session.commit()  # a savepoint of the branch, not the branch
    assert committed(fresh[dialect]) == {"alice": 100}
    assert rm.prepare(xid) == XaCode.XA_OK
    for use in (
        lambda: session.get(Account, "alice", populate_existing=True),
        lambda: session.execute(select(Account)),
    ):
        with pytest.raises(BranchEnded) as caught:
            use()
        assert caught.value.code == XaCode.XAER_PROTO
    with pytest.raises(BranchEnded):
        rm.session(xid)
    other = SqlAlchemyRM(fresh[dialect], "orm")  # phase two from another connection
    assert other.recover() == [xid]
    other.commit(xid, one_phase=False)
    assert committed(fresh[dialect]) == {"alice": 1}
    with pytest.raises(XaError) as nota:
        other.rollback(xid)
    assert nota.value.code == XaCode.XAER_NOTA


@pytest.mark.parametrize("dialect", ["postgresql", "mariadb"])
def test_read_only_one_phase_and_rollback(fresh: dict[str, Engine], dialect: str) -> None:
    rm = SqlAlchemyRM(fresh[dialect], "orm")
    reader, single, undone = new_xid(), new_xid(), new_xid()
    rm.start(reader)
    assert rm.session(reader).scalars(select(Account.balance)).all() == [100]
    assert rm.prepare(reader) == XaCode.XA_RDONLY
    rm.start(single)
    rm.session(single).add(Account(name="dave", balance=5))
    rm.commit(single, one_phase=True)  # flushed first
    rm.start(undone)
    session = rm.session(undone)
    session.add(Account(name="erin", balance=5))
    session.flush()
    rm.rollback(undone)
    assert committed(fresh[dialect]) == {"alice": 100, "dave": 5}
    with pytest.raises(BranchEnded):
        session.execute(select(Account))


def test_other_dialects_are_refused() -> None:
    with pytest.raises(InvalidArgumentError):
        SqlAlchemyRM(create_engine("sqlite://"), "x")


def test_asyncio_orm_sessions_commit_and_roll_back_with_the_transaction(
    fresh: dict[str, Engine], coordinator: Proc, pg_cluster: PgCluster, mariadb: MariaDB
) -> None:
    urls = {
        "postgresql": f"postgresql+psycopg_async://postgres@127.0.0.1:{pg_cluster.port}/orm_test",
        "mariadb": f"mysql+aiomysql://root@127.0.0.1:{mariadb.port}/orm_test",
    }

    async def debit(one: Linked, amount: int, new: str) -> None:
        rm = one.rm
        assert isinstance(rm, AsyncSqlAlchemyRM)
        async with one.stub.abranch() as xid:
            session = rm.session(xid)
            alice = await session.get(Account, "alice")
            assert alice is not None
            alice.balance -= amount
            session.add(Account(name=new, balance=amount))  # sent by the flush before the vote

    async def service() -> list[BaseException]:
        engines = {name: create_async_engine(url) for name, url in urls.items()}
        linked = {
            name: Linked.serve(await AsyncSqlAlchemyRM.open(engine, f"aorm-{name}"), coordinator.address)
            for name, engine in engines.items()
        }
        misuse: list[BaseException] = []
        try:
            async with AsyncTransactionManager(coordinator.address) as tm:
                async with tm.begin():
                    for one in linked.values():
                        await debit(one, 10, "frank")
                try:
                    async with tm.begin():
                        for one in linked.values():
                            await debit(one, 50, "grace")
                        raise RuntimeError("the initiator gives up")
                except RuntimeError:
                    pass
            try:
                linked["mariadb"].rm.recover()  # a verb called on the loop itself
            except XaError as exc:
                misuse.append(exc)
        finally:
            for one in linked.values():
                await asyncio.to_thread(one.close)
            for engine in engines.values():
                await engine.dispose()
        return misuse

    misuse = asyncio.run(service())
    assert [e.code for e in misuse if isinstance(e, XaError)] == [XaCode.XAER_PROTO]
    for engine in fresh.values():
        assert committed(engine) == {"alice": 90, "frank": 10}
