"""Relays: broker -> relay A -> relay B (libzmq's proxy), subscribers on both; nothing private
on them; a restarted relay costs its subscribers nothing (they repair from the broker's history);
a client behind a relay learns its subscriptions are live from the broker's heartbeat.

Real processes on loopback and ipc:// endpoints in the test's temp dir (so a restarted relay has
the same address). The machine's network namespaces are not used: loopback is what CI has.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
from conftest import ZCHAT, BrokerProcess, child_env, start_broker_process

from zchat.broker.relay import Relay
from zchat.client.shell import Client, Feed
from zchat.protocol import Endpoints, Event, decode_event


class RelayProcess:
    """`zchat relay` as a child process, started and waited for (bounded) by its log line."""

    def __init__(self, upstream: str, feed: str) -> None:
        self.upstream, self.feed = upstream, feed
        self.proc = self._start()

    def _start(self) -> subprocess.Popen[str]:
        cmd = [*ZCHAT, "relay", "--upstream", self.upstream, "--feed", self.feed]
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=child_env()
        )
        assert proc.stderr is not None
        ready = threading.Event()
        stream = proc.stderr

        def pump() -> None:
            for line in stream:
                if "zchat relay:" in line:
                    ready.set()
            ready.set()

        threading.Thread(target=pump, daemon=True).start()
        if not ready.wait(10) or proc.poll() is not None:
            proc.kill()
            proc.wait()
            stream.close()
            raise AssertionError("relay did not start")
        return proc

    def restart(self) -> None:
        self.stop()
        self.proc = self._start()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(10)
        assert self.proc.stderr is not None
        self.proc.stderr.close()


@pytest.fixture
def chain(tmp_path: Path) -> Iterator[tuple[BrokerProcess, RelayProcess, RelayProcess]]:
    broker = start_broker_process("--rate", "0", heartbeat=1.0)
    relays: list[RelayProcess] = []
    try:
        a = RelayProcess(broker.endpoints.feed, f"ipc://{tmp_path}/relay-a")
        relays.append(a)
        b = RelayProcess(a.feed, f"ipc://{tmp_path}/relay-b")
        relays.append(b)
        yield broker, a, b
    finally:
        for relay in relays:
            relay.stop()
        broker.stop()


def via(broker: BrokerProcess, feed: str) -> Endpoints:
    """A client's endpoints: push and ask the broker, subscribe through ``feed``."""
    return Endpoints(broker.endpoints.ingest, feed, broker.endpoints.rpc)


def messages_until(reader: Client, last: str, timeout: float = 20.0) -> list[Event]:
    got: list[Event] = []
    deadline = time.monotonic() + timeout
    while not got or got[-1].text != last:
        left = deadline - time.monotonic()
        event = reader.recv(left) if left > 0 else None
        if event is None:
            raise AssertionError(f"{last!r} not seen in {timeout} s; got {len(got)} messages")
        if event.kind == "message":
            got.append(event)
    return got


def test_relay_chain_delivers_everything_in_order_and_survives_a_relay_restart(
    chain: tuple[BrokerProcess, RelayProcess, RelayProcess],
) -> None:
    broker, a, b = chain
    with (
        Client(None, endpoints=via(broker, a.feed)) as on_a,
        Client(None, endpoints=via(broker, b.feed)) as on_b,
        Client("sender", endpoints=broker.endpoints) as sender,
    ):
        for n in range(300):
            sender.say(f"m {n}")
        sender.wait_sent(10)
        a.restart()  # both readers lose their feed for a while: A's directly, B's through A
        for n in range(300, 600):
            sender.say(f"m {n}")
        sender.wait_sent(10)
        expected = [f"m {n}" for n in range(600)]
        for reader in (on_a, on_b):
            got = messages_until(reader, "m 599")
            assert [e.text for e in got] == expected
            assert [e.seq for e in got] == list(range(got[0].seq, got[0].seq + 600))


def test_private_messages_never_travel_a_relay_and_reach_the_client_behind_it(
    chain: tuple[BrokerProcess, RelayProcess, RelayProcess], ctx: zmq.Context[zmq.Socket[bytes]]
) -> None:
    broker, a, _ = chain
    # eve, behind the relay, asks for everything the relay carries.
    eve = Feed(ctx, a.feed, [b""])
    try:
        eve.wait_live(5)
        with (
            Client("bob", endpoints=via(broker, a.feed)) as bob,
            Client("carol", endpoints=broker.endpoints) as carol,
        ):
            carol.msg("bob", "for bob only")
            carol.say("marker")
            carol.wait_sent(5)
            seen: list[Event] = []
            deadline = time.monotonic() + 10
            while not any(e.text == "marker" for e in seen) and eve.socket.poll(
                int(max(0, deadline - time.monotonic()) * 1000)
            ):
                seen += [decode_event(payload) for topic, payload in eve.drain() if not topic.startswith(b"!")]
            assert any(e.text == "marker" for e in seen), "eve's subscription through the relay is live"
            assert not any(e.kind == "private" or "for bob" in e.text for e in seen)
            got = [e for e in bob.events(timeout=2) if e.kind == "private"]
            assert [(e.nick, e.text) for e in got] == [("carol", "for bob only")]
    finally:
        eve.close()


def test_a_relay_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    broker = start_broker_process()
    try:
        relay = RelayProcess(broker.endpoints.feed, f"ipc://{tmp_path}/relay")
        try:
            relay.proc.terminate()
            assert relay.proc.wait(5) == 0
        finally:
            relay.stop()
    finally:
        broker.stop()


def test_a_relay_hears_an_ipv6_upstream_listed_after_an_ipv4_one() -> None:
    """One SUB socket connects to every upstream: IPv6 must be on if any of them needs it."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    upstream = ctx.socket(zmq.PUB)
    upstream.setsockopt(zmq.IPV6, 1)
    ipv6 = upstream.bind_to_random_port("tcp://[::1]")
    relay = Relay(["tcp://127.0.0.1:1", f"tcp://[::1]:{ipv6}"], "tcp://127.0.0.1:*", context=ctx)
    reader = ctx.socket(zmq.SUB)
    try:
        with relay:
            thread = threading.Thread(target=relay.run)
            thread.start()
            try:
                reader.setsockopt(zmq.SUBSCRIBE, b"")
                reader.connect(relay.endpoint)
                deadline = time.monotonic() + 10
                while not reader.poll(50):  # until the subscriptions are through both hops
                    assert time.monotonic() < deadline, "nothing came through the relay"
                    upstream.send(b"hello")
                assert reader.recv() == b"hello"
            finally:
                relay.stop()
                thread.join(10)
    finally:
        reader.close(0)
        upstream.close(0)
        ctx.term()
