"""The client's sans-IO session, driven with a fake clock and hand-made broker replies: no sockets.

Each test plays the broker's side by reading what the session asks to send
(:meth:`ClientSession.take_outgoing`, :meth:`ClientSession.next_post`) and answering with bytes.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from zchat import protocol as p
from zchat.client.session import MAX_BACKOFF, REOPEN, TRANSITIONS, ClientSession, Outgoing, Reopen, State
from zchat.errors import ZChatError

ROOM = "general"
WALL = 1_700_000_000.0


def reply_to(req: p.Request, **fields: Any) -> bytes:
    """A broker's ok reply to ``req``."""
    return p.encode({"type": req.__struct_config__.tag, "ok": True, "req": req.req, **fields})


def error_to(req: p.Request, code: str, text: str = "no") -> bytes:
    return p.encode({"type": "error", "ok": False, "req": req.req, "code": code, "error": text})


def hello_reply(req: p.Request, token: str = "t1", epoch: str = "e1", history: str = "h1", seq: int = 1) -> bytes:
    return reply_to(req, token=token, nick="alice", rooms={ROOM: seq}, epoch=epoch, history=history, heartbeat_ms=1000)


def event(seq: int, text: str = "", *, nick: str = "bob", kind: str = "message", id: str | None = None) -> p.Event:
    return p.Event(seq, "2026-01-01T00:00:00.000Z", ROOM, kind, nick, text or f"m{seq}", id=id)


def requests(out: list[Outgoing]) -> list[p.Request]:
    return [r for r in out if not isinstance(r, Reopen)]


def state(s: ClientSession) -> State:
    """The session's state, read fresh (mypy would narrow ``s.state`` between two asserts)."""
    return s.state


def joined(t: float = 0.0, **kw: Any) -> ClientSession:
    """A session that said hello at ``t`` and was accepted, its join (seq 1) delivered."""
    s = ClientSession("alice", [ROOM], wallclock=lambda: WALL, id_prefix="x", **kw)
    hello = s.connect()
    s.joined(p.decode_reply(hello_reply(hello)), t)
    s.feed_message(p.encode(event(1, "alice joined", nick="alice", kind="join")), t)
    assert [e.seq for e in s.take_events()] == [1]
    return s


# --- the transition table ----------------------------------------------------------------------


def test_every_state_is_reachable_and_closed_is_final() -> None:
    states = {"new"} | {s for (_, _), s in TRANSITIONS.items()}
    reach = {"new"}
    for _ in range(len(states)):
        reach |= {dst for (src, _), dst in TRANSITIONS.items() if src in reach}
    assert reach == states == {"new", "connecting", "connected", "reconnecting", "closed"}
    assert not [t for (src, t) in TRANSITIONS if src == "closed"]


@pytest.mark.parametrize(("state", "trigger"), [("new", "joined"), ("connected", "connect"), ("closed", "close")])
def test_a_trigger_the_table_does_not_allow_is_refused(state: State, trigger: str) -> None:
    s = ClientSession("alice", [ROOM])
    s.state = state
    if trigger == "close":
        s.close()  # closing twice is allowed, and does nothing
        assert s.state == "closed"
        return
    with pytest.raises(ZChatError, match=f"the client is {state}"):
        s._goto(trigger)


def test_a_refused_state_change_leaves_the_state_as_it_was() -> None:
    s = ClientSession("alice", [ROOM])
    with pytest.raises(ZChatError):
        s.post("hi", None, "message", 0.0)  # not connected yet
    assert s.state == "new"


# --- joining ---------------------------------------------------------------------------------


def test_joining_takes_the_token_epoch_and_heartbeat_from_the_hello_reply() -> None:
    s = ClientSession("alice", [ROOM], backlog=3)
    hello = s.connect()
    assert isinstance(hello, p.Hello) and hello.nick == "alice" and hello.rooms == [ROOM]
    assert hello.inbox is not None and hello.inbox.startswith("@alice:")
    assert s.state == "connecting"
    s.joined(p.decode_reply(reply_to(hello, token="t1", rooms={ROOM: 10}, epoch="e1", heartbeat_ms=300)), 5.0)
    assert (state(s), s.token, s.epoch, s.heartbeat) == ("connected", "t1", "e1", 0.3)
    assert s.next_timer() == pytest.approx(5.3)


