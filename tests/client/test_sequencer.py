"""RoomSequencer without sockets: each room's events exactly once, in seq order, gaps named."""

from __future__ import annotations

import re
from collections.abc import Iterable

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zchat import protocol as p
from zchat.client.sequencer import MAX_FETCH, RoomSequencer
from zchat.client.session import ClientSession

ROOM = "general"
_MISSING = re.compile(r"… (\d+) older messages? not available …")


def ev(seq: int, room: str = ROOM) -> p.Event:
    """The room event ``seq`` as the broker would stamp it (its text names it, to tell copies apart)."""
    return p.Event(seq, "2024-01-01T00:00:00.000Z", room, "message", "bob", f"{room} {seq}")


def seqs(events: Iterable[p.Event]) -> list[int]:
    return [e.seq for e in events]


def is_gap_marker(event: p.Event, room: str = ROOM) -> bool:
    """A marker: made up by the client (``local``), never published by a broker."""
    fields = (event.seq, event.kind, event.code, event.nick, event.room, event.local)
    return fields == (0, "system", "gap", p.SYSTEM_NICK, room, True)


def missing_count(marker: p.Event) -> int:
    """The N of a "… N older messages not available …" marker (and its grammar checked)."""
    assert is_gap_marker(marker), marker
    m = _MISSING.fullmatch(marker.text)
    assert m is not None, marker.text
    n = int(m.group(1))
    assert marker.text == f"… {n} older {'message' if n == 1 else 'messages'} not available …"
    return n


def started(first: int = 1, latest: int = 0, room: str = ROOM) -> RoomSequencer:
    s = RoomSequencer()
    assert s.start(room, first, latest) == []
    return s


def deliver_live(s: RoomSequencer, upto: int, room: str = ROOM) -> None:
    """Offer events 1..upto in order, checking each is delivered at once."""
    for n in range(1, upto + 1):
        assert s.offer(ev(n, room)) == [ev(n, room)]


def history(store: dict[int, p.Event], after: int, limit: int) -> list[p.Event]:
    """What the broker's history request answers: up to ``limit`` stored events after ``after``."""
    return [store[n] for n in sorted(store) if n > after][:limit]


# --- ordering and duplicates ---------------------------------------------------------------------


def test_in_order_events_are_delivered_at_once() -> None:
    s = started()
    for n in range(1, 6):
        assert s.offer(ev(n)) == [ev(n)]
        assert s.expected(ROOM) == n + 1
    assert s.wants() == []


def test_the_same_seq_offered_twice_is_delivered_once() -> None:
    s = started()
    assert s.offer(ev(1)) == [ev(1)]
    assert s.offer(ev(1)) == []
    assert s.offer(ev(2)) == [ev(2)]
    assert s.offer(ev(1)) == []
    assert s.offer(ev(2)) == []


def test_a_duplicate_of_a_held_event_is_delivered_once() -> None:
    s = started()
    assert s.offer(ev(1)) == [ev(1)]
    assert s.offer(ev(3)) == []
    assert s.offer(ev(3)) == []
    assert s.offer(ev(2)) == [ev(2), ev(3)]


def test_history_overlapping_live_events_delivers_each_once() -> None:
    s = started()
    deliver_live(s, 3)
    assert s.offer(ev(6)) == []
    assert s.wants() == [(ROOM, 3, 2)]
    # The reply reaches back over what was delivered and past what is held.
    assert s.fill(ROOM, [ev(n) for n in range(2, 8)]) == [ev(4), ev(5), ev(6), ev(7)]
    assert s.offer(ev(7)) == []
    assert s.offer(ev(8)) == [ev(8)]


def test_early_arrivals_are_held_until_the_gap_fills() -> None:
    s = started()
    assert s.offer(ev(1)) == [ev(1)]
    assert s.offer(ev(4)) == []
    assert s.offer(ev(3)) == []
    assert s.expected(ROOM) == 2
    assert s.offer(ev(2)) == [ev(2), ev(3), ev(4)]
    assert s.expected(ROOM) == 5


