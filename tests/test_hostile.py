"""Hostile peers against a real broker and a relay: garbage on every socket (ingest, feed, rpc,
relay), then proof that the chat still works and that none of the garbage reached the feed.

Every test starts its legitimate watchers *before* the garbage: a real client in #general (what
`zchat tail` would show) and a wiretap SUB subscribed to the whole feed. After the garbage, two
fresh clients exchange a marker and its answer; the watchers must have seen exactly the legitimate
events up to the answer (gapless seqs), and the broker's counters must account for every drop.
Waits end on a condition (a counter, a reply, a hang-up, a marker), never on a sleep.
"""

from __future__ import annotations

import contextlib
import random
import secrets
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import zmq
from attackers import raw as zsocket
from attackers import tcp_port, zmtp_frame, zmtp_greeting, zmtp_ready
from conftest import ClientFactory, ThreadBroker
from zmq.utils.monitor import recv_monitor_message

from zchat import protocol as p
from zchat.broker.relay import Relay
from zchat.client.shell import Client

Context = zmq.Context[zmq.Socket[bytes]]
Socket = zmq.Socket[bytes]

LEGIT = ("watch", "alice", "bob")
#: Well over the broker's MAXMSGSIZE (64 KiB): the broker must hang up on the sender.
OVERSIZED = 2 * 1024 * 1024
#: Bound on every wait for the broker.
WAIT = 10.0


class Chat:
    """The legitimate side of a hostile test: clients kept alive, and a tap on the whole feed."""

    def __init__(self, broker: ThreadBroker, connect: ClientFactory, tap: Socket) -> None:
        self.broker = broker
        self.counters = broker.broker.core.counters
        self._connect = connect
        self.tap = tap
        self.tapped: list[list[bytes]] = []
        self.clients: dict[str, Client] = {}
        self.events: dict[str, list[p.Event]] = {}

    def add(self, nick: str) -> Client:
        client = self._connect(nick)
        self.clients[nick] = client
        self.events[nick] = []
        return client

    def pump(self, timeout: float = 0.0) -> None:
        """Let every client handle its input and heartbeat; take what the tap has."""
        for nick, client in self.clients.items():
            self.events[nick] += client.poll(timeout)
        while self.tap.poll(0):
            self.tapped.append(self.tap.recv_multipart())

    def until(self, cond: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}; counters: {self.counters}")
            self.pump(0.01)

    def drops(self, malformed: int, unknown_session: int = 0) -> None:
        """Wait until the broker has counted these drops (in total), then insist on exactly them."""
        c = self.counters
        self.until(
            lambda: c.dropped_malformed >= malformed and c.dropped_unknown_session >= unknown_session,
            f"{malformed} malformed and {unknown_session} unknown-session drops",
        )
        assert (c.dropped_malformed, c.dropped_unknown_session) == (malformed, unknown_session)

    def hang_up(self, monitor: Socket, what: str) -> None:
        """Wait for the monitored socket to be disconnected by the broker."""

        def disconnected() -> bool:
            while monitor.poll(0):
                if recv_monitor_message(monitor)["event"] == zmq.EVENT_DISCONNECTED:
                    return True
            return False

        self.until(disconnected, f"the broker to hang up on {what}")

    def prove_clean(self) -> None:
        """Two fresh clients talk; the watchers saw only legitimate events; counters agree."""
        alice, bob = self.add("alice"), self.add("bob")
        marker, answer = f"marker {secrets.token_hex(4)}", f"answer {secrets.token_hex(4)}"
        alice.say(marker)
        self.until(lambda: any(e.text == marker for e in self.events["bob"]), "bob to hear alice")
        bob.say(answer)
        self.until(
            lambda: (
                all(any(e.text == answer for e in self.events[n]) for n in LEGIT)
                and any(answer.encode() in frames[-1] for frames in self.tapped)
            ),
            "everyone to hear bob",
        )
        expected = [
            (1, "join", "watch", "watch joined"),
            (2, "join", "alice", "alice joined"),
            (3, "join", "bob", "bob joined"),
            (4, "message", "alice", marker),
            (5, "message", "bob", answer),
        ]
        # the watcher: nothing but the legitimate events, in order, seqs gapless from its join
        watched = [e for e in self.events["watch"] if e.kind != "heartbeat"]
        assert [(e.seq, e.kind, e.nick, e.text) for e in watched] == expected
        assert {e.room for e in watched} == {"general"}
        # the tap: every message on the whole feed is legitimate
        room_events = []
        for frames in self.tapped:
            assert len(frames) == 2, frames
            topic, ev = frames[0], p.decode_event(frames[1])
            if topic.startswith(b"#"):
                assert topic == p.room_topic(ev.room) == b"#general:"
                assert ev.nick in LEGIT and ev.kind in ("join", "message"), ev
                room_events.append((ev.seq, ev.kind, ev.nick, ev.text))
            else:
                # broker housekeeping (probe answers, liveness beacons): outside rooms and inboxes
                assert not topic.startswith(b"@"), (topic, ev)
                assert (ev.seq, ev.nick, ev.room) == (0, p.SYSTEM_NICK, ""), (topic, ev)
                assert ev.kind in ("ready", "heartbeat"), (topic, ev)
        assert room_events == expected
        c = self.counters
        assert (c.received, c.rejected, c.joins, c.leaves, c.timeouts) == (2, 0, 3, 0, 0)
        assert alice.who() == ["alice", "bob", "watch"]


