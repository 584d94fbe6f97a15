"""The full-screen client end to end: `zchat join` on a real pseudo-terminal against a real broker,
with a real :class:`Client` (alice) on the other side.

What matters is checked where it shows: what alice receives, what the screen shows (the pty output
run through a terminal emulator, see pty_screen.py), and the raw escape codes for colour, the
mention highlight and the bell. Every wait is bounded and ends on a condition; nothing sleeps.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import ClientFactory, ThreadBroker, collect, joined, wait_for
from pty_screen import Term, colour_codes, terminals

from zchat.protocol import Event
from zchat.term import render

#: A 12 s lease: alice's session outlives a test that waits on the pty without polling her.
HEARTBEAT = 4.0
#: The mention highlight: yellow, bold, reverse (monochrome: bold, reverse).
MENTION = "\x1b[0;33;1;7m"
MENTION_MONO = "\x1b[0;1;7m"
BELL = "\x07"
ALT_ENTER = "\x1b\r"
UP = "\x1b[A"
PAGE_UP, PAGE_DOWN = "\x1b[5~", "\x1b[6~"
CTRL_N = "\x0e"

Spawn = Callable[..., Term]


BROKER_OPTIONS = {"heartbeat": HEARTBEAT}


@pytest.fixture
def tui() -> Iterator[Spawn]:
    """``tui(endpoints, *options, rows=24, cols=100, env={...})`` -> bob's screen, ready."""
    yield from terminals()


def from_bob(kind: str | None = None) -> Callable[[Event], bool]:
    return lambda e: e.nick == "bob" and e.kind != "join" and (kind is None or e.kind == kind)


def test_send_receive_own_lines_status_and_input_history(
    broker: ThreadBroker, connect: ClientFactory, tui: Spawn
) -> None:
    alice = connect("alice")
    bob = tui(broker.endpoints)
    wait_for(alice, joined("bob"))
    assert re.fullmatch(r" bob \[1:#general\]\s+connected", bob.status_line())
    assert bob.input_line == "#general>"

    bob.send("hello from the pty\r")
    said = wait_for(alice, from_bob())
    assert (said.kind, said.text, said.room) == ("message", "hello from the pty", "general")
    # His own line: at once, and as sent once the feed has shown it.
    line = f"{render.clock(said.ts)} bob: hello from the pty"
    bob.wait(lambda t: line in t.text and t.cell("hello from").fg == "default")
    assert bob.input_line == "#general>"

    alice.say("hi there")
    heard = wait_for(alice, lambda e: e.nick == "alice" and e.kind == "message")
    bob.wait(re.escape(f"{render.clock(heard.ts)} alice: hi there"))

    bob.send(UP)  # the input history
    bob.wait(lambda t: t.input_line == "#general> hello from the pty")
    # A full-screen app needs no cursor position requests: nothing waits for a terminal's answer.
    assert "\x1b[6n" not in bob.raw


def test_room_commands_join_switch_rooms_part_and_unread_counts(
    broker: ThreadBroker, connect: ClientFactory, tui: Spawn
) -> None:
    alice = connect("alice", rooms=["general", "dev"])
    bob = tui(broker.endpoints)
    wait_for(alice, joined("bob"))

    bob.send("/join #dev\r")
    wait_for(alice, joined("bob", "dev"))
    bob.wait(lambda t: t.input_line == "#dev>")
    assert re.fullmatch(r" bob 1:#general \[2:#dev\]\s+connected", bob.status_line())
    bob.send("in dev\r")
    said = wait_for(alice, from_bob())
    assert (said.room, said.text) == ("dev", "in dev")

    bob.send("/switch general\r")
    bob.wait(lambda t: t.input_line == "#general>")
    alice.say("one", room="dev")
    alice.say("two", room="dev")
    bob.wait(lambda t: "2:#dev(2)" in t.status_line())
    bob.send("/rooms\r")
    bob.wait(re.escape("-- rooms: 1:#general (current), 2:#dev (2 unread)"))

    bob.send(CTRL_N)  # the next room: read, so no longer unread
    bob.wait(lambda t: t.input_line == "#dev>" and "alice: two" in t.text)
    assert "#general" in bob.status_line() and "(2)" not in bob.status_line()

    bob.send("/part\r")
    left = wait_for(alice, from_bob())
    assert (left.kind, left.room, left.reason) == ("leave", "dev", "part")
    bob.wait(lambda t: t.input_line == "#general>" and "#dev" not in t.status_line())
    bob.wait(re.escape("-- you left #dev"))

    bob.send("/switch #dev\r")
    bob.wait(re.escape("!! not in #dev: /join #dev"))
    bob.send("/join\r")
    bob.wait(re.escape("!! usage: /join #ROOM"))


