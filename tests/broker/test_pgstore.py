"""What only the PostgreSQL store does (the shared suite in test_store.py runs against it too):
its schema and id, its connection coming and going, the active lock a broker pair relies on,
and real brokers serving clients from it. Every server here is real (conftest's ``pg_dsn``)."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import psycopg
import pytest
import zmq
from conftest import Lines, ThreadBroker, collect, wait_for, wait_until
from pgserver import PgServer, find_bindir
from psycopg import sql

from zchat.broker import pgstore
from zchat.broker.pgstore import LOCK_KEY, PostgresStore
from zchat.broker.store import StoreError, StoreLocked, open_store
from zchat.client.shell import Client
from zchat.errors import Refused

pytestmark = pytest.mark.postgres

ROOM = "general"
CONNECT_TIMEOUT = 10
Stores = Callable[[], PostgresStore]


@pytest.fixture
def stores(pg_dsn: str) -> Iterator[Stores]:
    """``stores()`` -> a new PostgresStore on the test's database, closed after the test."""
    made: list[PostgresStore] = []

    def make() -> PostgresStore:
        made.append(PostgresStore(pg_dsn))
        return made[-1]

    yield make
    for s in made:
        s.close()


@pytest.fixture
def admin(pg_dsn: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """A connection of the test's own to the test's database, as a DBA would have."""
    with psycopg.connect(pg_dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT) as conn:
        yield conn


@pytest.fixture
def quick_reconnect(monkeypatch: pytest.MonkeyPatch) -> None:
    """A store connects again at its next operation after a loss, not a second later."""
    monkeypatch.setattr(pgstore, "RECONNECT_INTERVAL", 0.0)


def add(s: PostgresStore, first: int, last: int, room: str = ROOM) -> None:
    for seq in range(first, last + 1):
        s.append(room, seq, json.dumps({"seq": seq, "text": f"m{seq}"}).encode(), text=f"m{seq}")
    s.commit()


def terminate(admin: psycopg.Connection[tuple[object, ...]], *, but: int | None = None) -> int:
    """Terminate every zchat store's backend on the test's database (``but`` one): what a DBA's
    pg_terminate_backend, or a server restart, does to a broker's connection. Returns how many."""
    rows = admin.execute(
        "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity"
        " WHERE datname = current_database() AND application_name = 'zchat broker' AND pid <> %s",
        (but or 0,),
    ).fetchall()
    return len(rows)


def backend(admin: psycopg.Connection[tuple[object, ...]]) -> int:
    """The pid of the one zchat store backend on the test's database."""
    rows = admin.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'zchat broker'"
    ).fetchall()
    assert len(rows) == 1, rows
    return int(str(rows[0][0]))


def term(admin: psycopg.Connection[tuple[object, ...]]) -> int:
    row = admin.execute("SELECT value FROM meta WHERE key = 'term'").fetchone()
    assert row is not None
    return int(str(row[0]))


# --- the schema, the id, the URL ------------------------------------------------------------------


def test_a_reopened_store_keeps_everything_and_its_id(pg_server: PgServer, pg_dsn: str) -> None:
    s = PostgresStore(pg_dsn)
    add(s, 1, 3)
    history = s.id
    s.close()
    again = PostgresStore(pg_dsn)
    assert (again.id, again.last_seq(ROOM), len(again.id)) == (history, 3, 16)
    again.close()
    other = PostgresStore(pg_server.dsn("postgres"))  # another database, another history
    try:
        assert other.id != history
    finally:
        other.close()


def test_openers_racing_on_a_new_database_make_one_schema_and_one_id(stores: Stores) -> None:
    ids: list[str] = []
    errors: list[BaseException] = []

    def open_one() -> None:
        try:
            ids.append(stores().id)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == [] and len(ids) == 4 and len(set(ids)) == 1


def test_where_and_every_error_leave_the_password_out(pg_server: PgServer, pg_dsn: str) -> None:
    s = PostgresStore(pg_dsn)
    try:
        assert pg_server.password not in s.where
        assert s.where == f"postgresql://zchat@127.0.0.1:{pg_server.port}/{pg_dsn.rsplit('/', 1)[1]}"
    finally:
        s.close()
    wrong = pg_dsn.replace(pg_server.password, "not-the-password-42")
    with pytest.raises(StoreError) as failed:
        PostgresStore(wrong)
    assert "not-the-password-42" not in str(failed.value) and "\n" not in str(failed.value)
    assert "password authentication failed" in str(failed.value)
    in_query = f"postgresql://zchat@127.0.0.1:{pg_server.port}/nosuchdb?password={pg_server.password}&sslmode=disable"
    with pytest.raises(StoreError) as failed:
        PostgresStore(in_query)
    assert str(failed.value).startswith(
        f"cannot open the history store postgresql://zchat@127.0.0.1:{pg_server.port}/nosuchdb?sslmode=disable: "
    )
    assert pg_server.password not in str(failed.value) and 'database "nosuchdb" does not exist' in str(failed.value)


