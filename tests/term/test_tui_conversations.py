"""The full-screen client's commands about people, rooms and the past, through a real
pseudo-terminal against a real broker: /nick, /away, /topic, /query and private windows with
their stored history, /ignore, and /search with /goto to a message from before the client joined.

What matters is checked where it shows: what others (real :class:`Client` sessions) receive, and
the screen (the pty output run through a terminal emulator). Every wait is bounded and ends on a
condition; nothing sleeps.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import ClientFactory, ThreadBroker, joined, wait_for
from pty_screen import Term, terminals

from zchat.term import render

#: A 12 s lease: alice's session outlives a test that waits on the pty without polling her.
BROKER_OPTIONS = {"heartbeat": 4.0}
ALT = "\x1b"
PAGE_DOWN = "\x1b[6~"

Spawn = Callable[..., Term]


@pytest.fixture
def tui() -> Iterator[Spawn]:
    """``tui(endpoints, *options, rows=24, cols=100)`` -> bob's screen, ready."""
    yield from terminals()


def test_nick_is_announced_to_the_room_and_refusals_are_clear(
    broker: ThreadBroker, connect: ClientFactory, tui: Spawn
) -> None:
    alice = connect("alice")
    bob = tui(broker.endpoints)
    wait_for(alice, joined("bob"))
    bob.send("/nick robert\r")
    renamed = wait_for(alice, lambda e: e.kind == "nick")
    assert (renamed.nick, renamed.new_nick) == ("bob", "robert")
    bob.wait("-- bob is now known as robert")
    bob.wait(lambda t: t.status_line().startswith(" robert "))
    bob.send("still me\r")
    said = wait_for(alice, lambda e: e.kind == "message")
    assert (said.nick, said.text) == ("robert", "still me")
    bob.wait("robert: still me")
    bob.wait(lambda t: t.cell("still me").fg == "default")  # confirmed as robert's own
    bob.send("/nick alice\r")
    bob.wait(re.escape("!! /nick: alice is taken: someone connected uses it"))
    bob.send("/nick robert\r")
    bob.wait("-- you are robert already")
    bob.send("/nick 9lives\r")
    bob.wait(re.escape("!! /nick: invalid nick '9lives'"))


def test_a_private_message_after_a_nick_change_is_filed_under_the_other_party(
    broker: ThreadBroker, connect: ClientFactory, tui: Spawn, tmp_path: Path
) -> None:
    alice = connect("alice")
    bob = tui(broker.endpoints, "--log-dir", str(tmp_path))
    wait_for(alice, joined("bob"))
    bob.send("/nick robert\r")
    wait_for(alice, lambda e: e.kind == "nick")
    bob.wait(lambda t: t.status_line().startswith(" robert "))
    bob.send("/msg alice psst\r")
    private = wait_for(alice, lambda e: e.kind == "private")
    bob.wait(lambda t: "psst" in t.text and t.cell("psst").fg == "default")  # confirmed: transcript written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["@alice.log", "general.log"]
    assert (tmp_path / "@alice.log").read_text() == f"{private.ts} [robert → alice] psst\n"


def test_away_shows_in_who_and_tells_whoever_writes(broker: ThreadBroker, connect: ClientFactory, tui: Spawn) -> None:
    alice = connect("alice")
    bob = tui(broker.endpoints)
    wait_for(alice, joined("bob"))
    bob.send("/away lunch\r")
    bob.wait("-- you are away: lunch")
    bob.wait(lambda t: t.status_line().startswith(" bob(away) "))
    assert alice.names().away == {"bob": "lunch"}
    bob.send("/who\r")
    bob.wait(re.escape("-- in #general: alice, bob (away: lunch)"))
    alice.msg("bob", "back soon?")
    assert wait_for(alice, lambda e: e.code == "away").text == "bob is away: lunch"
    bob.wait(lambda t: "2:@alice(1)" in t.status_line())
    bob.send(ALT + "2")
    bob.wait("alice → bob] back soon?")
    # And the other way round: bob writes to someone away, and is told.
    alice.away("in a meeting")
    bob.send("/msg alice ok, later\r")
    bob.wait("-- alice is away: in a meeting")
    bob.send("/away\r")
    bob.wait("-- you are back")
    bob.wait(lambda t: t.status_line().startswith(" bob "))
    assert alice.names().away == {"alice": "in a meeting"}


def test_topic_is_set_shown_on_joining_and_in_the_title_line(
    broker: ThreadBroker, connect: ClientFactory, tui: Spawn
) -> None:
    alice = connect("alice", rooms=["general", "dev"])
    alice.topic("dev", "the release, then lunch")
    bob = tui(broker.endpoints, cols=40)
    wait_for(alice, joined("bob"))
    bob.send("/topic plans for Friday\r")
    topic = wait_for(alice, lambda e: e.kind == "topic" and e.room == "general")
    assert (topic.nick, topic.text) == ("bob", "plans for Friday")
    bob.wait(r"-- bob set the topic: plans for\n\s+Friday")  # (wrapped at 40 columns)
    bob.wait(lambda t: t.lines[0] == " #general: plans for Friday")
    bob.send("/join #dev\r")
    bob.wait("-- topic: the release, then lunch")
    bob.wait(lambda t: t.lines[0] == " #dev: the release, then lunch")
    alice.topic("dev", "a topic far longer than forty columns can show")
    bob.wait(lambda t: t.lines[0] == " #dev: a topic far longer than forty co…")
    bob.send("/topic\r")
    bob.wait("-- the topic of #dev: a topic far longer")
    bob.send(ALT + "1")
    bob.send("/topic -delete\r")
    cleared = wait_for(alice, lambda e: e.kind == "topic" and e.room == "general")
    assert cleared.reason == "cleared"
    bob.wait("-- bob cleared the topic")
    bob.wait(lambda t: t.lines[0] == " #general")
    bob.send("/topic #elsewhere new\r")
    bob.wait(re.escape("!! not in room 'elsewhere'"))