# --- asking history for what is missing ----------------------------------------------------------


def test_a_jump_in_seq_asks_for_exactly_the_hole_once() -> None:
    s = started()
    deliver_live(s, 2)
    assert s.offer(ev(7)) == []
    assert s.wants() == [(ROOM, 2, 4)]  # seqs 3..6
    assert s.wants() == []  # asked already
    assert s.offer(ev(8)) == []
    assert s.wants() == []  # still asked, even with more held
    s.retry(ROOM)  # the request was lost
    assert s.wants() == [(ROOM, 2, 4)]
    assert s.fill(ROOM, [ev(n) for n in range(3, 7)]) == [ev(n) for n in range(3, 9)]
    assert s.wants() == []


def test_a_hole_below_an_earlier_one_is_asked_after_the_first_fill() -> None:
    s = started()
    deliver_live(s, 1)
    s.offer(ev(3))
    s.offer(ev(6))
    assert s.wants() == [(ROOM, 1, 1)]  # only up to what is held
    assert s.fill(ROOM, [ev(2)]) == [ev(2), ev(3)]
    assert s.wants() == [(ROOM, 3, 2)]
    assert s.fill(ROOM, [ev(4), ev(5)]) == [ev(4), ev(5), ev(6)]
    assert s.wants() == []


def test_retry_all_allows_asking_again_in_every_room() -> None:
    s = started()
    assert s.start("dev", 1, 0) == []
    s.offer(ev(2))
    s.offer(ev(3, "dev"))
    assert sorted(s.wants()) == [("dev", 0, 2), (ROOM, 0, 1)]
    assert s.wants() == []
    s.retry_all()
    assert sorted(s.wants()) == [("dev", 0, 2), (ROOM, 0, 1)]


def test_a_large_hole_is_fetched_in_pieces_of_at_most_max_fetch() -> None:
    n = 2 * MAX_FETCH + 10
    store = {k: ev(k) for k in range(1, n + 1)}
    s = started()
    assert s.offer(store[n]) == []
    delivered: list[p.Event] = []
    asked: list[tuple[str, int, int]] = []
    while wants := s.wants():
        asked += wants
        (room, after, limit) = wants[0]
        delivered += s.fill(room, history(store, after, limit))
    assert asked == [(ROOM, 0, MAX_FETCH), (ROOM, MAX_FETCH, MAX_FETCH), (ROOM, 2 * MAX_FETCH, 9)]
    assert seqs(delivered) == list(range(1, n + 1))


def test_fill_releases_the_missing_events_and_what_was_held_in_order() -> None:
    s = started()
    deliver_live(s, 1)
    for n in (5, 3, 6):
        assert s.offer(ev(n)) == []
    assert s.wants() == [(ROOM, 1, 1)]
    assert s.fill(ROOM, [ev(2), ev(3), ev(4)]) == [ev(n) for n in range(2, 7)]
    assert s.expected(ROOM) == 7


def test_fill_for_a_room_not_started_is_ignored() -> None:
    s = RoomSequencer()
    assert s.fill(ROOM, [ev(1)]) == []
    s.offer(ev(2))  # held for a room not started yet
    assert s.fill(ROOM, [ev(1)]) == []
    assert s.expected(ROOM) is None


# --- gaps history cannot fill --------------------------------------------------------------------


@pytest.mark.parametrize("lost", [1, 2, 7])
def test_history_that_starts_late_yields_one_marker_then_the_rest(lost: int) -> None:
    s = started()
    deliver_live(s, 2)
    last = 3 + lost + 2
    assert s.offer(ev(last)) == []
    assert s.wants() == [(ROOM, 2, last - 3)]
    first_stored = 3 + lost
    out = s.fill(ROOM, [ev(n) for n in range(first_stored, last)])
    assert missing_count(out[0]) == lost
    assert out[1:] == [ev(n) for n in range(first_stored, last + 1)]
    assert s.wants() == []


