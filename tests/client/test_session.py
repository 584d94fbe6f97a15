"""The client's sans-IO session, driven with a fake clock and hand-made broker messages: no sockets.

Each test plays the broker's side by reading what the session asks to send
(:meth:`ClientSession.take_outgoing`, :meth:`ClientSession.next_post`) and answering with bytes.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from zchat import protocol as p
from zchat.client import session as session_module
from zchat.client.session import MAX_BACKOFF, PROBE, REOPEN, TRANSITIONS, Action, ClientSession, Outgoing, State
from zchat.errors import LocalProtocolError, ZChatError

ROOM = "general"
INBOX = "@alice~s1"
WALL = 1_700_000_000.0


def reply_to(req: p.Request, **fields: Any) -> bytes:
    """A broker's ok reply to ``req``."""
    return p.encode({"type": req.__struct_config__.tag, "ok": True, "req": req.req, **fields})


def error_to(req: p.Request, code: str, text: str = "no") -> bytes:
    return p.encode({"type": "error", "ok": False, "req": req.req, "code": code, "error": text})


def hello_reply(
    req: p.Request,
    token: str = "t1",
    *,
    epoch: str = "e1",
    history: str = "h1",
    seq: int = 1,
    resumed: bool = False,
    acked: int = 0,
    inbox: tuple[int, int] = (0, 0),
    rate: float = 0,
    burst: int = 60,
    **extra: Any,
) -> bytes:
    return reply_to(
        req,
        token=token,
        nick="alice",
        resumed=resumed,
        rooms={ROOM: seq},
        inbox={"name": INBOX, "seq": inbox[0], "read": inbox[1]},
        acked=acked,
        epoch=epoch,
        history=history,
        heartbeat_ms=1000,
        rate=rate,
        burst=burst,
        **extra,
    )


def delivery(event: p.Event) -> bytes:
    return p.delivery(p.encode(event))


def event(seq: int, text: str = "", *, nick: str = "bob", kind: str = "message", **kw: Any) -> p.Event:
    return p.Event(seq, "2026-01-01T00:00:00.000Z", kw.pop("room", ROOM), kind, nick, text or f"m{seq}", **kw)


def requests(out: list[Outgoing]) -> list[p.Request]:
    return [r for r in out if not isinstance(r, Action)]


def state(s: ClientSession) -> State:
    """The session's state, read fresh (mypy would narrow ``s.state`` between two asserts)."""
    return s.state


def joined(t: float = 0.0, **kw: Any) -> ClientSession:
    """A session that said hello at ``t`` and was accepted, its join (seq 1) delivered."""
    reply_fields = kw.pop("reply", {})
    s = ClientSession("alice", [ROOM], wallclock=lambda: WALL, id_prefix="x", **kw)
    hello = s.connect()
    s.joined(p.decode_reply(hello_reply(hello, **reply_fields)), t)
    s.feed_message(p.encode(event(1, "alice joined", nick="alice", kind="join")), t)
    assert [e.seq for e in s.take_events()] == [1]
    return s


def pushed(s: ClientSession, now: float = 0.0) -> list[p.Post]:
    """Everything the session hands out to push now."""
    out = []
    while (data := s.next_post(now)) is not None:
        out.append(p.decode_post(data))
        s.posted()
    return out


# --- the transition table ----------------------------------------------------------------------


def test_every_state_is_reachable_and_closed_is_final() -> None:
    states = {"new"} | set(TRANSITIONS.values())
    reach = {"new"}
    for _ in range(len(states)):
        reach |= {dst for (src, _), dst in TRANSITIONS.items() if src in reach}
    assert reach == states == {"new", "connecting", "connected", "reconnecting", "closed"}
    assert not [t for (src, t) in TRANSITIONS if src == "closed"]


