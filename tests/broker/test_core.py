"""BrokerCore without sockets: sessions as leases, rooms, stamping, drops. Time is passed in."""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence
from typing import Any

import pytest

from zchat import protocol as p
from zchat.broker.config import BrokerConfig
from zchat.broker.core import BrokerCore, Publish
from zchat.broker.identity import Authority
from zchat.broker.store import Store

#: The fixed wall clock of every test core, and how its timestamps read.
WALL = 1_700_000_000.25
WALL_TS = "2023-11-14T22:13:20.250Z"
T0 = 1000.0  # monotonic start
LEASE = 6.0  # heartbeat 2 s x 3 missed

Out = list[tuple[bytes, p.Event]]


def decoded(out: Sequence[Publish]) -> Out:
    return [(topic, p.decode_event(payload)) for topic, payload in out]


class Harness:
    """A BrokerCore with deterministic tokens and wall clock, and helpers speaking its frames."""

    def __init__(self) -> None:
        counter = itertools.count(1)
        self.core = BrokerCore(
            T0,
            BrokerConfig(heartbeat=2.0, missed_heartbeats=3),
            wallclock=lambda: WALL,
            new_token=lambda: f"token-{next(counter)}",
        )

    def call(self, req: p.Request, now: float = T0, ident: bytes = b"peer-1") -> tuple[dict[str, object], Out]:
        reply, out = self.core.request([ident, b"", p.encode(req)], now)
        assert reply is not None
        assert reply[:-1] == [ident, b""], "the reply must go back through the same envelope"
        return p.decode_reply(reply[-1]), decoded(out)

    def hello(self, nick: str, rooms: Sequence[str] = ("general",), now: float = T0) -> str:
        reply, _ = self.call(p.Hello(nick=nick, rooms=list(rooms)), now)
        assert reply["ok"] is True, reply
        token = reply["token"]
        assert isinstance(token, str)
        return token

    def post(self, token: str, room: str, text: str, now: float = T0, **extra: object) -> Out:
        body = {"token": token, "room": room, "text": text, **extra}
        return decoded(self.core.ingest([p.encode(body)], now))


@pytest.fixture
def h() -> Harness:
    return Harness()


# --- hello ------------------------------------------------------------------------------------------


def test_hello_gives_a_token_and_the_rooms_seq(h: Harness) -> None:
    h.hello("bob", ["general"])  # general is at seq 1 now
    reply, out = h.call(p.Hello(nick="alice", rooms=["general", "dev"], req="r1"))
    assert reply["ok"] is True
    assert reply["type"] == "hello"
    assert reply["req"] == "r1"
    assert reply["nick"] == "alice"
    assert reply["token"] == "token-2"
    assert reply["rooms"] == {"general": 2, "dev": 1}  # seqs after alice's own joins
    assert reply["heartbeat_ms"] == 2000
    assert reply["lease_ms"] == 6000
    assert reply["max_text_bytes"] == p.MAX_TEXT_BYTES
    assert [(t, e.room, e.seq, e.kind, e.nick) for t, e in out] == [
        (b"#general:", "general", 2, "join", "alice"),
        (b"#dev:", "dev", 1, "join", "alice"),
    ]


def test_join_event_is_published_on_the_room_topic_with_seq_1(h: Harness) -> None:
    reply, out = h.call(p.Hello(nick="alice"))  # default room
    assert reply["rooms"] == {"general": 1}
    assert len(out) == 1
    topic, ev = out[0]
    assert topic == b"#general:"
    assert (ev.seq, ev.ts, ev.room, ev.kind, ev.nick, ev.text) == (
        1,
        WALL_TS,
        "general",
        "join",
        "alice",
        "alice joined",
    )
    assert h.core.members("general") == ["alice"]
    assert h.core.seq("general") == 1


def test_hello_with_duplicate_rooms_joins_each_once(h: Harness) -> None:
    reply, out = h.call(p.Hello(nick="alice", rooms=["dev", "dev", "general", "dev"]))
    assert reply["rooms"] == {"dev": 1, "general": 1}
    assert [e.room for _, e in out] == ["dev", "general"]


@pytest.mark.parametrize("other", ["alice", "ALICE", "Alice", "aLiCe"])
def test_duplicate_nick_is_refused_case_insensitively(h: Harness, other: str) -> None:
    h.hello("Alice")
    reply, out = h.call(p.Hello(nick=other, req="7"))
    assert reply["ok"] is False
    assert reply["type"] == "error"
    assert reply["code"] == "nick_taken"
    assert reply["req"] == "7"
    assert other in str(reply["error"])
    assert out == []
    assert h.core.members("general") == ["Alice"]
    assert h.core.stats(T0)["sessions"] == 1


