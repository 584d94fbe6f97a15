"""Unit tests of the full-screen client's windows (zchat.term.windows): numbering, what a view
shows at a size, paging, the unread marker and folding, without a terminal."""

from __future__ import annotations

import datetime as dt

from zchat.protocol import Event
from zchat.term import ui
from zchat.term.windows import FOLD_MAX, MARKER, Entry, Window, Windows, conversation


def line(text: str, indent: int = 0) -> Entry:
    return Entry([("", text)], indent)


def texts(rows: list[ui.Fragments]) -> list[str]:
    return [ui.plain(row) for row in rows]


def filled(count: int, words: int = 1) -> Window:
    """A window of ``count`` entries: entry N is "N" followed by ``words - 1`` words."""
    window = Window("general")
    for n in range(count):
        window.append(line(" ".join([str(n), *["word"] * (words - 1)]), indent=2))
    return window


def test_a_window_is_named_by_its_room_or_query_and_the_name_is_inert() -> None:
    assert (Window("general").name, Window(query="Alice").name, Window().name) == ("#general", "@Alice", "(no room)")
    # A query's nick comes from the network: the title, status and prompt lines show the name.
    assert Window(query="a\x1b[2J\u202eb").name == "@a␛[2J\\u202eb"


def test_numbers_are_the_order_opened_and_switching_never_changes_them() -> None:
    windows = Windows()
    general, dev, ops = (windows.open(Window(r)) for r in ("general", "dev", "ops"))
    assert windows.current is general  # the first one opened
    assert (dev.marker_due, ops.marker_due) == (True, True)  # the others wait in the background
    windows.switch(ops)
    windows.cycle(1)
    assert windows.current is general
    windows.cycle(-1)
    assert windows.current is ops
    assert [windows.number(w) for w in (general, dev, ops)] == [1, 2, 3]
    assert (windows.get(2), windows.get(4), windows.get(0)) == (dev, None, None)
    assert windows.room("dev") is dev and windows.room("nope") is None
    windows.close(ops)  # the current one: the window before it takes over
    assert windows.current is dev and windows.number(dev) == 2
    windows.close(general)
    assert windows.number(dev) == 1
    windows.close(dev)
    assert windows.current is None and len(windows) == 0


def test_the_view_is_the_newest_rows_and_cuts_an_old_entry_rather_than_leave_rows_blank() -> None:
    window = filled(10, words=3)  # "N word word": 2 rows each at 10 columns
    view = window.view(10, 5)
    assert texts(view.rows) == ["  word", "8 word", "  word", "9 word", "  word"]  # entry 7 in part
    assert view.top == (7, 1) and view.bottom == (9, 1) and view.at_end
    assert texts(filled(2).view(10, 5).rows) == ["0", "1"]  # fewer rows than the height: all of them
    assert Window("x").view(10, 5).rows == []


def test_page_up_and_down_turn_a_page_leaving_one_row_in_common() -> None:
    window = filled(30)
    window.page(up=True, columns=20, height=10)
    assert texts(window.view(20, 10).rows) == [str(n) for n in range(11, 21)]
    window.page(up=True, columns=20, height=10)
    assert texts(window.view(20, 10).rows) == [str(n) for n in range(2, 12)]
    window.page(up=True, columns=20, height=10)
    assert texts(window.view(20, 10).rows) == [str(n) for n in range(10)]  # the top: it stops there
    window.page(up=True, columns=20, height=10)
    assert window.view(20, 10).top == (0, 0)
    window.page(up=False, columns=20, height=10)
    assert texts(window.view(20, 10).rows) == [str(n) for n in range(9, 19)]
    window.page(up=False, columns=20, height=10)
    window.page(up=False, columns=20, height=10)
    assert window.anchor is None  # at the end: it follows new lines again
    assert texts(window.view(20, 10).rows) == [str(n) for n in range(20, 30)]
    window.page(up=False, columns=20, height=10)
    assert window.anchor is None


def test_paging_goes_through_an_entry_taller_than_the_view() -> None:
    window = Window("general")
    window.append(line("before"))
    window.append(line("\n".join(f"part {n}" for n in range(25))))
    window.append(line("after"))
    seen: list[str] = []
    for _ in range(10):
        seen = texts(window.view(20, 6).rows) + seen
        window.page(up=True, columns=20, height=6)
    assert {f"part {n}" for n in range(25)} <= set(seen) and "before" in seen


def test_a_scrolled_view_stays_put_as_lines_come_and_go() -> None:
    window = filled(30)
    window.page(up=True, columns=20, height=10)
    shown = texts(window.view(20, 10).rows)
    window.append(line("newer"))
    assert texts(window.view(20, 10).rows) == shown
    window.remove(window.entries[-1])  # after the view
    window.remove(window.entries[0])  # before it
    assert texts(window.view(20, 10).rows) == shown
    window.remove(window.entries[-10])  # the anchored (bottom) entry: the one before takes its place
    assert texts(window.view(20, 10).rows)[-1] == "19"
    window.remove(line("not kept"))  # nothing happens
    window.clear()
    assert window.anchor is None and window.view(20, 10).rows == []