def test_history_fills_the_backlog_in_order() -> None:
    s = ClientSession("alice", [ROOM], backlog=2)
    hello = s.connect()
    s.joined(p.decode_reply(hello_reply(hello, seq=5)), 0.0)
    s.feed_message(p.encode(event(6)), 0.0)  # live, early: held until the backlog is there
    assert s.take_events() == []
    s.tick(0.0)
    (history,) = requests(s.take_outgoing())
    assert isinstance(history, p.History) and (history.after, history.limit) == (3, 2)
    body = p.encode({"type": "history", "ok": True, "req": history.req, "events": [event(4), event(5)]})
    s.rpc_message(body, 0.1)
    assert [e.seq for e in s.take_events()] == [4, 5, 6]


# --- heartbeats and a lost broker ---------------------------------------------------------------


def test_heartbeats_go_out_on_time_and_their_replies_reveal_a_lost_tail() -> None:
    s = joined(0.0)
    s.tick(0.5)
    assert requests(s.take_outgoing()) == []
    assert s.next_timer() == pytest.approx(1.0)
    s.tick(1.0)
    (beat,) = requests(s.take_outgoing())
    assert isinstance(beat, p.Heartbeat) and beat.token == "t1"
    s.rpc_message(reply_to(beat, seqs={ROOM: 3}), 1.01)  # the broker has 2 and 3: we saw neither
    s.tick(1.02)
    (history,) = requests(s.take_outgoing())
    assert isinstance(history, p.History) and (history.after, history.limit) == (1, 2)


def test_an_unanswered_heartbeat_loses_the_broker_and_backoff_doubles_to_its_cap() -> None:
    s = joined(0.0)
    s.tick(1.0)
    s.take_outgoing()  # the heartbeat, never answered
    s.tick(3.9)
    assert state(s) == "connected"
    assert [type(r) for r in s.take_outgoing()] == [p.Heartbeat]  # still beating while it waits
    s.tick(4.1)  # 3 s without a reply
    assert state(s) == "reconnecting"
    (lost,) = s.take_events()
    assert lost.code == "disconnected" and "reconnecting" in lost.text
    # Made up by the client, and marked so for JSON readers (the broker's events say nothing).
    assert lost.local and b'"local":true' in p.encode(lost)
    assert b"local" not in p.encode(p.Event(1, "", "general", "message", "alice", "hi"))
    out = s.take_outgoing()
    assert out[0] is REOPEN and isinstance(out[1], p.Hello)  # the first retry at once, on a new socket
    retries = [4.1]
    for _ in range(8):
        t = s.next_timer()
        assert t > retries[-1]
        s.tick(t)
        out = s.take_outgoing()
        assert out[0] is REOPEN
        retries.append(t)
    gaps = [round(b - a, 3) for a, b in itertools.pairwise(retries)]
    assert gaps[:5] == [0.5, 1.0, 2.0, 4.0, 8.0] and set(gaps[4:]) == {MAX_BACKOFF}


def test_a_new_epoch_on_the_feed_is_a_restart_and_the_rejoin_resends_the_outbox() -> None:
    s = joined(0.0)
    msg_id = s.post("hello", None, "message", 0.1)
    post = s.next_post()
    assert post is not None and p.decode_post(post).id == msg_id
    s.posted()
    s.feed_message(p.encode(p.Event(0, "", "", "heartbeat", "*", "", epoch="e2")), 0.2)
    assert state(s) == "reconnecting"
    assert s.next_post() is None  # nothing goes out until the rejoin
    s.tick(0.2)
    hello = requests(s.take_outgoing())[0]
    s.rpc_message(hello_reply(hello, token="t2", epoch="e2", seq=2), 0.3)
    assert state(s) == "connected" and s.token == "t2"
    assert [(e.code, e.local) for e in s.take_events()] == [("disconnected", True), ("reconnected", True)]
    again = s.next_post()
    assert again is not None and p.decode_post(again).id == msg_id and p.decode_post(again).token == "t2"


def test_unknown_session_from_the_broker_is_a_loss() -> None:
    s = joined(0.0)
    s.tick(1.0)
    (beat,) = requests(s.take_outgoing())
    s.rpc_message(error_to(beat, "unknown_session"), 1.01)
    assert state(s) == "reconnecting"


def test_a_failed_rejoin_keeps_backing_off_and_says_so_once_at_the_cap() -> None:
    s = joined(0.0)
    s.tick(1.0)
    s.tick(4.5)
    s.take_events()
    notices = []
    for _ in range(8):
        s.tick(s.next_timer())
        hello = requests(s.take_outgoing())[0]
        s.rpc_message(error_to(hello, "nick_taken", "nick 'alice' is in use"), s.next_timer() - 0.1)
        notices += s.take_events()
    assert state(s) == "reconnecting"
    assert notices and all(n.code == "rejoin_failed" and "in use" in n.text for n in notices)


