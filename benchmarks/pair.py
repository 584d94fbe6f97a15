"""``python -m benchmarks.pair``: what a broker pair on PostgreSQL costs its users when the active
broker dies, and what one sender gets through it.

It starts a throwaway PostgreSQL server (the test suite's, tests/pgserver.py: ``initdb`` into a
temporary directory, loopback only), two ``zchat broker`` processes on that database, and two
clients given both brokers. Then ``--rounds`` times: a sender posts ``--rate`` messages a second
to a reader for ``--seconds``, the active broker is killed (SIGKILL) two seconds in, and the
bench records when the standby logged ``active:`` and when the reader had the first message posted
after the kill; the killed broker is started again (it comes back as the standby) and the roles
swap for the next round. Every message must reach the reader exactly once: a round that loses one
fails the run (exit 1). Everything is bounded in count and time and is stopped at the end.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from zchat.client.shell import Client
from zchat.protocol import Endpoints

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from pgserver import PgServer, find_bindir, where_searched  # the tests' own server

#: Seconds into each round at which the active broker is killed.
KILL_AT = 2.0
#: The most any one wait may take before the run is declared failed.
WAIT_SECONDS = 20.0


def base_port() -> int:
    """A port whose next two are most likely free too (the broker binds PORT..PORT+2)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port < 65000:
            return port
    raise RuntimeError("no free port below 65000")


@dataclass
class PairBroker:
    """One ``zchat broker`` of the pair, with its log lines timed as they come."""

    port: int
    dsn: str
    log: list[tuple[float, str]] = field(default_factory=list)
    proc: subprocess.Popen[str] | None = None

    @property
    def endpoints(self) -> Endpoints:
        return Endpoints.from_host_port("127.0.0.1", self.port)

    def start(self) -> PairBroker:
        cmd = [sys.executable, "-m", "zchat", "broker", "--port", str(self.port), "--db", self.dsn, "--rate", "0"]
        self.log = []
        self.proc = proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                            stderr=subprocess.PIPE, text=True)  # fmt: skip
        log = self.log

        def pump() -> None:
            assert proc.stderr is not None
            for line in proc.stderr:
                log.append((time.monotonic(), line))

        threading.Thread(target=pump, daemon=True).start()
        self.wait_for("listening")
        return self

    def when(self, text: str, after: float = 0.0) -> float | None:
        return next((t for t, line in self.log if text in line and t >= after), None)

    def wait_for(self, text: str, after: float = 0.0) -> float:
        deadline = time.monotonic() + WAIT_SECONDS
        pause = threading.Event()
        while (t := self.when(text, after)) is None:
            if time.monotonic() > deadline or (self.proc is not None and self.proc.poll() is not None):
                raise RuntimeError(f"broker on port {self.port} never logged {text!r}")
            pause.wait(0.005)
        return t

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def messages(client: Client, timeout: float, got: dict[str, float], nick: str) -> None:
    """Note when each message from ``nick`` arrived (the first time)."""
    for event in client.poll(timeout):
        if event.kind == "message" and event.nick == nick:
            got.setdefault(event.text, time.monotonic())


def throughput(sender: Client, reader: Client, count: int) -> float:
    """Messages a second from one sender to one reader through the active broker."""
    got: dict[str, float] = {}
    start = time.monotonic()
    for n in range(count):
        sender.say(f"t{n}")
        if n % 500 == 0:
            sender.poll(0)
            messages(reader, 0, got, sender.nick or "")
    deadline = time.monotonic() + WAIT_SECONDS
    while len(got) < count and time.monotonic() < deadline:
        messages(reader, 0.2, got, sender.nick or "")
        sender.poll(0)
    sender.wait_sent(WAIT_SECONDS)
    if len(got) < count:
        raise RuntimeError(f"the reader had {len(got)} of {count} messages")
    return count / (time.monotonic() - start)