#: conftest's in-thread broker, with a 2 s heartbeat (a 6 s lease) instead of 0.3 s: on a
#: loaded machine a starved test thread must not cost the watcher its lease mid-test.
BROKER_OPTIONS = {"heartbeat": 2.0}


@pytest.fixture
def chat(broker: ThreadBroker, connect: ClientFactory, ctx: Context) -> Iterator[Chat]:
    with ctx.socket(zmq.SUB) as tap:
        tap.setsockopt(zmq.LINGER, 0)
        tap.connect(broker.endpoints.feed)
        tap.setsockopt(zmq.SUBSCRIBE, b"")
        probe = p.probe_topic(secrets.token_hex(8))
        tap.setsockopt(zmq.SUBSCRIBE, probe)
        deadline = time.monotonic() + WAIT
        while True:  # the tap is live once the probe is answered; what came before is not ours
            assert tap.poll(max(0, int((deadline - time.monotonic()) * 1000))), "the tap never went live"
            if tap.recv_multipart()[0] == probe:
                break
        tap.setsockopt(zmq.UNSUBSCRIBE, probe)
        chat = Chat(broker, connect, tap)
        chat.add("watch")
        yield chat


@contextlib.contextmanager
def monitored(sock: Socket) -> Iterator[Socket]:
    monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    monitor.setsockopt(zmq.LINGER, 0)
    try:
        yield monitor
    finally:
        sock.disable_monitor()
        monitor.close()


# --- raw TCP --------------------------------------------------------------------------------------


#: A long message frame header claiming a terabyte.
ZMTP_HUGE_FRAME = b"\x02" + (2**40).to_bytes(8, "big")


def recv_or_eof(raw: socket.socket, chat: Chat, deadline: float) -> bytes:
    """The next bytes from ``raw``; b"" once the broker hung up. Keeps the chat alive meanwhile."""
    while time.monotonic() < deadline:
        chat.pump()
        if select.select([raw], [], [], 0.02)[0]:
            try:
                return raw.recv(65536)
            except ConnectionResetError:
                return b""
    raise AssertionError("the broker neither answered nor hung up")


def throw_raw(chat: Chat, endpoint: str, junk: bytes) -> None:
    """Send ``junk`` over plain TCP, half-close, and wait until the broker hangs up."""
    with socket.create_connection(("127.0.0.1", tcp_port(endpoint)), timeout=WAIT) as raw:
        with contextlib.suppress(OSError):  # the broker may hang up before it has read it all
            raw.sendall(junk)
            raw.shutdown(socket.SHUT_WR)
        await_hang_up(chat, raw)