def test_a_stale_reply_from_before_a_reconnect_is_ignored() -> None:
    s = joined(0.0)
    s.tick(1.0)
    (old_beat,) = requests(s.take_outgoing())
    s.tick(4.5)  # lost: the first rejoin goes out at once, on a new socket
    s.tick(s.next_timer())  # and a second one: only the latest attempt's reply counts
    first, hello = requests(s.take_outgoing())
    assert isinstance(first, p.Hello) and isinstance(hello, p.Hello)
    s.rpc_message(hello_reply(first, token="t-old", seq=1), 4.55)
    assert state(s) == "reconnecting"
    # The old broker's late answer to the heartbeat, and to a request nobody waits for: no effect.
    s.rpc_message(reply_to(old_beat, seqs={ROOM: 99}), 4.6)
    s.rpc_message(p.encode({"type": "who", "ok": True, "req": "no-such-request", "nicks": []}), 4.6)
    assert state(s) == "reconnecting"
    s.rpc_message(hello_reply(hello, token="t2", seq=1), 4.7)
    assert state(s) == "connected"
    s.tick(4.7)
    assert [r for r in requests(s.take_outgoing()) if isinstance(r, p.History)] == []


def test_garbage_on_rpc_or_feed_changes_nothing() -> None:
    s = joined(0.0)
    for junk in (b"", b"\xff", b"[]", b'{"req":', b"null"):
        s.rpc_message(junk, 0.1)
        s.feed_message(junk, 0.1)
    assert state(s) == "connected" and s.take_events() == []


# --- the outbox ------------------------------------------------------------------------------


def test_a_message_is_pending_until_the_feed_shows_it() -> None:
    s = joined(0.0)
    msg_id = s.post("hi", None, "message", 0.0)
    assert msg_id in s.pending
    s.feed_message(p.encode(event(2, "hi", nick="alice", id=msg_id)), 0.1)
    assert not s.pending and [e.text for e in s.take_events()] == ["hi"]


def test_an_error_for_a_message_fails_it_and_a_duplicate_confirms_it_silently() -> None:
    s = joined(0.0)
    bad = s.post("x" * 10, None, "message", 0.0)
    dup = s.post("again", None, "message", 0.0)
    s.feed_message(p.encode(p.Event(0, "", ROOM, "error", "*", "too long", id=bad, code="rejected")), 0.1)
    s.feed_message(p.encode(p.Event(0, "", ROOM, "duplicate", "*", "already", id=dup, dup_of=7)), 0.1)
    assert s.failed == {bad: "too long"} and not s.pending
    assert [e.kind for e in s.take_events()] == ["error"]


def test_an_unconfirmed_message_expires_after_send_timeout_but_not_while_behind() -> None:
    s = joined(0.0, send_timeout=10.0)
    msg_id = s.post("lost", None, "message", 0.0)
    s.behind = True  # its confirmation may be in the unread backlog
    s.tick(20.0)
    assert msg_id in s.pending
    s.behind = False
    s.tick(20.0)
    assert msg_id in s.failed and not s.pending
    expired = [e for e in s.take_events() if e.code == "not_sent"]
    assert len(expired) == 1 and expired[0].id == msg_id and expired[0].ts == p.format_ts(WALL)
    assert expired[0].local


def test_posts_are_handed_out_in_order_and_wait_while_reconnecting() -> None:
    s = joined(0.0)
    ids = [s.post(f"m{n}", None, "message", 0.0) for n in range(3)]
    got = []
    while (post := s.next_post()) is not None:
        got.append(p.decode_post(post).id)
        s.posted()
    assert got == ids


def test_a_reader_cannot_post_and_a_room_must_be_ours() -> None:
    reader = ClientSession(None, [ROOM])
    reader.connect()
    with pytest.raises(ZChatError, match="reader"):
        reader.post("hi", None, "message", 0.0)
    s = joined(0.0)
    with pytest.raises(ZChatError, match="not in room 'dev'"):
        s.post("hi", "dev", "message", 0.0)


# --- calls -----------------------------------------------------------------------------------


def test_a_call_gets_its_reply_and_a_late_one_after_giving_up_is_dropped() -> None:
    s = joined(0.0)
    req_id = s.call(p.Who(room=ROOM), 0.0)
    (who,) = requests(s.take_outgoing())
    assert who.req == req_id
    assert s.take_reply(req_id) is None
    s.rpc_message(reply_to(who, nicks=["alice"]), 0.1)
    assert s.take_reply(req_id) == {"type": "who", "ok": True, "req": req_id, "nicks": ["alice"]}
    late = s.call(p.Stats(), 0.2)
    (stats,) = requests(s.take_outgoing())
    s.forget_call(late)
    s.rpc_message(reply_to(stats), 0.3)
    assert s.take_reply(late) is None