def takeover_round(active: PairBroker, standby: PairBroker, n: int, rate: float, seconds: float) -> tuple[float, float]:
    """One kill -9 of the active broker mid-stream: (seconds until the standby was active,
    seconds until the reader had the first message posted after the kill)."""
    brokers = [active.endpoints, standby.endpoints]
    with Client(f"s{n}", endpoints=brokers[0], failover=brokers[1:]) as sender, \
            Client(f"r{n}", endpoints=brokers[0], failover=brokers[1:]) as reader:  # fmt: skip
        got: dict[str, float] = {}
        start = time.monotonic()
        killed, sent = 0.0, 0
        next_send, end = start, start + seconds
        while (now := time.monotonic()) < end:
            if now >= next_send:
                sender.say(f"m{n}-{sent}")
                sent += 1
                next_send += 1 / rate
            if not killed and now >= start + KILL_AT:
                active.kill()
                killed = time.monotonic()
            sender.poll(0)
            messages(reader, 0.001, got, sender.nick or "")
        sender.wait_sent(WAIT_SECONDS)
        deadline = time.monotonic() + WAIT_SECONDS
        while len(got) < sent and time.monotonic() < deadline:
            messages(reader, 0.2, got, sender.nick or "")
            sender.poll(0)
        if sorted(got) != sorted(f"m{n}-{k}" for k in range(sent)):
            raise RuntimeError(f"round {n}: the reader had {len(got)} of {sent} messages")
        took = standby.wait_for("active:", after=killed) - killed
        first_after = min((t for t in got.values() if t > killed), default=float("nan"))
        print(f"round {n}: {sent} messages, all once; standby active after {took * 1000:.0f} ms,"
              f" first message after the kill read after {(first_after - killed) * 1000:.0f} ms")  # fmt: skip
        return took, first_after - killed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pair", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="kill -9 rounds (default 5)")
    parser.add_argument("--rate", type=float, default=200.0, help="messages a second during a round (default 200)")
    parser.add_argument("--seconds", type=float, default=8.0, help="length of a round (default 8)")
    parser.add_argument("--count", type=int, default=20_000, help="messages in the throughput run (default 20000)")
    args = parser.parse_args(argv)
    bindir = find_bindir()
    if bindir is None:
        print(f"no PostgreSQL server binaries (looked in {where_searched()})", file=sys.stderr)
        return 1
    server = PgServer(bindir)
    server.start()
    pair: list[PairBroker] = []
    try:
        with psycopg.connect(server.dsn("postgres", unix=True), autocommit=True) as admin:
            admin.execute("CREATE DATABASE pair")
        dsn = server.dsn("pair")
        active = PairBroker(base_port(), dsn).start()
        pair.append(active)
        active.wait_for("active:")
        standby = PairBroker(base_port(), dsn).start()
        pair.append(standby)
        standby.wait_for("standby:")
        brokers = [active.endpoints, standby.endpoints]
        with Client("sender", endpoints=brokers[0], failover=brokers[1:]) as sender, \
                Client("reader", endpoints=brokers[0], failover=brokers[1:]) as reader:  # fmt: skip
            rate = throughput(sender, reader, args.count)
        print(f"one sender through the active broker on PostgreSQL: {rate:,.0f} msg/s ({args.count} messages)")
        takeovers, gaps = [], []
        for n in range(args.rounds):
            took, gap = takeover_round(active, standby, n, args.rate, args.seconds)
            takeovers.append(took)
            gaps.append(gap)
            active.start().wait_for("standby:")  # the killed one comes back as the standby
            active, standby = standby, active
        ms = [f"{1000 * f(xs):.0f}" for xs in (takeovers, gaps) for f in (min, statistics.median, max)]
        print(f"takeover (kill -9 to the standby's 'active:') min/median/max: {ms[0]}/{ms[1]}/{ms[2]} ms")
        print(f"reader's gap (kill -9 to the first later message) min/median/max: {ms[3]}/{ms[4]}/{ms[5]} ms")
        return 0
    except RuntimeError as exc:
        print(f"failed: {exc}", file=sys.stderr)
        return 1
    finally:
        for broker in pair:
            broker.stop()
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