def raw_junk(rng: random.Random) -> list[bytes]:
    return [
        rng.randbytes(65536),
        bytes(range(1, 256)) * 64,  # no 0xFF signature: parsed as ZMTP 1.0 frames of garbage
        b"\xff" + (2**40).to_bytes(8, "big") + b"\x00" + b"x" * 100,  # a 1 TB ZMTP 1.0 frame
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        zmtp_greeting() + rng.randbytes(4096),
        zmtp_greeting(b"CURVE") + rng.randbytes(512),
        zmtp_greeting(major=9, minor=9) + rng.randbytes(512),
        zmtp_greeting() + zmtp_ready(b"PUB") + zmtp_frame(b"\x01#general:"),  # incompatible type
        zmtp_greeting() + zmtp_ready(b"X" * 200),
    ]


def test_raw_tcp_garbage_on_every_port(chat: Chat) -> None:
    rng = random.Random(20240601)
    e = chat.broker.endpoints
    for endpoint in (e.ingest, e.feed, e.rpc):
        for junk in raw_junk(rng):
            throw_raw(chat, endpoint, junk)
    # ZMTP 1.0 parsing hands some of the garbage to the broker as messages: all dropped
    chat.until(lambda: chat.counters.dropped_malformed > 0, "the broker to drop the garbage it was handed")
    assert chat.counters.dropped_unknown_session == 0
    chat.prove_clean()


@contextlib.contextmanager
def zmtp_peer(chat: Chat, endpoint: str, socket_type: bytes) -> Iterator[socket.socket]:
    """A plain TCP socket that has done a proper ZMTP 3.0 NULL handshake as ``socket_type``."""
    with socket.create_connection(("127.0.0.1", tcp_port(endpoint)), timeout=WAIT) as raw:
        raw.sendall(zmtp_greeting() + zmtp_ready(socket_type))
        deadline = time.monotonic() + WAIT
        answer = b""
        while len(answer) < 66 or len(answer) < 66 + answer[65]:  # the broker's greeting + READY
            chunk = recv_or_eof(raw, chat, deadline)
            assert chunk, f"the broker hung up on a proper handshake: {answer!r}"
            answer += chunk
        assert answer[64] == 0x04 and b"READY" in answer[64:]
        yield raw


def await_hang_up(chat: Chat, raw: socket.socket) -> None:
    deadline = time.monotonic() + WAIT
    while recv_or_eof(raw, chat, deadline):
        pass


@pytest.mark.parametrize(("port", "socket_type"), [("ingest", b"PUSH"), ("feed", b"SUB"), ("rpc", b"DEALER")])
def test_zmtp_handshake_then_junk_then_a_huge_frame(chat: Chat, port: str, socket_type: bytes) -> None:
    """A peer that speaks ZMTP 3.0 properly, then sends a junk message, then a 1 TB frame."""
    with zmtp_peer(chat, getattr(chat.broker.endpoints, port), socket_type) as raw:
        raw.sendall(zmtp_frame(b"\x05 not zchat"))
        chat.drops(malformed=1)
        raw.sendall(ZMTP_HUGE_FRAME + b"x" * 1000)
        await_hang_up(chat, raw)  # MAXMSGSIZE: the broker hangs up
    chat.prove_clean()


# --- ingest (PULL) --------------------------------------------------------------------------------


