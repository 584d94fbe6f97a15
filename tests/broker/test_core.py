"""BrokerCore without sockets: sessions as leases, routes, rooms and inboxes, effects after commit,
resumes, stalls and every bound. Time, routes, keys and addresses are passed in."""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from zchat import protocol as p
from zchat.broker import core as core_module
from zchat.broker.config import BrokerConfig
from zchat.broker.core import STALL_SECONDS, BrokerCore
from zchat.broker.identity import CLAIMS_PER_KEY, Authority
from zchat.broker.store import SessionRecord, SQLiteStore, Store, StoreError

#: The fixed wall clock of every test core, and how its timestamps read.
WALL = 1_700_000_000.25
WALL_TS = "2023-11-14T22:13:20.250Z"
T0 = 1000.0  # monotonic start
LEASE = 6.0  # heartbeat 2 s x 3 missed
BOB_KEY, CAROL_KEY, EVE_KEY = "B" * 40, "C" * 40, "E" * 40


def route(name: str) -> bytes:
    """A strong routing id (16+ bytes, not starting with zero) named after its owner."""
    return f"route-{name}".ljust(16, ".").encode()


@dataclass
class Sent:
    """What one settled batch sent: on the feed, to routes, and as replies."""

    published: list[tuple[bytes, p.Event]] = field(default_factory=list)
    delivered: list[tuple[bytes, p.Event]] = field(default_factory=list)
    replies: list[tuple[bytes, dict[str, Any]]] = field(default_factory=list)

    def to(self, name: str) -> list[p.Event]:
        return [e for r, e in self.delivered if r == route(name)]

    @property
    def events(self) -> list[p.Event]:
        return [e for _, e in self.published]


class Harness:
    """A BrokerCore with deterministic tokens and wall clock, settling each call as the shell
    does: finish the batch, commit the store (if any), then keep it — or undo it if the commit
    fails."""

    def __init__(
        self, store: Store | None = None, authority: Authority | None = None, now: float = T0, **config: Any
    ) -> None:
        counter = itertools.count(1)
        options: dict[str, Any] = {"heartbeat": 2.0, "missed_heartbeats": 3, **config}
        self.store = store
        self.core = BrokerCore(
            now,
            BrokerConfig(**options),
            wallclock=lambda: WALL,
            new_token=lambda: f"token-{next(counter)}",
            store=store,
            authority=authority,
        )

    def settle(self) -> Sent:
        batch = self.core.finish()
        if self.store is not None and self.store.staged:
            try:
                self.store.commit()
            except StoreError:
                self.store.rollback()
                batch = self.core.undo()
            else:
                self.core.keep()
        else:
            self.core.keep()
        sent = Sent()
        sent.published = [(topic, p.decode_event(payload)) for topic, payload in batch.publish]
        for to, message in batch.deliver:
            event = p.delivered_event(p.decode_reply(message))
            assert event is not None
            sent.delivered.append((to, event))
        for reply in batch.replies:
            assert reply[1] == b"", "a reply goes back as [routing id, b'', json]"
            sent.replies.append((reply[0], json.loads(reply[2])))
        return sent

    def call(
        self,
        req: p.Request,
        now: float = T0,
        *,
        who: str = "peer",
        identity: str | None = None,
        peer: str | None = None,
    ) -> tuple[dict[str, Any], Sent]:
        self.core.begin(now)
        self.core.request([route(who), b"", p.encode(req)], now, identity, peer)
        sent = self.settle()
        (to, reply), *_ = sent.replies
        assert to == route(who), "the reply goes back to the connection that asked"
        return reply, sent

    def hello(
        self, nick: str, rooms: Sequence[str] = ("general",), now: float = T0, identity: str | None = None, **kw: Any
    ) -> str:
        reply, _ = self.call(
            p.Hello(protocol=p.PROTOCOL_VERSION, nick=nick, rooms=list(rooms), **kw), now, who=nick, identity=identity
        )
        assert reply["ok"] is True, reply
        return str(reply["token"])

    def post(
        self, token: str, room: str, text: str, now: float = T0, identity: str | None = None, **extra: Any
    ) -> Sent:
        self.core.begin(now)
        self.core.ingest([p.encode({"token": token, "room": room, "text": text, **extra})], now, identity)
        return self.settle()

    def advance(self, start: float, end: float) -> Sent:
        """Run the loop's timers from ``start`` to ``end`` as a running broker does: a batch at
        least every second (a longer gap would be a stall), expiring leases as they lapse."""
        sent = Sent()
        t = start
        while t < end:
            t = min(end, t + 1.0)
            self.core.begin(t)
            self.core.expire(t)
            step = self.settle()
            sent.published += step.published
        return sent

    def beat(
        self, token: str, now: float = T0, who: str = "peer", identity: str | None = None, **extra: Any
    ) -> dict[str, Any]:
        return self.call(p.Heartbeat(token=token, **extra), now, who=who, identity=identity)[0]


def hello_req(nick: str, **kw: Any) -> p.Hello:
    return p.Hello(protocol=p.PROTOCOL_VERSION, nick=nick, **kw)


@pytest.fixture
def h() -> Harness:
    return Harness()


@pytest.fixture
def stored(tmp_path: Any) -> Harness:
    return Harness(store=SQLiteStore(":memory:"))


def secure(**config: Any) -> Harness:
    authority = Authority({BOB_KEY: {"bob"}, CAROL_KEY: {"carol"}, EVE_KEY: {"eve"}})
    return Harness(store=SQLiteStore(":memory:"), authority=authority, **config)


# --- hello --------------------------------------------------------------------------------------------


def test_hello_gives_a_token_the_rooms_seqs_the_inbox_and_the_pace(h: Harness) -> None:
    h.hello("bob", ["general"])  # general is at seq 1 now
    reply, sent = h.call(hello_req("alice", rooms=["general", "dev"], req="r1"), who="alice")
    assert (reply["ok"], reply["type"], reply["req"], reply["nick"]) == (True, "hello", "r1", "alice")
    assert (reply["token"], reply["protocol"], reply["resumed"], reply["acked"]) == ("token-2", 2, False, 0)
    assert reply["rooms"] == {"dev": 1, "general": 2}  # seqs after alice's own joins
    assert (reply["heartbeat_ms"], reply["lease_ms"], reply["max_text_bytes"]) == (2000, 6000, p.MAX_TEXT_BYTES)
    assert (reply["rate"], reply["burst"]) == (10.0, 60)
    inbox = reply["inbox"]
    assert inbox["name"].startswith("@alice~") and (inbox["seq"], inbox["read"]) == (0, 0)
    assert [(t, e.room, e.seq, e.kind, e.nick) for t, e in sent.published] == [
        (b"#general:", "general", 2, "join", "alice"),
        (b"#dev:", "dev", 1, "join", "alice"),
    ]