def test_a_full_scrollback_drops_its_oldest_lines_and_keeps_the_view_valid() -> None:
    window = Window("general")
    window.entries = type(window.entries)(maxlen=5)
    for n in range(5):
        window.append(line(str(n)))
    window.page(up=True, columns=10, height=2)
    for n in range(5, 12):
        window.append(line(str(n)))
    assert texts(window.entries[0].rows(10)) == ["7"]
    assert len(window.view(10, 2).rows) == 2


def test_the_marker_comes_before_the_first_new_line_after_leaving() -> None:
    window = filled(2)
    window.append(line("backlog"), new=False)
    window.leave()
    window.append(line("old news"), new=False)  # not new (say, a backlog): no marker yet
    assert window.marker is None
    window.append(line("first new"), new=True)
    window.append(line("second new"), new=True)
    assert [e.rule for e in window.entries][-3:] == [True, False, False]
    window.enter()
    window.append(line("while here"), new=True)
    assert sum(e.rule for e in window.entries) == 1
    window.leave()
    assert window.marker is None and not any(e.rule for e in window.entries)


def event(kind: str, nick: str) -> Event:
    return Event(1, "2026-11-21T10:00:00.000Z", "general", kind, nick, f"{nick} {kind}")


def test_a_burst_of_joins_and_leaves_is_one_line_changed_in_place() -> None:
    window = Window("general")
    seen: list[list[Event]] = []

    def make(burst: list[Event]) -> ui.Fragments:
        seen.append(list(burst))
        return [("", "-- "), ("", ",".join(e.nick for e in burst))]

    window.fold(event("join", "alice"), make)
    window.fold(event("join", "bob"), make)
    window.fold(event("leave", "carol"), make)
    assert [ui.plain(e.fragments) for e in window.entries] == ["-- alice,bob,carol"]
    assert window.entries[0].indent == 3
    window.append(line("a message"))
    window.fold(event("join", "dave"), make)
    assert [ui.plain(e.fragments) for e in window.entries] == ["-- alice,bob,carol", "a message", "-- dave"]
    window.leave()  # a new burst while away starts below the marker
    window.fold(event("join", "erin"), make, new=True)
    assert [e.rule for e in window.entries][-2:] == [True, False]
    window.fold(event("join", "frank"), make, new=True)
    assert ui.plain(window.entries[-1].fragments) == "-- erin,frank"


def test_a_folded_line_holds_a_bounded_burst() -> None:
    window = Window("general")
    for n in range(2 * FOLD_MAX + 1):
        window.fold(event("join" if n % 2 else "leave", "mallory"), lambda burst: [("", str(len(burst)))])
    assert [ui.plain(e.fragments) for e in window.entries] == [str(FOLD_MAX), str(FOLD_MAX), "1"]


def test_a_day_is_new_only_after_another() -> None:
    window = Window("general")
    assert not window.new_day(dt.date(2026, 11, 30))
    assert not window.new_day(dt.date(2026, 11, 30))
    assert not window.new_day(None)
    assert window.new_day(dt.date(2026, 12, 1))
    assert window.day == dt.date(2026, 12, 1)


def test_entry_rows_follow_the_width_and_changes() -> None:
    entry = line("one two three", indent=4)
    assert texts(entry.rows(9)) == ["one two", "    three"]
    assert texts(entry.rows(40)) == ["one two three"]
    entry.set([("", "changed")], 0)
    assert texts(entry.rows(40)) == ["changed"]


# --- lines of events: earlier ones put in their place, scrolling to one ------------------------

DAY1, DAY2 = dt.date(2026, 11, 30), dt.date(2026, 12, 1)


def said(seq: int, day: dt.date = DAY2, stream: str = "general") -> Entry:
    return Entry([("", f"m{seq}")], keys=[(stream, seq)], day=day)


def shows(window: Window) -> list[str]:
    """Each line: ``m<seq>``, a day line (``-- Monday …``), a rule (``[5 not shown]``)…"""
    out = []
    for entry in window.entries:
        text = ui.plain(entry.fragments)
        out.append(f"[{text}]" if entry.rule else text)
    return out


