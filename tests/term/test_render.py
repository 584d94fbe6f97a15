"""Unit tests of how each kind of event reads (zchat.term.render.event_parts) and of the three
layouts of those parts agreeing: terminal lines, styled fragments and transcript entries."""

from __future__ import annotations

import pytest

from zchat.protocol import Event
from zchat.term import render, ui
from zchat.term.transcript import transcript_line

TS = "2026-11-21T10:00:00.123Z"


def ev(kind: str, nick: str = "alice", text: str = "hi", *, to: str | None = None) -> Event:
    return Event(1, TS, "general", kind, nick, text, to=to)


@pytest.mark.parametrize(
    ("event", "reads"),
    [
        # (shape, nick, to, style, kept in transcripts)
        (ev("message"), ("message", "alice", None, None, True)),
        (ev("action"), ("action", "alice", None, None, True)),
        (ev("private", to="bob"), ("private", "alice", "bob", "private", True)),
        (ev("private"), ("private", "alice", "", "private", True)),  # no recipient: shown empty, as before
        (ev("error", "*"), ("error", None, None, "error", True)),
        (ev("join"), ("notice", None, None, "system", True)),
        (ev("leave"), ("notice", None, None, "system", True)),
        (ev("system", "*"), ("notice", None, None, "system", True)),
        (ev("heartbeat", "*", ""), ("notice", None, None, "system", False)),
        (ev("duplicate", "*"), ("notice", None, None, "system", False)),
        (ev("from-a-newer-broker"), ("notice", None, None, "system", False)),
    ],
    ids=lambda v: v.kind if isinstance(v, Event) else "",
)
def test_parts_of_each_kind(event: Event, reads: tuple[str, str | None, str | None, str | None, bool]) -> None:
    parts = render.event_parts(event)
    assert (parts.shape, parts.nick, parts.to, parts.style, parts.logged) == reads
    assert (parts.ts, parts.clock, parts.text) == (TS, render.clock(TS), event.text)


@pytest.mark.parametrize(
    ("event", "text"),
    [
        (
            Event(4, TS, "general", "nick", "carol", "carol is now known as caroline", new_nick="caroline"),
            "carol is now known as caroline",
        ),
        (Event(4, TS, "general", "nick", "carol", "what a newer broker says"), "what a newer broker says"),
        (Event(5, TS, "general", "topic", "alice", "plans for Friday"), "alice set the topic: plans for Friday"),
        (
            Event(6, TS, "general", "topic", "alice", "alice cleared the topic", reason="cleared"),
            "alice cleared the topic",
        ),
        (Event(7, TS, "general", "topic", "alice", "\x1b[2J\u202e"), "alice set the topic: ␛[2J\\u202e"),
    ],
    ids=["nick", "nick-without-new-nick", "topic", "topic-cleared", "topic-inert"],
)
def test_nick_changes_and_topics_read_as_sentences_and_are_kept(event: Event, text: str) -> None:
    parts = render.event_parts(event)
    assert (parts.shape, parts.nick, parts.style, parts.logged, parts.text) == ("notice", None, "system", True, text)
    assert render.format_event(event) == f"{parts.clock} -- {text}"


def test_marks_of_errors_and_notices() -> None:
    assert render.event_parts(ev("error")).mark == "!!"
    assert render.event_parts(ev("join")).mark == "--"


def test_every_network_string_in_the_parts_is_inert() -> None:
    hostile = "\x1b]0;pwned\x07\u202e"
    parts = render.event_parts(Event(1, hostile, "general", "private", hostile, f"a\n{hostile}", to=hostile))
    assert parts.ts == parts.nick == parts.to == render.inert(hostile)
    assert parts.text == render.inert(f"a\n{hostile}")
    assert parts.clock == render.clock(hostile)
    assert not any(ch in str(value) for value in vars(parts).values() for ch in "\x1b\x07\u202e")


def test_continuation_lines_are_indented_by_the_layout() -> None:
    parts = render.event_parts(ev("message", text="one\ntwo\nthree"))
    assert parts.text == "one\ntwo\nthree"
    assert parts.indented("  ") == "one\n  two\n  three"


ALL_KINDS = [
    ev("message", text="hey bob"),
    ev("message", text="two\nlines"),
    ev("action", text="waves"),
    ev("private", text="psst", to="bob"),
    ev("private", "bob", "back", to="alice"),
    ev("error", "*", "not sent"),
    ev("join", text="alice joined"),
    ev("leave", text="alice left"),
    Event(1, TS, "general", "nick", "alice", "alice is now known as al", new_nick="al"),
    ev("topic", text="plans"),
    ev("system", "*", "shutting down"),
    ev("heartbeat", "*", ""),
    ev("duplicate", "*", "already delivered"),
    ev("from-a-newer-broker", text="something new"),
]


@pytest.mark.parametrize("event", ALL_KINDS, ids=lambda e: e.kind)
@pytest.mark.parametrize("show_room", [False, True])
def test_fragments_read_exactly_as_the_terminal_line(event: Event, show_room: bool) -> None:
    for me in ("bob", "alice", None):
        assert ui.plain(ui.event_fragments(event, me=me, show_room=show_room)) == render.format_event(
            event, show_room=show_room
        )


@pytest.mark.parametrize("event", [e for e in ALL_KINDS if "\n" not in e.text], ids=lambda e: e.kind)
def test_transcript_reads_as_the_terminal_line_but_for_time_and_message_head(event: Event) -> None:
    parts = render.event_parts(event)
    entry = transcript_line(event)
    if not parts.logged:
        assert entry is None
        return
    assert entry is not None
    line = render.format_event(event).removeprefix(f"{parts.clock} ")
    if parts.shape == "message":  # a screen says "alice: hi", a transcript "<alice> hi"
        line = line.replace(f"{parts.nick}: ", f"<{parts.nick}> ", 1)
    assert entry == f"{TS} {line}"


def test_who_line_is_the_same_for_both_clients_and_inert() -> None:
    away = {"bob": "lunch \x1b[2J\u202e"}
    assert render.who_line("general", ["alice", "bob"], away) == "-- in #general: alice, bob (away: lunch ␛[2J\\u202e)"
    assert render.who_line("dev", [], {}) == "-- in #dev: nobody"