def test_join_event_is_published_on_the_room_topic_with_seq_1(h: Harness) -> None:
    reply, sent = h.call(hello_req("alice"))  # default room
    assert reply["rooms"] == {"general": 1}
    ((topic, ev),) = sent.published
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
    reply, sent = h.call(hello_req("alice", rooms=["dev", "dev", "general", "dev"]))
    assert reply["rooms"] == {"dev": 1, "general": 1}
    assert [e.room for e in sent.events] == ["dev", "general"]


@pytest.mark.parametrize("other", ["alice", "ALICE", "aLiCe"])
def test_duplicate_nick_is_refused_case_insensitively(h: Harness, other: str) -> None:
    h.hello("Alice")
    reply, sent = h.call(hello_req(other, req="7"))
    assert (reply["ok"], reply["type"], reply["code"], reply["req"]) == (False, "error", "nick_taken", "7")
    assert other in reply["error"] and sent.published == []
    assert h.core.members("general") == ["Alice"]


@pytest.mark.parametrize("nick", ["", "1abc", "a" * 25, "bad nick", "*", "mallory:"])
def test_invalid_nick_is_refused_with_the_rule(h: Harness, nick: str) -> None:
    reply, _ = h.call(hello_req(nick))
    assert (reply["ok"], reply["code"]) == (False, "invalid")
    assert p.NICK_RULE in reply["error"]


@pytest.mark.parametrize("room", ["", "-dev", "a" * 33, "dev ops", "dev:"])
def test_invalid_room_is_refused_with_the_rule(h: Harness, room: str) -> None:
    reply, sent = h.call(hello_req("alice", rooms=["general", room]))
    assert (reply["ok"], reply["code"]) == (False, "invalid")
    assert p.ROOM_RULE in reply["error"] and sent.published == []
    assert h.core.stats(T0)["sessions"] == 0


def test_too_many_rooms_are_refused(h: Harness) -> None:
    reply, _ = h.call(hello_req("alice", rooms=[f"r{i}" for i in range(p.MAX_ROOMS + 1)]))
    assert (reply["ok"], reply["code"]) == (False, "too_many_rooms")


@pytest.mark.parametrize("version", [1, 3])
def test_another_protocol_version_is_refused_in_one_line(h: Harness, version: int) -> None:
    reply, sent = h.call(p.Hello(protocol=version, nick="old"))
    assert (reply["ok"], reply["code"]) == (False, "protocol")
    assert "zchat protocol 2" in reply["error"] and "\n" not in reply["error"]
    assert sent.published == [] and h.core.stats(T0)["sessions"] == 0
    # A hello with no version at all is a client of the first protocol.
    assert p.decode_request(b'{"type":"hello","nick":"old"}') == p.Hello(protocol=1, nick="old")


@pytest.mark.parametrize("weak", [b"\x00\x00\x00\x00\x07", b"short", b"\x00" + b"x" * 20])
def test_a_guessable_route_cannot_hold_a_session(h: Harness, weak: bytes) -> None:
    h.core.begin(T0)
    h.core.request([weak, b"", p.encode(hello_req("alice"))], T0)
    (reply,) = h.settle().replies
    assert reply[0] == weak and (reply[1]["ok"], reply[1]["code"]) == (False, "weak_route")
    assert "ROUTING_ID" in reply[1]["error"]
    assert h.core.stats(T0)["weak_routes"] == 1


# --- resuming -------------------------------------------------------------------------------------------


def test_resume_continues_the_session_without_join_or_leave(h: Harness) -> None:
    token = h.hello("alice", ["general", "dev"])
    h.post(token, "general", "one", n=1)
    reply, sent = h.call(hello_req("alice", rooms=["general", "dev"], resume=token), T0 + 1, who="alice-2")
    assert (reply["token"], reply["resumed"], reply["acked"]) == (token, True, 1)
    assert sent.published == []
    # Its traffic now goes to the new connection.
    bob = h.hello("bob")
    assert h.post(bob, "", "hi alice", to="alice").to("alice-2")
    assert h.core.stats(T0)["resumed"] == 1


def test_resume_reconciles_the_rooms(h: Harness) -> None:
    token = h.hello("alice", ["general", "dev"])
    reply, sent = h.call(hello_req("alice", rooms=["general", "ops"], resume=token), who="alice")
    assert reply["resumed"] is True and reply["rooms"] == {"general": 1, "ops": 1}
    assert [(e.room, e.kind) for e in sent.events] == [("dev", "leave"), ("ops", "join")]


@pytest.mark.parametrize("change", ["nick", "key"])
def test_resume_needs_the_same_nick_and_key(change: str) -> None:
    h = secure()
    token = h.hello("bob", identity=BOB_KEY)
    nick, key = ("carol", CAROL_KEY) if change == "nick" else ("bob", EVE_KEY)
    reply, _ = h.call(hello_req(nick, resume=token), who="x", identity=key)
    # Another nick is a new session (the resume is ignored); another key may not take bob's.
    assert reply.get("resumed") is False if change == "nick" else reply["code"] == "nick_taken"
    assert h.core.session(token) is not None


def test_hello_resuming_an_ended_session_learns_what_it_committed(h: Harness) -> None:
    token = h.hello("alice")
    for n in (1, 2, 3):
        h.post(token, "general", f"m{n}", n=n)
    h.call(p.Leave(token=token))
    reply, _ = h.call(hello_req("alice", resume=token), T0 + 1, who="alice")
    assert (reply["resumed"], reply["prior_acked"], reply["acked"]) == (False, 3, 0)
    assert reply["token"] != token


