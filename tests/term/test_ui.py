"""Unit tests of the full-screen client's pure parts (zchat.term.ui, zchat.term.transcript), of its screen
driven in-process without a terminal (zchat.term.tui.Screen), and of Client.history."""

from __future__ import annotations

import datetime as dt
import re
import string
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ClientFactory, wait_for
from hypothesis import given
from hypothesis import strategies as st
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput

from zchat.errors import LocalProtocolError
from zchat.protocol import Event
from zchat.term import commands as c
from zchat.term import render, tui, ui
from zchat.term.transcript import Transcript, transcript_line
from zchat.term.tui import Screen
from zchat.term.windows import Window

TS = "2026-11-21T10:00:00.123Z"


def ev(kind: str, nick: str, text: str, room: str = "general", seq: int = 1, **kw: str) -> Event:
    return Event(seq, kw.pop("ts", TS), room, kind, nick, text, **kw)  # type: ignore[arg-type]


# --- colours, mentions, pastes ----------------------------------------------------------------


def test_nick_colour_is_stable_case_blind_and_from_the_palette() -> None:
    assert ui.nick_color("alice") == ui.nick_color("Alice") == ui.nick_color("ALICE")
    colours = {ui.nick_color(f"user{n}") for n in range(200)}
    assert colours == set(ui.PALETTE)  # spread over the whole palette
    assert not any(bad in name for name in ui.PALETTE for bad in ("black", "white", "gray", "grey"))
    # Not Python's hash(), which changes between runs: a fixed value pins it.
    assert ui.nick_color("alice") == "ansibrightcyan"


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("bob: hi", True),
        ("hi Bob!", True),
        ("BOB", True),
        ("thanks, bob.", True),
        ("bob's idea", True),
        ("(bob)", True),
        ("bobby", False),
        ("kbob", False),
        ("bob_2", False),
        ("bob-bot", False),
        ("@bob", True),
        ("", False),
    ],
)
def test_mentions_are_whole_words_any_case(text: str, named: bool) -> None:
    assert ui.mentions(text, "bob") is named


def test_is_mention_needs_someone_else_speaking() -> None:
    assert ui.is_mention(ev("message", "alice", "hi bob"), "bob")
    assert ui.is_mention(ev("action", "alice", "pokes bob"), "bob")
    assert ui.is_mention(ev("private", "alice", "psst", room="", seq=0, to="bob"), "bob")
    assert not ui.is_mention(ev("message", "bob", "I am bob"), "bob")
    assert not ui.is_mention(ev("join", "bob", "bob joined"), "bob")
    assert not ui.is_mention(ev("message", "alice", "hi bob"), None)


@pytest.mark.parametrize(
    ("text", "lines"),
    [
        ("a\nb\nc", ["a", "b", "c"]),
        ("a\r\nb\r\n", ["a", "b"]),
        ("a\rb", ["a", "b"]),
        ("\n\n  x  \n\t\n", ["  x"]),
        ("    indented code\n  more", ["    indented code", "  more"]),
    ],
)
def test_paste_lines(text: str, lines: list[str]) -> None:
    assert ui.paste_lines(text) == lines


# --- how events look --------------------------------------------------------------------------

EVENTS = [
    ev("message", "alice", "hi"),
    ev("message", "alice", "two\nlines"),
    ev("message", "alice", "hey bob"),
    ev("action", "alice", "waves at bob"),
    ev("private", "alice", "psst", room="", seq=0, to="bob"),
    ev("private", "bob", "reply", room="", seq=0, to="alice"),
    ev("join", "carol", "carol joined"),
    ev("leave", "carol", "carol left (quit)"),
    ev("system", "*", "the broker is shutting down"),
    ev("error", "*", "not sent", seq=0),
    ev("message", "mallory", "\x1b[2J\x1b]0;pwned\x07 \u202eevil"),
    ev("message", "bob", "my own"),
]


@pytest.mark.parametrize("event", EVENTS)
@pytest.mark.parametrize("show_room", [False, True])
def test_styled_events_read_exactly_as_the_plain_rendering(event: Event, show_room: bool) -> None:
    fragments = ui.event_fragments(event, me="bob", show_room=show_room)
    assert ui.plain(fragments) == render.format_event(event, show_room=show_room)
    assert not any(ch in text for _, text in fragments for ch in "\x1b\x07\u202e")


def test_styles_of_an_event() -> None:
    def styles(event: Event) -> dict[str, str]:
        return {text: style for style, text in ui.event_fragments(event, me="bob")}

    hi = styles(ev("message", "alice", "hi"))
    assert hi["alice"] == f"class:nick {ui.nick_color('alice')}"
    assert hi["hi"] == ""
    assert styles(ev("message", "alice", "hey bob"))["hey bob"] == "class:mention"
    assert styles(ev("message", "bob", "it's bob"))["bob"].endswith("class:own")
    assert styles(ev("message", "bob", "it's bob"))["it's bob"] == ""  # you do not mention yourself
    assert ui.event_fragments(ev("join", "carol", "carol joined"), me="bob")[1:] == [
        ("class:system", "-- "),
        ("class:system", "carol joined"),
    ]
    assert styles(ev("error", "*", "no"))["no"] == "class:error"
    assert ui.event_fragments(ev("join", "carol", "carol joined"), me="bob")[0][0] == "class:time"


@pytest.mark.parametrize("event", EVENTS)
def test_the_text_column_is_where_the_text_starts(event: Event) -> None:
    line = ui.event_fragments(event, me="bob")
    text = render.event_parts(event).text.split("\n")[0]
    assert ui.plain(line)[ui.text_column(line) :].startswith(text)


def test_time_format() -> None:
    event = ev("message", "alice", "hi")
    seconds = ui.event_fragments(event, me="bob", time_format="%H:%M:%S")
    assert ui.plain(seconds) == render.format_event(event, time_format="%H:%M:%S")
    assert ui.plain(seconds).startswith(render.clock(TS, "%H:%M:%S") + " alice: ")
    assert len(render.clock(TS, "%H:%M:%S")) == len("10:00:00")