def test_the_marker_is_singular_for_one_message() -> None:
    s = started()
    deliver_live(s, 1)
    s.offer(ev(4))
    out = s.fill(ROOM, [ev(3)])
    assert out[0].text == "… 1 older message not available …"
    assert out[1:] == [ev(3), ev(4)]


def test_an_empty_history_reply_names_the_hole_and_releases_what_is_held() -> None:
    s = started()
    deliver_live(s, 2)
    s.offer(ev(7))
    s.offer(ev(6))
    assert s.wants() == [(ROOM, 2, 3)]
    out = s.fill(ROOM, [])
    assert missing_count(out[0]) == 3  # seqs 3, 4, 5
    assert out[1:] == [ev(6), ev(7)]
    assert s.expected(ROOM) == 8
    assert s.wants() == []


def test_an_empty_history_reply_for_the_tail_names_it() -> None:
    s = started()
    deliver_live(s, 2)
    s.observe(ROOM, 5)
    assert s.wants() == [(ROOM, 2, 3)]
    out = s.fill(ROOM, [])
    assert len(out) == 1
    assert missing_count(out[0]) == 3
    assert s.expected(ROOM) == 6
    assert s.offer(ev(6)) == [ev(6)]


def test_history_starting_late_does_not_throw_away_events_already_held() -> None:
    # Held 5 arrived live; by the time history answers, retention has moved past it (first
    # stored is 7). Only 3..4 and 6 are missing; 5 must still be delivered, not called lost.
    s = started()
    deliver_live(s, 2)
    s.offer(ev(5))
    assert s.wants() == [(ROOM, 2, 2)]
    store = {n: ev(n) for n in range(7, 10)}
    out = s.fill(ROOM, history(store, 2, 2))
    while wants := s.wants():
        (_, after, limit) = wants[0]
        out += s.fill(ROOM, history(store, after, limit))
    assert [missing_count(e) if e.seq == 0 else e.seq for e in out] == [2, 5, 1, 7, 8]
    assert s.expected(ROOM) == 9


def test_a_stale_history_reply_for_what_was_delivered_meanwhile_yields_no_marker() -> None:
    s = started()
    deliver_live(s, 2)
    s.observe(ROOM, 4)
    assert s.wants() == [(ROOM, 2, 2)]
    assert s.offer(ev(3)) == [ev(3)]  # the "lost" events were only late
    assert s.offer(ev(4)) == [ev(4)]
    assert s.fill(ROOM, [ev(3), ev(4)]) == []
    assert s.wants() == []


# --- the tail, joining, rejoining ----------------------------------------------------------------


def test_observe_beyond_what_was_delivered_asks_for_the_tail() -> None:
    s = started()
    deliver_live(s, 3)
    s.observe(ROOM, 3)
    assert s.wants() == []  # nothing lost
    s.observe(ROOM, 6)
    assert s.wants() == [(ROOM, 3, 3)]
    assert s.wants() == []
    s.observe(ROOM, 2)  # an older report changes nothing
    s.retry(ROOM)
    assert s.wants() == [(ROOM, 3, 3)]
    assert s.fill(ROOM, [ev(4), ev(5), ev(6)]) == [ev(4), ev(5), ev(6)]
    assert s.wants() == []


def test_observe_of_a_room_not_joined_is_ignored() -> None:
    s = started()
    s.observe("dev", 9)
    assert s.wants() == []
    assert s.expected("dev") is None


def test_a_late_joiner_asks_for_its_backlog() -> None:
    s = RoomSequencer()
    assert s.start(ROOM, 8, 10) == []
    assert s.expected(ROOM) == 8
    assert s.wants() == [(ROOM, 7, 3)]
    assert s.offer(ev(11)) == []  # live, held behind the backlog
    assert s.fill(ROOM, [ev(8), ev(9), ev(10)]) == [ev(8), ev(9), ev(10), ev(11)]


