"""The attacks against private messages, automated, on real sockets and real brokers.

v1 granted each inbox topic on the feed with ``XPUB_MANUAL``; libzmq 4.3.5 pairs a subscription
message with its connection through two queues, and a feed peer sending messages that are not
subscriptions shifted one and not the other: after a broker restart bob's inbox was granted on
eve's connection, and eve read 3 of 3 of bob's private messages. v2 puts nothing addressed to
one session on the feed: it goes to the route of that session (its rpc connection's routing id).
These tests run that attack and its relatives against v2 and count what leaks: nothing may.

The cast: ``bob`` (attacked), ``alice`` (writes to bob), ``eve`` (a peer of her own: in secure
mode an allowed key, never bob's). Every wait ends on a condition and is bounded.
"""

from __future__ import annotations

import json
import random
import secrets
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import zmq
from attackers import WAIT, Crowd, RawPeer, Site, raw
from conftest import ThreadBroker

from zchat import protocol as p
from zchat import transport
from zchat.broker.relay import Relay
from zchat.client.shell import Client
from zchat.protocol import Event

Context = zmq.Context[zmq.Socket[bytes]]
Socket = zmq.Socket[bytes]

#: Non-subscription frames eve keeps sending on the feed (the first byte of a subscription is
#: 0 or 1; anything else was what shifted v1's queues).
JUNK = [b"\x02junk", b"\x05" + b"x" * 40, b"\xff\xfe", b'{"type":"hello"}', b"\x7f"]


def texts(events: list[Event], kind: str = "private") -> list[str]:
    return [e.text for e in events if e.kind == kind]


class Eve:
    """eve's raw XSUB on the feed, in a thread of its own: in a loop, frames that are not
    subscriptions, random garbage, then ``\\x01#general:`` and ``\\x01`` (everything); it records
    every message the feed gives it. XSUB reconnects by itself, so the loop goes on across a
    broker restart. Bounded: at most ``rounds`` rounds, and it stops when told."""

    def __init__(self, ctx: Context, endpoint: str, curve: transport.Curve | None, rounds: int = 100_000) -> None:
        self.sock = raw(ctx, zmq.XSUB, endpoint, curve, SNDTIMEO=0)
        self.received: list[list[bytes]] = []
        self.rounds = 0
        self.sent = 0
        self._max = rounds
        self._stop = threading.Event()
        self._error: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, name="eve", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        rng = random.Random(666)
        try:
            while not self._stop.is_set() and self.rounds < self._max:
                garbage = bytes([rng.randrange(2, 256)]) + rng.randbytes(rng.randrange(64))
                for frame in [*JUNK, garbage, b"\x01#general:", b"\x01"]:
                    try:
                        self.sock.send(frame, zmq.NOBLOCK)
                        self.sent += 1
                    except zmq.Again:
                        pass  # not connected (the broker is restarting): the loop goes on
                while self.sock.poll(0):
                    self.received.append(self.sock.recv_multipart())
                self.rounds += 1
                self._stop.wait(0.002)  # a few hundred rounds a second, not a busy loop
        except BaseException as exc:
            self._error.append(exc)
        finally:
            self.sock.close()

    def heard(self, text: str) -> bool:
        return any(text.encode() in frames[-1] for frames in self.received)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(WAIT)
        assert not self._thread.is_alive(), "eve's loop did not stop"
        assert not self._error, self._error


class Tap:
    """A raw SUB subscribed to everything on a feed, recording (topic, event)."""

    def __init__(self, ctx: Context, endpoint: str, curve: transport.Curve | None = None) -> None:
        self.sock = raw(ctx, zmq.SUB, endpoint, curve, SUBSCRIBE=b"")
        self.seen: list[tuple[bytes, dict[str, Any]]] = []

    def take(self) -> None:
        while self.sock.poll(0):
            frames = self.sock.recv_multipart()
            self.seen.append((frames[0], json.loads(frames[-1])))

    def heard(self, text: str) -> bool:
        self.take()
        return any(ev.get("text") == text for _, ev in self.seen)

    def heard_epoch(self, epoch: str | None) -> bool:
        self.take()
        return any(ev.get("kind") == "heartbeat" and ev.get("epoch") == epoch for _, ev in self.seen)

    def close(self) -> None:
        self.sock.close()


