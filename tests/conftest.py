"""Shared fixtures: real brokers on loopback (in a thread, or as a `zchat broker` process),
connected clients, and a real PostgreSQL server. Every wait here is bounded and ends on a
condition, never on a sleep."""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import queue
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, AnyStr, Generic

import psycopg
import pytest
import zmq
from pgserver import PgServer, find_bindir, where_searched
from psycopg import sql

from zchat.broker.config import BrokerConfig
from zchat.broker.shell import Broker
from zchat.broker.store import Store
from zchat.client.shell import Client
from zchat.protocol import Endpoints, Event

#: Heartbeat used by test brokers: a lease lapses after 3 missed ones (0.9 s).
TEST_HEARTBEAT = 0.3
LOOPBACK_ANY = Endpoints("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", "tcp://127.0.0.1:*")


@pytest.fixture
def ctx() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    yield context
    context.destroy(linger=0)


class ThreadBroker:
    """A Broker serving from a background thread of the test process. Keywords are
    :class:`BrokerConfig` fields (defaults: loopback, any port, :data:`TEST_HEARTBEAT`, an
    in-memory store); ``store`` hands it a store of the test's own instead, ``wallclock`` the
    time its events are stamped with, ``clock`` the monotonic time its leases and rate limits
    go by."""

    def __init__(
        self,
        ctx: zmq.Context[zmq.Socket[bytes]],
        *,
        store: Store | None = None,
        wallclock: Callable[[], float] = time.time,
        clock: Callable[[], float] = time.monotonic,
        **config: Any,
    ) -> None:
        options: dict[str, Any] = {"endpoints": LOOPBACK_ANY, "heartbeat": TEST_HEARTBEAT, "db": ":memory:", **config}
        self.config = BrokerConfig(**options)
        self.broker = Broker(self.config, context=ctx, store=store, clock=clock, wallclock=wallclock)
        assert self.broker.store is not None
        self.store = self.broker.store
        self.endpoints = self.broker.bind()
        self.thread = threading.Thread(target=self.broker.run, name="test-broker")
        self.thread.start()

    def stop(self) -> None:
        if self.thread.is_alive():
            self.broker.stop()
            self.thread.join(5)
            assert not self.thread.is_alive(), "broker did not stop"
            self.broker.close()


@pytest.fixture
def broker(ctx: zmq.Context[zmq.Socket[bytes]], request: pytest.FixtureRequest) -> Iterator[ThreadBroker]:
    """An in-thread broker; a test module may set ``BROKER_OPTIONS`` (ThreadBroker keywords)."""
    b = ThreadBroker(ctx, **getattr(request.module, "BROKER_OPTIONS", {}))
    yield b
    b.stop()


ClientFactory = Callable[..., Client]


@pytest.fixture
def connect(broker: ThreadBroker, ctx: zmq.Context[zmq.Socket[bytes]]) -> Iterator[ClientFactory]:
    """``connect("alice", rooms=["general"])`` -> a connected Client, closed after the test."""
    clients: list[Client] = []

    def make(nick: str, rooms: list[str] | None = None, **kw: Any) -> Client:
        c = Client(nick, rooms or ["general"], endpoints=broker.endpoints, context=ctx, **kw)
        clients.append(c)
        return c.connect()

    yield make
    for c in clients:
        c.close()