def test_a_lapsed_session_s_refusals_are_told_to_its_next_hello_also_after_a_restart() -> None:
    store = SQLiteStore(":memory:")
    h = Harness(store=store)
    token = h.hello("alice")
    h.post(token, "general", "m1", n=1)
    h.post(token, "ops", "not in that room", n=2)  # refused for good, told to a connection gone
    h.post(token, "general", "m3", n=3)
    reply, _ = h.call(p.Heartbeat(token=token), who="alice")
    refused = {"2": "you are not in room 'ops': join it first"}
    assert (reply["acked"], json.loads(p.encode(reply["refused"]))) == (3, refused)
    # A restarted broker still knows (the refusal was stored with the batch)...
    h = Harness(store=store)
    reply, _ = h.call(p.Heartbeat(token=token), who="alice")
    assert json.loads(p.encode(reply["refused"])) == refused
    # ...and so does the next hello after the session lapsed: 2 was taken, but not sent.
    h.advance(T0, T0 + 10)
    assert h.core.session(token) is None
    h = Harness(store=store)  # (from the tombstone in the store, too)
    reply, _ = h.call(hello_req("alice", resume=token), who="alice")
    assert (reply["resumed"], reply["prior_acked"], json.loads(p.encode(reply["prior_refused"]))) == (
        False, 3, refused)  # fmt: skip
    assert h.call(hello_req("bob"), who="bob")[0]["prior_refused"] is None  # no prior session: none


# --- posts ------------------------------------------------------------------------------------------


def test_post_is_stamped_with_the_sessions_nick_not_the_payloads(h: Harness) -> None:
    token = h.hello("alice")
    sent = h.post(token, "general", "hi", nick="mallory", n=1, id="c-1")
    ((topic, ev),) = sent.published
    assert topic == b"#general:"
    assert (ev.seq, ev.ts, ev.room, ev.kind, ev.nick, ev.text, ev.id, ev.n) == (
        2, WALL_TS, "general", "message", "alice", "hi", "c-1", 1,
    )  # fmt: skip


def test_seq_is_gapless_per_room_and_independent_across_rooms(h: Harness) -> None:
    token = h.hello("alice", ["general", "dev"])
    seqs = [
        (e.room, e.seq) for r in ["general", "dev", "general", "general", "dev"] for e in h.post(token, r, "x").events
    ]
    assert seqs == [("general", 2), ("dev", 2), ("general", 3), ("general", 4), ("dev", 3)]


def test_post_with_unknown_token_is_dropped_silently(h: Harness) -> None:
    sent = h.post("nope", "general", "hi")
    assert sent == Sent() and h.core.stats(T0)["dropped_unknown_session"] == 1


@pytest.mark.parametrize(
    "frames", [[b"not json"], [b"{}"], [b'{"token": 1}'], [b"a", b"b"], [b'{"token":"t","text":"x","n":0}']]
)
def test_malformed_ingest_messages_are_dropped(h: Harness, frames: list[bytes]) -> None:
    h.core.begin(T0)
    h.core.ingest(frames, T0)
    assert h.settle() == Sent() and h.core.stats(T0)["dropped_malformed"] == 1


def test_an_invalid_post_of_a_live_session_is_explained_to_it_alone(h: Harness) -> None:
    token = h.hello("alice")
    h.hello("bob")
    sent = h.post(token, "general", "hi", kind="shout", id="x1")
    assert sent.published == [] and sent.to("bob") == []
    (err,) = sent.to("alice")
    assert (err.kind, err.code, err.id, err.seq) == ("error", "bad_post", "x1", 0)


@pytest.mark.parametrize(
    ("room", "text", "extra", "why"),
    [
        ("general", "x" * (p.MAX_TEXT_BYTES + 1), {}, "too long"),
        ("general", "   ", {}, "empty message"),
        ("dev", "hi", {}, "you are not in room 'dev'"),
        ("", "hi", {"to": "nobody"}, "no one called 'nobody'"),
    ],
)
def test_a_refused_post_uses_up_its_number_and_says_why(
    h: Harness, room: str, text: str, extra: dict[str, Any], why: str
) -> None:
    token = h.hello("alice")
    sent = h.post(token, room, text, n=1, id="m1", **extra)
    assert sent.published == []
    (err,) = sent.to("alice")
    assert (err.code, err.id, err.n) == ("rejected", "m1", 1) and why in err.text
    assert h.beat(token)["acked"] == 1  # final: the next post is number 2


# --- numbered posts: once, in order -------------------------------------------------------------------


def test_a_resent_post_is_confirmed_not_published_again(h: Harness) -> None:
    token = h.hello("alice")
    assert len(h.post(token, "general", "hi", n=1).events) == 1
    sent = h.post(token, "general", "hi", n=1, id="again")
    assert sent.published == []
    (dup,) = sent.to("alice")
    assert (dup.kind, dup.n, dup.id) == ("duplicate", 1, "again")
    assert h.core.stats(T0)["duplicates"] == 1


def test_a_post_ahead_of_its_turn_is_refused_once_with_the_number_wanted(h: Harness) -> None:
    token = h.hello("alice")
    h.post(token, "general", "one", n=1)
    first = h.post(token, "general", "three", n=3)
    second = h.post(token, "general", "four", n=4)
    assert first.published == second.published == []
    (err,) = first.to("alice")
    assert (err.code, err.n, err.expected) == ("out_of_order", 3, 2)
    assert second.to("alice") == []  # told once per gap: the sender resends from 2
    assert [e.text for n, t in [(2, "two"), (3, "three")] for e in h.post(token, "general", t, n=n).events] == [
        "two",
        "three",
    ]
    assert h.core.stats(T0)["out_of_order"] == 2


def test_a_numbered_post_that_cannot_be_read_uses_up_its_number(h: Harness) -> None:
    token = h.hello("alice")
    h.core.begin(T0)
    h.core.ingest(
        [p.encode({"token": token, "text": "hi", "room": "general", "kind": "shout", "n": 1, "id": "m1"})], T0
    )
    (err,) = h.settle().to("alice")
    assert (err.code, err.n, err.id) == ("bad_post", 1, "m1")
    assert len(h.post(token, "general", "next", n=2).events) == 1  # the session goes on


def test_an_unnumbered_post_in_a_batch_that_is_not_stored_is_told_so() -> None:
    store = FailingStore(":memory:")
    h = Harness(store=store)
    token = h.hello("alice")
    store.failing = True
    (err,) = h.post(token, "general", "hi", id="plain").to("alice")
    assert (err.code, err.id, err.expected) == ("unavailable", "plain", None)


def test_a_void_post_uses_up_its_number_and_publishes_nothing(h: Harness) -> None:
    token = h.hello("alice")
    assert h.post(token, "general", "", n=1, void=True) == Sent()
    assert h.beat(token, who="alice")["acked"] == 1
    assert len(h.post(token, "general", "two", n=2).events) == 1
    assert h.post(token, "general", "", n=2, void=True).to("alice")[0].kind == "duplicate"