def no_secret_on_the_feed(seen: list[tuple[bytes, dict[str, Any]]]) -> None:
    """Everything a feed carried is public: rooms, heartbeats, probe answers."""
    for topic, ev in seen:
        assert topic[:1] in (b"#", b"!", b"~"), topic
        assert ev.get("kind") not in ("private", "error", "duplicate"), (topic, ev)
        assert not str(ev.get("room", "")).startswith("@"), (topic, ev)


# --- 1. the attack of the issue, across a SIGKILL and a restart -------------------------------------


@pytest.mark.parametrize("mode", ["open", "secure"])
def test_eve_junk_on_the_feed_across_a_restart_reads_nothing_of_bobs(mode: str, ctx: Context) -> None:
    """The issue's attack: eve's raw XSUB sends non-subscriptions and ``#general``/everything
    subscriptions in a loop; the broker (a `zchat broker` process on a file store, ipc://) is
    killed with SIGKILL and started again on the same endpoints; bob's client reconnects and
    resumes. alice writes bob N private messages before, during and after. Not one reaches eve's
    feed connection, eve's own session, or a subscriber to everything; bob gets each exactly
    once, in order."""
    site = Site(mode == "secure", ["alice", "bob", "eve"])
    n = 8  # private messages in each phase
    site.start()
    crowd = Crowd()
    eve_feed: Eve | None = None
    tap = Tap(ctx, site.endpoints.feed, site.curve("eve"))
    try:
        alice, bob, _eve = (crowd.add(nick, site.client(nick).connect()) for nick in ("alice", "bob", "eve"))
        eve_feed = Eve(ctx, site.endpoints.feed, site.curve("eve"))
        feed = eve_feed
        crowd.until(lambda: feed.rounds > 50, "eve's loop to run")
        sent: list[str] = []

        def write(phase: str) -> None:
            for i in range(n):
                sent.append(f"{phase} {i} {secrets.token_hex(4)}")
                alice.msg("bob", sent[-1])

        def bob_has(count: int) -> bool:
            return len(crowd.texts("bob")) >= count

        write("before")
        crowd.until(lambda: bob_has(n), "the messages before the restart")
        epoch = bob.epoch
        site.kill9()
        write("during")  # into alice's outbox, or a dying connection: resent after the restart
        site.start()
        crowd.until(lambda: bob_has(2 * n), "the messages sent while the broker was down", timeout=30)
        # bob's client may carry on across the restart without noticing (its DEALER reconnects by
        # itself and the broker restored the session); it rejoins when it sees the new epoch.
        crowd.until(lambda: bob.epoch != epoch and bob.state == "connected", "bob to rejoin the new broker")
        write("after")
        crowd.until(lambda: bob_has(3 * n), "the messages after the restart")

        # Live proof: a room marker reaches eve's feed connection and the tap; whatever the broker
        # might have leaked to them went out before it.
        # (A SUB attaches its new connection only when its owner touches it: the tap is live on the
        # new broker once it has heard the new broker's heartbeat.)
        crowd.until(lambda: tap.heard_epoch(bob.epoch), "the tap to hear the new broker")
        marker = f"marker {secrets.token_hex(4)}"
        alice.say(marker)
        crowd.until(lambda: tap.heard(marker) and feed.heard(marker), "eve's feed and the tap to hear the marker")
        crowd.until(lambda: marker in crowd.texts("eve", "message"), "eve's client to hear the marker")
        feed.stop()
        assert feed.rounds > 100 and feed.sent > 500, (feed.rounds, feed.sent)

        assert crowd.texts("bob") == sent, "bob: every private message exactly once, in order"
        assert {e.nick for e in crowd.heard["bob"] if e.kind == "private"} == {"alice"}
        for text in sent:
            assert not feed.heard(text)
            assert not tap.heard(text)
            assert all(text not in e.text for e in crowd.heard["eve"])
        no_secret_on_the_feed(tap.seen)
        no_secret_on_the_feed([(f[0], json.loads(f[-1])) for f in feed.received if len(f) == 2])
    finally:
        if eve_feed is not None:
            eve_feed.stop()
        tap.close()
        crowd.close()
        site.close()