@pytest.mark.parametrize(("start", "trigger"), [("new", "joined"), ("connected", "connect")])
def test_a_trigger_the_table_does_not_allow_is_refused(start: State, trigger: str) -> None:
    s = ClientSession("alice", [ROOM])
    s.state = start
    with pytest.raises(ZChatError, match=f"the client is {start}"):
        s._goto(trigger)
    s.close()
    s.close()  # closing twice is allowed, and does nothing
    assert state(s) == "closed"


# --- joining -----------------------------------------------------------------------------------


def test_hello_is_protocol_2_and_the_reply_sets_token_epoch_heartbeat_and_inbox() -> None:
    s = ClientSession("alice", [ROOM], backlog=3)
    hello = s.connect()
    assert isinstance(hello, p.Hello)
    assert (hello.protocol, hello.nick, hello.rooms, hello.resume) == (2, "alice", [ROOM], None)
    assert state(s) == "connecting"
    s.joined(p.decode_reply(hello_reply(hello, seq=10, inbox=(4, 2), topics={ROOM: "ship it"})), 5.0)
    assert (state(s), s.token, s.epoch, s.heartbeat, s.inbox) == ("connected", "t1", "e1", 1.0, INBOX)
    assert s.topics == {ROOM: "ship it"}
    s.tick(5.0)
    fetches = {r.room: (r.after, r.limit, r.token) for r in requests(s.take_outgoing()) if isinstance(r, p.History)}
    # The room's backlog of 3, and the inbox from what was not read yet (with the session's token).
    assert fetches == {ROOM: (7, 3, None), INBOX: (2, 2, "t1")}


def test_history_fills_the_backlog_in_order_and_a_reply_of_another_history_is_not_taken() -> None:
    s = ClientSession("alice", [ROOM], backlog=2)
    s.joined(p.decode_reply(hello_reply(s.connect(), seq=5)), 0.0)
    s.feed_message(p.encode(event(6)), 0.0)  # live, early: held until the backlog is there
    assert s.take_events() == []
    s.tick(0.0)
    (history,) = [r for r in requests(s.take_outgoing()) if isinstance(r, p.History)]
    assert (history.after, history.limit) == (3, 2)
    old = {"type": "history", "ok": True, "req": history.req, "history": "other", "events": [event(4), event(5)]}
    s.rpc_message(p.encode(old), 0.1)  # answered by another history (a restarted broker): asked again
    assert s.take_events() == []
    s.tick(0.2)
    (again,) = [r for r in requests(s.take_outgoing()) if isinstance(r, p.History)]
    body = {"type": "history", "ok": True, "req": again.req, "history": "h1", "upto": 5, "events": [event(4), event(5)]}
    s.rpc_message(p.encode(body), 0.3)
    assert [e.seq for e in s.take_events()] == [4, 5, 6]


# --- heartbeats and a lost broker ---------------------------------------------------------------


def test_heartbeats_go_out_on_time_report_the_inbox_read_and_reveal_a_lost_tail() -> None:
    s = joined(0.0)
    s.tick(0.5)
    assert requests(s.take_outgoing()) == []
    s.tick(1.0)
    (beat,) = requests(s.take_outgoing())
    assert isinstance(beat, p.Heartbeat) and (beat.token, beat.inbox_read) == ("t1", 0)
    s.rpc_message(reply_to(beat, seqs={ROOM: 3, INBOX: 0}, acked=0), 1.01)  # the broker has 2 and 3
    s.tick(1.02)
    (history,) = requests(s.take_outgoing())
    assert isinstance(history, p.History) and (history.room, history.after, history.limit) == (ROOM, 1, 2)


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
    assert out[0] is REOPEN and isinstance(out[1], p.Hello) and out[1].resume == "t1"
    retries = [4.1]
    for _ in range(8):
        t = s.next_timer()
        s.tick(t)
        assert s.take_outgoing()[0] is REOPEN
        retries.append(t)
    gaps = [round(b - a, 3) for a, b in itertools.pairwise(retries)]
    assert gaps[:5] == [0.5, 1.0, 2.0, 4.0, 8.0] and set(gaps[4:]) == {MAX_BACKOFF}