def test_a_database_with_tables_of_someone_elses_is_refused(
    pg_dsn: str, admin: psycopg.Connection[tuple[object, ...]]
) -> None:
    admin.execute("CREATE TABLE sessions (id serial PRIMARY KEY, cookie text)")
    with pytest.raises(StoreError, match=r"tables that are not a zchat store's \(sessions\): give zchat a database"):
        PostgresStore(pg_dsn)


# --- the connection coming and going ---------------------------------------------------------------


Refusing = Callable[[], contextlib.AbstractContextManager[None]]


@pytest.fixture
def refusing(pg_server: PgServer, admin: psycopg.Connection[tuple[object, ...]]) -> Refusing:
    """``with refusing():`` the test's database refuses new connections (as while a server
    restarts), and the zchat stores' connections are cut."""
    name = sql.Identifier(admin.info.dbname)

    def allow(allowed: bool) -> None:
        # From another database: one cannot bar connections to the database one is in.
        with psycopg.connect(pg_server.dsn("postgres", unix=True), autocommit=True) as other:
            other.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS {}").format(name, sql.Literal(allowed)))

    @contextlib.contextmanager
    def refused() -> Iterator[None]:
        allow(False)
        try:
            terminate(admin)
            yield
        finally:
            allow(True)

    return refused


def test_a_terminated_backend_costs_nothing_a_new_connection_carries_the_batch(
    stores: Stores, admin: psycopg.Connection[tuple[object, ...]]
) -> None:
    s = stores()
    add(s, 1, 3)
    before = backend(admin)
    assert terminate(admin) == 1
    s.append(ROOM, 4, b'{"seq":4}')
    s.set_read("@alice", 4)
    s.commit()  # the commit finds its connection gone, sees the batch did not land, and sends it again
    assert (s.last_seq(ROOM), s.read("@alice"), s.first_seq(ROOM)) == (4, 4, 1)
    assert backend(admin) != before
    terminate(admin)
    assert s.page(ROOM, 3, 10).events == [b'{"seq":4}']  # a read, too, asks again on a new connection


@pytest.mark.usefixtures("quick_reconnect")
def test_a_server_refusing_connections_fails_the_batch_in_one_line_then_the_store_reconnects(
    stores: Stores, refusing: Refusing
) -> None:
    s = stores()
    add(s, 1, 3)
    with refusing():
        s.append(ROOM, 4, b'{"seq":4}')
        s.set_read("@alice", 4)
        with pytest.raises(StoreError) as failed:
            s.commit()
        message = str(failed.value)
        assert message.startswith(f"the history store {s.where} is unreachable: ") and "\n" not in message
        assert "is not currently accepting connections" in message
        assert not s.staged
    add(s, 4, 5)  # a new connection, and nothing of the failed batch
    assert (s.last_seq(ROOM), s.read("@alice")) == (5, 0)


@pytest.mark.usefixtures("quick_reconnect")
def test_a_failed_read_fails_the_batch_built_on_it(stores: Stores, refusing: Refusing) -> None:
    s = stores()
    add(s, 1, 1)
    s.append(ROOM, 2, b'{"seq":2}')  # staged before the read, as the broker's core does
    with refusing(), pytest.raises(StoreError, match="is unreachable"):
        s.last_seq("dev")
    assert s.last_seq("dev") == 0  # reads work again: the store connected anew...
    with pytest.raises(StoreError, match="rests on a failed read"):
        s.commit()  # ...but the batch rested on the failed one
    assert s.last_seq(ROOM) == 1 and not s.staged
    add(s, 2, 2)