# --- 2. a private message while bob is away, and after his session ends -----------------------------

#: Brokers in the tests below: a 6 s lease, so a client the test does not poll for a moment
#: (while it connects another one) keeps its session.
HEARTBEAT = 2.0


@pytest.fixture
def open_broker(ctx: Context) -> Iterator[ThreadBroker]:
    b = ThreadBroker(ctx, heartbeat=HEARTBEAT, rate=0)
    yield b
    b.stop()


def vanish(client: Client) -> None:
    """The client's process dies: its sockets go, no leave is said (a client made with no
    context of its own owns its context)."""
    client.context.destroy(linger=0)


def read_upto(b: ThreadBroker, inbox: str) -> int:
    """How far the broker records an inbox as read (the owner's heartbeats say so)."""
    return b.broker.core._reads.get(inbox, 0)


def test_open_mode_a_message_while_bob_is_gone_arrives_once_when_he_is_back(open_broker: ThreadBroker) -> None:
    """bob's process dies (no leave: his session lives on its lease). A private message sent
    then waits in his inbox; bob's next process, resuming with his token, gets it once — and
    those sent while that process is connecting, once each, in order."""
    b = open_broker
    crowd = Crowd()
    try:
        alice = crowd.add("alice", Client("alice", endpoints=b.endpoints, timeout=WAIT).connect())
        bob = Client("bob", endpoints=b.endpoints, timeout=WAIT).connect()
        crowd.add("bob", bob)
        alice.msg("bob", "before")
        crowd.until(lambda: crowd.texts("bob") == ["before"], "bob to read 'before'")
        crowd.until(lambda: read_upto(b, bob.inbox) == 1, "bob's heartbeat to say he read it")
        token, inbox = bob.session.token, bob.inbox
        del crowd.clients["bob"]
        vanish(bob)

        alice.msg("bob", "while gone")
        crowd.until(lambda: b.broker.core.counters.private >= 2, "the broker to store it")
        assert not [e for e in crowd.heard["alice"] if e.code == "offline"]  # his session lives

        # bob's next process connects with his token while alice keeps writing.
        during = [f"while reconnecting {i}" for i in range(10)]
        writer_error: list[BaseException] = []

        def writer() -> None:
            try:
                for text in during:
                    alice.msg("bob", text)
                    alice.poll(0.02)
                alice.wait_sent(WAIT)
            except BaseException as exc:
                writer_error.append(exc)

        writing = threading.Thread(target=writer)
        back = Client("bob", endpoints=b.endpoints, timeout=WAIT)
        back.session.token = token  # what a client that keeps its token across runs does
        writing.start()
        try:
            back.connect()
        finally:
            writing.join(WAIT * 2)
        assert not writing.is_alive() and not writer_error, writer_error
        assert back.inbox == inbox and back.session.token == token
        crowd.add("back", back)
        crowd.until(lambda: len(crowd.texts("back")) >= 11, "bob's next process to get them")
        alice.msg("bob", "after")
        crowd.until(lambda: "after" in crowd.texts("back"), "'after'")
        assert crowd.texts("back") == ["while gone", *during, "after"]
        assert b.broker.core.counters.resumed == 1
    finally:
        crowd.close()