def test_a_new_epoch_is_a_restart_the_session_resumes_and_the_feed_is_proved_again() -> None:
    s = joined(0.0)
    msg_id = s.post("hello", None, "message", 0.1)
    assert [post.id for post in pushed(s, 0.1)] == [msg_id]
    s.feed_message(p.encode(p.Event(0, "", "", "heartbeat", "*", "", epoch="e2")), 0.2)
    assert state(s) == "reconnecting"
    assert pushed(s, 0.2) == []  # nothing goes out until the rejoin
    s.tick(0.2)
    hello = requests(s.take_outgoing())[0]
    assert isinstance(hello, p.Hello) and hello.resume == "t1"
    s.rpc_message(hello_reply(hello, epoch="e2", seq=2, resumed=True, acked=0), 0.3)
    assert state(s) == "connected" and s.token == "t1"
    assert s.take_outgoing() == [PROBE]
    assert [(e.code, e.local) for e in s.take_events()] == [("disconnected", True), ("reconnected", True)]
    again = pushed(s, 0.3)
    assert [(post.id, post.n, post.token) for post in again] == [(msg_id, 1, "t1")]


def test_after_a_rejoin_feed_events_wait_for_the_probe_and_are_dropped_if_history_was_reset() -> None:
    s = joined(0.0, backlog=10)
    s.feed_message(p.encode(p.Event(0, "", "", "heartbeat", "*", "", epoch="e2")), 0.1)
    s.tick(0.1)
    hello = requests(s.take_outgoing())[0]
    # Events the old broker left in the feed, read before the new one's subscriptions are proved:
    s.feed_message(p.encode(event(2, "OLD-2")), 0.2)
    s.rpc_message(hello_reply(hello, epoch="e2", history="h2", seq=3, resumed=True), 0.3)
    s.feed_message(p.encode(event(3, "OLD-3")), 0.3)
    assert [e.text for e in s.take_events() if e.seq] == []
    s.feed_live()  # the probe was answered: from here on the feed is the new broker's
    assert [e.text for e in s.take_events() if e.seq] == []  # the old history's events are dropped
    s.tick(0.4)
    (history,) = [r for r in requests(s.take_outgoing()) if isinstance(r, p.History) and r.room == ROOM]
    body = {
        "type": "history",
        "ok": True,
        "req": history.req,
        "history": "h2",
        "events": [event(1), event(2), event(3)],
    }
    s.rpc_message(p.encode(body), 0.5)
    assert [e.text for e in s.take_events() if e.seq] == ["m1", "m2", "m3"]


def test_unknown_session_from_the_broker_is_a_loss() -> None:
    s = joined(0.0)
    s.tick(1.0)
    (beat,) = requests(s.take_outgoing())
    s.rpc_message(error_to(beat, "unknown_session"), 1.01)
    assert state(s) == "reconnecting"


def test_a_failed_rejoin_keeps_backing_off_and_says_so_at_the_cap() -> None:
    s = joined(0.0)
    s.tick(1.0)
    s.tick(4.5)
    s.take_events()
    notices = []
    for _ in range(8):
        s.tick(s.next_timer())
        hello = requests(s.take_outgoing())[0]
        s.rpc_message(error_to(hello, "rate_limited", "too many hellos"), s.next_timer() - 0.1)
        notices += s.take_events()
    assert state(s) == "reconnecting"
    assert notices and all(n.code == "rejoin_failed" and "too many hellos" in n.text for n in notices)