def test_a_server_that_is_gone_is_one_line_and_costs_one_attempt_a_second() -> None:
    bindir = find_bindir()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries")
    server = PgServer(bindir)
    server.start(timeout=45)
    try:
        s = PostgresStore(server.dsn("postgres"))
        assert s.try_lock_active()
        add(s, 1, 2)
    finally:
        server.stop()
    try:
        s.append(ROOM, 3, b'{"seq":3}')
        with pytest.raises(StoreError) as failed:
            s.commit()
        assert str(failed.value).startswith(f"the history store {s.where} is unreachable: connection failed: ")
        assert "\n" not in str(failed.value)
        started = time.monotonic()
        s.append(ROOM, 3, b'{"seq":3}')
        with pytest.raises(StoreError, match=f"the history store {s.where} is unreachable"):
            s.commit()  # within the second: no attempt, at once
        assert time.monotonic() - started < 0.1
        assert (s.holds_lock(), s.try_lock_active(), s.size()) == (False, False, 0)
    finally:
        s.close()


# --- the active lock ----------------------------------------------------------------------------------


def test_only_one_store_of_a_database_is_active_and_asking_again_changes_nothing(
    stores: Stores, admin: psycopg.Connection[tuple[object, ...]]
) -> None:
    a, b = stores(), stores()
    assert (a.holds_lock(), b.holds_lock()) == (False, False)
    assert a.try_lock_active()
    assert not b.try_lock_active()
    assert (a.holds_lock(), b.holds_lock()) == (True, False)
    first = term(admin)
    assert a.try_lock_active() and term(admin) == first  # no second hold, no new term
    with pytest.raises(StoreLocked, match=r"in use by another broker \(backend pid \d+, 127.0.0.1, zchat broker\)"):
        open_store(a.where.replace("zchat@", f"zchat:{_password(admin)}@"))
    a.close()
    # Not at once: a's backend frees the lock when it reads the goodbye and exits (ms later).
    until_locked(b)
    assert term(admin) == first + 1


def until_locked(store: PostgresStore, timeout: float = 5.0) -> float:
    """Ask as a standby would until ``store`` holds the active lock; how long that took. No
    sleep: each ask is a round trip to the server, and the wait is bounded."""
    started = time.monotonic()
    while not store.try_lock_active():
        assert time.monotonic() - started < timeout, "the lock was never freed"
    return time.monotonic() - started


def _password(admin: psycopg.Connection[tuple[object, ...]]) -> str:
    password = admin.info.password
    assert password
    return password


def test_a_terminated_holder_loses_the_lock_to_another_and_may_not_write(
    stores: Stores, admin: psycopg.Connection[tuple[object, ...]]
) -> None:
    a, b = stores(), stores()
    assert a.try_lock_active()
    add(a, 1, 2)
    admin.execute("SELECT pg_terminate_backend(%s, 5000)", (backend_of_lock(admin),))
    assert a.holds_lock() is False  # no exception: the connection is gone, so is the lock
    assert b.try_lock_active()  # at once: the backend freed its locks before it went
    add(b, 3, 3)
    a.append(ROOM, 3, b'{"seq":3}')
    with pytest.raises(
        StoreLocked, match=r"lost its connection to the history store .*, and another broker holds it now"
    ):
        a.commit()
    a.append(ROOM, 4, b'{"seq":4}')
    with pytest.raises(StoreLocked):
        a.commit()  # still: a store that was active writes only while it is
    assert not a.holds_lock() and not a.try_lock_active()
    assert b.holds_lock() and a.last_seq(ROOM) == 3  # reading does no harm


def backend_of_lock(admin: psycopg.Connection[tuple[object, ...]]) -> int:
    row = admin.execute(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1"
        " AND ((classid::bigint << 32) | objid::bigint) = %s",
        (LOCK_KEY,),
    ).fetchone()
    assert row is not None
    return int(str(row[0]))


def test_a_holder_cut_off_takes_its_lock_back_if_no_one_held_it_meanwhile(
    stores: Stores, admin: psycopg.Connection[tuple[object, ...]]
) -> None:
    a = stores()
    assert a.try_lock_active()
    add(a, 1, 2)
    held = term(admin)
    terminate(admin)
    add(a, 3, 4)  # reconnected, the lock taken back, the batch stored
    assert a.holds_lock() and term(admin) == held and a.last_seq(ROOM) == 4


def test_a_holder_cut_off_while_another_was_active_learns_it_by_the_term(
    stores: Stores, admin: psycopg.Connection[tuple[object, ...]]
) -> None:
    a, b = stores(), stores()
    assert a.try_lock_active()
    add(a, 1, 2)
    terminate(admin)
    assert b.try_lock_active()
    add(b, 3, 5)  # b was active, wrote, and went (its backend gone before this returns)
    terminate(admin)
    a.append(ROOM, 3, b'{"seq":3}')  # what a would write next: it believes the room is at 2
    with pytest.raises(StoreLocked, match="another broker was active meanwhile: this broker's rooms are stale"):
        a.commit()
    assert not a.holds_lock()
    # Asked outright, it becomes active anew (a broker doing so builds its rooms from the store).
    assert a.try_lock_active() and a.last_seq(ROOM) == 5
    add(a, 6, 6)