def test_a_private_message_opens_a_query_window_with_the_stored_conversation(
    broker: ThreadBroker, connect: ClientFactory, tui: Spawn
) -> None:
    alice = connect("alice")
    bob = tui(broker.endpoints)
    wait_for(alice, joined("bob"))
    bob.send("/msg alice lunch today?\r")  # bob's own: @alice opens, and is the current window
    first = wait_for(alice, lambda e: e.kind == "private")
    bob.wait(lambda t: t.input_line == "@alice>" and "[2:@alice]" in t.status_line())
    bob.send(ALT + "1")
    bob.wait(lambda t: t.input_line == "#general>")
    bob.send("/part\r")  # in a room: parts it. Back in the room, /query and /part close a query.
    wait_for(alice, lambda e: e.kind == "leave" and e.nick == "bob")
    bob.wait(lambda t: t.input_line == "@alice>")
    bob.send("/part\r")
    bob.wait(lambda t: t.input_line == ">" and "@alice" not in t.status_line())

    alice.msg("bob", "sure, at noon")  # the window opens again (bob's only one: the current one)...
    # ...with what the inbox holds of the conversation: bob's first message above alice's answer.
    bob.wait(lambda t: t.input_line == "@alice>" and "alice → bob] sure, at noon" in t.text)
    assert " bob [1:@alice] " in bob.status_line()
    # One condition on one screen: a read can end mid-redraw, with the fill's line drawn where
    # alice's was and alice's not yet drawn below it.
    mine = f"{render.clock(first.ts)} [bob → alice] lunch today?"
    bob.wait(lambda t: mine in t.text and "sure, at noon" in t.text.split(mine, 1)[1])
    bob.wait(lambda t: t.text.count("lunch today?") == 1)
    bob.send("great\r")  # a line in a query window is for its nick
    answer = wait_for(alice, lambda e: e.kind == "private" and e.nick == "bob")
    assert (answer.to, answer.text) == ("alice", "great")
    bob.wait(re.escape("[bob → alice] great"))
    bob.wait(lambda t: t.cell("] great").fg == "magenta")  # sent: no longer dim
    bob.send("/query bob\r")
    bob.wait("-- that is you: /query someone else")
    bob.send("/q carol\r")
    bob.wait(lambda t: t.input_line == "@carol>" and t.lines[0] == " @carol: private messages with carol")


def test_ignore_hides_someone_until_unignore(broker: ThreadBroker, connect: ClientFactory, tui: Spawn) -> None:
    alice = connect("alice")
    carol = connect("carol")
    bob = tui(broker.endpoints)
    wait_for(alice, joined("bob"))
    bob.send("/ignore carol\r")
    bob.wait("-- ignoring carol")
    carol.say("you cannot hear me")
    carol.msg("bob", "nor this")
    # The broker has carol's lines (and her leave) before alice's: what bob shows after alice's
    # line has been through the ignore list, so the absences below can fail.
    carol.wait_sent()
    carol.close()
    alice.say("but me you can")
    bob.wait("alice: but me you can")
    assert "hear me" not in bob.text and "nor this" not in bob.text and "carol left" not in bob.text
    assert "@carol" not in bob.status_line()
    bob.send("/ignore\r")
    bob.wait("-- you ignore: carol")
    bob.send("/unignore carol\r")
    bob.wait("-- you no longer ignore carol")
    bob.send("/unignore carol\r")
    bob.wait("-- you do not ignore carol")


def test_search_finds_a_message_from_before_joining_and_goto_shows_it_in_place(
    broker: ThreadBroker, connect: ClientFactory, tui: Spawn
) -> None:
    alice = connect("alice")
    alice.say("the deploy key is in the vault")
    for n in range(60):
        alice.say(f"chatter {n}")
    alice.wait_sent()
    target = alice.search("deploy key")[0]
    bob = tui(broker.endpoints, "--backlog", "5")  # the message is long out of the scrollback
    wait_for(alice, joined("bob"))
    assert "vault" not in bob.text
    bob.send("/search deploy KEY\r")
    bob.wait(f"#{target.seq} .*alice: the deploy key is in the vault")
    bob.send(f"/goto {target.seq}\r")
    bob.wait(lambda t: "more below" in t.status_line())
    bob.wait(
        lambda t: any(
            row.endswith("alice: the deploy key is in the vault") and not row.startswith("#") for row in t.lines
        )
    )
    assert bob.cell("deploy key").reverse  # the words searched for, highlighted in place
    assert "chatter 9" in bob.text  # with what came after it
    bob.send(PAGE_DOWN * 5)
    bob.wait(lambda t: "more below" not in t.status_line() and "-- bob joined" in t.text)