@pytest.mark.parametrize("nick", ["", "1abc", "a" * 25, "bad nick", "*", "mallory:"])
def test_invalid_nick_is_refused_with_the_rule(h: Harness, nick: str) -> None:
    reply, out = h.call(p.Hello(nick=nick))
    assert reply["ok"] is False
    assert reply["code"] == "invalid"
    assert p.NICK_RULE in str(reply["error"])
    assert out == []
    assert h.core.stats(T0)["sessions"] == 0


@pytest.mark.parametrize("room", ["General", "#general", "", "a" * 33, "dev ops", "_x"])
def test_invalid_room_is_refused_with_the_rule(h: Harness, room: str) -> None:
    reply, out = h.call(p.Hello(nick="alice", rooms=["general", room]))
    assert reply["ok"] is False
    assert reply["code"] == "invalid"
    assert p.ROOM_RULE in str(reply["error"])
    assert out == []  # nothing half done: not even the valid room was joined
    assert h.core.members("general") == []
    assert h.core.stats(T0)["sessions"] == 0
    # and the nick is still free
    assert h.hello("alice")


def test_too_many_rooms_are_refused(h: Harness) -> None:
    rooms = [f"r{n}" for n in range(p.MAX_ROOMS + 1)]
    reply, out = h.call(p.Hello(nick="alice", rooms=rooms))
    assert (reply["ok"], reply["code"], out) == (False, "too_many_rooms", [])
    reply, out = h.call(p.Hello(nick="alice", rooms=rooms[:-1]))
    assert reply["ok"] is True
    assert len(out) == p.MAX_ROOMS


# --- posts ------------------------------------------------------------------------------------------


def test_post_is_stamped_with_the_sessions_nick_not_the_payloads(h: Harness) -> None:
    token = h.hello("alice")
    out = h.post(token, "general", "hi all", nick="mallory", seq=999, ts="1999", kind="action", id="m1")
    assert len(out) == 1
    topic, ev = out[0]
    assert topic == b"#general:"
    assert (ev.nick, ev.text, ev.kind, ev.room, ev.id) == ("alice", "hi all", "action", "general", "m1")
    assert (ev.seq, ev.ts) == (2, WALL_TS)  # stamped by the broker, after alice's join (1)


def test_seq_is_gapless_per_room_and_independent_across_rooms(h: Harness) -> None:
    alice = h.hello("alice", ["general", "dev"])  # join: general 1, dev 1
    bob = h.hello("bob", ["dev"])  # join: dev 2
    seen: dict[str, list[int]] = {"general": [], "dev": []}
    for n in range(30):
        room = "dev" if n % 3 else "general"
        token = bob if n % 2 and room == "dev" else alice
        for topic, ev in h.post(token, room, f"m{n}", now=T0 + n * 0.01):
            assert topic == p.room_topic(room)
            seen[ev.room].append(ev.seq)
    assert seen["general"] == list(range(2, 2 + len(seen["general"])))
    assert seen["dev"] == list(range(3, 3 + len(seen["dev"])))
    assert h.core.seq("general") == 1 + len(seen["general"])
    assert h.core.seq("dev") == 2 + len(seen["dev"])
    assert h.core.seq("nowhere") == 0


def test_post_with_unknown_token_is_dropped_silently(h: Harness) -> None:
    h.hello("alice")
    before = h.core.counters.published
    assert h.post("forged-token", "general", "hello", nick="alice") == []
    assert h.post("", "general", "hello") == []
    assert h.core.counters.dropped_unknown_session == 2
    assert h.core.counters.published == before
    assert h.core.counters.received == 0
    assert h.core.seq("general") == 1


@pytest.mark.parametrize(
    "frames",
    [
        [],
        [b""],
        [b"a", b"b"],
        [p.encode(p.Post(token="token-1", room="general", text="hi"))] * 2,
        [b"1", b"2", b"3", b"4", b"5"],
        [b"\xff\xfe"],
        [b"{nope"],
        [b"[1, 2]"],
        [b'{"room":"general","text":"no token"}'],
        [b'{"token":"token-1","room":"general","text":"\xff"}'],
        [b'{"token":"token-1","room":"general","text":"x","junk":' + b"[" * 5000 + b"]" * 5000 + b"}"],
    ],
)
def test_malformed_ingest_messages_are_dropped(h: Harness, frames: list[bytes]) -> None:
    h.hello("alice")  # token-1: a valid token does not make a malformed message acceptable
    seq = h.core.seq("general")
    out = h.core.ingest(frames, T0)
    # At most a note to the owner of a token that can still be read; never anything in a room.
    assert all(topic == b"@alice:" and p.decode_event(ev).code == "bad_post" for topic, ev in out)
    assert h.core.counters.dropped_malformed == 1
    assert h.core.seq("general") == seq
    assert h.core.counters.received == 0