def test_garbage_pushed_to_ingest_is_dropped(chat: Chat, ctx: Context) -> None:
    valid = p.Post(token="no-such-token", room="general", text="I am alice", id="x1")
    malformed: list[list[bytes]] = [
        [b""],
        [b"\x00"],
        [b"a", b"b"],
        [p.encode(valid), p.encode(valid)],
        [b"1", b"2", b"3", b"4", b"5"],
        [b"", b"", b"", b"", b""],
        [b"\xff\xfe\xfd\xfc"],  # not UTF-8
        [b'{"token":"t","room":"general","text":"\xc3\x28"}'],  # not UTF-8 inside a string
        [b'{"token":"t","room":"general","text":"\\ud800"}'],  # a lone surrogate
        [b"{not json"],
        [b'{"token":"t","room":"general","text":"hi"} trailing'],
        [b"null"],
        [b"[1, 2, 3]"],
        [b'{"token":5,"room":"general","text":"hi"}'],
        [b'{"token":"t","room":"general","text":"hi","kind":"system"}'],
        [b'{"room":"general","text":"no token","nick":"alice"}'],  # valid JSON post, no token
        [b'{"token":"t","room":"general","text":"x","x":' + b"[" * 30_000 + b"]" * 30_000 + b"}"],
        [b"{" * 60_000],
        [p.encode(p.Post(token="t" * 60_000, room="general", text="long token"))],  # a token is at most 64
    ]
    unknown: list[list[bytes]] = [
        [p.encode(valid)],
        [p.encode({"token": "no-such-token", "room": "general", "text": "hi", "nick": "watch", "seq": 1})],
        [p.encode({"token": "", "room": "general", "text": "hi"})],
        [p.encode(p.Post(token="no-such-token", room="general", text="x" * 60_000))],  # too long, and whose?
    ]
    with zsocket(ctx, zmq.PUSH, chat.broker.endpoints.ingest) as push:
        for frames in malformed + unknown:
            assert all(len(f) < p.MAX_FRAME_BYTES for f in frames)
            push.send_multipart(frames)
        chat.drops(malformed=len(malformed), unknown_session=len(unknown))
    chat.prove_clean()
    assert (chat.counters.dropped_malformed, chat.counters.dropped_unknown_session) == (len(malformed), len(unknown))


def test_oversized_frame_on_ingest_costs_only_that_connection(chat: Chat, ctx: Context) -> None:
    with zsocket(ctx, zmq.PUSH, chat.broker.endpoints.ingest) as push, monitored(push) as monitor:
        push.send(p.encode({"token": "t", "room": "general", "text": "x" * OVERSIZED}))
        chat.hang_up(monitor, "a 2 MB post")
        # the same peer, reconnected, is heard again: a drop costs a connection, not a ban
        push.send(b"junk after the reconnect")
        chat.drops(malformed=1)
    chat.prove_clean()


# --- rpc (ROUTER) ---------------------------------------------------------------------------------


def test_garbage_on_rpc(chat: Chat, ctx: Context) -> None:
    who = p.encode(p.Who(room="general", req="who-1"))
    unanswerable: list[list[bytes]] = [
        [b"one frame"],
        [b""],
        [b"x", who],  # no delimiter
        [who],
        [b"not-empty", b"junk", who],
        [f"frame {n}".encode() for n in range(10)],
        [b"", who, b""],  # the delimiter in the wrong place
    ]
    bad_bodies: list[tuple[bytes, str | None]] = [
        (b"garbage", None),
        (b"\xff\xfe", None),
        (b"", None),
        (b'{"type":"launch","req":"u1"}', "u1"),  # unknown request type
        (b'{"type":"hello","nick":"mallory","rooms":"general","req":"u2"}', "u2"),
        (b'{"type":"stats","req":"u4","x":' + b"[" * 30_000 + b"]" * 30_000 + b"}", None),
    ]
    with zsocket(ctx, zmq.DEALER, chat.broker.endpoints.rpc) as dealer:
        for frames in unanswerable:
            dealer.send_multipart(frames)
        for body, _ in bad_bodies:
            dealer.send_multipart([b"", body])
        dealer.send_multipart([b"", who])
        replies: list[dict[str, object]] = []

        def answered() -> bool:
            while dealer.poll(0):
                frames = dealer.recv_multipart()
                assert frames[0] == b"" and len(frames) == 2, frames
                replies.append(p.decode_reply(frames[1]))
            return bool(replies) and replies[-1].get("req") == "who-1"

        chat.until(answered, "the who reply")
        # replies come in order: none for the unaddressable messages, bad_request for the rest
        assert [(r["ok"], r.get("code"), r["req"]) for r in replies] == [
            *((False, "invalid", req) for _, req in bad_bodies),
            (True, None, "who-1"),
        ]
        assert replies[-1]["nicks"] == ["watch"]  # the garbage made nobody a member
        chat.drops(malformed=len(unanswerable) + len(bad_bodies))

    with zsocket(ctx, zmq.REQ, chat.broker.endpoints.rpc) as req:
        req.send(b"{this is not a request")
        assert req.poll(int(WAIT * 1000)), "no reply to a REQ with a garbage body"
        reply = p.decode_reply(req.recv())
        assert (reply["ok"], reply["type"], reply["code"], reply["req"]) == (False, "error", "invalid", None)
        assert "malformed request" in str(reply["error"])
        # a real request: refused, not ignored (a REQ has libzmq's own, guessable, routing id)
        req.send(p.encode(p.Hello(protocol=p.PROTOCOL_VERSION, nick="Watch", req="h")))
        assert req.poll(int(WAIT * 1000))
        reply = p.decode_reply(req.recv())
        assert (reply["ok"], reply["code"], reply["req"]) == (False, "weak_route", "h")
    chat.drops(malformed=len(unanswerable) + len(bad_bodies) + 1)
    chat.prove_clean()