def test_a_stale_reply_from_before_a_reconnect_is_ignored() -> None:
    s = joined(0.0)
    s.tick(1.0)
    (old_beat,) = requests(s.take_outgoing())
    s.tick(4.5)  # lost: the first rejoin goes out at once, on a new socket
    s.tick(s.next_timer())  # and a second one: only the latest attempt's reply counts
    first, hello = requests(s.take_outgoing())
    s.rpc_message(hello_reply(first, token="t-old"), 4.55)
    assert state(s) == "reconnecting"
    # The old broker's late answer to the heartbeat, and to a request nobody waits for: no effect.
    s.rpc_message(reply_to(old_beat, seqs={ROOM: 99}), 4.6)
    s.rpc_message(p.encode({"type": "who", "ok": True, "req": "no-such-request", "nicks": []}), 4.6)
    assert state(s) == "reconnecting"
    s.rpc_message(hello_reply(hello, resumed=True), 4.7)
    assert state(s) == "connected"
    s.tick(4.7)
    assert [r for r in requests(s.take_outgoing()) if isinstance(r, p.History) and r.room == ROOM] == []


def test_garbage_on_rpc_or_feed_changes_nothing() -> None:
    s = joined(0.0)
    for junk in (b"", b"\xff", b"[]", b'{"req":', b"null", b'{"type":"event","event":{"seq":"x"}}'):
        s.rpc_message(junk, 0.1)
        s.feed_message(junk, 0.1)
    assert state(s) == "connected" and s.take_events() == []


# --- the outbox: numbered posts, confirmed by the broker ------------------------------------------------


def test_posts_are_numbered_and_confirmed_by_acked_even_if_the_feed_lost_them() -> None:
    s = joined(0.0)
    ids = [s.post(f"m{i}", None, "message", 0.0) for i in range(3)]
    assert [(post.id, post.n) for post in pushed(s)] == list(zip(ids, [1, 2, 3], strict=True))
    s.tick(1.0)
    (beat,) = requests(s.take_outgoing())
    s.rpc_message(reply_to(beat, seqs={ROOM: 1}, acked=2), 1.01)
    assert list(s.pending) == [ids[2]]


def test_a_message_shown_on_the_feed_is_confirmed() -> None:
    s = joined(0.0)
    msg_id = s.post("hi", None, "message", 0.0)
    s.feed_message(p.encode(event(2, "hi", nick="alice", id=msg_id)), 0.1)
    assert not s.pending and [e.text for e in s.take_events()] == ["hi"]


def test_an_out_of_order_answer_resends_from_the_number_the_broker_wants() -> None:
    s = joined(0.0)
    for i in range(4):
        s.post(f"m{i}", None, "message", 0.0)
    pushed(s)
    s.rpc_message(delivery(p.Event(0, "", "", "error", "*", "no", code="out_of_order", n=3, expected=2)), 0.1)
    assert [post.n for post in pushed(s, 0.1)] == [2, 3, 4]


def test_a_rate_limit_or_a_failing_store_pauses_then_resends() -> None:
    s = joined(0.0, reply={"rate": 10, "burst": 5})
    for i in range(3):
        s.post(f"m{i}", None, "message", 0.0)
    pushed(s)
    s.rpc_message(delivery(p.Event(0, "", "", "error", "*", "slow", code="rate_limited", n=2, expected=2)), 0.1)
    assert pushed(s, 0.1) == []  # the bucket is empty: wait for a token
    assert [post.n for post in pushed(s, 0.3)] == [2, 3]
    s.rpc_message(delivery(p.Event(0, "", "", "error", "*", "disk", code="unavailable", n=2, expected=2)), 0.4)
    assert pushed(s, 0.5) == []
    assert [post.n for post in pushed(s, 2.0)] == [2, 3]


def test_posts_go_out_no_faster_than_the_broker_allows() -> None:
    s = joined(0.0, reply={"rate": 10, "burst": 12})
    for i in range(100):
        s.post(f"m{i}", None, "message", 0.0)
    first = pushed(s, 0.0)
    assert len(first) == 10  # the burst, less a margin
    assert len(pushed(s, 1.0)) == 9  # then about the rate (90 % of it)
    assert s.next_timer() <= 1.0 + 1 / 9 + 0.01


