"""Unit tests of the full-screen client's pure parts (zchat.term.ui, zchat.term.transcript), of its screen
driven in-process without a terminal (zchat.term.tui.Screen), and of Client.history."""

from __future__ import annotations

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
from zchat.term import render, ui
from zchat.term.transcript import Transcript, transcript_line
from zchat.term.tui import Screen

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
    assert styles(ev("join", "carol", "carol joined"))["-- carol joined"] == "class:system"
    assert styles(ev("error", "*", "no"))["!! no"] == "class:error"
    assert ui.event_fragments(ev("join", "carol", "carol joined"), me="bob")[0][0] == "class:time"


def test_status_line() -> None:
    rooms = [ui.RoomStatus("general"), ui.RoomStatus("dev", 3), ui.RoomStatus("ops", 1, True), ui.RoomStatus("x")]
    left, right = ui.status_fragments("bob", "general", rooms, "connected")
    assert ui.plain(left) == " bob  #general  #dev(3)  #ops(1)  #x"
    assert ("class:status.mention", "#ops(1)") in left
    assert ("class:status.unread", "#dev(3)") in left
    assert ui.plain(right) == "connected "
    _, right = ui.status_fragments("bob", None, [], "reconnecting", scrolled=True)
    assert ui.plain(right) == "more below  reconnecting "
    for state in ("new", "connecting", "closed"):
        assert ui.connection_label(state) == "offline"


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
    return "".join(text for _, text, *_ in screen._message_text())


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
    screen.add_events([*backlog, ev("join", "bob", "bob joined", room="dev", seq=5)])
    assert (screen.rooms["dev"].unread, bells) == (0, [])
    screen.add_events([ev("message", "alice", "plain", room="dev", seq=6)])
    assert (screen.rooms["dev"].unread, screen.rooms["dev"].mentioned, bells) == (1, False, [])
    screen.add_events([ev("message", "alice", "bob: now", room="dev", seq=7)])
    assert (screen.rooms["dev"].unread, screen.rooms["dev"].mentioned, len(bells)) == (2, True, 1)
    assert "#dev(2)" in ui.plain(screen._status()[0])
    assert "still there" not in shown(screen)  # #general is shown, #dev only counted
    screen.switch("dev")
    assert (screen.rooms["dev"].unread, screen.rooms["dev"].mentioned) == (0, False)
    assert "bob: now" in shown(screen)


def test_no_bell_option(monkeypatch: pytest.MonkeyPatch) -> None:
    with create_pipe_input() as pipe:
        quiet = Screen("bob", ["general"], bell=False, input=pipe, output=DummyOutput())
        monkeypatch.setattr(quiet.app.output, "bell", lambda: pytest.fail("rang"))
        quiet.add_events([ev("join", "bob", "bob joined"), ev("message", "alice", "bob!", seq=2)])


def test_private_messages_and_local_notices_show_in_the_current_room(screen: Screen) -> None:
    screen.switch("dev")
    screen.add_events([ev("private", "alice", "psst", room="", seq=0, to="bob")])
    screen.add_events([ev("system", "*", "connection lost — reconnecting…", room="", seq=0)])
    assert "[alice → bob] psst" in shown(screen)
    assert "-- connection lost" in shown(screen)


def test_status_changes_drop_parted_rooms_and_move_off_them(screen: Screen) -> None:
    screen.switch("dev")
    screen.set_status("reconnecting", ["general"])
    assert screen.current == "general"
    assert ui.plain(screen._status()[1]) == "reconnecting "
    screen.set_status("closed", [])
    assert screen.current is None
    assert ui.plain(screen._prompt()) == "> "
    screen.run_line("hello")
    assert "!! not in any room: /join #ROOM" in shown(screen)


def test_local_commands(screen: Screen) -> None:
    sent: list[c.NetworkCommand] = []
    screen._send = lambda command: not sent.append(command)  # type: ignore[func-returns-value]
    screen.run_line("/help")
    assert "/join #ROOM" in shown(screen)
    screen.run_line("/clear")
    assert shown(screen) == ""
    screen.run_line("/rooms")
    assert shown(screen) == "-- rooms: #general (current), #dev"
    screen.run_line("/switch dev")
    assert screen.current == "dev"
    screen.run_line("/join #general")  # already in: a switch, nothing for the network
    assert (screen.current, sent) == ("general", [])
    screen.run_line("/part")
    screen.run_line("hello")
    screen.run_line("/who")
    screen.run_line("/history 3")
    screen.run_line("/join ops")
    assert sent == [
        c.Part("general"),
        c.Say("hello", "general"),
        c.Who("general"),
        c.History(3, "general"),
        c.Join("ops"),
    ]


def test_long_paste_waits_for_yes(screen: Screen) -> None:
    sent: list[c.NetworkCommand] = []
    screen._send = lambda command: not sent.append(command)  # type: ignore[func-returns-value]
    screen.input.insert_text("before: ")
    screen.paste_text("one\ntwo\n")
    assert sent == [c.Say("before: one", "general"), c.Say("two", "general")]
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
    screen.page(up=True)  # no render yet: a page of 23 from the bottom
    assert screen.rooms["general"].scroll > 0
    kept = screen.rooms["general"].scroll
    screen.notice("new")
    assert screen.rooms["general"].scroll == kept + 1  # the same line stays in view
    for _ in range(10):
        screen.page(up=False)
    assert screen.rooms["general"].scroll == 0


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