def test_oversized_frame_on_rpc_costs_only_that_connection(chat: Chat, ctx: Context) -> None:
    with zsocket(ctx, zmq.DEALER, chat.broker.endpoints.rpc) as dealer, monitored(dealer) as monitor:
        dealer.send_multipart([b"", b'{"type":"stats","pad":"' + b"x" * OVERSIZED + b'"}'])
        chat.hang_up(monitor, "a 2 MB request")
        assert not dealer.poll(0), "the oversized request was answered"
        dealer.send_multipart([b"", p.encode(p.Stats(req="s"))])  # reconnected, and served
        chat.until(lambda: bool(dealer.poll(0)), "the stats reply")
        reply = p.decode_reply(dealer.recv_multipart()[-1])
        assert (reply["ok"], reply["req"], reply["sessions"]) == (True, "s", 1)
    assert chat.counters.dropped_malformed == 0
    chat.prove_clean()


# --- feed (XPUB) ----------------------------------------------------------------------------------


def test_garbage_on_the_feed(chat: Chat, ctx: Context) -> None:
    # XSUB passes any message upstream; those not starting with 0 or 1 are not subscriptions
    not_subscriptions: list[list[bytes]] = [
        [b"\x05junk"],
        [b""],
        [b"\x02~probe:"],
        [b"\xff" * 200],  # (over 1 KiB would cost the connection: below)
        [b"\x05a", b"\x06b", b"\x07c"],  # one multipart message
        [b'{"token":"t","room":"general","text":"posted on the feed"}'],
    ]
    with (
        zsocket(ctx, zmq.XSUB, chat.broker.endpoints.feed) as xsub,
        zsocket(ctx, zmq.SUB, chat.broker.endpoints.feed) as sub,
    ):
        for frames in not_subscriptions:
            xsub.send_multipart(frames)
        # odd but well-formed subscriptions: nothing is published for them
        for topic in [b"\x01", b"\x01#", b"\x01~", b"\x01~no-colon", b"\x01\xff\xfe:", b"\x01@watch:", b"\x01!:"]:
            xsub.send(topic)
        xsub.send(b"\x00never-subscribed")
        xsub.send(b"\x01~" + b"z" * 200 + b":")  # a long, but allowed, probe: answered on its topic

        def answered(sock: Socket, topic: bytes) -> Callable[[], bool]:
            return lambda: bool(sock.poll(0)) and sock.recv_multipart()[0] == topic

        chat.until(answered(xsub, b"~" + b"z" * 200 + b":"), "the answer to the long probe")
        for topic in [b"", b"\x00\xff", b"#general", b"#gen", b"@", b"~x"]:
            sub.setsockopt(zmq.SUBSCRIBE, topic)
        probe = p.probe_topic("hostile")
        sub.setsockopt(zmq.SUBSCRIBE, probe)  # anyone may probe: the answer goes to the prober only
        chat.until(answered(sub, probe), "the answer to the hostile probe")
        dropped = sum(map(len, not_subscriptions))  # the broker reads the feed frame by frame
        chat.drops(malformed=dropped)

        # A 2 MB subscription, sent raw: a libzmq SUB or XSUB keeps its own subscriptions in a
        # recursive trie and crashes *its own* process on one this deep (when it is removed).
        with zmtp_peer(chat, chat.broker.endpoints.feed, b"XSUB") as raw:
            with contextlib.suppress(OSError):  # the broker may hang up while we still send
                raw.sendall(b"\x02" + (OVERSIZED + 1).to_bytes(8, "big") + b"\x01" + b"y" * OVERSIZED)
            await_hang_up(chat, raw)
        with zsocket(ctx, zmq.XSUB, chat.broker.endpoints.feed) as big, monitored(big) as monitor:
            big.send(b"\x05" + b"y" * OVERSIZED)  # a 2 MB non-subscription
            chat.hang_up(monitor, "a 2 MB message on the feed")
        # A subscription is a short topic: over 1 KiB costs the connection (libzmq would keep
        # it in a trie at ~48 bytes per byte for as long as the peer stays).
        for frame in (b"\x01~" + b"z" * 60_000 + b":", b"\x01#" + b"y" * 2000 + b":"):
            with zsocket(ctx, zmq.XSUB, chat.broker.endpoints.feed) as long, monitored(long) as monitor:
                long.send(frame)
                chat.hang_up(monitor, f"a subscription of {len(frame)} bytes")
    chat.prove_clean()
    assert chat.counters.dropped_malformed == dropped