def test_a_silent_broker_gets_the_unconfirmed_posts_again_after_a_while() -> None:
    s = joined(0.0)
    for i in range(3):
        s.post(f"m{i}", None, "message", 0.0)
    pushed(s)
    t = 1.0
    while t < 6:  # heartbeats say acked 1: posts 2 and 3 were lost on the way
        s.tick(t)
        for r in requests(s.take_outgoing()):
            s.rpc_message(reply_to(r, seqs={ROOM: 2}, acked=1), t)
        t += 1
    assert [post.n for post in pushed(s, t)] == [2, 3]


def test_an_error_for_a_message_fails_it_and_a_duplicate_confirms_it_silently() -> None:
    s = joined(0.0)
    bad = s.post("x" * 10, None, "message", 0.0)
    dup = s.post("again", None, "message", 0.0)
    pushed(s)
    s.rpc_message(delivery(p.Event(0, "", ROOM, "error", "*", "too long", id=bad, code="rejected", n=1)), 0.1)
    s.rpc_message(delivery(p.Event(0, "", "", "duplicate", "*", "already", id=dup, n=2)), 0.1)
    assert s.failed == {bad: "too long"} and not s.pending
    assert [e.kind for e in s.take_events()] == ["error"]


def test_unconfirmed_messages_expire_when_nothing_moves_but_not_while_behind() -> None:
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


def test_a_message_given_up_on_keeps_its_number_which_goes_void() -> None:
    s = joined(0.0, send_timeout=5.0)
    lost = s.post("lost", None, "message", 0.0)
    s.tick(6.0)  # never confirmed: given up, reported not sent (never pushed: the broker was gone)
    assert lost in s.failed
    later = s.post("later", None, "message", 7.0)
    # Number 1 is given up, not given to "later", and not sent either: it goes void.
    sent = pushed(s, 7.0)
    assert [(post.n, post.void, post.text, post.id) for post in sent] == [
        (1, True, "", None),
        (2, False, "later", later),
    ]
    assert lost in s.failed


def test_a_message_given_up_on_that_was_on_its_way_is_delivered_after_all() -> None:
    s = joined(0.0, send_timeout=5.0)
    lost = s.post("slow", None, "message", 0.0)
    pushed(s)  # it went, and the broker was stalled
    s.tick(6.0)
    assert lost in s.failed
    s.feed_message(p.encode(event(2, "slow", nick="alice", id=lost, n=1)), 7.0)  # it arrived after all
    assert lost not in s.failed
    s.rpc_message(delivery(p.Event(0, "", "", "duplicate", "*", "already", n=1)), 7.1)  # (its void)
    assert lost not in s.failed and not s.pending


def test_a_reply_older_than_the_feed_never_sends_a_message_under_another_number() -> None:
    s = joined(0.0)
    ids = [s.post(f"m{i}", None, "message", 0.0) for i in range(1, 6)]
    pushed(s)
    for n in (1, 2, 3):  # the feed showed 1-3 ...
        s.feed_message(p.encode(event(n + 1, f"m{n}", nick="alice", id=ids[n - 1], n=n)), 0.1)
    s.tick(1.0)
    (beat,) = requests(s.take_outgoing())
    s.rpc_message(reply_to(beat, seqs={ROOM: 4}, acked=1), 1.1)  # ... the reply was taken before
    s.rpc_message(delivery(p.Event(0, "", "", "error", "*", "x", code="out_of_order", n=5, expected=2)), 1.2)
    # Nothing is sent again under a number it did not have, and 4 and 5 keep their own numbers.
    assert [(post.id, post.n) for post in pushed(s, 1.2)] == [(ids[3], 4), (ids[4], 5)]
    s.rpc_message(delivery(p.Event(0, "", "", "duplicate", "*", "already", n=4)), 1.3)
    assert list(s.pending) == [ids[4]]