def test_a_room_name_from_the_network_is_inert() -> None:
    event = ev("message", "alice", "hi", room="x\x1b[2J\x07")
    assert "\x1b" not in render.format_event(event, show_room=True)
    assert "\x1b" not in ui.plain(ui.event_fragments(event, me="bob", show_room=True))
    assert "#x␛[2J␇ alice: hi" in render.format_event(event, show_room=True)


def test_folded_joins_and_leaves() -> None:
    burst = [
        ev("join", "alice", "alice joined"),
        ev("join", "bob", "bob joined", ts="2026-11-21T10:05:00.000Z"),
        ev("leave", "dave", "dave left (quit)"),
        ev("join", "alice", "alice joined"),
        ev("join", "\x1b[31mcarol", "carol joined"),
    ]
    assert render.fold_text(burst) == "joined: alice, bob, ␛[31mcarol; left: dave"
    assert render.fold_text(burst[2:3]) == "left: dave"
    line = ui.fold_fragments(burst)
    assert ui.plain(line) == f"{render.clock(TS)} -- joined: alice, bob, ␛[31mcarol; left: dave"
    assert ui.plain(ui.fold_fragments(burst[:1])) == render.format_event(burst[0])  # one reads as itself


def test_day_line() -> None:
    assert render.day_line(dt.date(2026, 12, 1)) == "-- Tuesday 1 December 2026 --"
    local = dt.datetime(2026, 12, 1, 23, 59).astimezone()
    assert render.local_day(local.isoformat()) == dt.date(2026, 12, 1)
    assert render.local_day("not a time") is None


@pytest.mark.parametrize(
    ("text", "columns", "indent", "rows"),
    [
        ("short", 20, 4, ["short"]),
        ("", 20, 4, [""]),
        ("the quick brown fox jumps", 10, 2, ["the quick", "  brown", "  fox", "  jumps"]),
        ("a  b   c", 20, 0, ["a  b   c"]),  # spaces inside a row stay
        ("word    next", 6, 0, ["word", "next"]),  # spaces at a break go
        ("  indented line", 9, 0, ["  indente", "d line"]),  # leading spaces are no row of their own
        ("abcdefghijkl", 5, 2, ["abcde", "  fgh", "  ijk", "  l"]),  # longer than a row: broken
        ("ab verylongword", 6, 1, ["ab ver", " ylong", " word"]),  # it would not fit a row either
        ("x " * 3, 20, 2, ["x x x"]),
        ("日本語の文字 and", 8, 2, ["日本語の", "  文字", "  and"]),  # wide characters are two cells
        ("hi 🎉🎉🎉", 5, 0, ["hi 🎉", "🎉🎉"]),
        ("a日", 2, 1, ["a", "日"]),  # too wide for the indented row: the indent gives way
        ("much too deep", 6, 40, ["much", "   too", "   dee", "   p"]),  # the indent: at most half
    ],
)
def test_wrap(text: str, columns: int, indent: int, rows: list[str]) -> None:
    wrapped = ui.wrap([("s", text)], columns, indent)
    assert [ui.plain(row) for row in wrapped] == rows
    assert all(ui.width(row) <= columns for row in wrapped)


@given(st.text(alphabet=st.sampled_from("ab c日🎉́"), max_size=60), st.integers(2, 30), st.integers(0, 40))
def test_wrap_keeps_every_character_but_the_spaces_at_breaks(text: str, columns: int, indent: int) -> None:
    wrapped = ui.wrap([("x", text[:20]), ("y", text[20:])], columns, indent)
    assert all(ui.width(row) <= columns for row in wrapped)
    assert "".join(ui.plain(row) for row in wrapped).replace(" ", "") == text.replace(" ", "")
    assert all(style in ("x", "y", "") for row in wrapped for style, _ in row)


def test_wrap_keeps_styles() -> None:
    rows = ui.wrap([("class:time", "10:00 "), ("n", "alice"), ("", ": one two three")], 16, 13)
    assert rows == [
        [("class:time", "10:00 "), ("n", "alice"), ("", ": one")],
        [("", "        two")],  # half of 16: the indent is cut to 8
        [("", "        three")],
    ]


W = ui.WindowStatus


def status(windows: list[ui.WindowStatus], current: int | None, columns: int, **kw: object) -> str:
    line = ui.status_fragments("bob", windows, current, str(kw.pop("state", "connected")), columns=columns, **kw)  # type: ignore[arg-type]
    text = ui.plain(line)
    assert ui.width(line) == columns, text
    return text


BUSY = [W(1, "#general"), W(2, "#dev", 3), W(3, "#ops", 1, True), W(4, "#random"), W(5, "#x")]


def test_status_line_numbers_the_windows_and_marks_the_current_one() -> None:
    assert (
        status(BUSY, 1, 100).rstrip() == " bob [1:#general] 2:#dev(3) 3:#ops(1) 4:#random 5:#x" + " " * 38 + "connected"
    )
    line = ui.status_fragments("bob", BUSY, 4, "connected", columns=100)
    assert ("class:status.mention", "3:#ops(1)") in line
    assert ("class:status.unread", "2:#dev(3)") in line
    assert ("class:status.current", "[4:#random]") in line
    assert line[-1] == ("class:status.connected", "connected ")
    scrolled = status(BUSY, 2, 100, state="reconnecting", scrolled=True)
    assert scrolled.startswith(" bob 1:#general [2:#dev] 3:#ops(1) 4:#random 5:#x ")
    assert scrolled.endswith(" more below  reconnecting ")
    assert status([], None, 40, state="closed") == " bob (no room)" + " " * 18 + "offline "
    for state in ("new", "connecting", "closed"):
        assert ui.connection_label(state) == "offline"


@pytest.mark.parametrize(
    ("columns", "line"),
    [
        (60, " bob [1:#general] 2:#dev(3) 3:#ops(1) +2          connected "),
        # Short of room: the windows with news stay (mentions first), the quiet ones are counted.
        (40, " [1:#general] 3:#ops(1) +3    connected "),
        (30, " [1:#general] +4    connected "),
        (20, " [1…] +4  connected "),
    ],
)
def test_status_line_fits_its_width(columns: int, line: str) -> None:
    assert status(BUSY, 1, columns) == line


