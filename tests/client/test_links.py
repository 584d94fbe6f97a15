"""The client's sockets to the brokers of a chat (:class:`Links`), on real sockets against stand-in
brokers on loopback that only record what reaches them: the order of failover, a fresh routing id
for every rpc socket, the feed reading every broker, and closing.

Every receive has a deadline and every wait ends on a condition; nothing sleeps.
"""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import zmq
from conftest import wait_until

from zchat import protocol as p
from zchat import transport
from zchat.client.feed import Feed
from zchat.client.links import Links
from zchat.client.shell import Client
from zchat.errors import Refused, Unreachable

Context = zmq.Context[zmq.Socket[bytes]]
LOOPBACK = "tcp://127.0.0.1:*"


class StandIn:
    """A broker's three sockets, bound on loopback, with no broker behind them."""

    def __init__(self, ctx: Context) -> None:
        self.ingest = transport.socket(ctx, zmq.PULL, LOOPBACK)
        # XPUB: the subscriptions arriving say when the feed's subscriber will get what follows.
        self.feed = transport.socket(ctx, zmq.XPUB, LOOPBACK)
        self.rpc = transport.socket(ctx, zmq.ROUTER, LOOPBACK)
        bound = (transport.bind(s, LOOPBACK) for s in (self.ingest, self.feed, self.rpc))
        self.endpoints = p.Endpoints(*bound)

    def wait_subscribed(self, topic: bytes) -> None:
        while True:
            assert self.feed.poll(5000), f"no subscription to {topic!r} on {self.endpoints.feed}"
            if self.feed.recv() == b"\x01" + topic:
                return


def next_message(sock: zmq.Socket[bytes]) -> list[bytes]:
    assert sock.poll(5000), "nothing arrived in 5 s"
    return sock.recv_multipart()


def returns_in_time(call: Callable[[], object]) -> None:
    """``call()`` returns within 5 s: for a context's ``term()``, which blocks while any socket of
    that context is still open."""
    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(5)
    assert not thread.is_alive(), f"{call} still blocks: a socket was left open"


@pytest.fixture
def stand_ins(ctx: Context) -> list[StandIn]:
    return [StandIn(ctx) for _ in range(3)]


def test_next_broker_moves_posts_and_requests_round_the_brokers_in_order(
    ctx: Context, stand_ins: list[StandIn]
) -> None:
    links = Links([s.endpoints for s in stand_ins], context=ctx)
    order = [0, 1, 2, 0]
    received: set[tuple[int, bytes]] = set()  # (broker, post) for every post that reached one

    def arrived(at: int, post: bytes) -> bool:
        # IMMEDIATE: a post is taken only once ingest is connected to the broker used now, and
        # one taken just after a move may still go into the pipe being closed (and be dropped:
        # the session's outbox resends it), so it is posted again until it arrives.
        links.post(post)
        stand_ins[at].ingest.poll(10)
        for n, stand_in in enumerate(stand_ins):
            while stand_in.ingest.poll(0):
                received.add((n, stand_in.ingest.recv()))
        return (at, post) in received

    links.open([])
    try:
        for step, at in enumerate(order):
            here = stand_ins[at]
            assert links.endpoints == here.endpoints
            wait_until(functools.partial(arrived, at, f"step {step}".encode()), what=f"a post at broker {at}")
            links.reopen_rpc()  # as a rejoin does: requests go on a new socket, to the same broker
            links.request(p.Stats(req=str(step)))
            assert p.decode_request(next_message(here.rpc)[-1]) == p.Stats(req=str(step))
            assert not any(s.rpc.poll(0) for s in stand_ins), "a request reached another broker too"
            links.next_broker()
        assert received <= {(at, f"step {step}".encode()) for step, at in enumerate(order)}
    finally:
        links.close()


def test_with_one_broker_there_is_no_next() -> None:
    only = p.Endpoints.from_host_port("127.0.0.1", 1)
    links = Links([only])
    links.next_broker()
    assert links.endpoints == only
    links.close()
    assert links.context.closed


def test_every_rpc_socket_has_a_fresh_unguessable_routing_id_and_only_the_last_is_answered(
    ctx: Context, stand_ins: list[StandIn]
) -> None:
    broker = stand_ins[0]
    links = Links([broker.endpoints], context=ctx)
    links.open([])
    try:
        routes = []
        for n in range(3):
            if n:
                links.reopen_rpc()
            links.request(p.Stats(req=str(n)))
            routes.append(next_message(broker.rpc)[0])
        # libzmq's own ids start with a zero byte and count up; ours are random, 16 bytes.
        assert len(set(routes)) == 3 and all(len(r) == 16 and r[0] != 0 for r in routes)
        for route in routes:  # the replies to the closed sockets reach no one
            broker.rpc.send_multipart([route, b"", b"to " + route.hex().encode()])
        assert links.receive(5.0) == ([], False, [b"to " + routes[-1].hex().encode()])
    finally:
        links.close()