def test_replies_repeat_the_refused_numbers_beside_acked(h: Harness) -> None:
    token = h.hello("alice")
    h.post(token, "", "hi?", to="nobody", n=1)
    h.post(token, "general", "fine", n=2)
    reply = h.beat(token, who="alice")
    assert (reply["acked"], reply["refused"]) == (2, {"1": "no one called 'nobody' is here"})
    assert h.call(hello_req("alice", resume=token), who="alice")[0]["refused"] == reply["refused"]


def test_posts_without_a_number_are_taken_as_they_come(h: Harness) -> None:
    token = h.hello("alice")
    assert len(h.post(token, "general", "a").events) == len(h.post(token, "general", "a").events) == 1


# --- rate limit ---------------------------------------------------------------------------------------


def test_posts_past_the_burst_are_refused_with_the_number_to_resend_from() -> None:
    h = Harness(rate=2.0, burst=3)
    token = h.hello("alice")
    results = [h.post(token, "general", f"m{n}", n=n) for n in range(1, 6)]
    assert [len(r.events) for r in results] == [1, 1, 1, 0, 0]
    (err,) = results[3].to("alice")
    assert (err.code, err.expected) == ("rate_limited", 4) and "at most 2 messages a second" in err.text
    assert results[4].to("alice") == []  # 5, ahead of 4: the sender was told once to resend from 4
    # Half a second later a token is back: the sender resends 4.
    assert len(h.post(token, "general", "m4", T0 + 0.5, n=4).events) == 1
    # Resends of what was committed are free, however fast.
    assert all(h.post(token, "general", "m1", T0 + 0.5, n=1).to("alice")[0].kind == "duplicate" for _ in range(10))


def test_in_secure_mode_the_limit_is_per_key() -> None:
    authority = Authority({BOB_KEY: {"bob", "bobby"}})
    h = Harness(authority=authority, rate=1.0, burst=2)
    one, two = h.hello("bob", identity=BOB_KEY), h.hello("bobby", identity=BOB_KEY)
    published = [len(h.post(t, "general", "x", identity=BOB_KEY).events) for t in (one, two, one)]
    assert published == [1, 1, 0]


def test_rate_zero_means_no_limit() -> None:
    h = Harness(rate=0)
    token = h.hello("alice")
    assert sum(len(h.post(token, "general", "x").events) for _ in range(500)) == 500


# --- private messages: stored per inbox, delivered on routes, never published ---------------------------


def test_a_private_message_goes_to_both_inboxes_on_their_own_routes(h: Harness) -> None:
    alice, bob = h.hello("alice"), h.hello("bob")
    h.hello("eve")
    sent = h.post(alice, "general", "psst", to="BOB", id="p1", n=1)
    assert sent.published == [] and sent.to("eve") == []
    (to_bob,) = sent.to("bob")
    (copy,) = sent.to("alice")
    assert (to_bob.kind, to_bob.nick, to_bob.to, to_bob.text, to_bob.seq) == ("private", "alice", "bob", "psst", 1)
    assert to_bob.room.startswith("@bob~") and copy.room.startswith("@alice~") and copy.seq == 1
    assert (to_bob.id, copy.id) == ("p1", "p1")
    assert h.beat(bob, who="bob")["seqs"][to_bob.room] == 1


def test_a_private_message_to_oneself_is_stored_once(h: Harness) -> None:
    alice = h.hello("alice")
    assert len(h.post(alice, "", "note", to="alice").to("alice")) == 1


def test_a_resent_private_message_is_delivered_once(h: Harness) -> None:
    alice, _ = h.hello("alice"), h.hello("bob")
    assert len(h.post(alice, "", "x", to="bob", n=1).to("bob")) == 1
    assert h.post(alice, "", "x", to="bob", n=1).to("bob") == []


def test_an_inbox_is_read_only_with_its_own_sessions_token(stored: Harness) -> None:
    h = stored
    alice, bob, eve = h.hello("alice"), h.hello("bob"), h.hello("eve")
    inbox = h.post(alice, "", "secret", to="bob").to("bob")[0].room
    reply, _ = h.call(p.History(room=inbox, after=0, token=bob), who="bob")
    assert [e["text"] for e in reply["events"]] == ["secret"]
    assert h.call(p.History(room=inbox, after=0, token=eve), who="eve")[0]["code"] == "not_yours"
    assert h.call(p.History(room=inbox, after=0), who="eve")[0]["code"] == "unknown_session"


def test_in_open_mode_the_next_bob_gets_none_of_the_last_ones_inbox(stored: Harness) -> None:
    h = stored
    alice, bob = h.hello("alice"), h.hello("bob")
    old_inbox = h.post(alice, "", "for the first bob", to="bob").to("bob")[0].room
    h.call(p.Leave(token=bob), who="bob")
    reply, _ = h.call(hello_req("bob"), who="bob2")
    assert reply["inbox"]["name"] != old_inbox and reply["inbox"]["seq"] == 0
    assert h.call(p.History(room=old_inbox, after=0, token=reply["token"]), who="bob2")[0]["code"] == "not_yours"


def test_in_secure_mode_a_message_to_an_offline_owner_waits_for_them() -> None:
    h = secure()
    carol = h.hello("carol", identity=CAROL_KEY)
    sent = h.post(carol, "", "see you later", to="bob", identity=CAROL_KEY)
    (copy, notice) = sent.to("carol")
    assert copy.kind == "private" and (notice.code, notice.text) == (
        "offline",
        "bob is offline: the message waits for them",
    )
    reply, _ = h.call(hello_req("bob"), who="bob", identity=BOB_KEY)
    assert reply["inbox"] == {"name": "@bob", "seq": 1, "read": 0}
    h.beat(reply["token"], who="bob", identity=BOB_KEY, inbox_read=1)
    assert h.call(hello_req("bob", resume=reply["token"]), who="bob", identity=BOB_KEY)[0]["inbox"]["read"] == 1


def test_a_message_to_an_away_nick_tells_the_sender(h: Harness) -> None:
    alice, bob = h.hello("alice"), h.hello("bob")
    h.call(p.Away(token=bob, text="lunch"), who="bob")
    (_, notice) = h.post(alice, "", "?", to="bob").to("alice")
    assert (notice.code, notice.text) == ("away", "bob is away: lunch")


# --- leases and stalls ----------------------------------------------------------------------------------


def test_heartbeat_renews_the_lease_and_reports_seqs_and_acked(h: Harness) -> None:
    token = h.hello("alice")
    h.post(token, "general", "x", n=1)
    reply = h.beat(token, T0 + 5)
    assert reply["ok"] is True and reply["acked"] == 1
    assert reply["seqs"]["general"] == 2 and list(reply["seqs"])[1].startswith("@alice~")
    h.core.expire(T0 + 5 + LEASE - 0.01)
    assert h.core.session(token) is not None