def test_a_joiner_without_backlog_asks_for_nothing() -> None:
    s = RoomSequencer()
    assert s.start(ROOM, 11, 10) == []
    assert s.wants() == []
    assert s.offer(ev(10)) == []  # older than where it starts
    assert s.offer(ev(11)) == [ev(11)]


def test_a_backlog_reaching_before_the_first_seq_starts_at_one() -> None:
    s = RoomSequencer()
    assert s.start(ROOM, 10 + 1 - 50, 10) == []
    assert s.expected(ROOM) == 1
    assert s.wants() == [(ROOM, 0, 10)]


def test_nothing_is_delivered_or_asked_before_start() -> None:
    s = RoomSequencer()
    assert s.offer(ev(1)) == []
    assert s.offer(ev(3)) == []
    assert s.wants() == []
    assert s.expected(ROOM) is None


def test_events_held_before_start_are_released_from_first_and_older_ones_dropped() -> None:
    s = RoomSequencer()
    for n in (5, 3, 4):
        assert s.offer(ev(n)) == []
    assert s.start(ROOM, 4, 5) == [ev(4), ev(5)]
    assert s.offer(ev(3)) == []
    assert s.wants() == []
    assert s.offer(ev(6)) == [ev(6)]


def test_events_held_before_start_wait_for_the_backlog() -> None:
    s = RoomSequencer()
    for n in (3, 4, 5):
        assert s.offer(ev(n)) == []
    assert s.start(ROOM, 2, 5) == []
    assert s.wants() == [(ROOM, 1, 1)]
    assert s.fill(ROOM, [ev(2)]) == [ev(2), ev(3), ev(4), ev(5)]


def test_a_rejoin_keeps_the_position_and_asks_for_what_came_meanwhile() -> None:
    s = started()
    deliver_live(s, 3)
    s.offer(ev(5))
    assert s.wants() == [(ROOM, 3, 1)]  # this request dies with the connection
    # The rejoin's own first/backlog is irrelevant: the position is kept.
    assert s.start(ROOM, 42, 7) == []
    assert s.expected(ROOM) == 4
    assert s.wants() == [(ROOM, 3, 1)]  # asked again after the rejoin
    assert s.fill(ROOM, [ev(4), ev(5), ev(6), ev(7)]) == [ev(4), ev(5), ev(6), ev(7)]
    assert s.wants() == []


def test_a_rejoin_whose_latest_is_older_than_what_was_delivered_keeps_the_position() -> None:
    # The rejoin reply can overtake feed events: its latest may be behind what was delivered.
    s = started()
    deliver_live(s, 10)
    for latest in (10, 9, 2, 0):
        assert s.start(ROOM, 1, latest) == []
        assert s.expected(ROOM) == 11
        assert s.wants() == []
    assert s.offer(ev(10)) == []
    assert s.offer(ev(11)) == [ev(11)]


def test_a_reset_broker_history_restarts_the_room_with_a_marker() -> None:
    s = started()
    deliver_live(s, 10)
    s.offer(ev(15))  # held from the old history, beyond the new latest: must not survive
    out = s.start(ROOM, 1, 9, reset=True)
    assert len(out) == 1
    assert is_gap_marker(out[0])
    assert out[0].text == "the broker's history was reset; starting again"
    assert s.expected(ROOM) == 1
    assert s.wants() == [(ROOM, 0, 9)]  # up to the new broker's latest, not the stale 15
    assert s.fill(ROOM, [ev(n) for n in range(1, 10)]) == [ev(n) for n in range(1, 10)]
    for n in range(10, 15):
        assert s.offer(ev(n)) == [ev(n)]  # 14 does not release the stale 15


