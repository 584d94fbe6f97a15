"""The PostgreSQL server the tests start (conftest's ``pg_server`` and ``pg_dsn``), and what a real
server does that the PostgreSQL store and a broker pair will rely on: transactions, and
session-level advisory locks, which live exactly as long as the holder's connection."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import psycopg
import pytest
from conftest import Lines
from pgserver import PgServer
from psycopg import errors
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import TupleRow

Conn = psycopg.Connection[TupleRow]
Connect = Callable[[], Conn]

#: The advisory lock key these tests contend for.
KEY = 4242
#: Every connection attempt here gives up after this many seconds.
CONNECT_TIMEOUT = 10


@pytest.fixture
def pg_connect(pg_dsn: str) -> Iterator[Connect]:
    """``pg_connect()`` -> a new autocommit connection to the test's database, closed after it."""
    opened: list[Conn] = []

    def make() -> Conn:
        conn = psycopg.connect(pg_dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT)
        opened.append(conn)
        return conn

    yield make
    for conn in opened:
        conn.close()


def one(conn: Conn, query: str, *params: object) -> object:
    """The single value ``query`` returns."""
    row = conn.execute(query, params).fetchone()
    assert row is not None and len(row) == 1
    return row[0]


def try_lock(conn: Conn) -> bool:
    return one(conn, "SELECT pg_try_advisory_lock(%s)", KEY) is True


def lock(conn: Conn, timeout: float) -> None:
    """Wait for the lock, at most ``timeout`` seconds (then :class:`errors.LockNotAvailable`): the
    server wakes the waiter when the lock is freed, so no polling loop decides how fast that is."""
    one(conn, "SELECT set_config('lock_timeout', %s, false)", f"{int(timeout * 1000)}ms")
    one(conn, "SELECT pg_advisory_lock(%s)", KEY)


# --- the server and the fixtures -----------------------------------------------------------------


def test_each_test_gets_a_new_empty_database_of_its_own(pg_connect: Connect) -> None:
    conn = pg_connect()
    assert str(one(conn, "SELECT current_database()")).startswith("test_")
    assert one(conn, "SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace") == 0


def test_the_server_is_a_primary_not_a_standby(pg_connect: Connect) -> None:
    assert one(pg_connect(), "SELECT pg_is_in_recovery()") is False


def test_the_unix_socket_reaches_the_same_server(pg_server: PgServer, pg_dsn: str, pg_connect: Connect) -> None:
    dbname = conninfo_to_dict(pg_dsn)["dbname"]
    with psycopg.connect(pg_server.dsn(str(dbname), unix=True), connect_timeout=CONNECT_TIMEOUT) as unix:
        assert one(unix, "SELECT current_database()") == dbname
        assert one(unix, "SELECT inet_server_port()") is None  # no TCP on this connection
    assert one(pg_connect(), "SELECT inet_server_port()") == pg_server.port


# --- transactions --------------------------------------------------------------------------------


def test_a_transaction_is_seen_whole_after_commit_or_not_at_all(pg_connect: Connect) -> None:
    a, b = pg_connect(), pg_connect()
    a.execute("CREATE TABLE events (room text, seq bigint, data bytea NOT NULL, PRIMARY KEY (room, seq))")
    count = "SELECT count(*) FROM events"
    with a.transaction():
        a.execute("INSERT INTO events VALUES ('general', 1, %s), ('general', 2, %s)", (b"\x00one", b"two"))
        assert one(b, count) == 0  # nobody else sees it before the commit
    assert b.execute("SELECT seq, data FROM events ORDER BY seq").fetchall() == [(1, b"\x00one"), (2, b"two")]

    with pytest.raises(errors.UniqueViolation), a.transaction():
        a.execute("INSERT INTO events VALUES ('general', 3, 'x')")
        a.execute("INSERT INTO events VALUES ('general', 2, 'again')")  # the primary key refuses it...
    assert one(b, count) == 2  # ...and seq 3 went with it


# --- advisory locks ------------------------------------------------------------------------------