def test_earlier_events_go_in_their_place_once_with_day_lines_and_gaps() -> None:
    window = Window("general")
    window.append(line("-- joined #general"))
    for seq in (50, 51):
        window.append(said(seq))
    window.insert([said(20, DAY1), said(21, DAY1), said(22)], gaps=True)
    assert shows(window) == [
        "-- Monday 30 November 2026 --",
        "m20",
        "m21",
        "-- Tuesday 1 December 2026 --",
        "m22",
        "[27 not shown]",  # 23 to 49
        "-- joined #general",
        "m50",
        "m51",
    ]
    # 21 and 22 are there already: 23 and 49 go in their places, and the rule says what is left.
    window.insert([said(21, DAY1), said(22), said(23), said(49)], gaps=True)
    assert shows(window)[4:] == ["m22", "m23", "[25 not shown]", "m49", "-- joined #general", "m50", "m51"]
    window.insert([said(30)], gaps=True)
    window.insert([said(29), said(30), said(31)], gaps=True)  # around 30, which is shown: each in its place
    assert shows(window)[4:] == [
        "m22",
        "m23",
        "[5 not shown]",
        "m29",
        "m30",
        "m31",
        "[17 not shown]",
        "m49",
        "-- joined #general",
        "m50",
        "m51",
    ]
    assert window.find(("general", 23)) is window.entries[5]
    assert window.find(("dev", 23)) is None


def test_a_query_takes_the_conversation_above_the_new_message_and_below_the_marker_it_keeps() -> None:
    window = Window(query="alice")
    window.leave()  # in the background: the new message gets the marker
    window.append(said(9, DAY2, "@bob~x"), new=True)
    window.insert([said(2, DAY1, "@bob~x"), said(7, DAY2, "@bob~x"), said(9, DAY2, "@bob~x")])  # (no gaps: an inbox)
    assert shows(window) == [
        "-- Monday 30 November 2026 --",
        "m2",
        "-- Tuesday 1 December 2026 --",
        "m7",
        f"[{MARKER}]",
        "m9",
    ]
    empty = Window(query="carol")
    empty.insert([said(3, DAY1, "@bob~x")])
    assert (shows(empty), empty.day) == (["-- Monday 30 November 2026 --", "m3"], DAY1)  # the newest day now


def test_an_insert_keeps_a_scrolled_view_and_a_full_scrollback_makes_room() -> None:
    window = Window("general")
    for seq in range(100, 130):
        window.append(said(seq))
    window.page(up=True, columns=20, height=5)
    before = texts(window.view(20, 5).rows)
    window.insert([said(10), said(11)], gaps=True)
    assert texts(window.view(20, 5).rows) == before
    small = Window("general")
    small.entries = type(small.entries)(maxlen=10)
    for seq in range(100, 110):
        small.append(said(seq))
    small.insert([said(10)], gaps=True)  # room for it, a day line and rules: the 6 oldest lines go
    assert shows(small) == ["-- Tuesday 1 December 2026 --", "m10", "[95 not shown]", "m106", "m107", "m108", "m109"]
    assert small.find(("general", 100)) is None  # its line went, and its key with it


def test_an_insert_into_a_full_scrollback_in_many_places_fits() -> None:
    # Lines that go between lines already shown, each with a rule and a day line above and below
    # it: more than 3 a line, which was all the room made (then the full deque raised IndexError).
    def day(seq: int) -> dt.date:
        return dt.date(2026, 1, 1) + dt.timedelta(days=seq // 2)

    def entry(seq: int) -> Entry:
        return Entry([("", f"m{seq}")], keys=[("general", seq)], day=day(seq))

    window = Window("general")
    window.entries = type(window.entries)(maxlen=50)
    for seq in [2, 5, 6, 14, 16, 19, 20, 22, 26, 27, 28, 32, 36, 37, 38, 40, 42, 51, 52, 53, 54, 55]:
        if window.new_day(day(seq)):
            window.append(Entry([("", "day")], day=day(seq)))
        window.append(entry(seq))
    window.insert([entry(seq) for seq in [8, 12, 24, 30, 47, 58]], gaps=True)
    assert len(window.entries) <= 50
    assert all(window.find(("general", seq)) is not None for seq in [8, 12, 24, 30, 47, 58])


def test_scroll_to_puts_the_line_a_third_down_the_view() -> None:
    window = Window("general")
    for seq in range(1, 41):
        window.append(said(seq))
    target = window.find(("general", 10))
    assert target is not None
    window.scroll_to(target, 20, 9)
    assert texts(window.view(20, 9).rows) == [f"m{n}" for n in range(7, 16)]
    assert window.anchor is not None
    newest = window.find(("general", 39))
    assert newest is not None
    window.scroll_to(newest, 20, 9)
    assert window.anchor is None  # the end: the view follows new lines again


def test_queries_are_found_by_nick_in_any_case_and_show_their_conversation() -> None:
    windows = Windows()
    windows.open(Window("general"))
    alice = windows.open(Window(query="Alice"))
    assert windows.query("alice") is alice and windows.query("bob") is None
    assert windows.room("general") is not alice and windows.number(alice) == 2
    inbox = [
        Event(1, "", "@bob~x", "private", "Alice", "hi", to="bob"),
        Event(2, "", "@bob~x", "private", "carol", "psst", to="bob"),
        Event(3, "", "@bob~x", "private", "bobby", "hello", to="alice"),  # bob, under the nick he had then
        Event(0, "", "", "system", "*", "alice is away", code="away"),
    ]
    assert [e.seq for e in conversation(inbox, "ALICE")] == [1, 3]