def test_a_reset_drops_everything_held_of_the_old_history() -> None:
    s = started()
    deliver_live(s, 3)
    old = [msgspec.structs.replace(ev(n), text=f"OLD-{n}") for n in (5, 6)]
    for event in old:  # came before the rejoin reply: from which broker?
        assert s.offer(event) == []
    out = s.start(ROOM, 1, 7, reset=True)
    assert len(out) == 1 and is_gap_marker(out[0])
    assert s.wants() == [(ROOM, 0, 7)]  # all of it from the new history, the old 5 and 6 too
    new = [msgspec.structs.replace(ev(n), text=f"new-{n}") for n in range(1, 8)]
    assert s.fill(ROOM, new) == new


def test_a_reset_with_a_backlog_restarts_at_first() -> None:
    s = started()
    deliver_live(s, 20)
    out = s.start(ROOM, 3, 4, reset=True)
    assert len(out) == 1 and is_gap_marker(out[0])
    assert s.expected(ROOM) == 3
    assert s.wants() == [(ROOM, 2, 2)]


def test_a_reset_of_a_room_never_started_is_a_start_that_trusts_nothing_held() -> None:
    s = RoomSequencer()
    assert s.offer(ev(4)) == []
    assert s.start(ROOM, 4, 4, reset=True) == []
    assert s.wants() == [(ROOM, 3, 1)]


def test_stop_forgets_the_room() -> None:
    s = started()
    deliver_live(s, 3)
    s.stop(ROOM)
    assert s.expected(ROOM) is None
    s.stop(ROOM)  # twice is fine
    s.retry(ROOM)  # so is a late retry
    assert s.wants() == []
    assert s.start(ROOM, 8, 8) == []
    assert s.expected(ROOM) == 8


# --- rooms ---------------------------------------------------------------------------------------


def test_rooms_are_independent() -> None:
    s = started()
    assert s.start("dev", 1, 0) == []
    assert s.offer(ev(1)) == [ev(1)]
    assert s.offer(ev(3)) == []  # general has a hole at 2
    assert s.offer(ev(1, "dev")) == [ev(1, "dev")]  # dev is not held up by it
    assert s.offer(ev(2, "dev")) == [ev(2, "dev")]
    assert s.wants() == [(ROOM, 1, 1)]
    assert s.fill("dev", [ev(2)]) == []  # a reply for dev does not fill general
    assert s.expected(ROOM) == 2
    assert s.fill(ROOM, [ev(2)]) == [ev(2), ev(3)]
    s.observe("dev", 3)
    assert s.wants() == [("dev", 2, 1)]
    s.stop("dev")
    assert s.expected(ROOM) == 4
    assert s.wants() == []


# --- seq 0 -------------------------------------------------------------------------------------


def test_seq_zero_events_are_routed_around_the_sequencer_by_the_client() -> None:
    # Offered to the sequencer, a seq-0 event would be swallowed (it is "older" than anything)...
    s = started()
    assert s.offer(p.Event(0, "", ROOM, "error", p.SYSTEM_NICK, "nope", code="rejected")) == []
    assert s.expected(ROOM) == 1
    # ... so the client's session gives it only seq > 0 and delivers seq-0 events (inbox
    # errors, probe answers, duplicates) at once, even before any room is started.
    session = ClientSession("alice", [ROOM])
    error = p.Event(0, "2024-01-01T00:00:00.000Z", ROOM, "error", p.SYSTEM_NICK, "nope", code="rejected")
    session.feed_message(p.encode(ev(1)), 0.0)  # room not started: held, not shown
    session.feed_message(p.encode(error), 0.0)
    assert session.take_events() == [error]
    assert session.sequencer.start(ROOM, 1, 1) == [ev(1)]


# --- properties ----------------------------------------------------------------------------------


@st.composite
def feeds(draw: st.DrawFn, lo: int = 1) -> tuple[int, list[int]]:
    """``(n, order)``: every seq in lo..n at least once (some twice or more), in any order."""
    n = draw(st.integers(lo, lo + 40))
    base = list(range(lo, n + 1))
    dups = draw(st.lists(st.sampled_from(base), max_size=n))
    order = draw(st.permutations(base + dups))
    return n, order