def test_status_line_keeps_the_connection_apart_from_the_windows() -> None:
    rooms = [W(1, "#general", 5), W(2, "#op"), W(3, "#dev")]
    for columns in range(20, 61):
        text = status(rooms, 3, columns, state="reconnecting")
        assert text.endswith(" reconnecting ")
        assert re.search(r"\S reconnecting", text) is None
    hidden = ui.status_fragments("bob", [W(1, "#a"), W(2, "#b", 2), W(3, "#c")], 1, "connected", columns=20)
    assert hidden[-3] == ("class:status.unread", "+2")  # a window with news is hidden: the count says so
    long = status([W(1, "#a-room-name-of-thirty-two-chars")], 1, 40)
    assert long == " [1:#a-room-name-of-thirty…]  connected "


def test_status_line_says_you_are_away_and_still_fits_40_columns() -> None:
    assert status(BUSY[:2], 1, 60, away=True).startswith(" bob(away) [1:#general] 2:#dev(3) ")
    assert status(BUSY, 1, 40, away=True) == " [1:#general] 3:#ops(1) +3    connected "  # news first


@pytest.mark.parametrize(
    ("name", "topic", "columns", "title"),
    [
        ("#general", None, 20, " #general           "),
        ("#general", "plans for Friday", 40, " #general: plans for Friday             "),
        ("#general", "plans for Friday, and for the weekend too", 40, " #general: plans for Friday, and for th…"),
        ("#general", "two\nlines \x1b[2J", 30, " #general: two lines ␛[2J     "),
        ("@bob", "private messages with bob", 12, " @bob: priv…"),
        ("#general", "日本語のトピック", 18, " #general: 日本語…"),  # wide characters: cells, not characters
        ("#general", "日本語のトピック", 19, " #general: 日本語… "),  # (no half of a wide one)
    ],
)
def test_the_title_line_is_the_window_and_its_topic_cut_to_fit(
    name: str, topic: str | None, columns: int, title: str
) -> None:
    line = ui.title_fragments(name, topic, columns)
    assert ui.plain(line) == title
    assert ui.width(line) == columns


@pytest.mark.parametrize(
    ("text", "query", "found"),
    [
        ("deploy done", "deploy", ["deploy"]),
        ("Deploy, then re-deploy; redeploy", "DEPLOY", ["Deploy", "deploy"]),
        ("café au lait", "cafe", ["café"]),
        ("deploy_now deploy", "deploy", ["deploy", "deploy"]),  # "_" separates words, for the broker too
        ("friday deploy", "deploy friday", ["friday", "deploy"]),
        ("nothing here", "deploy", []),
    ],
)
def test_the_words_found_are_those_the_broker_matches(text: str, query: str, found: list[str]) -> None:
    assert [text[a:b] for a, b in ui.match_spans(text, query)] == found


def test_a_search_match_reads_with_its_seq_day_and_the_words_highlighted() -> None:
    event = ev("message", "alice", "did the Deploy go out?", seq=812, ts="2026-11-30T14:55:00.000Z")
    today = render.local_day(event.ts)
    assert today is not None
    line, indent = ui.found_fragments(event, "deploy", me="bob", today=today)
    head = f"#812 {render.clock(event.ts)} alice: "
    assert ui.plain(line) == head + "did the Deploy go out?"
    assert indent == len(head)
    assert ("class:found", "Deploy") in line and line[0] == ("class:seq", "#812 ")
    later, _ = ui.found_fragments(event, "deploy", me="bob", today=today + dt.timedelta(days=3))
    assert ui.plain(later).startswith(f"#812 {today:%d %b} {render.clock(event.ts)} alice: ")
    next_year, _ = ui.found_fragments(event, "deploy", me="bob", today=today + dt.timedelta(days=400))
    assert ui.plain(next_year).startswith(f"#812 {today:%d %b %Y} ")
    mention = ui.highlight(ui.event_fragments(ev("message", "alice", "bob: deploy"), me="bob"), "deploy")
    assert mention[-2:] == [("class:mention", "bob: "), ("class:mention class:found", "deploy")]


def test_ignoring_hides_messages_joins_and_private_messages_and_follows_a_nick_change() -> None:
    ignored = ui.IgnoreList()
    assert ignored.add("Carol") and not ignored.add("carol")
    assert "CAROL" in ignored and list(ignored) == ["Carol"]
    for kind in ("message", "action", "private", "join", "leave", "nick"):
        assert ignored.hides(ev(kind, "carol", "x")), kind
    assert not ignored.hides(ev("topic", "carol", "her topic"))  # the room's: shown
    assert not ignored.hides(ev("message", "alice", "carol: hi"))
    renamed = ev("nick", "carol", "carol is now known as caz", new_nick="caz")
    ignored.follow(renamed)
    assert list(ignored) == ["caz"] and "carol" not in ignored
    ignored.follow(ev("nick", "alice", "alice is now known as al", new_nick="al"))
    assert list(ignored) == ["caz"]
    assert ignored.remove("CAZ") and not ignored.remove("caz") and len(ignored) == 0


# --- transcripts ------------------------------------------------------------------------------


def test_transcript_lines() -> None:
    assert transcript_line(ev("message", "alice", "hi")) == f"{TS} <alice> hi"
    assert transcript_line(ev("action", "alice", "waves")) == f"{TS} * alice waves"
    assert transcript_line(ev("join", "bob", "bob joined")) == f"{TS} -- bob joined"
    assert transcript_line(ev("error", "*", "no")) == f"{TS} !! no"
    assert transcript_line(ev("private", "a", "x", room="", to="b")) == f"{TS} [a → b] x"
    two = transcript_line(ev("message", "alice", "one\ntwo"))
    assert two == f"{TS} <alice> one\n{' ' * len(f'{TS} <alice> ')}two"
    assert transcript_line(ev("message", "m", "\x1b[31mred\r\x07")) == f"{TS} <m> ␛[31mred␍␇"
    assert transcript_line(ev("heartbeat", "*", "")) is None
    assert transcript_line(ev("duplicate", "*", "")) is None


