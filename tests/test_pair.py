"""An active/standby pair of brokers on one PostgreSQL database, with clients that fail over.

Real `zchat broker` processes on loopback TCP, a real PostgreSQL server (tests/pgserver.py),
`zchat say` and `zchat tail --json` given both brokers. The active broker is the one that holds
the database's lock; the standby takes over when that broker dies (kill -9) or loses its
database session (pg_terminate_backend). Every wait is bounded and ends on a condition.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest
from conftest import ZCHAT, Lines, child_env, free_base_port, wait_until

from zchat.client.shell import Client
from zchat.protocol import Endpoints

#: A real lease (6 s): the clients must ride out a takeover, not time out in it.
HEARTBEAT = "2"
TAKEOVER_SECONDS = 5.0


@dataclass
class PairBroker:
    """A `zchat broker` process of the pair, with its log read in a thread."""

    port: int
    dsn: str
    proc: subprocess.Popen[str] | None = None
    log: list[str] | None = None
    pump: threading.Thread | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> PairBroker:
        cmd = [*ZCHAT, "broker", "--port", str(self.port), "--db", self.dsn, "--heartbeat", HEARTBEAT]
        cmd += ["--rate", "100", "--burst", "100"]
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=child_env()
        )
        self.log = []
        stream, log = self.proc.stderr, self.log
        assert stream is not None

        def pump() -> None:
            for line in stream:
                log.append(line)

        self.pump = threading.Thread(target=pump, daemon=True)
        self.pump.start()
        wait_until(
            lambda: any("listening" in line for line in log) or self.proc is None or self.proc.poll() is not None
        )
        assert self.proc.poll() is None, "".join(log)
        return self

    def said(self, text: str) -> bool:
        return self.count(text) > 0

    def count(self, text: str) -> int:
        return sum(text in line for line in self.log or [])

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)
        self._close()

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            self._close()

    def _close(self) -> None:
        """Its log read to the end (the process is gone) and the pipe closed."""
        assert self.proc is not None and self.proc.stderr is not None and self.pump is not None
        self.pump.join(10)
        self.proc.stderr.close()


@pytest.fixture
def pair(pg_dsn: str) -> Iterator[tuple[PairBroker, PairBroker]]:
    a = PairBroker(free_base_port(), pg_dsn).start()
    try:
        wait_until(lambda: a.said("active:"), what="the first broker active")
        b = PairBroker(free_base_port(), pg_dsn).start()
        try:
            wait_until(lambda: b.said("standby:"), what="the second broker standing by")
            yield a, b
        finally:
            b.stop()
    finally:
        a.stop()


def brokers(*each: PairBroker) -> list[str]:
    return [arg for b in each for arg in ("--broker", b.address)]


def test_kill_9_of_the_active_broker_mid_stream_loses_nothing_and_the_standby_takes_over(
    pair: tuple[PairBroker, PairBroker],
) -> None:
    a, b = pair
    # --since 0: each tail prints everything stored, then live, whenever it started.
    tail = [*ZCHAT, "tail", "--json", "--since", "0", *brokers(a, b)]
    tails = [
        subprocess.Popen(tail, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=child_env())
        for _ in range(2)
    ]
    say = subprocess.Popen(
        [*ZCHAT, "say", "--nick", "ci", *brokers(a, b)], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True, env=child_env(),
    )  # fmt: skip
    try:
        readers = [Lines(t) for t in tails]
        seen: list[list[str]] = [[] for _ in readers]
        assert say.stdin is not None
        total = 120
        for n in range(1, total + 1):
            say.stdin.write(f"line {n}\n")
            say.stdin.flush()
            if n == 40:  # mid-stream, once the readers have seen the first lines: kill the active one
                for reader, early in zip(readers, seen, strict=True):
                    early.extend(reader.until('"line 40"', timeout=20))
                killed = time.monotonic()
                a.kill()
                wait_until(lambda: b.said("active:"), timeout=TAKEOVER_SECONDS, what="the standby taking over")
                takeover = time.monotonic() - killed
            if n % 10 == 0:
                threading.Event().wait(0.05)  # a stream over time, not one burst
        say.stdin.close()
        assert say.wait(60) == 0, say.stderr.read() if say.stderr else ""
        for reader, early in zip(readers, seen, strict=True):
            got = [json.loads(line) for line in early + reader.until(f'"line {total}"', timeout=30)]
            texts = [e["text"] for e in got if e.get("kind") == "message"]
            assert texts == [f"line {n}" for n in range(1, total + 1)]
            seqs = [e["seq"] for e in got if e.get("room") == "general" and e.get("seq")]
            assert seqs == sorted(set(seqs)), "a seq came twice or out of order"
        assert takeover < TAKEOVER_SECONDS
    finally:
        for proc in [say, *tails]:
            proc.kill()
            proc.wait()
            for stream in (proc.stdout, proc.stderr, proc.stdin):
                if stream is not None:
                    stream.close()


def test_the_killed_broker_comes_back_as_the_standby_and_the_chat_moves_back(
    pair: tuple[PairBroker, PairBroker],
) -> None:
    a, b = pair
    eps = [Endpoints.from_host_port("127.0.0.1", x.port) for x in (a, b)]
    with Client("alice", endpoints=eps[0], failover=eps[1:], timeout=5) as alice:
        alice.say("one")
        alice.wait_sent(10)
        a.kill()
        wait_until(lambda: b.said("active:"), timeout=TAKEOVER_SECONDS)
        alice.say("two")
        alice.wait_sent(20)
        a.start()  # the killed one, back: the standby now
        wait_until(lambda: a.said("standby:"), what="the restarted broker standing by")
        b.kill()
        wait_until(lambda: a.said("active:"), timeout=TAKEOVER_SECONDS)
        alice.say("three")
        alice.wait_sent(20)
        texts = [e.text for e in alice.history(limit=50) if e.kind == "message"]
        assert texts == ["one", "two", "three"]
        # Each takeover was a resume, not a new session: no join line after the first.
        assert [e.kind for e in alice.history(limit=50)].count("join") == 1


def test_a_broker_whose_database_session_is_cut_steps_down_and_the_chat_goes_on(
    pair: tuple[PairBroker, PairBroker], pg_dsn: str
) -> None:
    a, b = pair
    eps = [Endpoints.from_host_port("127.0.0.1", x.port) for x in (a, b)]
    with Client("alice", endpoints=eps[0], failover=eps[1:], timeout=5) as alice:
        alice.say("before")
        alice.wait_sent(10)
        with psycopg.connect(pg_dsn, autocommit=True) as admin:
            (holder,) = admin.execute(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND database ="
                " (SELECT oid FROM pg_database WHERE datname = current_database())"
            ).fetchone() or (None,)
            assert holder is not None
            admin.execute("SELECT pg_terminate_backend(%s, 5000)", (holder,))
        wait_until(lambda: a.said("standing by"), timeout=TAKEOVER_SECONDS, what="the cut broker giving way")
        # Then whichever takes the lock first is active (the cut one may win it back, rebuilt
        # from the store): one more "active:" line between them.
        wait_until(lambda: a.count("active:") + b.count("active:") == 2, timeout=TAKEOVER_SECONDS)
        alice.say("after")
        alice.wait_sent(20)
        texts = [e.text for e in alice.history(limit=50) if e.kind == "message"]
        assert texts == ["before", "after"]
        seqs = [e.seq for e in alice.history(limit=50)]
        assert seqs == sorted(set(seqs))
    assert a.proc is not None
    a.proc.send_signal(signal.SIGTERM)