def test_invalid_post_from_a_live_session_is_explained_on_its_inbox(h: Harness) -> None:
    token = h.hello("alice")
    body = {"token": token, "room": "general", "text": "hi", "kind": "shout", "id": "m-1"}
    out = h.core.ingest([json.dumps(body).encode()], T0)
    assert len(out) == 1
    topic, payload = out[0]
    event = p.decode_event(payload)
    assert topic == b"@alice:"
    assert (event.kind, event.code, event.id, event.seq) == ("error", "bad_post", "m-1", 0)
    assert "kind" in event.text


def test_too_long_text_gets_an_inbox_error_and_nothing_on_the_room(h: Harness) -> None:
    token = h.hello("Alice")
    out = h.post(token, "general", "é" * (p.MAX_TEXT_BYTES // 2) + "!", id="long-1")
    assert len(out) == 1
    topic, ev = out[0]
    assert topic == b"@alice:"  # the inbox topic is lower-cased
    assert (ev.seq, ev.kind, ev.nick, ev.code, ev.id, ev.room) == (0, "error", "*", "rejected", "long-1", "general")
    assert "too long" in ev.text
    assert h.core.seq("general") == 1  # no seq was spent
    assert h.core.counters.rejected == 1
    assert h.core.counters.received == 0
    # the next good post takes the next seq
    [(_, ok)] = h.post(token, "general", "short")
    assert ok.seq == 2


def test_blank_text_and_long_id_get_inbox_errors(h: Harness) -> None:
    token = h.hello("alice")
    [(topic, ev)] = h.post(token, "general", "   ", id="b1")
    assert (topic, ev.code, ev.id, ev.text) == (b"@alice:", "rejected", "b1", "empty message")
    [(topic, ev)] = h.post(token, "general", "fine", id="x" * (p.MAX_ID_CHARS + 1))
    assert (topic, ev.code) == (b"@alice:", "rejected")
    assert h.core.seq("general") == 1
    assert h.core.counters.rejected == 2


def test_posting_to_a_room_you_are_not_in_gets_an_inbox_error(h: Harness) -> None:
    token = h.hello("alice", ["general"])
    h.hello("bob", ["dev"])
    out = h.post(token, "dev", "let me in", id="m9")
    assert len(out) == 1
    topic, ev = out[0]
    assert topic == b"@alice:"
    assert (ev.seq, ev.kind, ev.code, ev.id, ev.room) == (0, "error", "rejected", "m9", "")
    assert "dev" in ev.text
    assert h.core.seq("dev") == 1  # only bob's join
    # an invalid room name is the same kind of mistake
    [(topic, ev)] = h.post(token, "Not A Room", "x")
    assert (topic, ev.code) == (b"@alice:", "rejected")


# --- leases -----------------------------------------------------------------------------------------


def test_heartbeat_renews_the_lease(h: Harness) -> None:
    token = h.hello("alice")  # lease until T0 + 6
    reply, out = h.call(p.Heartbeat(token=token, req="hb"), now=T0 + 5)  # now until T0 + 11
    assert (reply["ok"], reply["req"], out) == (True, "hb", [])
    assert h.core.expire(T0 + 10.75) == []
    assert h.core.session(token) is not None
    assert h.post(token, "general", "still here", now=T0 + 10.5)[0][1].nick == "alice"  # until T0 + 16.5
    assert h.core.expire(T0 + 16.25) == []
    assert len(h.core.expire(T0 + 16.5)) == 1
    assert h.core.session(token) is None


def test_heartbeat_with_unknown_or_lapsed_token_is_refused(h: Harness) -> None:
    token = h.hello("alice")
    reply, _ = h.call(p.Heartbeat(token="nope"))
    assert (reply["ok"], reply["code"]) == (False, "unknown_session")
    reply, _ = h.call(p.Heartbeat(token=token), now=T0 + LEASE)  # lapsed, not yet swept
    assert (reply["ok"], reply["code"]) == (False, "unknown_session")
    # a lapsed session's posts are dropped like unknown ones
    assert h.post(token, "general", "late", now=T0 + LEASE) == []
    assert h.core.counters.dropped_unknown_session == 1


def test_expiry_publishes_timed_out_and_frees_the_nick(h: Harness) -> None:
    token = h.hello("alice", ["general", "dev"])
    h.hello("bob", ["general"], now=T0 + 3)
    assert h.core.expire(T0 + LEASE - 0.001) == []
    out = decoded(h.core.expire(T0 + LEASE))
    assert [(t, e.kind, e.nick, e.text, e.reason, e.seq) for t, e in out] == [
        (b"#dev:", "leave", "alice", "alice left (timed out)", "timed out", 2),
        (b"#general:", "leave", "alice", "alice left (timed out)", "timed out", 3),
    ]
    assert h.core.session(token) is None
    assert h.core.members("general") == ["bob"]
    assert h.core.counters.timeouts == 1
    assert h.core.expire(T0 + LEASE) == []  # only once
    reply, _ = h.call(p.Hello(nick="alice"), now=T0 + LEASE + 1)
    assert reply["ok"] is True


def test_hello_for_a_nick_whose_lease_lapsed_succeeds(h: Harness) -> None:
    old = h.hello("alice")
    # no expire() call in between: the hello itself must sweep the lapsed lease
    reply, out = h.call(p.Hello(nick="ALICE"), now=T0 + LEASE + 0.5)
    assert reply["ok"] is True
    assert reply["token"] != old
    assert [(e.kind, e.nick, e.reason, e.seq) for _, e in out] == [
        ("leave", "alice", "timed out", 2),
        ("join", "ALICE", None, 3),
    ]
    assert h.core.session(old) is None
    assert h.core.members("general") == ["ALICE"]


def test_next_expiry(h: Harness) -> None:
    assert h.core.next_expiry() == math.inf
    token = h.hello("alice")
    assert h.core.next_expiry() == T0 + LEASE
    h.hello("bob", now=T0 + 2)
    assert h.core.next_expiry() == T0 + LEASE  # the earliest lease
    h.call(p.Heartbeat(token=token), now=T0 + 4)  # alice until T0 + 10, bob until T0 + 8
    assert h.core.next_expiry() <= T0 + 8  # a lower bound, never later than a real expiry
    assert h.core.expire(T0 + LEASE) == []  # nobody lapsed yet: the sweep moves the bound up
    assert h.core.next_expiry() == T0 + 8
    assert len(h.core.expire(T0 + 8)) == 1  # bob
    assert h.core.next_expiry() == T0 + 10
    assert len(h.core.expire(T0 + 10)) == 1  # alice
    assert h.core.next_expiry() == math.inf


# --- leave, join, part, who -------------------------------------------------------------------------


def test_leave_publishes_quit(h: Harness) -> None:
    token = h.hello("alice", ["general", "dev"])
    h.hello("bob")
    reply, out = h.call(p.Leave(token=token, req="bye"))
    assert (reply["ok"], reply["req"]) == (True, "bye")
    assert [(t, e.kind, e.nick, e.text, e.reason) for t, e in out] == [
        (b"#dev:", "leave", "alice", "alice left (quit)", "quit"),
        (b"#general:", "leave", "alice", "alice left (quit)", "quit"),
    ]
    assert h.core.session(token) is None
    assert h.core.members("general") == ["bob"]
    assert h.core.counters.leaves == 1
    assert h.hello("alice")  # the nick is free again


def test_leave_with_a_message(h: Harness) -> None:
    token = h.hello("alice")
    _, out = h.call(p.Leave(token=token, reason="off to lunch"))
    assert out[0][1].text == "alice left (quit: off to lunch)"


def test_part_and_join(h: Harness) -> None:
    token = h.hello("alice", ["general"])
    reply, out = h.call(p.Join(token=token, room="dev", req="j"))
    assert (reply["ok"], reply["room"], reply["seq"], reply["req"]) == (True, "dev", 1, "j")
    assert [(t, e.kind, e.seq) for t, e in out] == [(b"#dev:", "join", 1)]
    reply, out = h.call(p.Join(token=token, room="dev"))  # already in: no second join event
    assert (reply["ok"], reply["seq"], out) == (True, 1, [])
    assert h.post(token, "dev", "in dev")[0][0] == b"#dev:"

    reply, out = h.call(p.Part(token=token, room="dev"))
    assert (reply["ok"], reply["room"]) == (True, "dev")
    assert [(t, e.kind, e.text, e.reason, e.seq) for t, e in out] == [
        (b"#dev:", "leave", "alice left (part)", "part", 3)
    ]
    assert h.core.members("dev") == []
    [(topic, err)] = h.post(token, "dev", "still here?")
    assert (topic, err.kind) == (b"@alice:", "error")

    reply, out = h.call(p.Part(token=token, room="dev"))
    assert (reply["ok"], reply["code"], out) == (False, "not_in_room", [])
    reply, _ = h.call(p.Join(token=token, room="Dev"))
    assert (reply["ok"], reply["code"]) == (False, "invalid")
    reply, _ = h.call(p.Join(token="forged", room="dev"))
    assert (reply["ok"], reply["code"]) == (False, "unknown_session")


def test_who_lists_members_sorted(h: Harness) -> None:
    for nick in ["carol", "Bob", "alice", "Dave"]:
        h.hello(nick)
    h.hello("eve", ["dev"])
    reply, _ = h.call(p.Who(room="general", req="w"))
    assert (reply["ok"], reply["room"], reply["req"]) == (True, "general", "w")
    assert reply["nicks"] == ["alice", "Bob", "carol", "Dave"]
    reply, _ = h.call(p.Who(room="nowhere"))
    assert reply["nicks"] == []
    reply, _ = h.call(p.Who(room="NOPE"))
    assert (reply["ok"], reply["code"]) == (False, "invalid")


# --- stats, rpc framing -----------------------------------------------------------------------------


def test_stats_counters(h: Harness) -> None:
    alice = h.hello("alice", ["general", "dev"])
    h.hello("bob")
    h.post(alice, "general", "one")
    h.post(alice, "dev", "two")
    h.post(alice, "general", "x" * (p.MAX_TEXT_BYTES + 1))  # rejected
    h.post("forged", "general", "three")  # unknown session
    h.core.ingest([b"junk"], T0)  # malformed
    h.core.request([b"peer", b"junk"], T0)  # malformed, no envelope
    h.call(p.Leave(token=alice))
    reply, _ = h.call(p.Stats(req="s"), now=T0 + 12.5)
    assert reply["ok"] is True
    assert reply["req"] == "s"
    expected = {
        "uptime_s": 12.5,
        "sessions": 1,
        "rooms": 2,
        "received": 2,
        "rejected": 1,
        "dropped_malformed": 2,
        "dropped_unknown_session": 1,
        "requests": 4,  # hello, hello, leave, stats
        "joins": 2,
        "leaves": 1,
        "timeouts": 0,
        # 3 joins + 2 messages + 1 inbox error + 2 leaves
        "published": 8,
    }
    assert {k: reply[k] for k in expected} == expected
    assert h.core.stats(T0 + 12.5)["dropped_malformed"] == 2


@pytest.mark.parametrize(
    "frames",
    [
        [b"peer", p.encode(p.Stats())],  # no delimiter
        [b"peer", b"x", p.encode(p.Stats())],  # a non-empty frame where the delimiter goes
        [p.encode(p.Stats())],
        [b"peer", b""],
        [b"peer"],
        [],
        [b"peer", b"", p.encode(p.Stats()), b""],  # the delimiter is not second to last
    ],
)
def test_rpc_without_the_empty_delimiter_gets_no_reply(h: Harness, frames: list[bytes]) -> None:
    assert h.core.request(frames, T0) == (None, [])
    assert h.core.counters.dropped_malformed == 1
    assert h.core.counters.requests == 0


def test_rpc_with_a_longer_envelope_is_answered_through_it(h: Harness) -> None:
    reply, out = h.core.request([b"peer", b"hop-1", b"hop-2", b"", p.encode(p.Stats(req="s"))], T0)
    assert reply is not None
    assert reply[:-1] == [b"peer", b"hop-1", b"hop-2", b""]
    assert p.decode_reply(reply[-1])["req"] == "s"
    assert out == []


@pytest.mark.parametrize(
    ("body", "req"),
    [
        (b"garbage", None),
        (b"", None),
        (b"\xff\xfe", None),
        (b"[]", None),
        (b'{"type":"launch","req":"r1"}', "r1"),
        (b'{"type":"hello","nick":42,"req":"r2"}', "r2"),
        (b'{"req":"r3"}', "r3"),  # no type
        (b'{"type":"who","room":["x"],"req":"r4","extra":[[[[1]]]]}', "r4"),
        (b'{"type":"launch","req":5}', None),  # not a string: cannot be echoed
        (b'{"type":"launch","req":"r6"', None),  # truncated JSON
        (b'{"type":"who","req":"r7","x":' + b"[" * 5000 + b"]" * 5000 + b"}", None),
    ],
)
def test_malformed_rpc_body_gets_bad_request_with_req_echoed(h: Harness, body: bytes, req: str | None) -> None:
    reply, out = h.core.request([b"peer", b"", body], T0)
    assert out == []
    assert reply is not None
    assert reply[:-1] == [b"peer", b""]
    answer = p.decode_reply(reply[-1])
    assert answer["ok"] is False
    assert answer["type"] == "error"
    assert answer["code"] == "bad_request"
    assert answer["req"] == req
    assert isinstance(answer["error"], str) and answer["error"]
    assert h.core.counters.dropped_malformed == 1
    assert h.core.counters.requests == 0


# --- shutdown and subscriptions ---------------------------------------------------------------------


def test_shutdown_publishes_a_system_event_to_every_room(h: Harness) -> None:
    h.hello("alice", ["general", "dev"])
    token = h.hello("bob", ["ops"])
    h.call(p.Leave(token=token))  # ops is empty now, but it is still a room with a seq
    out = decoded(h.core.shutdown())
    by_room = {e.room: (t, e) for t, e in out}
    assert sorted(by_room) == ["dev", "general", "ops"]
    assert len(out) == 3
    for room, (topic, ev) in by_room.items():
        assert topic == p.room_topic(room)
        assert (ev.kind, ev.nick, ev.reason, ev.ts) == ("system", "*", "shutdown", WALL_TS)
        assert ev.seq == h.core.seq(room)  # the notice takes the room's next seq
    assert by_room["general"][1].seq == 2
    assert by_room["ops"][1].seq == 3  # join, leave, shutdown


def test_shutdown_with_no_rooms_publishes_nothing(h: Harness) -> None:
    assert h.core.shutdown() == []


def test_probe_subscription_is_answered_on_its_topic(h: Harness) -> None:
    topic = p.probe_topic("n0nce")
    granted, events = h.core.subscription(b"\x01" + topic)
    assert granted == [topic]
    out = decoded(events)
    assert len(out) == 1
    t, ev = out[0]
    assert t == topic
    assert (ev.seq, ev.kind, ev.nick, ev.room, ev.ts) == (0, "ready", "*", "", WALL_TS)
    assert h.core.counters.published == 1


SECRET = "s" * p.INBOX_SECRET_CHARS


@pytest.mark.parametrize(
    ("msg", "granted"),
    [
        (b"\x00" + p.probe_topic("n0nce"), [p.probe_topic("n0nce")]),  # unsubscribing from a probe
        (b"\x01#general:", [b"#general:"]),
        (b"\x01#", [b"#"]),
        (b"\x01!hb:", [b"!hb:"]),
        # The empty subscription means "everything I may see": rooms and heartbeats, no inbox.
        (b"\x01", [b"#", p.HEARTBEAT_TOPIC]),
        (b"\x00", [b"#", p.HEARTBEAT_TOPIC]),
        # An inbox only with its full secret: no prefix of anyone's inbox gets anything.
        (b"\x01@alice:" + SECRET.encode(), [b"@alice:" + SECRET.encode()]),
        (b"\x01@alice:", []),
        (b"\x01@alice:" + SECRET[:-1].encode(), []),
        (b"\x01@a", []),
        (b"\x01@", []),
        (b"\x01x", []),
    ],
)
def test_open_mode_subscriptions_are_vetted(h: Harness, msg: bytes, granted: list[bytes]) -> None:
    assert h.core.subscription(msg) == (granted, [])
    assert h.core.counters.dropped_malformed == 0
    assert h.core.counters.published == 0
    assert h.core.counters.subscriptions_refused == (0 if granted else 1)


@pytest.mark.parametrize("msg", [b"", b"\x02~x:", b"\x05junk", b"\xff", b"~x:"])
def test_malformed_subscription_messages_are_dropped(h: Harness, msg: bytes) -> None:
    assert h.core.subscription(msg) == ([], [])
    assert h.core.counters.dropped_malformed == 1
    assert h.core.counters.published == 0


# --- secure mode: vetting, identities (tests/test_security.py shows the same on sockets) -------------

BOB_KEY, CAROL_KEY, EVE_KEY, STRANGER_KEY = ("B" * 40, "C" * 40, "E" * 40, "S" * 40)
BOB_INBOX = b"@bob:" + SECRET.encode()


def make_core(*, store: Store | None = None, authority: Authority | None = None, **config: Any) -> BrokerCore:
    """A core with deterministic tokens and clock; ``config`` are BrokerConfig fields."""
    counter = itertools.count(1)
    return BrokerCore(
        T0,
        BrokerConfig(**config),
        wallclock=lambda: WALL,
        new_token=lambda: f"token-{next(counter)}",
        store=store,
        authority=authority,
    )


def secure_core(**options: Any) -> BrokerCore:
    authority = Authority({BOB_KEY: {"bob"}, CAROL_KEY: {"carol"}, EVE_KEY: {"eve"}})
    return make_core(authority=authority, **options)


def hello_as(
    core: BrokerCore, nick: str, key: str | None, inbox: bytes | None = None, now: float = T0
) -> dict[str, object]:
    req = p.Hello(nick=nick, rooms=["general"], inbox=None if inbox is None else inbox.decode(), req="h")
    reply, _ = core.request([b"peer", b"", p.encode(req)], now, key)
    assert reply is not None
    return p.decode_reply(reply[-1])


def token_of(reply: dict[str, object]) -> str:
    assert reply["ok"] is True, reply
    assert isinstance(reply["token"], str)
    return reply["token"]


def post_as(core: BrokerCore, token: str, key: str | None, now: float = T0, **fields: object) -> Out:
    body = {"token": token, "room": "general", "text": "hi", **fields}
    return decoded(core.ingest([p.encode(body)], now, key))


@pytest.mark.parametrize(
    ("topic", "key", "granted"),
    [
        # Everything a key may see: rooms, heartbeats and the inboxes of its own nicks.
        (b"", EVE_KEY, [b"#", p.HEARTBEAT_TOPIC, b"@eve:"]),
        # Any prefix of one's own inbox means all of it; nothing of anyone else's.
        (b"@", EVE_KEY, [b"@eve:"]),
        (b"@e", EVE_KEY, [b"@eve:"]),
        (b"@eve:", EVE_KEY, [b"@eve:"]),
        (b"@eve:" + SECRET.encode(), EVE_KEY, [b"@eve:" + SECRET.encode()]),
        (b"@eve:xy", EVE_KEY, [b"@eve:xy"]),
        (b"@b", EVE_KEY, []),
        (b"@bob", EVE_KEY, []),
        (b"@bob:", EVE_KEY, []),
        (b"@bob:" + SECRET[:-1].encode(), EVE_KEY, []),
        # Not even with the full secret: in secure mode the key decides, never a leaked secret.
        (BOB_INBOX, EVE_KEY, []),
        (BOB_INBOX + b"more", EVE_KEY, []),
        (BOB_INBOX, STRANGER_KEY, []),
        (BOB_INBOX, BOB_KEY, [BOB_INBOX]),
        # A nick nobody owns yet (open registration claims it at hello): the secret decides.
        (b"@zed:" + SECRET.encode(), EVE_KEY, [b"@zed:" + SECRET.encode()]),
        (b"@zed:" + SECRET[:-1].encode(), EVE_KEY, []),
        (b"@", BOB_KEY, [b"@bob:"]),
        (b"@bob:", BOB_KEY, [b"@bob:"]),
        (b"#general:", EVE_KEY, [b"#general:"]),
        # A key the authority does not know has no inbox of its own.
        (b"", STRANGER_KEY, [b"#", p.HEARTBEAT_TOPIC]),
        (b"@", STRANGER_KEY, []),
        # No identity (libzmq's own unsubscriptions for a peer that went away): open-mode rules.
        (b"", None, [b"#", p.HEARTBEAT_TOPIC]),
        (b"@bob:", None, []),
    ],
)
def test_secure_mode_subscriptions_are_vetted_by_key(topic: bytes, key: str | None, granted: list[bytes]) -> None:
    core = secure_core()
    assert core.subscription(b"\x01" + topic, key) == (granted, [])
    assert core.subscription(b"\x00" + topic, key) == (granted, [])  # unsubscribing maps the same way


def test_secure_hello_checks_the_key_against_the_nick() -> None:
    core = secure_core()
    refused = hello_as(core, "bob", EVE_KEY)
    assert (refused["ok"], refused["code"]) == (False, "nick_not_allowed")
    assert "bob" in str(refused["error"])
    refused = hello_as(core, "bob", None)
    assert (refused["ok"], refused["code"]) == (False, "unauthenticated")
    refused = hello_as(core, "mallory", STRANGER_KEY)
    assert (refused["ok"], refused["code"]) == (False, "nick_not_allowed")
    assert core.session(token_of(hello_as(core, "Bob", BOB_KEY))) is not None
    assert core.counters.joins == 1


def test_open_registration_claims_are_staged_in_the_store() -> None:
    store = Store(":memory:")
    try:
        core = make_core(store=store, authority=Authority({}, open_registration=True))
        dave = token_of(hello_as(core, "Dave", EVE_KEY))
        token_of(hello_as(core, "dave2", BOB_KEY))
        store.commit()
        assert store.claims() == {"dave": EVE_KEY, "dave2": BOB_KEY}
        core.request([b"p", b"", p.encode(p.Leave(token=dave))], T0, EVE_KEY)
        refused = hello_as(core, "dave", CAROL_KEY)
        assert (refused["ok"], refused["code"]) == (False, "nick_not_allowed")
        # The owner's next session persists nothing new.
        token_of(hello_as(core, "dave", EVE_KEY))
        assert store._claims == []
    finally:
        store.close()


def test_a_post_with_another_keys_token_is_dropped() -> None:
    core = secure_core()
    bob = token_of(hello_as(core, "bob", BOB_KEY, BOB_INBOX))
    for key in (EVE_KEY, STRANGER_KEY, None):
        assert post_as(core, bob, key, text="as bob") == []
    assert core.counters.dropped_wrong_identity == 3
    assert core.counters.received == 0
    assert core.seq("general") == 1  # bob's join only
    # Not even the explanation of a malformed post goes to bob's inbox on eve's behalf.
    assert decoded(core.ingest([p.encode({"token": bob, "text": 42})], T0, EVE_KEY)) == []
    # With the right key, the payload's nick is ignored: the session's is stamped.
    [(topic, ev)] = post_as(core, bob, BOB_KEY, text="really bob", nick="carol")
    assert (topic, ev.nick, ev.text) == (b"#general:", "bob", "really bob")


def test_a_request_with_another_keys_token_is_refused() -> None:
    core = secure_core()
    bob = token_of(hello_as(core, "bob", BOB_KEY))
    for req in (
        p.Heartbeat(token=bob),
        p.Leave(token=bob),
        p.Join(token=bob, room="dev"),
        p.Part(token=bob, room="general"),
    ):
        reply, out = core.request([b"peer", b"", p.encode(req)], T0, EVE_KEY)
        assert reply is not None and out == []
        answer = p.decode_reply(reply[-1])
        assert (answer["ok"], answer["code"]) == (False, "unknown_session")
    assert core.counters.dropped_wrong_identity == 4
    assert core.members("general") == ["bob"]


# --- private messages -------------------------------------------------------------------------------


def test_private_message_goes_to_both_inboxes_and_nowhere_else(h: Harness) -> None:
    h.hello("alice")
    h.hello("Bob")
    token = h.hello("carol")
    seq = h.core.seq("general")
    out = h.post(token, "general", "psst", to="BOB", id="m1")
    assert [t for t, _ in out] == [b"@bob:", b"@carol:"]
    for _, ev in out:
        assert (ev.kind, ev.nick, ev.to, ev.text, ev.seq, ev.room, ev.id) == (
            "private",
            "carol",
            "Bob",
            "psst",
            0,
            "",
            "m1",
        )
    assert h.core.seq("general") == seq  # not in any room's sequence
    assert (h.core.counters.private, h.core.counters.received) == (1, 0)


def test_private_message_to_oneself_is_published_once(h: Harness) -> None:
    token = h.hello("bob")
    [(topic, ev)] = h.post(token, "", "note to self", to="bob")
    assert (topic, ev.kind, ev.to) == (b"@bob:", "private", "bob")


def test_private_message_to_an_absent_nick_or_without_text_is_refused(h: Harness) -> None:
    token = h.hello("carol")
    [(topic, ev)] = h.post(token, "", "hello?", to="nobody", id="m1")
    assert (topic, ev.kind, ev.code, ev.id) == (b"@carol:", "error", "rejected", "m1")
    assert "nobody" in ev.text
    h.hello("bob")
    [(topic, ev)] = h.post(token, "", "   ", to="bob")
    assert (topic, ev.code, ev.text) == (b"@carol:", "rejected", "empty message")
    assert h.core.counters.private == 0
    assert h.core.counters.rejected == 2


def test_a_resent_private_message_is_delivered_once(h: Harness) -> None:
    h.hello("bob")
    token = h.hello("carol")
    assert len(h.post(token, "", "once", to="bob", id="m1")) == 2
    [(topic, ev)] = h.post(token, "", "once", to="bob", id="m1")
    assert (topic, ev.kind, ev.id) == (b"@carol:", "duplicate", "m1")
    assert h.core.counters.private == 1


# --- the rate limit in the core ---------------------------------------------------------------------------


def test_posts_past_the_burst_get_a_rate_limited_error_and_are_not_published() -> None:
    core = make_core(rate=2.0, burst=3)
    token = token_of(hello_as(core, "flood", None))
    other = token_of(hello_as(core, "alice", None))
    published = [post_as(core, token, None, text=f"m{n}", id=f"m{n}") for n in range(5)]
    assert [len(out) for out in published] == [1, 1, 1, 1, 1]
    assert [t for out in published for t, _ in out][:3] == [b"#general:"] * 3
    for out, n in zip(published[3:], (3, 4), strict=True):
        [(topic, ev)] = out
        assert (topic, ev.kind, ev.code, ev.id, ev.room) == (b"@flood:", "error", "rate_limited", f"m{n}", "general")
        assert "at most 2 messages a second" in ev.text and "not sent" in ev.text
    assert core.counters.rate_limited == 2
    assert core.seq("general") == 2 + 3  # two joins, three messages
    # Another sender is not held back; the flooder gets a token back after 1/rate s.
    assert post_as(core, other, None)[0][0] == b"#general:"
    assert post_as(core, token, None, now=T0 + 0.5, text="later")[0][0] == b"#general:"


def test_in_secure_mode_the_limit_is_per_key_not_per_nick() -> None:
    authority = Authority({BOB_KEY: {"bob", "bob2"}})
    core = make_core(authority=authority, rate=1.0, burst=2)
    first = token_of(hello_as(core, "bob", BOB_KEY))
    second = token_of(hello_as(core, "bob2", BOB_KEY))
    kinds = [post_as(core, t, BOB_KEY)[0][1].kind for t in (first, second, first, second)]
    assert kinds == ["message", "message", "error", "error"]


def test_rate_zero_means_no_limit() -> None:
    core = make_core(rate=0)
    token = token_of(hello_as(core, "bulk", None))
    assert all(post_as(core, token, None)[0][1].kind == "message" for _ in range(500))
    assert core.counters.rate_limited == 0