def wait_for(client: Client, pred: Callable[[Event], bool], timeout: float = 5.0) -> Event:
    """The first event from ``client`` matching ``pred``; fails after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    seen = []
    while (left := deadline - time.monotonic()) > 0:
        event = client.recv(left)
        if event is None:
            break
        if pred(event):
            return event
        seen.append(event)
    raise AssertionError(f"no matching event in {timeout} s; saw {seen}")


def joined(nick: str, room: str = "general") -> Callable[[Event], bool]:
    """For :func:`wait_for`: ``nick`` joining ``room``."""
    return lambda e: e.kind == "join" and e.nick == nick and e.room == room


def wait_until(condition: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Until ``condition()`` holds (checked every 10 ms); fails after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met in {timeout} s")
        pause.wait(0.01)


def free_base_port(host: str = "127.0.0.1") -> int:
    """A base port P with P, P+1 and P+2 (ingest, feed, rpc) all free on ``host`` right now
    (``0.0.0.0`` for a broker that will bind every address)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = int(probe.getsockname()[1])
        if base > 65000:
            continue
        try:
            with contextlib.ExitStack() as held:
                for n in range(3):  # probes only: closed at once, never listening
                    held.enter_context(socket.socket()).bind((host, base + n))
        except OSError:
            continue
        return base
    raise AssertionError("no three free ports in a row")


def collect(client: Client, count: int, pred: Callable[[Event], bool], timeout: float = 10.0) -> list[Event]:
    """The first ``count`` events matching ``pred``; fails if they do not arrive in time."""
    got: list[Event] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and (left := deadline - time.monotonic()) > 0:
        event = client.recv(left)
        if event is not None and pred(event):
            got.append(event)
    assert len(got) == count, f"got {len(got)} of {count} events"
    return got


class Lines(Generic[AnyStr]):
    """A child's stdout, read in a thread so that every wait for a line is bounded."""

    def __init__(self, proc: subprocess.Popen[AnyStr]) -> None:
        self.queue: queue.Queue[AnyStr] = queue.Queue()
        assert proc.stdout is not None
        stream = proc.stdout

        def pump() -> None:
            # A test may close the pipe (leaving its `with Popen`) before the last lines are read:
            # that ends the reading too, instead of an exception in this thread failing a later test.
            with contextlib.suppress(ValueError):
                for line in stream:
                    self.queue.put(line)

        threading.Thread(target=pump, daemon=True).start()

    def get(self, timeout: float = 5.0) -> AnyStr:
        try:
            return self.queue.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no output line in {timeout} s") from None

    def prompted(
        self, prompt: Callable[[], object], match: Callable[[AnyStr], bool] = lambda line: True, timeout: float = 10.0
    ) -> AnyStr:
        """The first line that ``match``es, calling ``prompt()`` again after each other line and
        each 0.3 s without one: for a child that prints only what it hears (``tail``), to wait
        until it is surely listening."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            prompt()
            try:
                line = self.queue.get(timeout=0.3)
            except queue.Empty:
                continue
            if match(line):
                return line
        raise AssertionError(f"no line in answer to the prompts in {timeout} s")

    def until(self, needle: AnyStr, timeout: float = 5.0) -> list[AnyStr]:
        """Lines up to and including the first that contains ``needle``."""
        got: list[AnyStr] = []
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.queue.get(timeout=left)
            except queue.Empty:
                break
            got.append(line)
            if needle in line:
                return got
        raise AssertionError(f"no line with {needle!r} in {timeout} s; got {got}")


# --- brokers as real processes ------------------------------------------------------------------

ZCHAT = [sys.executable, "-m", "zchat"]
_LISTEN = re.compile(r"listening: ingest (\S+) \(PULL\), feed (\S+) \(XPUB\), rpc (\S+) \(ROUTER\)")


@dataclass
class BrokerProcess:
    proc: subprocess.Popen[str]
    endpoints: Endpoints
    log: list[str] = field(default_factory=list)
    reader: threading.Thread | None = None

    @property
    def args(self) -> list[str]:
        """CLI options that point a client command at this broker."""
        e = self.endpoints
        return ["--ingest", e.ingest, "--feed", e.feed, "--rpc", e.rpc]

    def stop(self, timeout: float = 5.0) -> int:
        """Terminate (if still running), reap, and close the log pipe; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        if self.reader is not None:
            self.reader.join(timeout)
        assert self.proc.stderr is not None
        self.proc.stderr.close()
        return code