def test_heartbeat_with_unknown_or_lapsed_token_is_refused(h: Harness) -> None:
    token = h.hello("alice")
    assert h.beat("nope")["code"] == "unknown_session"
    h.advance(T0, T0 + LEASE)
    assert h.beat(token, T0 + LEASE)["code"] == "unknown_session"


def test_expiry_says_timed_out_frees_the_nick_and_leaves_a_tombstone(h: Harness) -> None:
    token = h.hello("alice", ["general", "dev"])
    sent = h.advance(T0, T0 + LEASE)
    assert [(e.room, e.kind, e.text) for e in sent.events] == [
        ("dev", "leave", "alice left (timed out)"),
        ("general", "leave", "alice left (timed out)"),
    ]
    assert h.core.session(token) is None and h.core.stats(T0)["tombstones"] == 1
    h.hello("alice", now=T0 + LEASE)


def test_next_expiry(h: Harness) -> None:
    assert h.core.next_expiry() == math.inf
    token = h.hello("alice")
    assert h.core.next_expiry() == T0 + LEASE
    h.beat(token, T0 + 3)
    h.core.expire(T0 + LEASE)
    assert h.core.next_expiry() == T0 + 3 + LEASE


def test_a_stalled_broker_gives_every_lease_a_grace_instead_of_expiring_it(h: Harness) -> None:
    token = h.hello("alice")
    resumed = T0 + 2 * LEASE  # the broker was stopped (SIGSTOP) for two leases
    h.core.begin(resumed)
    h.core.expire(resumed)
    assert h.settle().published == [] and h.core.stats(resumed)["stalls"] == 1
    # The heartbeats sent during the stall arrive now: the session lives on.
    assert h.beat(token, resumed + 0.1)["ok"] is True
    # A session that really stopped heartbeating still ends, once the grace is over.
    h.call(p.Leave(token=token), resumed + 0.1)
    h.hello("quiet", now=resumed + 0.2)
    sent = h.advance(resumed + 0.2, resumed + 0.2 + LEASE + 1)
    assert [e.nick for e in sent.events] == ["quiet"]


def test_a_loop_that_merely_runs_every_second_is_not_a_stall(h: Harness) -> None:
    h.hello("alice")
    for t in range(1, 8):
        h.core.begin(T0 + t * (STALL_SECONDS - 0.1))
    assert h.core.stats(T0)["stalls"] == 0


# --- effects after commit ------------------------------------------------------------------------------


class FailingStore(SQLiteStore):
    """A store whose commits fail while ``failing`` is set (a full or read-only disk)."""

    failing = False

    def commit(self) -> None:
        if self.failing:
            self.rollback()
            raise StoreError("disk I/O error")
        super().commit()


def test_a_failed_commit_leaves_no_trace_and_asks_for_the_resend() -> None:
    store = FailingStore(":memory:")
    h = Harness(store=store)
    alice = h.hello("alice")
    h.post(alice, "general", "one", n=1)
    store.failing = True
    sent = h.post(alice, "general", "two", n=2, id="m2")
    assert sent.published == []  # nothing published that is not stored
    (err,) = sent.to("alice")
    assert (err.code, err.expected) == ("unavailable", 2)
    reply, sent = h.call(hello_req("bob"), who="bob")  # a hello in a failed batch: not made
    assert reply["code"] == "unavailable" and sent.published == []
    assert h.core.seq("general") == 2 and h.core.members("general") == ["alice"]
    store.failing = False
    assert h.beat(alice)["acked"] == 1  # nothing was confirmed that is not stored
    (ev,) = h.post(alice, "general", "two", n=2).events
    assert (ev.seq, ev.text) == (3, "two")  # the resend takes the seq the failed one had
    assert [json.loads(e)["text"] for e in store.page("general", 0, 10).events] == ["alice joined", "one", "two"]
    assert h.core.stats(T0)["store_failures"] == 2


def test_a_failed_commit_takes_back_joins_leaves_nick_topic_and_claims() -> None:
    store = FailingStore(":memory:")
    h = Harness(store=store, authority=Authority(open_registration=True))
    bob = h.hello("bob", ["general"], identity=BOB_KEY)
    before = (h.core.members("general"), h.core.seq("general"), store.claims(), h.core.stats(T0)["claims"])
    store.failing = True
    h.call(p.Join(token=bob, room="dev"), who="bob", identity=BOB_KEY)
    h.call(p.Nick(token=bob, nick="robert"), who="bob", identity=BOB_KEY)
    h.call(p.Topic(token=bob, room="general", text="new"), who="bob", identity=BOB_KEY)
    h.call(p.Leave(token=bob), who="bob", identity=BOB_KEY)
    store.failing = False
    assert (h.core.members("general"), h.core.seq("general"), store.claims(), h.core.stats(T0)["claims"]) == before
    assert h.core.members("dev") == [] and h.core.session(bob) is not None
    reply, _ = h.call(p.Who(room="general"))
    assert reply["nicks"] == ["bob"] and reply["topic"] is None
    # robert was never claimed: eve's key may have it.
    assert h.call(hello_req("robert"), who="eve", identity=EVE_KEY)[0]["ok"] is True


def test_a_failed_commit_takes_back_a_refusal_and_a_read_marker() -> None:
    store = FailingStore(":memory:")
    h = Harness(store=store)
    alice = h.hello("alice", [])
    bob = h.hello("bob", [])
    h.post(bob, "", "hi", to="alice")
    store.failing = True
    h.post(alice, "general", "not in the room", n=1)  # refused for good, in a batch not stored
    h.beat(alice, who="alice", inbox_read=1)
    store.failing = False
    reply = h.beat(alice, who="alice", inbox_read=1)
    assert (reply["acked"], reply["refused"]) == (0, {})  # the refusal went with its batch
    session = h.core.session(alice)
    assert session is not None and store.read(session.inbox) == 1  # the read marker is stored now


def test_a_refusal_in_a_batch_not_stored_is_told_again() -> None:
    store = FailingStore(":memory:")
    h = Harness(store=store)
    alice, bob = h.hello("alice"), h.hello("bob")
    store.failing = True
    h.core.begin(T0)
    h.core.ingest([p.encode({"token": alice, "room": "general", "text": "three", "n": 3})], T0)  # ahead of its turn
    h.core.ingest([p.encode({"token": bob, "room": "general", "text": "hi"})], T0)
    assert h.settle().to("alice") == []  # the refusal went with the batch not stored
    store.failing = False
    (err,) = h.post(alice, "general", "three", n=3).to("alice")
    assert (err.code, err.expected) == ("out_of_order", 1)