def test_talk_commands_me_msg_who_history_help_clear_mistakes_and_the_transcript(
    broker: ThreadBroker, connect: ClientFactory, tui: Spawn, tmp_path: Path
) -> None:
    alice = connect("alice")
    bob = tui(broker.endpoints, "--log-dir", str(tmp_path / "logs"))
    bob_joined = wait_for(alice, joined("bob"))

    bob.send("/me waves\r")
    action = wait_for(alice, from_bob())
    assert (action.kind, action.text) == ("action", "waves")
    bob.wait(re.escape(f"{render.clock(action.ts)} * bob waves"))

    bob.send("/msg alice just between us\r")
    private = wait_for(alice, from_bob())
    assert (private.kind, private.to, private.text) == ("private", "alice", "just between us")
    bob.wait(re.escape("[bob → alice] just between us"))
    bob.wait(lambda t: t.input_line == "@alice>")  # in the window of that conversation
    bob.send("\x1b1")  # Alt-1: back to #general
    bob.wait(lambda t: t.input_line == "#general>")

    bob.send("/who\r")
    bob.wait(r"-- in #general: \w+, \w+")
    who = re.search(r"-- in #general: ([^\n]*)", bob.text)
    assert who is not None and sorted(who.group(1).split(", ")) == ["alice", "bob"]

    bob.send("/history 2\r")
    bob.wait(re.escape("-- end of history"))
    block = re.search(r"-- the last 2 events of #general:\n(.*?)\n-- end of history", bob.text, re.DOTALL)
    assert block is not None
    assert block.group(1).splitlines() == [  # (the private message is no part of the room's history)
        f"{render.clock(bob_joined.ts)} -- bob joined",
        f"{render.clock(action.ts)} * bob waves",
    ]

    bob.send("/help\r")
    bob.wait(re.escape("Ctrl-D, Ctrl-C"))  # its end: taller than the screen, its start is a PageUp away
    assert "/goto SEQ" in bob.text and "Alt-Enter" in bob.text
    bob.send(PAGE_UP)
    bob.wait(re.escape("/join #ROOM"))
    bob.send(PAGE_DOWN)

    bob.send("/clear\r")
    bob.wait(lambda t: "/join #ROOM" not in t.text and "waves" not in t.text)

    for line, error in [
        ("/frob now", "!! unknown command /frob: /help lists the commands"),
        ("/history lots", "!! usage: /history [N]  (N: 1-1000)"),
        ("/msg alice", "!! usage: /msg NICK TEXT"),
        ("/join #Not A Room", "!! usage: /join #ROOM"),
    ]:
        bob.send(line + "\r")
        bob.wait(re.escape(error))
        assert bob.input_line == "#general>"
    # None of it went to the room: the next thing alice hears from bob is his next line.
    bob.send("still here\r")
    still = wait_for(alice, from_bob())
    assert still.text == "still here"

    # The transcripts have it all, written before it is shown as sent (no longer dim).
    bob.wait(lambda t: "bob: still here" in t.text and t.cell("still here").fg == "default")
    assert (tmp_path / "logs" / "general.log").read_text().splitlines()[-3:] == [
        f"{bob_joined.ts} -- bob joined",
        f"{action.ts} * bob waves",
        f"{still.ts} <bob> still here",
    ]
    assert (tmp_path / "logs" / "@alice.log").read_text() == f"{private.ts} [bob → alice] just between us\n"


def test_tab_completes_a_nick_a_command_and_a_room(broker: ThreadBroker, connect: ClientFactory, tui: Spawn) -> None:
    alice = connect("alice")
    connect("albert")
    bob = tui(broker.endpoints)
    wait_for(alice, joined("bob"))

    bob.send("ali\t")
    bob.wait(lambda t: t.input_line == "#general> alice:")
    bob.send("hi\r")
    assert wait_for(alice, from_bob()).text == "alice: hi"

    bob.send("al\t")  # two candidates: Tab again takes the next one
    bob.wait(lambda t: t.input_line == "#general> albert:")
    bob.send("\t")
    bob.wait(lambda t: t.input_line == "#general> alice:")
    bob.send("\x15/wh\t")  # Ctrl-U, then a command
    bob.wait(lambda t: t.input_line == "#general> /who")
    bob.send("#ge\t")
    bob.wait(lambda t: t.input_line == "#general> /who #general")
    bob.send("\r")
    bob.wait(r"-- in #general: ")


def test_a_mention_is_highlighted_and_rings_the_bell(broker: ThreadBroker, connect: ClientFactory, tui: Spawn) -> None:
    alice = connect("alice")
    bob = tui(broker.endpoints)
    wait_for(alice, joined("bob"))

    alice.say("bobby is another person")  # not a mention: "bob" is not a word of it
    bob.wait("bobby is another person")
    bob.drain()
    assert BELL not in bob.raw and MENTION not in bob.raw
    alice.say("hey Bob, look")
    bob.wait(lambda t: BELL in t.raw and "hey Bob, look" in t.text)
    assert re.search(re.escape(MENTION) + r"(\x1b\[[0-9;]*[A-Za-z])*hey Bob, look", bob.raw)