# --- volume ---------------------------------------------------------------------------------------

_FIELDS = ["token", "room", "text", "kind", "id", "type", "req", "nick", "rooms", "reason", "seq"]
#: Never a valid request type: random requests must all be refused.
_BAD_TYPES = ["", "HELLO", "hello ", "launch", "stats2", "who\x00", "leave!", "history?"]


def _random_value(rng: random.Random, depth: int = 0) -> object:
    kind = rng.randrange(7 if depth < 3 else 4)
    if kind == 0:
        return rng.randrange(-(2**70), 2**70)
    if kind == 1:
        return rng.choice([None, True, False, 1.5, -0.0, 1e308])
    if kind == 2:
        return "".join(chr(rng.randrange(0x20, 0x2FF)) for _ in range(rng.randrange(20)))
    if kind == 3:
        return rng.choice(["general", "GENERAL", "watch", "alice", "", "*", "message", "action"])
    if kind == 4:
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(_FIELDS): _random_value(rng, depth + 1) for _ in range(rng.randrange(4))}


def _random_frame(rng: random.Random) -> bytes:
    shape = rng.randrange(5)
    if shape == 0:
        return rng.randbytes(rng.randrange(300))
    if shape == 1:  # a JSON object of protocol-ish fields, maybe posing as a request
        obj = {rng.choice(_FIELDS): _random_value(rng) for _ in range(rng.randrange(6))}
        if rng.random() < 0.5:
            obj["type"] = rng.choice(_BAD_TYPES)
        return p.encode(obj)
    if shape == 2:  # a well-formed post with a token nobody was given
        post = p.Post(token=rng.randbytes(8).hex(), room="general", text=f"spam {rng.random()}")
        return p.encode(post)
    if shape == 3:  # valid JSON, then damaged
        data = bytearray(p.encode({f: _random_value(rng) for f in rng.sample(_FIELDS, 4)}))
        for _ in range(rng.randrange(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return bytes(data[: rng.randrange(len(data) + 1)])
    return b""


def test_a_flood_of_random_messages_on_every_socket(chat: Chat, ctx: Context) -> None:
    seed = 20240601
    rng = random.Random(seed)
    e = chat.broker.endpoints
    counts = {"ingest": 0, "rpc": 0, "feed": 0, "feed frames": 0}
    replies_due = 0
    replies: list[dict[str, object]] = []
    with (
        zsocket(ctx, zmq.PUSH, e.ingest) as push,
        zsocket(ctx, zmq.DEALER, e.rpc) as dealer,
        zsocket(ctx, zmq.XSUB, e.feed) as xsub,
    ):

        def take_replies() -> int:
            while dealer.poll(0):
                replies.append(p.decode_reply(dealer.recv_multipart()[-1]))
            return len(replies)

        for n in range(3000):
            frames = [_random_frame(rng) for _ in range(rng.choice([1, 1, 1, 2, 3, 5]))]
            target = rng.choice(["ingest", "rpc", "feed"])
            if target == "ingest":
                push.send_multipart(frames)
            elif target == "rpc":
                if rng.random() < 0.5:
                    frames = [b"", frames[-1]]  # addressed, so it must be answered
                # the ROUTER puts the peer's identity in front: [id, b"", body] is answered, nothing else
                if len(frames) == 2 and frames[0] == b"":
                    replies_due += 1
                dealer.send_multipart(frames)
            else:
                # first bytes 0 and 1 would be (legitimate) subscriptions
                # and at most 256 bytes (over 1 KiB costs the connection): each frame is dropped
                frames = [(f if f[:1] not in (b"\x00", b"\x01") else b"\x02" + f)[:256] for f in frames]
                xsub.send_multipart(frames)
                counts["feed frames"] += len(frames) - 1
            counts[target] += 1
            if n % 200 == 0:
                chat.pump()
                take_replies()
        total = sum(counts.values())
        c = chat.counters
        chat.until(
            lambda: c.dropped_malformed + c.dropped_unknown_session >= total,
            f"{total} drops (seed {seed}, {counts})",
            timeout=20,
        )
        assert c.dropped_malformed + c.dropped_unknown_session == total, f"seed {seed}"
        assert c.dropped_unknown_session > 0
        # what the broker could not queue for a dealer that reads only now and then, it counts
        chat.until(lambda: take_replies() + c.replies_dropped >= replies_due, f"{replies_due} replies")
        assert len(replies) + c.replies_dropped == replies_due
        assert all(r["ok"] is False and r["code"] == "invalid" for r in replies), f"seed {seed}"
    chat.prove_clean()


# --- relay (PUB) ----------------------------------------------------------------------------------


def test_garbage_on_a_relay(chat: Chat, ctx: Context) -> None:
    """Raw TCP garbage, ZMTP junk, stray cancels and oversized frames on a relay's port: the
    relay keeps relaying (a subscriber behind it hears the chat) and the broker serves everyone."""
    relay = Relay(chat.broker.endpoints.feed, "tcp://127.0.0.1:*", context=ctx)
    relay.bind()
    thread = threading.Thread(target=relay.run, name="relay")
    thread.start()
    try:
        with zsocket(ctx, zmq.SUB, relay.endpoint) as sub:
            sub.setsockopt(zmq.SUBSCRIBE, b"#general:")
            sub.setsockopt(zmq.SUBSCRIBE, p.HEARTBEAT_TOPIC)  # heard: the subscriptions are live
            chat.until(lambda: bool(sub.poll(0)) and sub.recv_multipart()[0] == p.HEARTBEAT_TOPIC, "a heartbeat")
            rng = random.Random(20240602)
            for junk in raw_junk(rng):
                throw_raw(chat, relay.endpoint, junk)
            with zmtp_peer(chat, relay.endpoint, b"SUB") as raw:
                raw.sendall(b"".join(zmtp_frame(f) for f in (b"\x00#general:", b"\x00", b"\x05junk", b"")))
                too_long = b"\x01#" + b"y" * 2000 + b":"  # over the relay's 256 bytes: a long frame
                raw.sendall(b"\x02" + len(too_long).to_bytes(8, "big") + too_long)
                await_hang_up(chat, raw)
            with zsocket(ctx, zmq.XSUB, relay.endpoint) as xsub:
                for frame in (b"\x00#general:", b"\x00", b"\x02junk", b"\xff" * 100):
                    xsub.send(frame)
                chat.prove_clean()
            answer = chat.events["bob"][-1].text.encode()
            relayed: list[bytes] = []

            def heard() -> bool:
                while sub.poll(0):
                    relayed.append(sub.recv_multipart()[-1])
                return any(answer in payload for payload in relayed)

            chat.until(heard, "the subscriber behind the relay to hear the answer")
    finally:
        relay.stop()
        thread.join(WAIT)
        relay.close()