def test_a_lapsed_lease_whose_end_was_not_stored_is_swept_again() -> None:
    store = FailingStore(":memory:")
    h = Harness(store=store)
    alice = h.hello("alice")
    store.failing = True
    lapse = T0 + 2 * h.core.lease
    h.advance(T0, lapse)  # the lease runs out, but its end is not stored: alice stays
    assert h.core.session(alice) is not None
    store.failing = False
    h.advance(lapse, lapse + 2)
    assert h.core.session(alice) is None and h.hello("alice", now=lapse + 2)


# --- leave, join, part, who, nick, away, topic --------------------------------------------------------------


def test_leave_says_quit_with_its_message(h: Harness) -> None:
    token = h.hello("alice")
    _, sent = h.call(p.Leave(token=token, reason="bye all"))
    assert [(e.kind, e.text, e.reason) for e in sent.events] == [("leave", "alice left (quit: bye all)", "quit")]


def test_part_with_a_reason_and_join(h: Harness) -> None:
    token = h.hello("alice", ["general"])
    reply, sent = h.call(p.Join(token=token, room="Dev"))
    assert (reply["room"], reply["seq"]) == ("dev", 1) and [e.kind for e in sent.events] == ["join"]
    again, sent = h.call(p.Join(token=token, room="dev"))
    assert again["seq"] == 1 and sent.published == []  # already in: nothing happens
    reply, sent = h.call(p.Part(token=token, room="dev", reason="off to lunch"))
    assert [e.text for e in sent.events] == ["alice left (part: off to lunch)"]
    assert h.call(p.Part(token=token, room="dev"))[0]["code"] == "not_in_room"


def test_who_lists_members_with_away_and_topic(h: Harness) -> None:
    bob = h.hello("bob")
    h.hello("Alice")
    h.call(p.Away(token=bob, text="brb"))
    h.call(p.Topic(token=bob, room="general", text="release day"))
    reply, _ = h.call(p.Who(room="#General"))
    assert (reply["nicks"], reply["away"], reply["topic"], reply["exists"]) == (
        ["Alice", "bob"], {"bob": "brb"}, "release day", True,
    )  # fmt: skip
    assert h.call(p.Who(room="nowhere"))[0]["exists"] is False


def test_a_nick_change_is_announced_kept_unique_and_seen_by_who(h: Harness) -> None:
    alice = h.hello("alice", ["general", "dev"])
    h.hello("bob")
    reply, sent = h.call(p.Nick(token=alice, nick="Al"))
    assert reply["nick"] == "Al"
    assert [(e.room, e.kind, e.nick, e.new_nick, e.text) for e in sent.events] == [
        ("dev", "nick", "alice", "Al", "alice is now known as Al"),
        ("general", "nick", "alice", "Al", "alice is now known as Al"),
    ]
    assert h.call(p.Who(room="general"))[0]["nicks"] == ["Al", "bob"]
    assert h.call(p.Nick(token=alice, nick="BOB"))[0]["code"] == "nick_taken"
    assert h.call(p.Nick(token=alice, nick="Al"))[0]["code"] == "no_change"
    h.hello("alice")  # the old nick is free


def test_in_secure_mode_a_new_nick_must_be_the_keys_and_moves_the_inbox() -> None:
    h = secure()
    bob = h.hello("bob", identity=BOB_KEY)
    assert h.call(p.Nick(token=bob, nick="carol"), who="bob", identity=BOB_KEY)[0]["code"] == "nick_not_allowed"
    authority = Authority({BOB_KEY: {"bob", "robert"}})
    h = Harness(store=SQLiteStore(":memory:"), authority=authority)
    bob = h.hello("bob", identity=BOB_KEY)
    reply, _ = h.call(p.Nick(token=bob, nick="robert"), who="bob", identity=BOB_KEY)
    assert reply["inbox"]["name"] == "@robert"


def test_open_registration_claims_are_bounded_per_key_and_counted() -> None:
    store = SQLiteStore(":memory:")
    h = Harness(store=store, authority=Authority(open_registration=True))
    bob = h.hello("bob", identity=BOB_KEY)  # the first claim
    for i in range(1, CLAIMS_PER_KEY):
        assert h.call(p.Nick(token=bob, nick=f"bob{i}"), who="bob", identity=BOB_KEY)[0]["ok"] is True
    reply, _ = h.call(p.Nick(token=bob, nick="yet-another"), who="bob", identity=BOB_KEY)
    assert reply["code"] == "nick_not_allowed" and "the most one key may" in reply["error"]
    stats = h.core.stats(T0)
    assert (stats["claims"], stats["claims_refused"]) == (CLAIMS_PER_KEY, 1)
    assert len(store.claims()) == CLAIMS_PER_KEY
    assert h.call(p.Nick(token=bob, nick="bob"), who="bob", identity=BOB_KEY)[0]["ok"] is True  # its own: yes


def test_a_topic_is_set_announced_cleared_and_told_on_join(stored: Harness) -> None:
    h = stored
    bob = h.hello("bob")
    _, sent = h.call(p.Topic(token=bob, room="general", text="  ship it  "))
    assert [(e.kind, e.nick, e.text) for e in sent.events] == [("topic", "bob", "ship it")]
    alice = h.hello("alice", ["dev"])
    reply, _ = h.call(p.Join(token=alice, room="general"))
    assert reply["topic"] == "ship it"
    assert h.call(hello_req("carol"))[0]["topics"] == {"general": "ship it"}
    assert h.call(p.Topic(token=alice, room="general"))[0]["topic"] == "ship it"
    _, sent = h.call(p.Topic(token=alice, room="general", text=""))
    assert [(e.kind, e.text, e.reason) for e in sent.events] == [("topic", "alice cleared the topic", "cleared")]
    assert h.call(p.Topic(token=alice, room="ops", text="x"))[0]["code"] == "not_in_room"


def test_search_finds_room_messages_newest_first_and_pages(stored: Harness) -> None:
    h = stored
    alice, bob = h.hello("alice"), h.hello("bob")
    for text in ["deploy started", "lunch?", "Deploy finished", "the deploy is green"]:
        h.post(alice, "general", text)
    h.post(alice, "", "secret deploy", to="bob")
    reply, _ = h.call(p.Search(room="general", text="deploy", limit=2))
    assert [e["text"] for e in reply["events"]] == ["the deploy is green", "Deploy finished"] and reply["more"]
    last = reply["events"][-1]["seq"]
    reply, _ = h.call(p.Search(room="general", text="deploy", before=last))
    assert [e["text"] for e in reply["events"]] == ["deploy started"] and not reply["more"]
    assert h.call(p.Search(room="general", text='green" OR "x'))[0]["events"] == []
    assert bob