@given(st.text(alphabet=st.characters(), max_size=50))
def test_transcript_lines_hold_no_control_character_but_newlines(text: str) -> None:
    line = transcript_line(ev("message", "alice", text))
    assert line is not None
    assert not any(ch in line for ch in map(chr, [*range(0, 10), *range(11, 32), 127]))


def test_transcript_files_per_room_and_person_without_writing_the_backlog_twice(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    first = [
        ev("join", "bob", "bob joined", seq=1, ts="2026-11-21T10:00:00.000Z"),
        ev("message", "alice", "hi", seq=2, ts="2026-11-21T10:00:01.000Z"),
        ev("message", "alice", "same ms", seq=3, ts="2026-11-21T10:00:01.000Z"),
        ev("message", "carol", "in dev", room="dev", seq=1, ts="2026-11-21T10:00:02.000Z"),
        ev("private", "alice", "psst", room="", seq=0, to="bob", ts="2026-11-21T10:00:03.000Z"),
        ev("private", "bob", "ok", room="", seq=0, to="Alice", ts="2026-11-21T10:00:04.000Z"),
        ev("system", "*", "reconnected", room="", seq=0, code="reconnected"),  # local: not the room's
        ev("message", "evil", "x", room="../../etc", seq=9),  # not a room name: no file
    ]
    Transcript(logs, "bob").write(first)
    assert sorted(p.name for p in logs.iterdir()) == ["@alice.log", "dev.log", "general.log"]
    assert all(p.stat().st_mode & 0o077 == 0 for p in logs.iterdir())  # private messages: the owner's only
    general = (logs / "general.log").read_text()
    assert general.splitlines() == [
        "2026-11-21T10:00:00.000Z -- bob joined",
        "2026-11-21T10:00:01.000Z <alice> hi",
        "2026-11-21T10:00:01.000Z <alice> same ms",
    ]
    assert (logs / "@alice.log").read_text().splitlines() == [
        "2026-11-21T10:00:03.000Z [alice → bob] psst",
        "2026-11-21T10:00:04.000Z [bob → Alice] ok",
    ]
    # The next run: its backlog repeats the end of the first run, then goes on.
    again = Transcript(logs, "bob")
    again.write([*first[1:3], ev("message", "alice", "new", seq=4, ts="2026-11-21T10:00:05.000Z")])
    again.write([ev("message", "alice", "newer", seq=5, ts="2026-11-21T10:00:06.000Z")])
    assert (logs / "general.log").read_text() == general + (
        "2026-11-21T10:00:05.000Z <alice> new\n2026-11-21T10:00:06.000Z <alice> newer\n"
    )


# --- the screen, in-process -------------------------------------------------------------------


@pytest.fixture
def screen() -> Iterator[Screen]:
    with create_pipe_input() as pipe:
        yield Screen("bob", ["general", "dev"], input=pipe, output=DummyOutput())


def shown(screen: Screen) -> str:
    """The current window's lines, as text."""
    return "\n".join(ui.plain(entry.fragments) for entry in screen._view().entries)


def room(screen: Screen, name: str) -> Window:
    window = screen.windows.room(name)
    assert window is not None
    return window


def sent_commands(screen: Screen) -> list[c.NetworkCommand]:
    """What the screen hands the network thread from now on."""
    sent: list[c.NetworkCommand] = []
    screen._send = lambda command: not sent.append(command)  # type: ignore[func-returns-value]
    return sent


def test_backlog_counts_no_unread_and_rings_no_bell_but_live_mentions_do(
    screen: Screen, monkeypatch: pytest.MonkeyPatch
) -> None:
    bells: list[None] = []
    monkeypatch.setattr(screen.app.output, "bell", lambda: bells.append(None))
    backlog = [
        ev("join", "bob", "bob joined", room="dev", seq=1),  # an earlier session of bob's...
        ev("message", "alice", "bob?", room="dev", seq=2),
        ev("leave", "bob", "bob left (quit)", room="dev", seq=3),  # ...which ended
        ev("message", "alice", "still there, bob?", room="dev", seq=4),
    ]
    dev = room(screen, "dev")
    screen.add_events([*backlog, ev("join", "bob", "bob joined", room="dev", seq=5)])
    assert (dev.unread, bells) == (0, [])
    screen.add_events([ev("message", "alice", "plain", room="dev", seq=6)])
    assert (dev.unread, dev.mentioned, bells) == (1, False, [])
    screen.add_events([ev("message", "alice", "bob: now", room="dev", seq=7)])
    assert (dev.unread, dev.mentioned, len(bells)) == (2, True, 1)
    assert "2:#dev(2)" in ui.plain(screen.status_line(80))
    assert "still there" not in shown(screen)  # #general is shown, #dev only counted
    screen.switch("dev")
    assert (dev.unread, dev.mentioned) == (0, False)
    assert "bob: now" in shown(screen)


def test_no_bell_option(monkeypatch: pytest.MonkeyPatch) -> None:
    with create_pipe_input() as pipe:
        quiet = Screen("bob", ["general"], bell=False, input=pipe, output=DummyOutput())
        monkeypatch.setattr(quiet.app.output, "bell", lambda: pytest.fail("rang"))
        quiet.add_events([ev("join", "bob", "bob joined"), ev("message", "alice", "bob!", seq=2)])


def test_local_notices_show_in_the_current_window(screen: Screen) -> None:
    screen.switch("dev")
    screen.add_events([ev("system", "*", "connection lost — reconnecting…", room="", seq=0)])
    screen.add_events([ev("system", "*", "alice is away: lunch", room="", seq=0, code="away")])
    assert shown(screen).endswith("10:00 -- connection lost — reconnecting…\n10:00 -- alice is away: lunch")


def test_windows_keep_their_numbers(screen: Screen) -> None:
    screen.set_status("connected", ["general", "dev", "ops"])
    assert [(screen.windows.number(w), w.name) for w in screen.windows] == [(1, "#general"), (2, "#dev"), (3, "#ops")]
    screen.go_to(3)
    screen.go_to(1)
    screen.cycle_room(-1)
    assert screen.current == "ops"
    screen.go_to(9)  # no window 9: nothing happens
    assert screen.current == "ops"
    assert [w.name for w in screen.windows] == ["#general", "#dev", "#ops"]  # switching never reorders
    assert ui.plain(screen.status_line(60)).startswith(" bob 1:#general 2:#dev [3:#ops] ")


def test_status_changes_drop_parted_rooms_and_move_off_them(screen: Screen) -> None:
    screen.set_status("connected", ["general", "dev", "ops"])
    screen.switch("dev")
    screen.set_status("reconnecting", ["general", "ops"])  # dev parted: the window before it
    assert screen.current == "general"
    assert [screen.windows.number(w) for w in screen.windows] == [1, 2]
    assert ui.plain(screen.status_line(40)).endswith(" reconnecting ")
    screen.set_status("connected", ["general", "ops", "dev"])  # joined again: at the end
    assert [w.name for w in screen.windows] == ["#general", "#ops", "#dev"]
    screen.set_status("closed", [])
    assert screen.current is None
    assert ui.plain(screen._prompt()) == "> "
    screen.run_line("hello")
    assert "!! not in any room: /join #ROOM" in shown(screen)


def test_local_commands(screen: Screen) -> None:
    sent = sent_commands(screen)
    screen.run_line("/help")
    assert "/join #ROOM" in shown(screen)
    screen.run_line("/clear")
    assert shown(screen) == ""
    screen.run_line("/rooms")
    assert shown(screen) == "-- rooms: 1:#general (current), 2:#dev"
    screen.run_line("/switch dev")
    assert screen.current == "dev"
    screen.run_line("/j #general")  # already in: a switch, and a word saying so
    assert (screen.current, sent) == ("general", [])
    assert shown(screen).endswith("-- you are already in #general (window 1)")
    screen.run_line("/part see you")
    screen.run_line("/part dev bye")
    screen.run_line("hello")
    screen.run_line("/who")
    screen.run_line("/names #elsewhere")
    screen.run_line("/history 3")
    screen.run_line("/join ops")
    assert sent == [
        c.Part("general", "see you"),
        c.Part("dev", "bye"),
        c.Say("hello", "general", ref=1),
        c.Who("general"),
        c.Who("elsewhere"),
        c.History(3, "general"),
        c.Join("ops"),
    ]


def test_long_paste_waits_for_yes(screen: Screen) -> None:
    sent = sent_commands(screen)
    screen.input.insert_text("before: ")
    screen.paste_text("one\ntwo\n")
    assert [(s.text, s.room) for s in sent if isinstance(s, c.Say)] == [("before: one", "general"), ("two", "general")]
    assert screen.input.text == ""
    sent.clear()
    screen.paste_text("\n".join(string.ascii_lowercase[:6]))
    assert (sent, screen.paste) == ([], list("abcdef"))
    assert ui.plain(screen._prompt()) == "send 6 pasted lines as 6 messages? [y/N] "
    screen.answer_paste("n")
    assert (sent, screen.paste) == ([], None)
    screen.paste_text("\n".join(string.ascii_lowercase[:6]))
    screen.answer_paste("y")
    assert [command.text for command in sent if isinstance(command, c.Say)] == list("abcdef")
    screen.paste_text("no newline")
    assert screen.input.text == "no newline"


def test_tab_cycles_through_the_candidates(screen: Screen) -> None:
    screen.set_nicks("general", ["alice", "albert", "bob"])
    screen.input.insert_text("al")
    screen.complete()
    assert screen.input.text == "albert: "
    screen.complete()
    assert screen.input.text == "alice: "
    screen.complete()
    assert screen.input.text == "albert: "
    screen.input.insert_text("hi b")
    screen.complete()  # bob is you: not a candidate
    assert screen.input.text == "albert: hi b"


def test_paging_and_new_lines_while_scrolled_up(screen: Screen) -> None:
    screen.clear()
    for n in range(100):
        screen.notice(f"line {n}")
    assert screen._message_rows(40, 10)[-1] == [("class:notice", "line 99")]
    screen.page(up=True)  # a page: the top row (line 90) goes to the bottom
    assert ui.plain(screen._message_rows(40, 10)[-1]) == "line 90"
    assert "more below" in ui.plain(screen.status_line(40))
    screen.notice("new")
    assert ui.plain(screen._message_rows(40, 10)[-1]) == "line 90"  # the same line stays in view
    for _ in range(3):
        screen.page(up=False)
    assert ui.plain(screen._message_rows(40, 10)[-1]) == "new"
    assert "more below" not in ui.plain(screen.status_line(40))


def test_the_unread_marker_is_where_you_left(screen: Screen) -> None:
    general = room(screen, "general")
    screen.add_events([ev("join", "bob", "bob joined", seq=1), ev("message", "alice", "read", seq=2)])
    screen.switch("dev")
    assert general.marker is None  # nothing new yet
    screen.add_events([ev("message", "alice", "new one", seq=3), ev("message", "alice", "new two", seq=4)])
    screen.switch("general")
    marker = general.marker
    assert marker is not None and list(general.entries)[-3] is marker
    assert shown(screen).splitlines()[-2:] == [
        f"{render.clock(TS)} alice: new one",
        f"{render.clock(TS)} alice: new two",
    ]
    assert marker.rows(20) == [[("class:marker", "─" * 7 + " new " + "─" * 8)]]  # a rule across the width
    screen.add_events([ev("message", "alice", "while you read", seq=5)])  # no second marker
    assert sum(e.rule for e in general.entries) == 1
    screen.switch("dev")  # read: the marker goes
    assert general.marker is None and not any(e.rule for e in general.entries)
    screen.switch("general")  # nothing came meanwhile: no marker
    assert not any(e.rule for e in general.entries)


def test_a_window_opened_in_the_background_marks_what_came_after_your_join(screen: Screen) -> None:
    dev = room(screen, "dev")
    screen.add_events(
        [
            ev("message", "alice", "old", room="dev", seq=1),  # backlog
            ev("join", "bob", "bob joined", room="dev", seq=2),
            ev("message", "alice", "new", room="dev", seq=3),
        ]
    )
    assert [ui.plain(e.fragments)[6:] if not e.rule else "rule" for e in dev.entries] == [
        "alice: old",
        "-- bob joined",
        "rule",
        "alice: new",
    ]


def test_joins_and_leaves_fold_into_one_line_until_something_else_comes(screen: Screen) -> None:
    general = room(screen, "general")
    screen.add_events([ev("join", "bob", "bob joined", seq=1)])  # your own: not folded
    screen.add_events([ev("join", "alice", "alice joined", seq=2)])
    assert shown(screen).splitlines()[-1].endswith("-- alice joined")
    screen.add_events([ev("join", "carol", "carol joined", seq=3), ev("leave", "dave", "dave left (quit)", seq=4)])
    screen.add_events([ev("join", "erin", "erin joined", seq=5)])
    assert shown(screen).splitlines()[-2:] == [
        f"{render.clock(TS)} -- bob joined",
        f"{render.clock(TS)} -- joined: alice, carol, erin; left: dave",
    ]
    screen.add_events([ev("message", "alice", "hi", seq=6), ev("leave", "carol", "carol left (quit)", seq=7)])
    assert shown(screen).splitlines()[-2:] == [
        f"{render.clock(TS)} alice: hi",
        f"{render.clock(TS)} -- carol left (quit)",
    ]
    assert set(general.nicks) == {"bob", "alice", "erin"}


def test_a_day_change_line_comes_between_events_of_different_days(screen: Screen) -> None:
    def at(month: int, day: int, hour: int, minute: int) -> str:
        """A feed timestamp of that local time."""
        return dt.datetime(2026, month, day, hour, minute).astimezone().isoformat()

    screen.add_events(
        [
            ev("message", "alice", "late", ts=at(11, 30, 23, 59), seq=1),
            ev("message", "alice", "later", ts=at(11, 30, 23, 59), seq=2),
            ev("message", "alice", "early", ts=at(12, 1, 0, 1), seq=3),
        ]
    )
    assert shown(screen).splitlines()[-4:] == [
        "23:59 alice: late",
        "23:59 alice: later",
        "-- Tuesday 1 December 2026 --",
        "00:01 alice: early",
    ]


def test_your_message_shows_at_once_then_as_sent(screen: Screen) -> None:
    sent = sent_commands(screen)
    screen.run_line("hello")
    pending = screen._view().entries[-1]
    assert ui.plain(pending.fragments).endswith(" bob: hello")
    assert all(style.endswith("class:pending") for style, _ in pending.fragments)
    assert sent == [c.Say("hello", "general", ref=1)]
    screen.sent(1, "id-1")
    confirmed = ev("message", "bob", "hello", seq=2, id="id-1")
    screen.add_events([confirmed])
    assert screen._view().entries[-1] is pending  # changed in place, not added
    assert pending.fragments == ui.event_fragments(confirmed, me="bob")


def test_someone_else_cannot_confirm_your_message(screen: Screen) -> None:
    sent_commands(screen)
    screen.run_line("hello")
    screen.sent(1, "id-1")
    screen.add_events([ev("message", "mallory", "fake", seq=2, id="id-1")])  # ids are on the feed
    assert "class:pending" in screen._view().entries[-2].fragments[0][0]
    assert shown(screen).endswith("mallory: fake")


def test_a_message_not_sent_says_so_and_alt_r_sends_it_again(screen: Screen) -> None:
    sent = sent_commands(screen)
    screen.run_line("first")
    screen.run_line("/me waves")
    screen.sent(1, "id-1")
    screen.sent(2, "id-2")
    refusal = "slow down: at most 10 messages a second (bursts of 60); this one was not sent"
    screen.add_events([ev("error", "*", refusal, seq=0, id="id-2", code="rate_limited")])
    *_, failed, error = screen._view().entries
    assert all("class:failed" in style for style, _ in failed.fragments)
    assert ui.plain(error.fragments).endswith(f"!! {refusal} — Alt-R sends it again")
    screen.resend()
    assert sent[-1] == c.Me("waves", "general", ref=3)
    assert failed not in screen._view().entries and error not in screen._view().entries
    assert ui.plain(screen._view().entries[-1].fragments).endswith("* bob waves")  # pending again
    screen.resend()  # nothing else failed here
    assert shown(screen).endswith("-- no unsent message in this window")
    # The client refusing it: a text too long for the protocol stays refused.
    screen.run_line("x" * 5000)
    screen.refused(4, "text too long", False)
    assert shown(screen).endswith("!! not sent: text too long")
    screen.resend()
    assert shown(screen).endswith("-- no unsent message in this window")


# --- queries, nick changes, away, ignore, topics, search --------------------------------------------

INBOX = "@bob~s1"


def private(seq: int, nick: str, to: str, text: str, **kw: str) -> Event:
    return ev("private", nick, text, room=INBOX, seq=seq, to=to, **kw)


def window_named(screen: Screen, name: str) -> Window:
    found = [w for w in screen.windows if w.name == name]
    assert len(found) == 1, [w.name for w in screen.windows]
    return found[0]


def lines_of(window: Window) -> list[str]:
    return [ui.plain(entry.fragments) for entry in window.entries]


def test_a_private_message_opens_its_query_window_with_the_conversation_so_far(screen: Screen) -> None:
    sent = sent_commands(screen)
    screen.add_events([ev("join", "bob", "bob joined")])
    screen.add_events([private(5, "alice", "bob", "are you there?")])
    alice = window_named(screen, "@alice")
    assert screen.windows.number(alice) == 3 and (alice.unread, alice.mentioned) == (1, True)
    assert screen.current == "general"  # opened in the background, as irssi does
    assert sent == [c.Query("alice")]  # the network thread: what the inbox holds of it
    assert "3:@alice(1)" in ui.plain(screen.status_line(80))
    history = [
        private(2, "alice", "bob", "lunch?"),
        private(3, "bob", "alice", "sure"),
        private(5, "alice", "bob", "are you there?"),
    ]
    screen.add_conversation("alice", history)
    screen.add_events([private(5, "alice", "bob", "are you there?")])  # delivered again: shown once
    assert [line.split(" ", 1)[1] for line in lines_of(alice) if "→" in line] == [
        "[alice → bob] lunch?",
        "[bob → alice] sure",
        "[alice → bob] are you there?",
    ]
    screen.go_to(3)
    assert ui.plain(screen._prompt()) == "@alice> " and ui.plain(screen.title_line(40)).startswith(
        " @alice: private messages with alice"
    )
    screen.run_line("yes, here")  # a plain line in a query is for its nick
    assert sent[-1] == c.Msg("alice", "yes, here", ref=1)
    screen.sent(1, "id-1")
    screen.add_events([private(6, "bob", "alice", "yes, here", id="id-1")])  # our copy confirms it
    assert lines_of(alice)[-1].endswith("[bob → alice] yes, here") and alice.find((INBOX, 6)) is not None
    for line, error in [
        ("/me waves", "!! private messages have no actions: @alice is a private window"),
        ("/who", "!! that needs a room: @alice is a private window"),
        ("/search lunch", "!! that needs a room: @alice is a private window"),
    ]:
        screen.run_line(line)
        assert shown(screen).splitlines()[-1].startswith(error)
    screen.run_line("/part")  # closes the query, nothing else
    assert [w.name for w in screen.windows] == ["#general", "#dev"] and screen.current == "dev"
    assert not any(isinstance(command, c.Part) for command in sent)
    screen.add_events([private(7, "alice", "bob", "bye")])  # and it opens again
    assert window_named(screen, "@alice").unread == 1 and sent[-1:] == [c.Query("alice")]


def test_msg_and_query_go_to_the_window_of_the_conversation(screen: Screen) -> None:
    sent = sent_commands(screen)
    screen.run_line("/query bob")
    assert shown(screen).endswith("-- that is you: /query someone else") and len(screen.windows) == 2
    screen.run_line("/msg Carol hi")  # opens the window, goes there, shows the line pending
    carol = window_named(screen, "@Carol")
    assert screen.windows.current is carol
    assert sent == [c.Query("Carol"), c.Msg("Carol", "hi", ref=1)]
    assert lines_of(carol)[-1].endswith("[bob → Carol] hi")
    screen.sent(1, "id-1")
    screen.add_conversation("carol", [private(4, "bob", "Carol", "hi", id="id-1")])  # the fetch was quicker
    screen.add_events([private(4, "bob", "Carol", "hi", id="id-1")])
    assert [line for line in lines_of(carol) if "→" in line] == [f"{render.clock(TS)} [bob → Carol] hi"]
    screen.go_to(1)
    screen.run_line("/q carol")  # there already: only a switch
    assert screen.windows.current is carol and sent[-1] == c.Msg("Carol", "hi", ref=1)
    screen.run_line("/query dave")
    assert screen.query == "dave" and sent[-1:] == [c.Query("dave")]


def test_query_windows_are_bounded_past_them_private_messages_show_here(
    screen: Screen, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tui, "MAX_QUERIES", 2)
    sent = sent_commands(screen)
    screen.add_events([private(1, "eve1", "bob", "one"), private(2, "eve2", "bob", "two")])
    assert [w.name for w in screen.windows] == ["#general", "#dev", "@eve1", "@eve2"]
    screen.add_events([private(3, "eve3", "bob", "three"), private(4, "eve4", "bob", "four")])
    assert len(screen.windows) == 4 and sent == [c.Query("eve1"), c.Query("eve2")]  # no more fetches
    here = shown(screen).splitlines()
    assert here[-3].startswith("-- 2 query windows are open, the most there may be")  # said once
    assert here[-2].endswith("[eve3 → bob] three") and here[-1].endswith("[eve4 → bob] four")
    screen.run_line("/query carol")
    assert shown(screen).splitlines()[-1].startswith("!! 2 query windows are open, the most there may be")
    screen.run_line("/msg carol hi")  # still sent; shown where you are
    assert sent[-1] == c.Msg("carol", "hi", ref=1) and shown(screen).splitlines()[-1].endswith("[bob → carol] hi")
    screen.go_to(4)
    screen.run_line("/part")  # one closes: the next one opens again
    screen.add_events([private(5, "eve5", "bob", "five")])
    assert window_named(screen, "@eve5").unread == 1 and sent[-1:] == [c.Query("eve5")]


def test_nick_changes_follow_the_rooms_the_queries_and_you(screen: Screen) -> None:
    sent = sent_commands(screen)
    screen.add_events([ev("join", "bob", "bob joined"), ev("join", "carol", "carol joined", seq=2)])
    screen.add_events([private(1, "carol", "bob", "psst")])
    screen.add_events([ev("nick", "carol", "carol is now known as caz", seq=3, new_nick="caz")])
    assert shown(screen).endswith("-- carol is now known as caz")
    general = room(screen, "general")
    assert "caz" in general.nicks.values() and "carol" not in general.nicks
    query = window_named(screen, "@caz")
    assert query.query == "caz" and screen.windows.query("carol") is None
    screen.run_line("/nick bob")
    assert shown(screen).endswith("-- you are bob already") and sent == [c.Query("carol")]
    screen.go_to(1)
    screen.run_line("said just before")
    screen.run_line("/nick robert")
    assert sent[-2:] == [c.Say("said just before", "general", ref=1), c.Nick("robert")]
    assert screen.nick == "bob"  # until the broker says so
    screen.renamed("robert")
    assert ui.plain(screen.status_line(60)).startswith(" robert ")
    screen.sent(1, "id-1")
    screen.add_events([ev("message", "bob", "said just before", seq=4, id="id-1")])  # under the old nick
    assert shown(screen).endswith("bob: said just before") and shown(screen).count("said just before") == 1
    assert not screen._pending
    screen.go_to(3)
    screen.renamed("rob")  # in a query (or no room), where no room's nick event shows it
    assert shown(screen).endswith("-- you are now known as rob")


def test_ignore_hides_someone_everywhere_until_unignore(screen: Screen) -> None:
    screen.add_events([ev("join", "bob", "bob joined")])
    screen.run_line("/ignore")
    assert shown(screen).endswith("-- you ignore nobody (/ignore NICK hides someone)")
    screen.run_line("/ignore bob")
    assert shown(screen).endswith("!! you cannot ignore yourself")
    screen.run_line("/ignore Carol")
    assert "-- ignoring Carol: their messages, private messages, joins and leaves are hidden" in shown(screen)
    screen.run_line("/ignore carol")
    assert shown(screen).endswith("-- you already ignore carol")
    before = shown(screen)
    screen.add_events(
        [
            ev("join", "carol", "carol joined", seq=2),
            ev("message", "carol", "bob: look at me", seq=3),
            ev("nick", "carol", "carol is now known as caz", seq=4, new_nick="caz"),
            ev("action", "caz", "waves", seq=5),
        ]
    )
    screen.add_events([private(1, "caz", "bob", "psst")])
    assert shown(screen) == before and len(screen.windows) == 2  # not a line, not a window
    screen.add_history("general", [ev("message", "caz", "from the past", seq=1)])
    assert "from the past" not in shown(screen)  # nor in /history
    assert room(screen, "general").unread == 0 and "caz" in room(screen, "general").nicks.values()
    screen.add_events([ev("topic", "caz", "mine now", seq=6)])  # the room's topic: shown
    assert shown(screen).endswith("-- caz set the topic: mine now")
    screen.run_line("/ignore")
    assert shown(screen).endswith("-- you ignore: caz")
    screen.run_line("/unignore carol")
    assert shown(screen).endswith("-- you do not ignore carol")
    screen.run_line("/unignore caz")
    assert shown(screen).endswith("-- you no longer ignore caz: what they say from now on shows")
    screen.add_events([ev("message", "caz", "hello again", seq=7)])
    assert shown(screen).endswith("caz: hello again")


def test_topics_show_in_the_title_and_on_joining_and_away_in_the_status_line(screen: Screen) -> None:
    sent = sent_commands(screen)
    screen.set_status("connected", ["general", "dev"], {"general": "plans for Friday"})
    assert ui.plain(screen.title_line(40)) == " #general: plans for Friday" + " " * 13
    screen.add_events([ev("join", "bob", "bob joined")])
    assert shown(screen).endswith("-- bob joined\n-- topic: plans for Friday")
    screen.add_events([ev("topic", "alice", "alice cleared the topic", seq=2, reason="cleared")])
    screen.set_status("connected", ["general", "dev"], {})
    assert (
        shown(screen).endswith("-- alice cleared the topic") and ui.plain(screen.title_line(20)).strip() == "#general"
    )
    for line, command in [
        ("/topic", c.Topic("general")),
        ("/topic ship it", c.Topic("general", "ship it")),
        ("/topic -delete", c.Topic("general", "")),
        ("/topic #dev", c.Topic("dev")),
        ("/away lunch", c.Away("lunch")),
        ("/away", c.Away()),
    ]:
        screen.run_line(line)
        assert sent[-1] == command
    screen.set_away("lunch")
    assert "-- you are away: lunch" in shown(screen) and ui.plain(screen.status_line(60)).startswith(" bob(away) ")
    screen.set_away(None)
    assert shown(screen).endswith("-- you are back") and ui.plain(screen.status_line(60)).startswith(" bob [")


def test_search_shows_the_matches_and_goto_scrolls_to_one_fetching_it_if_need_be(screen: Screen) -> None:
    sent = sent_commands(screen)
    screen._size = (60, 8)
    for seq in range(40, 60):
        screen.add_events([ev("message", "alice", "the deploy is out" if seq == 45 else f"line {seq}", seq=seq)])
    screen.run_line("/search -before 100 deploy")
    assert sent[-1] == c.Search("deploy", "general", before=100)
    found = [ev("message", "alice", "the deploy is out", seq=45), ev("action", "carol", "deploys again", seq=12)]
    screen.add_search("general", "deploy", found, None)
    text = shown(screen)
    assert "-- 2 found in #general for: deploy (newest first; /goto SEQ shows one in its place)" in text
    day = render.local_day(TS)
    assert day is not None and f"#45 {day:%d %b} {render.clock(TS)} alice: the deploy is out" in text
    general = room(screen, "general")
    screen.run_line("/goto 45")  # in the window: scrolled there, its words highlighted
    target = general.find(("general", 45))
    assert target is not None and general.anchor is not None
    assert any(style.endswith("class:found") for style, _ in target.fragments)
    assert any(ui.plain(row).endswith("alice: the deploy is out") for row in general.view(60, 8).rows)
    screen.run_line("/goto 12")  # not in the window: fetched
    assert sent[-1:] == [c.Goto(12, "general")]
    around = [ev("message", "carol", f"old {seq}", seq=seq) for seq in range(2, 23)]
    screen.add_around("general", 12, around)
    rows = [ui.plain(row) for row in general.view(60, 8).rows]
    assert any(row.endswith("carol: old 12") for row in rows), rows
    assert "17 not shown" in lines_of(general)  # a rule: 23 to 39, between the two
    screen.add_around("general", 99999, [])
    assert shown(screen).endswith("-- #99999 is not among the events of #general the broker keeps")
    screen.add_search("general", "nothing", [], 12)
    assert shown(screen).endswith("-- no message in #general older than #12 has all of: nothing")


# --- Client.history -------------------------------------------------------------------------------


def test_client_history(connect: ClientFactory) -> None:
    alice = connect("alice", rooms=["general", "dev"])
    for n in range(3):
        alice.say(f"m{n}")
    alice.wait_sent()
    last = alice.history("general", 2)
    assert [(e.kind, e.text) for e in last] == [("message", "m1"), ("message", "m2")]
    assert [e.kind for e in alice.history("dev", 5)] == ["join"]
    assert [e.text for e in alice.history(limit=1)] == ["m2"]
    assert alice.history("empty-room") == []
    with pytest.raises(LocalProtocolError):
        alice.history("general", 0)
    # History is an answer, not events: nothing new arrives because of it.
    assert wait_for(alice, lambda e: e.text == "m2").text == "m2"
    assert alice.poll(0.1) == []