def test_secure_mode_a_message_after_bobs_session_ended_waits_for_him(ctx: Context) -> None:
    """In secure mode ``@bob`` belongs to bob's key: a message written after his session ended
    (alice is told he is offline) is delivered once to his next session."""
    keypairs = {name: zmq.curve_keypair() for name in ("server", "alice", "bob")}
    kp = {name: (pub.decode(), sec.decode()) for name, (pub, sec) in keypairs.items()}
    allow = {kp["alice"][0]: {"alice"}, kp["bob"][0]: {"bob"}}
    b = ThreadBroker(ctx, heartbeat=HEARTBEAT, curve=kp["server"], allowlist=allow)
    crowd = Crowd()

    def client(nick: str) -> Client:
        curve = transport.Curve(kp["server"][0], *kp[nick])
        return Client(nick, endpoints=b.endpoints, context=ctx, timeout=WAIT, curve=curve).connect()

    try:
        alice = crowd.add("alice", client("alice"))
        bob = client("bob")
        assert bob.inbox == "@bob"
        bob.close()  # the session ends
        alice.msg("bob", "while you were out")
        crowd.until(lambda: any(e.code == "offline" for e in crowd.heard["alice"]), "alice to hear bob is offline")
        back = crowd.add("back", client("bob"))
        alice.msg("bob", "welcome back")
        crowd.until(lambda: "welcome back" in crowd.texts("back"), "bob's new session to hear alice")
        assert crowd.texts("back") == ["while you were out", "welcome back"]
        assert back.session.token != bob.session.token
    finally:
        crowd.close()
        b.stop()


def rpc_call(sock: Socket, request: p.Request, timeout: float = WAIT) -> dict[str, object]:
    """Send a request on a raw DEALER and return its reply (deliveries before it are skipped)."""
    sock.send_multipart([b"", p.encode(request)])
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0 and sock.poll(int(left * 1000) + 1):
        reply = p.decode_reply(sock.recv_multipart()[-1])
        if reply.get("type") != "event" and reply.get("req") == request.req:
            return reply
    raise AssertionError(f"no reply to {request}")


def test_open_mode_the_next_bob_gets_nothing_of_the_last_ones(open_broker: ThreadBroker, ctx: Context) -> None:
    """After bob's session ends, his nick is anyone's: a new client that takes it gets none of the
    old bob's private messages, and cannot read his inbox's history with its own token."""
    b = open_broker
    crowd = Crowd()
    dealer = raw(ctx, zmq.DEALER, b.endpoints.rpc, ROUTING_ID=transport.new_route())
    try:
        alice = crowd.add("alice", Client("alice", endpoints=b.endpoints, timeout=WAIT).connect())
        old = crowd.add("old", Client("bob", endpoints=b.endpoints, timeout=WAIT).connect())
        secret = f"for the old bob {secrets.token_hex(4)}"
        alice.msg("bob", secret)
        crowd.until(lambda: secret in crowd.texts("old"), "the old bob to get it")
        old_inbox, old_token = old.inbox, old.session.token
        old.close()  # the session ends: the nick is free

        refused = alice.msg("bob", "to nobody")
        crowd.until(lambda: refused in alice.failed, "alice's message to be refused")
        assert "no one called 'bob'" in alice.failed[refused]

        new = crowd.add("new", Client("bob", endpoints=b.endpoints, timeout=WAIT).connect())
        assert new.inbox != old_inbox and new.inbox.startswith("@bob~")
        alice.msg("bob", "for the new bob")
        crowd.until(lambda: "for the new bob" in crowd.texts("new"), "the new bob to get his")
        assert crowd.texts("new") == ["for the new bob"]
        assert all(secret not in e.text for e in crowd.heard["new"])

        token = new.session.token
        for room, tok, code in [
            (old_inbox, token, "not_yours"),  # the old inbox, with the new bob's token
            (old_inbox, old_token, "unknown_session"),  # with the old, ended token
            (old_inbox, None, "unknown_session"),
            ("@bob", token, "not_yours"),
        ]:
            reply = rpc_call(dealer, p.History(room=room, token=tok, after=0, req=secrets.token_hex(4)))
            assert (reply["ok"], reply["code"]) == (False, code), (room, reply)
        own = rpc_call(dealer, p.History(room=new.inbox, token=token, after=0, req="own"))
        assert own["ok"] is True
        assert [e["text"] for e in own["events"]] == ["for the new bob"]  # type: ignore[attr-defined]
    finally:
        dealer.close()
        crowd.close()