def test_a_search_page_cut_at_its_byte_bound_says_there_is_more(stored: Harness) -> None:
    h = stored
    alice = h.hello("alice")
    for n in range(30):
        h.post(alice, "general", f"deploy {n} " + "x" * 3000)  # 30 x 3 KB: more than a page holds
    reply, _ = h.call(p.Search(room="general", text="deploy", limit=100))
    assert 10 < len(reply["events"]) < 30 and reply["more"]
    rest, _ = h.call(p.Search(room="general", text="deploy", limit=100, before=reply["events"][-1]["seq"]))
    assert len(reply["events"]) + len(rest["events"]) == 30 and not rest["more"]


# --- bounds ------------------------------------------------------------------------------------------------


def test_hellos_from_one_connection_are_limited() -> None:
    h = Harness()
    replies = [h.call(hello_req(f"n{i}"), who="flood")[0] for i in range(20)]
    assert [r.get("code") for r in replies].count("rate_limited") == 15
    assert h.core.stats(T0)["sessions"] == 5 and h.core.stats(T0)["hellos_limited"] == 15


def test_hellos_and_sessions_from_one_address_are_limited() -> None:
    h = Harness(hello_burst=8, max_sessions_per_peer=4)
    codes = [h.call(hello_req(f"n{i}"), who=f"c{i}", peer="10.0.0.9")[0].get("code") for i in range(10)]
    assert codes == [None] * 4 + ["too_many_sessions"] * 4 + ["rate_limited"] * 2
    assert h.call(hello_req("other"), who="o", peer="10.0.0.10")[0]["ok"] is True


def test_sessions_are_capped_per_key_and_in_total() -> None:
    h = Harness(authority=Authority(open_registration=True), max_sessions=3)
    codes = [h.call(hello_req(f"n{i}"), who=f"c{i}", identity=BOB_KEY)[0].get("code") for i in range(4)]
    assert codes == [None, None, None, "too_many_sessions"]
    assert h.core.stats(T0)["sessions_refused"] == 1


def test_a_hello_refused_for_too_many_sessions_claims_no_nick() -> None:
    h = Harness(authority=Authority(open_registration=True), max_sessions=1)
    token = h.hello("bob", identity=BOB_KEY)
    assert h.call(hello_req("robert"), who="c1", identity=BOB_KEY)[0]["code"] == "too_many_sessions"
    h.call(p.Leave(token=token), who="bob", identity=BOB_KEY)
    assert h.call(hello_req("robert"), who="eve", identity=EVE_KEY)[0]["ok"] is True  # robert is free


def test_requests_from_one_connection_are_limited(h: Harness) -> None:
    codes = [h.call(p.Who())[0].get("code") for _ in range(core_module.REQUESTS_PER_ROUTE_BURST + 10)]
    assert codes.count("rate_limited") == 10 and h.core.stats(T0)["requests_limited"] == 10


def test_joins_and_parts_are_limited_per_session(h: Harness) -> None:
    token = h.hello("alice")
    codes = [h.call(p.Join(token=token, room=f"r{i}"))[0].get("code") for i in range(core_module.MOVES_BURST + 5)]
    assert codes.count("rate_limited") == 5 and h.core.stats(T0)["moves_limited"] == 5


def test_an_empty_room_is_forgotten_from_memory_and_its_seq_comes_back(stored: Harness) -> None:
    h = stored
    token = h.hello("alice", ["general"])
    h.call(p.Join(token=token, room="dev"))
    h.post(token, "dev", "hello dev")
    h.call(p.Part(token=token, room="dev"))
    assert h.core.stats(T0)["rooms"] == 1
    _, sent = h.call(p.Join(token=token, room="dev"), T0 + 30)
    assert [e.seq for e in sent.events] == [4]