def test_an_advisory_lock_is_one_sessions_and_stacks_within_it(pg_connect: Connect) -> None:
    a, b = pg_connect(), pg_connect()
    assert try_lock(a)
    assert not try_lock(b)
    assert try_lock(a)  # a holds it twice now, and must unlock twice
    assert one(a, "SELECT pg_advisory_unlock(%s)", KEY) is True
    assert not try_lock(b)
    assert one(a, "SELECT pg_advisory_unlock(%s)", KEY) is True
    assert try_lock(b)


def test_advisory_lock_keys_are_per_database(pg_server: PgServer, pg_connect: Connect) -> None:
    # So the two brokers of a pair must name the same database, not merely the same server.
    assert try_lock(pg_connect())
    with psycopg.connect(pg_server.dsn("postgres"), autocommit=True, connect_timeout=CONNECT_TIMEOUT) as elsewhere:
        assert try_lock(elsewhere)


def test_closing_the_holders_connection_frees_the_lock_soon_after(pg_connect: Connect) -> None:
    a, b = pg_connect(), pg_connect()
    assert try_lock(a)
    a.close()
    # Not at once: the holder's backend frees it when it reads the goodbye and exits, and a
    # try_lock straight after close() was refused about 1 time in 30 here. So wait on it.
    lock(b, timeout=5)


def test_pg_terminate_backend_frees_the_lock_and_the_holder_sees_admin_shutdown(pg_connect: Connect) -> None:
    a, b, admin = pg_connect(), pg_connect(), pg_connect()
    assert try_lock(a)
    assert not try_lock(b)
    # With a timeout (PostgreSQL 14+) it returns once the backend is gone, and the backend frees
    # its locks before that: b needs no wait (50 of 50 tries here).
    assert one(admin, "SELECT pg_terminate_backend(%s, 5000)", a.info.backend_pid) is True
    assert try_lock(b)
    # The server's farewell was waiting on a's socket: its next query raises it (SQLSTATE 57P01,
    # a subclass of OperationalError), and the connection is closed and broken after that.
    with pytest.raises(errors.AdminShutdown, match="terminating connection due to administrator command"):
        a.execute("SELECT 1")
    assert a.closed and a.broken


#: A process that takes the lock, says so, and holds it until it is killed (or its stdin closes,
#: so that it cannot outlive a test run that died).
HOLDER = """
import sys, psycopg
conn = psycopg.connect(sys.argv[1], autocommit=True, connect_timeout=10)
conn.execute("SELECT pg_advisory_lock(%s)", (int(sys.argv[2]),))
print("locked", flush=True)
sys.stdin.read()
"""


@pytest.mark.parametrize("unix", [False, True], ids=["tcp", "unix"])
def test_a_killed_holders_lock_is_free_in_milliseconds_and_a_frozen_ones_is_not(
    unix: bool, pg_server: PgServer, pg_dsn: str, pg_connect: Connect
) -> None:
    dsn = pg_server.dsn(str(conninfo_to_dict(pg_dsn)["dbname"]), unix=unix)
    cmd = [sys.executable, "-c", HOLDER, dsn, str(KEY)]
    with subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as holder:
        try:
            assert "locked" in Lines(holder).get(timeout=CONNECT_TIMEOUT)
            b = pg_connect()
            assert not try_lock(b)
            # A stopped process's connection stays open, and so its lock stays held: the lock says
            # that the holder's connection lives, not that the holder works.
            holder.send_signal(signal.SIGSTOP)
            with pytest.raises(errors.LockNotAvailable):
                lock(b, timeout=0.3)
            killed = time.monotonic()
            holder.kill()  # SIGKILL, which a stopped process obeys too
            lock(b, timeout=5)
            takeover = time.monotonic() - killed
        finally:
            holder.kill()
    # The kernel closes the dead process's socket, its backend reads end-of-file and exits: about
    # 3 ms here, on TCP and on the unix socket alike (a vanished host would instead take as long
    # as TCP keepalive, which this does not test).
    assert takeover < 1.0