# --- 3. routes: what eve can do with a routing id -----------------------------------------------------


def routing_id(client: Client) -> bytes:
    rid = client.sockets[1].getsockopt(zmq.ROUTING_ID)
    assert isinstance(rid, bytes)
    return rid


def test_zchat_clients_route_by_fresh_random_16_byte_ids(open_broker: ThreadBroker, ctx: Context) -> None:
    ids = {transport.new_route() for _ in range(10_000)}
    assert len(ids) == 10_000
    assert all(len(i) == p.MIN_ROUTE_BYTES and i[0] != 0 for i in ids)
    clients = [Client(f"c{n}", endpoints=open_broker.endpoints, context=ctx, timeout=WAIT) for n in range(5)]
    try:
        seen = [routing_id(c.connect()) for c in clients]
        # a reconnect (the broker lost, or restarted) opens a new rpc socket with a new id
        clients[0].session._lost("test", time.monotonic())
        crowd = Crowd()
        crowd.add("c0", clients[0])
        crowd.until(lambda: clients[0].state == "connected", "c0 to rejoin")
        seen.append(routing_id(clients[0]))
        assert len(set(seen)) == len(seen)
        assert all(len(i) == 16 and i[0] != 0 for i in seen)
    finally:
        for c in clients:
            c.close()


def test_eve_with_bobs_live_routing_id_is_ignored(open_broker: ThreadBroker, ctx: Context) -> None:
    """(a) eve's DEALER takes the routing id of bob's live connection: libzmq's ROUTER ignores a
    duplicate (the connection is never read), and bob's messages keep going to bob."""
    b = open_broker
    crowd = Crowd()
    try:
        alice = crowd.add("alice", Client("alice", endpoints=b.endpoints, timeout=WAIT).connect())
        bob = crowd.add("bob", Client("bob", endpoints=b.endpoints, timeout=WAIT).connect())
        eve = raw(ctx, zmq.DEALER, b.endpoints.rpc, ROUTING_ID=routing_id(bob))
        try:
            requests = b.broker.core.counters.requests
            eve.send_multipart([b"", p.encode(p.Stats(req="eve"))])
            for i in range(3):
                alice.msg("bob", f"secret {i}")
            crowd.until(lambda: len(crowd.texts("bob")) == 3, "bob to get his messages")
            bob.who()  # bob's own requests are still answered on his connection
            assert not eve.poll(200), "eve's duplicate connection got something"
            assert b.broker.core.counters.requests - requests == 1  # bob's who; eve's stats never arrived
        finally:
            eve.close()
    finally:
        crowd.close()


def test_eve_with_bobs_old_routing_id_gets_nothing_once_bob_spoke_again(
    open_broker: ThreadBroker, ctx: Context
) -> None:
    """(b) bob's connection is gone and eve connects with its routing id (in life she would have
    to guess 128 random bits). Once bob is back on a fresh id and has spoken, every message for
    him goes there: eve's connection gets only the replies to her own requests."""
    b = open_broker
    crowd = Crowd()
    eve: Socket | None = None
    try:
        alice = crowd.add("alice", Client("alice", endpoints=b.endpoints, timeout=WAIT).connect())
        bob = Client("bob", endpoints=b.endpoints, timeout=WAIT).connect()
        old_id, token = routing_id(bob), bob.session.token
        vanish(bob)
        back = Client("bob", endpoints=b.endpoints, timeout=WAIT)
        back.session.token = token
        crowd.add("bob", back.connect())  # its hello is its first word on the new id
        assert routing_id(back) != old_id
        eve = raw(ctx, zmq.DEALER, b.endpoints.rpc, ROUTING_ID=old_id)
        assert rpc_call(eve, p.Stats(req="attached"))["ok"] is True  # eve's connection holds the id
        for i in range(5):
            alice.msg("bob", f"secret {i}")
        crowd.until(lambda: len(crowd.texts("bob")) == 5, "bob to get his messages")
        assert rpc_call(eve, p.Who(req="last"))["ok"] is True  # replies are in order: nothing before it
        assert not eve.poll(0)
    finally:
        if eve is not None:
            eve.close()
        crowd.close()