def test_active_rooms_are_capped(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(core_module, "MAX_ACTIVE_ROOMS", 2)
    token = h.hello("alice", ["general"])
    assert h.call(p.Join(token=token, room="dev"))[0]["ok"] is True
    reply, _ = h.call(p.Join(token=token, room="ops"))
    assert reply["code"] == "too_many_rooms" and h.core.stats(T0)["rooms_refused"] == 1


def test_a_hello_refused_for_too_many_rooms_leaves_no_session(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(core_module, "MAX_ACTIVE_ROOMS", 2)
    h.hello("alice", ["general", "dev"])
    reply, sent = h.call(hello_req("bob", rooms=["general", "ops"]), who="bob")
    assert reply["code"] == "too_many_rooms" and sent.published == []  # no join, no session
    assert h.core.stats(T0)["sessions"] == 1 and h.core.members("general") == ["alice"]
    assert h.hello("bob", ["general"])  # the nick is free


@pytest.mark.parametrize(
    "body",
    [
        b'{"type":"history","after":9223372036854775808}',
        b'{"type":"history","after":-1}',
        b'{"type":"history","limit":0}',
        b'{"type":"history","limit":100000}',
        b'{"type":"hello","protocol":2,"nick":"' + b"a" * 100 + b'"}',
        b'{"type":"search","text":""}',
    ],
)
def test_out_of_range_values_get_an_invalid_reply(h: Harness, body: bytes) -> None:
    h.core.begin(T0)
    h.core.request([route("x"), b"", body], T0)
    ((_, reply),) = h.settle().replies
    assert (reply["ok"], reply["code"]) == (False, "invalid")


def test_a_history_page_is_bounded_in_bytes(stored: Harness) -> None:
    h = stored
    token = h.hello("alice")
    for _ in range(40):
        h.post(token, "general", "x" * 4000)
    reply, _ = h.call(p.History(room="general", after=0, limit=1000))
    assert reply["more"] is True and len(json.dumps(reply)) < 70_000
    assert reply["upto"] == reply["events"][-1]["seq"] < reply["last"]


# --- stats, rpc framing ------------------------------------------------------------------------------------


def test_stats_count_what_happened(h: Harness) -> None:
    token = h.hello("alice")
    h.post(token, "general", "hi")
    h.post("nope", "general", "x")
    reply, _ = h.call(p.Stats())
    assert (reply["sessions"], reply["rooms"], reply["received"], reply["dropped_unknown_session"]) == (1, 1, 1, 1)
    assert reply["epoch"] == h.core.epoch and reply["secure"] is False and "wal_bytes" in reply


@pytest.mark.parametrize("frames", [[b"x", p.encode(p.Who())], [route("a"), b"x", p.encode(p.Who())], [b""]])
def test_rpc_without_the_routing_envelope_gets_no_reply(h: Harness, frames: list[bytes]) -> None:
    h.core.begin(T0)
    h.core.request(frames, T0)
    assert h.settle().replies == [] and h.core.stats(T0)["dropped_malformed"] == 1


@pytest.mark.parametrize(
    ("body", "req"),
    [(b"nope", None), (b'{"type":"dance","req":"9"}', "9"), (b'{"type":"who","room":1,"req":"3"}', "3")],
)
def test_a_malformed_rpc_body_gets_invalid_with_req_echoed(h: Harness, body: bytes, req: str | None) -> None:
    h.core.begin(T0)
    h.core.request([route("x"), b"", body], T0)
    ((_, reply),) = h.settle().replies
    assert (reply["ok"], reply["code"], reply["req"]) == (False, "invalid", req)


# --- shutdown and the feed --------------------------------------------------------------------------------


def test_shutdown_is_told_once_on_the_heartbeat_topic_everyone_hears(h: Harness) -> None:
    h.hello("alice", ["general", "dev"])
    h.core.shutdown()
    ((topic, ev),) = h.settle().published
    assert (topic, ev.seq, ev.kind, ev.text, ev.reason) == (
        p.HEARTBEAT_TOPIC,
        0,
        "system",
        "the broker is shutting down",
        "shutdown",
    )


def test_a_probe_is_answered_on_its_topic_and_anything_else_is_dropped(h: Harness) -> None:
    topic = p.probe_topic("n0nce")
    h.core.subscription(b"\x01" + topic)
    h.core.subscription(b"\x01#general:")
    h.core.subscription(b"\x02junk")
    h.core.subscription(b"")
    ((to, ev),) = h.settle().published
    assert (to, ev.kind, ev.seq) == (topic, "ready", 0)
    assert h.core.stats(T0)["dropped_malformed"] == 2


def test_probe_answers_and_heartbeats_go_out_even_when_the_store_fails() -> None:
    store = FailingStore(":memory:")
    h = Harness(store=store)
    alice = h.hello("alice")
    store.failing = True
    h.core.begin(T0)
    h.core.request([route("alice"), b"", p.encode(p.Leave(token=alice))], T0)
    h.core.subscription(b"\x01" + p.probe_topic("x"))
    h.core.heartbeat()
    sent = h.settle()
    assert [e.kind for e in sent.events] == ["ready", "heartbeat"]
    assert sent.replies[0][1]["code"] == "unavailable" and h.core.session(alice) is not None


# --- secure mode: keys, not payloads --------------------------------------------------------------------------


def test_secure_hello_checks_the_key_against_the_nick() -> None:
    h = secure()
    assert h.call(hello_req("bob"), who="x", identity=EVE_KEY)[0]["code"] == "nick_not_allowed"
    assert h.call(hello_req("bob"), who="x")[0]["code"] == "unauthenticated"
    assert h.call(hello_req("bob"), who="bob", identity=BOB_KEY)[0]["inbox"]["name"] == "@bob"


def test_open_registration_claims_are_stored() -> None:
    store = SQLiteStore(":memory:")
    h = Harness(store=store, authority=Authority(open_registration=True))
    h.hello("dave", identity=EVE_KEY)
    assert store.claims() == {"dave": EVE_KEY}


def test_a_post_with_another_keys_token_is_dropped() -> None:
    h = secure()
    bob = h.hello("bob", identity=BOB_KEY)
    assert h.post(bob, "general", "as bob", identity=EVE_KEY) == Sent()
    assert h.core.stats(T0)["dropped_wrong_identity"] == 1


def test_a_request_with_another_keys_token_is_refused_and_moves_no_route() -> None:
    h = secure()
    bob = h.hello("bob", identity=BOB_KEY)
    carol = h.hello("carol", identity=CAROL_KEY)
    assert h.call(p.Heartbeat(token=bob), who="eve", identity=EVE_KEY)[0]["code"] == "unknown_session"
    assert h.post(carol, "", "for bob", to="bob", identity=CAROL_KEY).to("bob")  # still bob's own route


# --- a restarted broker ------------------------------------------------------------------------------------


def test_a_restarted_core_keeps_only_the_newest_tombstones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(core_module, "MAX_TOMBSTONES", 3)
    store = SQLiteStore(":memory:")
    for ended in (5.0, 1.0, 4.0, 2.0, 3.0):  # (the store's order is no order)
        store.save_session(SessionRecord(f"t{ended:g}", "x", None, None, "@x", [], int(ended), ended=ended))
    store.commit()
    h = Harness(store=store)
    assert h.core.stats(T0)["tombstones"] == 3
    newest = h.call(hello_req("alice", resume="t5"), who="alice")[0]["prior_acked"]
    assert (newest, h.call(hello_req("bob", resume="t2"), who="bob")[0]["prior_acked"]) == (5, None)


def test_a_restarted_core_restores_sessions_and_lets_them_resume_silently(tmp_path: Any) -> None:
    db = tmp_path / "h.db"
    first = Harness(store=SQLiteStore(db))
    alice = first.hello("alice", ["general", "dev"])
    first.post(alice, "general", "one", n=1)
    assert first.store is not None
    first.store.close()
    second = Harness(store=SQLiteStore(db), now=T0 + 100)
    reply, sent = second.call(hello_req("alice", rooms=["general", "dev"], resume=alice), T0 + 100, who="alice")
    assert (reply["resumed"], reply["acked"], reply["rooms"]) == (True, 1, {"dev": 1, "general": 2})
    assert sent.published == []
    assert second.core.members("dev") == ["alice"]
    # A restored session that never comes back ends one lease after the restart.
    second.hello("bob", ["dev"], now=T0 + 100)
    second.call(p.Leave(token=alice), T0 + 101, who="alice")
    first_two = Harness(store=SQLiteStore(tmp_path / "other.db"))
    ghost = first_two.hello("ghost")
    assert first_two.store is not None
    first_two.store.close()
    third = Harness(store=SQLiteStore(tmp_path / "other.db"), now=T0 + 200)
    sent = third.advance(T0 + 200, T0 + 200 + LEASE + 1)
    assert [(e.nick, e.text) for e in sent.events] == [("ghost", "ghost left (timed out)")]
    assert third.core.session(ghost) is None