def run(
    data: st.DataObject, order: list[int], store: dict[int, p.Event], n: int
) -> list[tuple[p.Event, frozenset[int]]]:
    """Drive a sequencer like the client does: start somewhere in the feed, offer the feed, answer
    each history request from ``store`` (maybe late), heartbeat ``n`` at the end, repair until quiet.

    Returns each delivered event with the seqs that had been offered when it was delivered.
    """
    s = RoomSequencer()
    out: list[tuple[p.Event, frozenset[int]]] = []
    offered: set[int] = set()
    pending: list[tuple[int, int]] = []
    start_at = data.draw(st.integers(0, len(order)), label="start_at")
    start_latest = data.draw(st.integers(0, n), label="start_latest")

    def emit(events: list[p.Event]) -> None:
        out.extend((e, frozenset(offered)) for e in events)

    def answer(all_of_them: bool) -> None:
        while pending and (all_of_them or data.draw(st.booleans(), label="answer now")):
            after, limit = pending.pop(0)
            emit(s.fill(ROOM, history(store, after, limit)))

    for i, seq in enumerate(order):
        if i == start_at:
            emit(s.start(ROOM, 1, start_latest))
        offered.add(seq)
        emit(s.offer(ev(seq)))
        for room, after, limit in s.wants():
            assert room == ROOM and 1 <= limit <= MAX_FETCH
            pending.append((after, limit))
        answer(False)
    if start_at == len(order):
        emit(s.start(ROOM, 1, start_latest))
    s.observe(ROOM, n)
    for _ in range(n + 2):
        for _room, after, limit in s.wants():
            pending.append((after, limit))
        if not pending:
            break
        answer(True)
    assert s.wants() == [] and not pending
    return out


@settings(max_examples=200, deadline=None)
@given(feed=feeds(), data=st.data())
def test_any_order_with_duplicates_delivers_each_event_once_in_order(
    feed: tuple[int, list[int]], data: st.DataObject
) -> None:
    n, order = feed
    store = {k: ev(k) for k in range(1, n + 1)}
    # The live feed may also lose some events outright; history has them all.
    lost = data.draw(st.sets(st.sampled_from(order)), label="lost on the feed")
    out = [e for e, _ in run(data, [k for k in order if k not in lost], store, n)]
    assert out == [ev(k) for k in range(1, n + 1)]


@settings(max_examples=200, deadline=None)
@given(k=st.integers(2, 30), data=st.data())
def test_history_lost_below_k_yields_one_marker_then_k_to_n(k: int, data: st.DataObject) -> None:
    n, order = data.draw(feeds(lo=k), label="feed of k..n")
    store = {j: ev(j) for j in range(k, n + 1)}
    out = [e for e, _ in run(data, order, store, n)]
    assert missing_count(out[0]) == k - 1
    assert out[1:] == [ev(j) for j in range(k, n + 1)]


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_every_seq_is_delivered_once_or_named_missing_never_both(data: st.DataObject) -> None:
    # History has lost everything below k, but the live feed brought some of those: what the
    # client holds when history answers is delivered, only what it has not got is named as gone
    # (an event still in flight then is dropped when it arrives), and the count adds up.
    n, order = data.draw(feeds(), label="feed")
    k = data.draw(st.integers(1, n + 1), label="k")
    live = data.draw(st.sets(st.integers(1, n)), label="seen live")
    store = {j: ev(j) for j in range(k, n + 1)}
    position = 1
    for e, offered in run(data, [j for j in order if j in live], store, n):
        if e.seq == 0:
            gone = range(position, position + missing_count(e))
            assert not any(j in offered or j in store for j in gone), (gone, offered)
            position = gone.stop
        else:
            assert e == ev(position)
            position += 1
    assert position == n + 1