@pytest.mark.parametrize(
    "weak",
    [None, b"short-id", b"\x00" + bytes(range(1, 16)), b"x" * 15],
    ids=["libzmq-default", "8-bytes", "zero-first", "15-bytes"],
)
def test_a_weak_route_is_refused_for_session_requests(
    weak: bytes | None, open_broker: ThreadBroker, ctx: Context
) -> None:
    b = open_broker
    crowd = Crowd()
    dealer = (
        raw(ctx, zmq.DEALER, b.endpoints.rpc)
        if weak is None
        else raw(ctx, zmq.DEALER, b.endpoints.rpc, ROUTING_ID=weak)
    )
    try:
        alice = crowd.add("alice", Client("alice", endpoints=b.endpoints, timeout=WAIT).connect())
        bob = crowd.add("bob", Client("bob", endpoints=b.endpoints, timeout=WAIT).connect())
        before = b.broker.core.counters.weak_routes
        hello = rpc_call(dealer, p.Hello(protocol=p.PROTOCOL_VERSION, nick="eve", req="h"))
        assert (hello["ok"], hello["code"]) == (False, "weak_route")
        assert "ROUTING_ID" in str(hello["error"])
        # Even with bob's token: refused, and bob's route does not move.
        for req in (
            p.Heartbeat(token=bob.session.token, req="hb"),
            p.History(room=bob.inbox, token=bob.session.token, req="hi"),
        ):
            reply = rpc_call(dealer, req)
            assert (reply["ok"], reply["code"]) == (False, "weak_route")
        assert b.broker.core.counters.weak_routes == before + 3
        assert rpc_call(dealer, p.Who(req="w"))["ok"] is True  # questions anyone may ask: answered
        alice.msg("bob", "still yours")
        crowd.until(lambda: "still yours" in crowd.texts("bob"), "bob to get it")
        assert not dealer.poll(0)
    finally:
        dealer.close()
        crowd.close()


def test_secure_mode_bobs_token_on_eves_key_is_refused_and_moves_nothing(ctx: Context) -> None:
    keypairs = {name: zmq.curve_keypair() for name in ("server", "alice", "bob", "eve")}
    kp = {name: (pub.decode(), sec.decode()) for name, (pub, sec) in keypairs.items()}
    allow = {kp[n][0]: {n} for n in ("alice", "bob", "eve")}
    b = ThreadBroker(ctx, heartbeat=HEARTBEAT, curve=kp["server"], allowlist=allow)
    crowd = Crowd()

    def curve(nick: str) -> transport.Curve:
        return transport.Curve(kp["server"][0], *kp[nick])

    dealer = raw(ctx, zmq.DEALER, b.endpoints.rpc, curve("eve"), ROUTING_ID=transport.new_route())
    try:
        alice = crowd.add(
            "alice", Client("alice", endpoints=b.endpoints, context=ctx, timeout=WAIT, curve=curve("alice")).connect()
        )
        bob = crowd.add(
            "bob", Client("bob", endpoints=b.endpoints, context=ctx, timeout=WAIT, curve=curve("bob")).connect()
        )
        stolen = bob.session.token  # the worst case: eve has bob's token
        counters = b.broker.core.counters
        before = counters.dropped_wrong_identity
        attempts: list[tuple[p.Request, str]] = [
            (p.Heartbeat(token=stolen, req="1"), "unknown_session"),
            (p.History(room="@bob", token=stolen, after=0, req="2"), "unknown_session"),
            (p.Join(token=stolen, room="eves-room", req="3"), "unknown_session"),
            (p.Hello(protocol=p.PROTOCOL_VERSION, nick="bob", resume=stolen, req="4"), "nick_taken"),
        ]
        for req, code in attempts:
            reply = rpc_call(dealer, req)
            assert (reply["ok"], reply["code"]) == (False, code), reply
        assert counters.dropped_wrong_identity == before + 3
        alice.msg("bob", "for bob's key only")
        crowd.until(lambda: "for bob's key only" in crowd.texts("bob"), "bob to get it")
        assert rpc_call(dealer, p.Who(req="last"))["ok"] is True
        assert not dealer.poll(0)
        assert "eves-room" not in bob.session.rooms
    finally:
        dealer.close()
        crowd.close()
        b.stop()