def test_a_refusal_told_in_a_reply_fails_the_message_instead_of_confirming_it() -> None:
    s = joined(0.0)
    to_gone = s.post("are you there?", None, "message", 0.0, to="gone")
    fine = s.post("hi", None, "message", 0.0)
    pushed(s)
    s.tick(1.0)
    (beat,) = requests(s.take_outgoing())
    # The refusal itself went to a connection that had just gone: the reply says it again.
    s.rpc_message(reply_to(beat, seqs={ROOM: 2}, acked=2, refused={"1": "no one called 'gone' is here"}), 1.1)
    assert s.failed == {to_gone: "no one called 'gone' is here"} and not s.pending
    assert [(e.kind, e.code, e.id) for e in s.take_events()] == [("error", "rejected", to_gone)]
    assert fine not in s.failed


def test_below_a_full_list_of_refusals_a_message_is_not_counted_as_sent() -> None:
    s = joined(0.0)
    ids = [s.post(f"m{i}", None, "message", 0.0, to="gone") for i in range(p.MAX_REFUSED + 8)]
    pushed(s)
    s.tick(1.0)
    (beat,) = requests(s.take_outgoing())
    # Every one was refused, but the reply names only the latest MAX_REFUSED of them.
    named = {str(n): "no one called 'gone' is here" for n in range(9, len(ids) + 1)}
    s.rpc_message(reply_to(beat, seqs={ROOM: 0}, acked=len(ids), refused=named), 1.1)
    assert not s.pending and set(s.failed) == set(ids)
    codes = [e.code for e in s.take_events()]
    assert codes.count("not_sent") == 8 and codes.count("rejected") == p.MAX_REFUSED