def test_no_color_env_and_flag_give_no_colour_codes_and_no_bell_is_quiet(
    broker: ThreadBroker, connect: ClientFactory, tui: Spawn
) -> None:
    alice = connect("alice")
    with_env = tui(broker.endpoints, "--no-bell", env={"NO_COLOR": "1"})
    wait_for(alice, joined("bob"))
    with_flag = tui(broker.endpoints, "--no-color", nick="carol")
    wait_for(alice, joined("carol"))

    alice.say("hi bob and carol")  # a mention, a nick, a time and the status line to draw
    with_env.send("/nope\r")  # and an error
    for term in (with_env, with_flag):
        term.wait("alice: hi bob and carol")
    with_env.wait("!! unknown command /nope")
    with_env.drain()
    assert colour_codes(with_env.raw) == []
    assert colour_codes(with_flag.raw) == []
    assert MENTION_MONO in with_env.raw  # still highlighted, with attributes only
    assert BELL not in with_env.raw  # --no-bell
    assert BELL in with_flag.raw


def test_half_typed_line_survives_a_burst_of_50_messages_and_pages(
    broker: ThreadBroker, connect: ClientFactory, tui: Spawn
) -> None:
    alice = connect("alice")
    bob = tui(broker.endpoints)
    wait_for(alice, joined("bob"))

    bob.send("half-typ")
    bob.wait(lambda t: t.input_line == "#general> half-typ")
    for n in range(50):
        alice.say(f"burst {n}")
    bob.wait(r"alice: burst 49\n")
    assert bob.input_line == "#general> half-typ"
    assert bob.lines[-3].endswith("alice: burst 49")  # the newest line right above the status line

    bob.send(PAGE_UP)
    bob.wait(lambda t: "more below" in t.status_line() and "burst 49" not in t.text)
    alice.say("while scrolled up")  # does not pull the view down
    wait_for(alice, lambda e: e.text == "while scrolled up")
    bob.wait(lambda t: "burst 49" not in t.text)
    bob.send(PAGE_DOWN)
    bob.wait(lambda t: "alice: burst 49" in t.text)
    bob.send(PAGE_DOWN)
    bob.wait(lambda t: "more below" not in t.status_line() and "alice: while scrolled up" in t.lines[-3])

    bob.send("ed line\r")
    assert wait_for(alice, from_bob()).text == "half-typed line"


def test_pastes_and_multi_line_messages(broker: ThreadBroker, connect: ClientFactory, tui: Spawn) -> None:
    alice = connect("alice")
    bob = tui(broker.endpoints)
    wait_for(alice, joined("bob"))

    bob.send("first line" + ALT_ENTER + "second line")
    bob.wait(lambda t: t.lines[-2:] == ["#general> first line", "second line"])
    bob.send("\r")
    said = wait_for(alice, from_bob())
    assert said.text == "first line\nsecond line"

    bob.send("\x1b[200~p1\np2\n\np3\x1b[201~")  # a short paste: one message a line, at once
    assert [e.text for e in collect(alice, 3, from_bob())] == ["p1", "p2", "p3"]

    long_paste = "\n".join(f"line {n}" for n in range(7))
    bob.send(f"\x1b[200~{long_paste}\x1b[201~")
    bob.wait(lambda t: t.input_line == "send 7 pasted lines as 7 messages? [y/N]")
    bob.send("n")
    bob.wait("-- paste of 7 lines not sent")
    bob.send(f"\x1b[200~{long_paste}\x1b[201~")
    bob.wait(lambda t: t.input_line.startswith("send 7 pasted lines"))
    bob.send("y")
    assert [e.text for e in collect(alice, 7, from_bob())] == [f"line {n}" for n in range(7)]
    bob.wait(lambda t: t.input_line == "#general>")


def test_40_columns_an_emoji_heavy_message_wraps_and_the_input_line_stays_whole(
    broker: ThreadBroker, connect: ClientFactory, tui: Spawn
) -> None:
    alice = connect("alice")
    bob = tui(broker.endpoints, rows=24, cols=40)
    wait_for(alice, joined("bob"))

    bob.send("draft 😀 日本")
    bob.wait(lambda t: t.input_line == "#general> draft 😀 日本")
    text = "🎉🎉🎉 party 🎉🎉🎉 with 日本語の文字 and 😀😀😀😀😀😀😀😀😀😀 emoji 🚀🚀🚀🚀🚀🚀 end"
    alice.say(text)
    said = wait_for(alice, lambda e: e.nick == "alice" and e.kind == "message")
    bob.wait(r"🚀 end")
    assert bob.input_line == "#general> draft 😀 日本"
    assert bob.status_line().startswith(" bob ")
    # The message fills whole rows (no row wider than 40 cells) and reads back complete.
    rows = bob.lines
    first = next(i for i, row in enumerate(rows) if row.startswith(f"{render.clock(said.ts)} alice: 🎉"))
    last = next(i for i, row in enumerate(rows) if row.endswith("🚀 end"))
    assert last - first >= 2
    shown = "".join(rows[first : last + 1])
    assert shown.replace(" ", "") == f"{render.clock(said.ts)} alice: {text}".replace(" ", "")
    bob.send("\r")
    assert wait_for(alice, from_bob()).text == "draft 😀 日本"