# --- 4. relays: stray cancels cut nobody's feed ---------------------------------------------------------


def live_subs(ctx: Context, endpoints: list[str], topic: bytes) -> list[Socket]:
    """Raw SUBs on ``topic``, one per endpoint, each of which has heard a heartbeat (so, behind
    relays, its subscription is live all the way: the heartbeat is subscribed after ``topic``)."""
    subs = [raw(ctx, zmq.SUB, e, SUBSCRIBE=topic) for e in endpoints]
    for sub in subs:
        sub.setsockopt(zmq.SUBSCRIBE, p.HEARTBEAT_TOPIC)
    for sub, endpoint in zip(subs, endpoints, strict=True):
        deadline = time.monotonic() + WAIT
        while True:
            left = deadline - time.monotonic()
            assert left > 0 and sub.poll(int(left * 1000) + 1), f"no heartbeat on {endpoint}"
            if sub.recv_multipart()[0] == p.HEARTBEAT_TOPIC:
                break
    return subs


def test_stray_cancels_on_chained_relays_cut_nobody(ctx: Context) -> None:
    """broker -> relay 1 -> relay 2, a subscriber on each and one on the broker; raw ZMTP peers
    send every relay and the broker cancels for topics they never subscribed (``\\x00#general:``,
    ``\\x00``) between the messages. Every subscriber gets all N messages, in order."""
    b = ThreadBroker(ctx, heartbeat=HEARTBEAT, rate=0)
    relays = [Relay(b.endpoints.feed, "tcp://127.0.0.1:*", context=ctx)]
    relays[0].bind()
    relays.append(Relay(relays[0].endpoint, "tcp://127.0.0.1:*", context=ctx))
    relays[1].bind()
    threads = [threading.Thread(target=r.run, name=f"relay-{n}") for n, r in enumerate(relays)]
    for t in threads:
        t.start()
    peers: list[RawPeer] = []
    subs: list[Socket] = []
    alice = Client("alice", endpoints=b.endpoints, context=ctx, timeout=WAIT)
    try:
        feeds = [b.endpoints.feed, relays[0].endpoint, relays[1].endpoint]
        subs = live_subs(ctx, feeds, b"#general:")
        peers = [RawPeer(feed) for feed in feeds]
        alice.connect()
        n = 300
        stray = [b"\x00#general:", b"\x00", b"\x00!hb:", b"\x00#", b"\x01#gen", b"\x00#gen"]
        for i in range(n):
            if i % 50 == 0:
                for peer in peers:
                    peer.send(*stray[:1])
                    for frame in stray[1:]:
                        peer.send(frame)
            alice.say(f"m{i}")
        alice.wait_sent(WAIT)
        for feed, sub in zip(feeds, subs, strict=True):
            got: list[str] = []
            deadline = time.monotonic() + WAIT
            while len(got) < n and (left := deadline - time.monotonic()) > 0 and sub.poll(int(left * 1000) + 1):
                topic, payload = sub.recv_multipart()
                event = p.decode_event(payload)
                if topic == b"#general:" and event.kind == "message":
                    got.append(event.text)
            assert got == [f"m{i}" for i in range(n)], f"{feed}: {len(got)} of {n}"
    finally:
        alice.close()
        for peer in peers:
            peer.close()
        for sub in subs:
            sub.close()
        for r, t in zip(relays, threads, strict=True):
            r.stop()
            t.join(WAIT)
            r.close()
        b.stop()