def test_failures_are_counted_all_and_remembered_the_newest(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(session_module, "MAX_FAILED", 3)
    s = joined(0.0, send_timeout=5.0)
    ids = [s.post(f"m{i}", None, "message", 0.0) for i in range(5)]
    pushed(s)  # they went, and the broker was stalled
    s.tick(6.0)
    assert s.failures == 5 and list(s.failed) == ids[2:]  # a months-long bot keeps no more
    s.feed_message(p.encode(event(2, "m4", nick="alice", id=ids[4], n=5)), 7.0)  # one arrived after all
    assert s.failures == 4 and list(s.failed) == ids[2:4]


def test_a_new_session_renumbers_the_outbox_and_confirms_what_the_old_one_committed() -> None:
    s = joined(0.0)
    ids = [s.post(f"m{i}", None, "message", 0.0) for i in range(3)]
    pushed(s)
    s.tick(1.0)
    s.tick(4.5)  # lost
    hello = requests(s.take_outgoing())[-1]
    s.rpc_message(hello_reply(hello, token="t2", prior_acked=2), 4.6)  # the old session ended at 2
    assert list(s.pending) == [ids[2]]
    assert [(post.id, post.n, post.token) for post in pushed(s, 4.6)] == [(ids[2], 1, "t2")]


def test_a_new_session_is_told_what_the_old_one_refused_which_is_not_sent() -> None:
    s = joined(0.0)
    ids = [s.post(f"m{i}", None, "message", 0.0) for i in range(3)]
    pushed(s)
    s.tick(1.0)
    s.tick(4.5)  # lost, long enough for the session to lapse
    hello = requests(s.take_outgoing())[-1]
    s.rpc_message(hello_reply(hello, token="t2", prior_acked=2, prior_refused={"2": "not in room"}), 4.6)
    assert s.failed == {ids[1]: "not in room"} and s.failures == 1  # taken, refused: never counted sent
    assert [(e.code, e.id) for e in s.take_events() if e.kind == "error"] == [("rejected", ids[1])]
    assert [(post.id, post.n) for post in pushed(s, 4.6)] == [(ids[2], 1)]


def test_a_reader_cannot_post_and_a_room_must_be_ours() -> None:
    reader = ClientSession(None, [ROOM])
    reader.connect()
    with pytest.raises(ZChatError, match="reader"):
        reader.post("hi", None, "message", 0.0)
    s = joined(0.0)
    with pytest.raises(ZChatError, match="not in room 'dev'"):
        s.post("hi", "dev", "message", 0.0)


# --- the inbox --------------------------------------------------------------------------------------------


def test_private_messages_come_in_the_inbox_sequence_and_notices_at_once() -> None:
    s = joined(0.0)
    s.rpc_message(delivery(event(2, "second", room=INBOX, kind="private", to="alice")), 0.1)
    assert s.take_events() == []  # 1 is missing: held, and fetched
    s.rpc_message(delivery(event(1, "first", room=INBOX, kind="private", to="alice")), 0.2)
    s.rpc_message(delivery(p.Event(0, "", "", "system", "*", "bob is away: lunch", code="away")), 0.2)
    assert [e.text for e in s.take_events()] == ["first", "second", "bob is away: lunch"]
    s.tick(1.0)
    (beat,) = requests(s.take_outgoing())
    assert isinstance(beat, p.Heartbeat) and beat.inbox_read == 2


def test_a_private_message_is_confirmed_by_its_copy_in_the_senders_inbox() -> None:
    s = joined(0.0)
    with pytest.raises(LocalProtocolError, match="invalid nick"):
        s.post("psst", None, "message", 0.0, to="no one")  # refused here, and it takes no number
    msg_id = s.post("psst", None, "message", 0.0, to="bob")
    (post,) = pushed(s)
    assert (post.to, post.room, post.n) == ("bob", "", 1)
    s.rpc_message(delivery(event(1, "psst", nick="alice", room=INBOX, kind="private", to="bob", id=msg_id)), 0.1)
    assert not s.pending


# --- calls -----------------------------------------------------------------------------------


def test_a_call_gets_its_reply_and_a_late_one_after_giving_up_is_dropped() -> None:
    s = joined(0.0)
    req_id = s.call(p.Who(room=ROOM), 0.0)
    (who,) = requests(s.take_outgoing())
    assert who.req == req_id and s.take_reply(req_id) is None
    s.rpc_message(reply_to(who, nicks=["alice"]), 0.1)
    assert s.take_reply(req_id) == {"type": "who", "ok": True, "req": req_id, "nicks": ["alice"]}
    late = s.call(p.Stats(), 0.2)
    (stats,) = requests(s.take_outgoing())
    s.forget_call(late)
    s.rpc_message(reply_to(stats), 0.3)
    assert s.take_reply(late) is None


def test_a_new_sessions_topics_replace_the_old_ones() -> None:
    s = joined(0.0, reply={"topics": {ROOM: "ship it"}})
    assert s.topics == {ROOM: "ship it"}
    s.feed_message(p.encode(p.Event(0, "", "", "heartbeat", "*", "", epoch="e2")), 0.1)  # a restart
    s.tick(0.1)
    hello = requests(s.take_outgoing())[0]
    s.rpc_message(hello_reply(hello, epoch="e2", resumed=True, topics={}), 0.2)  # cleared meanwhile
    assert s.topics == {}


# --- nick, away, topics, search and the inbox's history ---------------------------------------


def test_a_nick_reply_renames_and_a_new_inbox_is_read_from_where_it_stands() -> None:
    s = joined(0.0)
    nick = s.nick_request("alicia")
    assert isinstance(nick, p.Nick) and (nick.token, nick.nick) == ("t1", "alicia")
    with pytest.raises(LocalProtocolError, match="invalid nick"):
        s.nick_request("9lives")
    # Secure mode: the new nick's inbox, with one message waiting there, unread.
    s.renamed({"type": "nick", "ok": True, "nick": "alicia", "inbox": {"name": "@alicia", "seq": 1, "read": 0}})
    assert (s.nick, s.inbox) == ("alicia", "@alicia")
    s.tick(0.1)
    fetch = [r for r in requests(s.take_outgoing()) if isinstance(r, p.History)]
    assert [(r.room, r.after, r.token) for r in fetch] == [("@alicia", 0, "t1")]
    with pytest.raises(ZChatError, match="reader cannot change its nick"):
        ClientSession(None, [ROOM]).nick_request("bob")


def test_away_is_trimmed_blank_means_back_and_a_new_session_says_it_again() -> None:
    s = joined(0.0)
    away = s.away_request("  lunch ")
    assert isinstance(away, p.Away) and away.text == "lunch"
    back = s.away_request("   ")
    assert isinstance(back, p.Away) and back.text is None
    with pytest.raises(LocalProtocolError, match="away message too long"):
        s.away_request("x" * (p.MAX_AWAY_CHARS + 1))
    assert s.away_set({"type": "away", "ok": True, "away": "lunch"}) == "lunch"
    for resumed, again in ((True, []), (False, [("t2", "lunch")])):
        s.feed_message(p.encode(p.Event(0, "", "", "heartbeat", "*", "", epoch=f"e{resumed}")), 1.0)  # a restart
        s.tick(1.0)
        hello = requests(s.take_outgoing())[0]
        s.rpc_message(hello_reply(hello, token="t1" if resumed else "t2", epoch=f"e{resumed}", resumed=resumed), 1.1)
        sent = [(r.token, r.text) for r in requests(s.take_outgoing()) if isinstance(r, p.Away)]
        assert sent == again
    assert s.away_set({"type": "away", "ok": True, "away": None}) is None


def test_topics_follow_replies_events_and_who_for_our_rooms_only() -> None:
    s = joined(0.0)
    ask = s.topic_request("#Elsewhere", None)  # asking: any room
    assert isinstance(ask, p.Topic) and (ask.room, ask.text) == ("elsewhere", None)
    set_ = s.topic_request(None, " plans ")
    assert isinstance(set_, p.Topic) and (set_.room, set_.text) == (ROOM, "plans")
    with pytest.raises(ZChatError, match="not in room 'elsewhere'"):
        s.topic_request("elsewhere", "mine now")  # setting: only in a room of ours
    with pytest.raises(LocalProtocolError, match="topic too long"):
        s.topic_request(None, "x" * (p.MAX_TOPIC_CHARS + 1))
    assert s.topic_answered({"type": "topic", "ok": True, "room": ROOM, "topic": "plans"}) == "plans"
    assert s.topic_answered({"type": "topic", "ok": True, "room": "elsewhere", "topic": "theirs"}) == "theirs"
    assert s.topics == {ROOM: "plans"}
    s.feed_message(p.encode(event(2, "cleared", kind="topic", reason="cleared")), 0.1)
    assert s.topics == {}
    s.feed_message(p.encode(event(3, "ship it", kind="topic")), 0.2)
    assert s.topics == {ROOM: "ship it"}
    names = s.who_answered(
        {"type": "who", "ok": True, "room": ROOM, "nicks": ["alice", "bob"], "away": {"bob": "lunch"}, "topic": None}
    )
    assert (names.nicks, names.away, names.topic, names.exists) == (["alice", "bob"], {"bob": "lunch"}, None, True)
    assert s.topics == {}


def test_the_inbox_history_carries_the_token_and_search_requests_are_checked() -> None:
    s = joined(0.0)
    inbox = s.history_request(INBOX, 100, after=3)
    assert isinstance(inbox, p.History) and (inbox.room, inbox.after, inbox.limit, inbox.token) == (INBOX, 3, 100, "t1")
    room = s.history_request("#Dev", 5)
    assert isinstance(room, p.History) and (room.room, room.token) == ("dev", None)  # any room, no token
    with pytest.raises(LocalProtocolError, match="not this session's inbox"):
        s.history_request("@bob~x", 5)
    with pytest.raises(LocalProtocolError, match="history limit"):
        s.history_request(None, 0)
    search = s.search_request("deploy friday", "#Dev", 10, 99)
    assert isinstance(search, p.Search) and (search.room, search.text, search.limit, search.before) == (
        "dev",
        "deploy friday",
        10,
        99,
    )
    for text, limit, why in [("  ", 5, "nothing to search"), ("x" * 201, 5, "too long"), ("x", 101, "limit")]:
        with pytest.raises(LocalProtocolError, match=why):
            s.search_request(text, None, limit, None)