def start_broker_process(
    *extra: str,
    heartbeat: float = TEST_HEARTBEAT,
    endpoints: Endpoints = LOOPBACK_ANY,
    db: str = ":memory:",
    preexec_fn: Callable[[], None] | None = None,
) -> BrokerProcess:
    """Start `zchat broker` and wait (bounded) for its "listening" log line. ``preexec_fn`` runs
    in the child before it starts (e.g. to limit its resources)."""
    e = endpoints
    cmd = [*ZCHAT, "broker", "--ingest", e.ingest, "--feed", e.feed, "--rpc", e.rpc]
    cmd += ["--heartbeat", str(heartbeat), "--db", db, *extra]
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
        preexec_fn=preexec_fn,  # noqa: PLW1509 (a resource limit, set before exec)
    )
    assert proc.stderr is not None
    log: list[str] = []
    found = threading.Event()
    result: list[Endpoints] = []

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            log.append(line)
            if not found.is_set() and (m := _LISTEN.search(line)):
                result.append(Endpoints(*m.groups()))
                found.set()
        found.set()  # the process ended

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    if not found.wait(10) or not result:
        BrokerProcess(proc, LOOPBACK_ANY, log, reader).stop()
        raise AssertionError("broker did not start: " + "".join(log))
    return BrokerProcess(proc, result[0], log, reader)


@pytest.fixture
def broker_proc() -> Iterator[BrokerProcess]:
    bp = start_broker_process()
    yield bp
    bp.stop()


def child_env() -> dict[str, str]:
    """The environment for child processes: no ZCHAT_* and no config dir of the developer's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZCHAT_")}
    env["PYTHONUNBUFFERED"] = "1"
    # Keys and history files of the person running the tests are none of the tests' business.
    env["XDG_CONFIG_HOME"] = _CONFIG_HOME
    return env


_CONFIG_HOME = tempfile.mkdtemp(prefix="zchat-test-config-")
atexit.register(shutil.rmtree, _CONFIG_HOME, True)


# --- a real PostgreSQL server -------------------------------------------------------------------

#: Set to 1 by .ci/run: there, a machine without the server binaries fails the PostgreSQL tests
#: instead of skipping them.
REQUIRE_POSTGRES = "ZCHAT_REQUIRE_POSTGRES"
_test_databases = itertools.count(1)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One PostgreSQL server for the whole session (about a second to start), started by the first
    test that asks for it. Without the server binaries its tests are skipped, saying why."""
    bindir = find_bindir()
    if bindir is None:
        reason = f"no PostgreSQL server binaries in {where_searched()} (Debian: apt-get install postgresql)"
        if os.environ.get(REQUIRE_POSTGRES) == "1":
            pytest.fail(f"{reason}, and {REQUIRE_POSTGRES}=1", pytrace=False)
        pytest.skip(reason)
    server = PgServer(bindir)
    server.start(timeout=45)  # inside pytest-timeout's 60 s, so its own error, with the log, shows
    yield server
    server.stop()


@pytest.fixture
def pg_dsn(pg_server: PgServer) -> Iterator[str]:
    """A libpq URI (TCP, password) for a new, empty database of this test's own, dropped after the
    test together with any connection it left open."""
    name = f"test_{next(_test_databases)}"
    with psycopg.connect(pg_server.dsn("postgres", unix=True), autocommit=True, connect_timeout=10) as admin:
        create = sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name))
        if admin.info.server_version >= 150000:
            # A file copy takes ~10 ms with fsync off; 15's default, WAL_LOG, ~100 ms.
            create = sql.SQL("{} STRATEGY FILE_COPY").format(create)
        admin.execute(create)
    yield pg_server.dsn(name)
    with psycopg.connect(pg_server.dsn("postgres", unix=True), autocommit=True, connect_timeout=10) as admin:
        admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the tests that need the server, so that `pytest -m "not postgres"` leaves them out."""
    for item in items:
        if "pg_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.postgres)