#: A process that opens a store, takes the active lock, says so, and holds it until it is killed
#: (or its stdin closes, so that it cannot outlive a test run that died).
HOLDER = """
import sys
from zchat.broker.pgstore import PostgresStore
store = PostgresStore(sys.argv[1])
print("locked" if store.try_lock_active() else "refused", flush=True)
sys.stdin.read()
"""


def test_a_killed_holders_lock_passes_to_the_next_in_milliseconds(stores: Stores, pg_dsn: str) -> None:
    b = stores()
    with subprocess.Popen(
        [sys.executable, "-c", HOLDER, pg_dsn], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as holder:
        try:
            assert Lines(holder).get(timeout=CONNECT_TIMEOUT).strip() == "locked"
            assert not b.try_lock_active()
            holder.kill()  # SIGKILL: no goodbye to the server
            # The kernel closes the socket, the backend sees it and exits (about 3 ms here).
            takeover = until_locked(b)
        finally:
            holder.kill()
    assert takeover < 1.0 and b.holds_lock()
    assert holder.returncode == -signal.SIGKILL


# --- a broker on PostgreSQL -------------------------------------------------------------------------------


def test_a_broker_on_postgresql_serves_clients_and_a_restarted_one_continues(
    ctx: zmq.Context[zmq.Socket[bytes]], pg_dsn: str
) -> None:
    first = ThreadBroker(ctx, db=pg_dsn)
    second = None
    try:
        wait_until(lambda: first.broker.role == "active")
        second = ThreadBroker(ctx, db=pg_dsn)  # the same database: the standby of a pair
        with pytest.raises(Refused) as refused:
            Client("eve", [ROOM], endpoints=second.endpoints, context=ctx, timeout=2).connect()
        assert refused.value.code == "standby" and second.broker.role == "standby"
        with Client("alice", [ROOM], endpoints=first.endpoints, context=ctx) as alice:
            bob = Client("bob", [ROOM], endpoints=first.endpoints, context=ctx).connect()
            for n in range(5):
                alice.say(f"hello {n}")
            alice.wait_sent(10)
            got = collect(bob, 5, lambda e: e.kind == "message")
            assert [e.text for e in got] == [f"hello {n}" for n in range(5)]
            bob.close()
            history = first.store.id
            last = got[-1].seq
    finally:
        first.stop()  # the standby takes over
    assert second is not None
    try:
        wait_until(lambda: second.broker.role == "active")
        with Client("carol", [ROOM], endpoints=second.endpoints, context=ctx) as carol:
            assert [e.text for e in carol.history(ROOM, 50) if e.kind == "message"] == [f"hello {n}" for n in range(5)]
            carol.say("after the restart")
            seen = wait_for(carol, lambda e: e.kind == "message" and e.text == "after the restart")
            assert seen.seq > last and second.store.id == history
            assert second.broker.core.history_id == history
    finally:
        second.stop()


def test_a_broker_whose_database_is_away_refuses_batches_then_loses_nothing(
    ctx: zmq.Context[zmq.Socket[bytes]], pg_dsn: str, refusing: Refusing
) -> None:
    b = ThreadBroker(ctx, db=pg_dsn)
    try:
        with Client("alice", [ROOM], endpoints=b.endpoints, context=ctx) as alice:
            alice.say("before")
            before = wait_for(alice, lambda e: e.kind == "message")
            with refusing():
                for n in range(5):
                    alice.say(f"during {n}")  # refused: alice keeps them and sends them again
                wait_for(alice, lambda e: e.code == "unavailable")
            alice.wait_sent(20)
            said = [before, *collect(alice, 5, lambda e: e.kind == "message", timeout=20)]
            assert [e.text for e in said] == ["before"] + [f"during {n}" for n in range(5)]
            with Client("bob", [ROOM], endpoints=b.endpoints, context=ctx) as bob:
                stored = [e for e in bob.history(ROOM, 50) if e.kind == "message"]
            assert [(e.seq, e.text) for e in stored] == [(e.seq, e.text) for e in said]
            assert [e.seq for e in said] == list(range(said[0].seq, said[0].seq + 6))  # nothing between
        assert b.broker.core.counters.store_failures >= 1
    finally:
        b.stop()