def test_the_feed_reads_every_broker_not_only_the_one_used_now(ctx: Context, stand_ins: list[StandIn]) -> None:
    topic = p.room_topic("general")
    links = Links([s.endpoints for s in stand_ins[:2]], context=ctx)
    links.open([topic])
    try:
        for broker in reversed(stand_ins[:2]):  # the other broker's feed first
            broker.wait_subscribed(topic)
            broker.feed.send_multipart([topic, broker.endpoints.feed.encode()])
            assert links.receive(5.0) == ([(topic, broker.endpoints.feed.encode())], False, [])
    finally:
        links.close()


def test_a_post_is_not_taken_before_ingest_is_connected(tmp_path: Path) -> None:
    nowhere = p.Endpoints(*(f"ipc://{tmp_path}/{name}" for name in ("in", "feed", "rpc")))
    links = Links([nowhere])
    assert not links.post(b"before opening")
    links.open([])
    assert not links.post(b"nobody listens")  # the session's outbox keeps it
    links.request(p.Stats())  # queued on the DEALER, or lost with it: never an error
    links.close()
    assert links.sockets == [] and links.context.closed


def test_connect_passes_over_a_broker_that_does_not_answer_or_stands_by(ctx: Context, stand_ins: list[StandIn]) -> None:
    links = Links([s.endpoints for s in stand_ins], context=ctx)
    failures: list[Exception] = [Unreachable("no answer"), Refused("standby", "this broker stands by")]
    tried = []

    def join(feed: Feed) -> str:
        tried.append(links.endpoints)
        assert links.sockets == [feed.socket, links.rpc]
        if failures:
            raise failures.pop(0)
        return "joined"

    try:
        assert links.connect([], join) == "joined"
        assert tried == [s.endpoints for s in stand_ins]
        assert links.endpoints == stand_ins[2].endpoints and len(links.sockets) == 2
    finally:
        links.close()


def test_connect_stops_at_a_refusal_and_after_each_broker_once_raises_the_last_failure(
    ctx: Context, stand_ins: list[StandIn]
) -> None:
    first, second = (s.endpoints for s in stand_ins[:2])
    links = Links([first, second], context=ctx)
    tried = []

    def refused(_feed: Feed) -> None:
        tried.append(links.endpoints)
        raise Refused("nick_taken", "the nick is taken")

    def no_answer(_feed: Feed) -> None:
        tried.append(links.endpoints)
        raise Unreachable(f"no answer from {links.endpoints.rpc}")

    with pytest.raises(Refused, match="the nick is taken"):
        links.connect([], refused)
    assert tried == [first] and links.sockets == []
    tried.clear()
    with pytest.raises(Unreachable, match=re.escape(second.rpc)):
        links.connect([], no_answer)
    assert tried == [first, second]
    assert links.sockets == [] and links.endpoints == first  # round to the first again
    links.close()
    assert not ctx.closed


def test_close_terminates_its_own_context_with_no_socket_left_even_after_failed_attempts(
    stand_ins: list[StandIn],
) -> None:
    links = Links([s.endpoints for s in stand_ins])

    def no_answer(_feed: Feed) -> None:
        raise Unreachable("no answer")

    with pytest.raises(Unreachable):  # three sockets and a handshake monitor opened and closed per broker
        links.connect([p.room_topic("general")], no_answer)
    links.open([p.room_topic("general")])
    sockets = links.sockets
    returns_in_time(links.close)
    assert links.context.closed and links.sockets == [] and all(s.closed for s in sockets)
    links.close()  # again: nothing left to do


def test_close_leaves_an_injected_context_to_its_owner(stand_ins: list[StandIn]) -> None:
    mine: Context = zmq.Context()
    links = Links([stand_ins[0].endpoints], context=mine)
    links.open([])
    sockets = links.sockets
    links.close()
    assert not mine.closed and all(s.closed for s in sockets)
    mine.socket(zmq.PAIR).close()  # still usable by its owner
    returns_in_time(mine.term)  # and nothing of the links is left open in it


def test_a_client_that_cannot_connect_terminates_its_own_context_not_an_injected_one(
    ctx: Context, tmp_path: Path
) -> None:
    nowhere = p.Endpoints(*(f"ipc://{tmp_path}/{name}" for name in ("in", "feed", "rpc")))
    own = Client("alice", endpoints=nowhere, timeout=0.2)
    injected = Client("bob", endpoints=nowhere, context=ctx, timeout=0.2)
    for client in (own, injected):
        with pytest.raises(Unreachable):
            client.connect()
        assert client.state == "closed" and client.sockets == []
        client.close()  # nothing left to do
    assert own.context.closed and not ctx.closed
