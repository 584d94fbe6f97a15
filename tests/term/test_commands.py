"""Unit tests of the interactive client's command language: parsing, completion, hand-over encoding."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zchat.protocol import MAX_HISTORY, NICK_RULE, ROOM_RULE
from zchat.term import commands as c


@pytest.mark.parametrize(
    ("line", "command"),
    [
        ("hello", c.Say("hello")),
        ("  indented", c.Say("  indented")),
        ("//etc/passwd is a path", c.Say("/etc/passwd is a path")),
        ("two\nlines", c.Say("two\nlines")),
        ("exit", c.Quit()),
        ("/me waves", c.Me("waves")),
        ("/ME waves  ", c.Me("waves")),
        ("/me waves\nand more", c.Me("waves\nand more")),
        ("/msg alice hi there", c.Msg("alice", "hi there")),
        ("/msg alice\nhi", c.Msg("alice", "hi")),
        ("/who", c.Who()),
        ("/who #Dev", c.Who("dev")),
        ("/history", c.History(c.DEFAULT_HISTORY)),
        ("/history 5", c.History(5)),
        (f"/history {MAX_HISTORY}", c.History(MAX_HISTORY)),
        ("/join #dev", c.Join("dev")),
        ("/join Dev", c.Join("dev")),
        ("/part", c.Part()),
        ("/part #dev", c.Part("dev")),
        ("/part #Dev gone for lunch", c.Part("dev", "gone for lunch")),
        ("/part gone for lunch", c.Part(None, "gone for lunch")),
        ("/part dev", c.Part(None, "dev")),  # not one of your rooms: a reason (see below)
        ("/j #dev", c.Join("dev")),
        ("/names", c.Who()),
        ("/NAMES #dev", c.Who("dev")),
        ("/rooms", c.Rooms()),
        ("/switch dev", c.Switch("dev")),
        ("/help", c.Help()),
        ("/clear", c.Clear()),
        ("/quit", c.Quit()),
        ("/quit gone fishing", c.Quit("gone fishing")),
        ("/nick robert", c.Nick("robert")),
        ("/away", c.Away()),
        ("/away  gone to lunch ", c.Away("gone to lunch")),
        ("/topic", c.Topic()),
        ("/topic plans for Friday", c.Topic(None, "plans for Friday")),
        ("/topic #Dev", c.Topic("dev")),
        ("/topic #dev ship it", c.Topic("dev", "ship it")),
        ("/topic -delete", c.Topic(None, "")),
        ("/topic #dev -delete", c.Topic("dev", "")),
        ("/t #dev", c.Topic("dev")),
        ("/query alice", c.Query("alice")),
        ("/q Alice", c.Query("Alice")),
        ("/ignore", c.Ignore()),
        ("/ignore carol", c.Ignore("carol")),
        ("/unignore carol", c.Unignore("carol")),
        ("/search deploy friday", c.Search("deploy friday")),
        ("/search -before 812 deploy", c.Search("deploy", before=812)),
        ("/goto 812", c.Goto(812)),
        ("/goto #812", c.Goto(812)),
    ],
)
def test_parse(line: str, command: c.Command) -> None:
    assert c.parse(line) == command


@pytest.mark.parametrize("line", ["", "   ", "\n"])
def test_blank_lines_are_nothing(line: str) -> None:
    assert c.parse(line) is None


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("/frob", "unknown command /frob: /help lists the commands"),
        ("/\x1b[31mred", "unknown command /␛[31mred: /help lists the commands"),
        ("/me", "usage: /me TEXT"),
        ("/msg", "usage: /msg NICK TEXT"),
        ("/msg alice", "usage: /msg NICK TEXT"),
        ("/join", "usage: /join #ROOM"),
        ("/join a b", "usage: /join #ROOM"),
        ("/switch", "usage: /switch #ROOM"),
        ("/who a b", "usage: /who [#ROOM]"),
        ("/history 0", f"usage: /history [N]  (N: 1-{MAX_HISTORY})"),
        (f"/history {MAX_HISTORY + 1}", f"usage: /history [N]  (N: 1-{MAX_HISTORY})"),
        ("/history -3", f"usage: /history [N]  (N: 1-{MAX_HISTORY})"),
        ("/history ²", f"usage: /history [N]  (N: 1-{MAX_HISTORY})"),
        ("/rooms all", "usage: /rooms"),
        ("/clear now", "usage: /clear"),
        ("/help me", "usage: /help"),
        ("/nick", "usage: /nick NICK"),
        ("/nick a b", "usage: /nick NICK"),
        ("/query", "usage: /query NICK"),
        ("/unignore", "usage: /unignore NICK"),
        ("/ignore a b", "usage: /ignore [NICK]"),
        ("/search", "usage: /search [-before SEQ] WORDS"),
        ("/search -before x deploy", "usage: /search [-before SEQ] WORDS"),
        ("/search -before 12", "usage: /search [-before SEQ] WORDS"),
        ("/search -before", "usage: /search [-before SEQ] WORDS"),
        ("/goto", "usage: /goto SEQ"),
        ("/goto 0", "usage: /goto SEQ"),
        ("/goto twelve", "usage: /goto SEQ"),
        ("/goto 1 2", "usage: /goto SEQ"),
        # Past the 4300 digits int() takes: still one line, not a ValueError.
        ("/goto " + "9" * 5000, "usage: /goto SEQ"),
        ("/history " + "9" * 5000, f"usage: /history [N]  (N: 1-{MAX_HISTORY})"),
        ("/search -before " + "9" * 5000 + " x", "usage: /search [-before SEQ] WORDS"),
        ("/nick 9lives", f"/nick: invalid nick '9lives': {NICK_RULE}"),
        ("/query no!", f"/query: invalid nick 'no!': {NICK_RULE}"),
        ("/topic #no! x", f"/topic: invalid room 'no!': {ROOM_RULE}"),
    ],
)
def test_mistakes_give_one_helpful_line(line: str, message: str) -> None:
    assert c.parse(line) == c.Usage(message)


def test_part_takes_a_room_of_yours_without_its_hash() -> None:
    assert c.parse("/part dev", ["general", "dev"]) == c.Part("dev")
    assert c.parse("/part dev later", ["dev"]) == c.Part("dev", "later")
    assert c.parse("/part later", ["dev"]) == c.Part(None, "later")
    assert c.parse("/part #no!") == c.Usage(f"/part: invalid room 'no!': {ROOM_RULE}")


def test_bad_room_and_nick_arguments_say_the_rule() -> None:
    room = c.parse("/join #no!")
    nick = c.parse("/msg 9lives hi")
    assert isinstance(room, c.Usage) and room.message.startswith("/join: invalid room 'no!': 1-32 characters")
    assert isinstance(nick, c.Usage) and nick.message.startswith("/msg: invalid nick '9lives': 1-24 characters")


@given(st.text())
def test_any_line_parses_to_a_command_a_usage_or_nothing_in_one_line(line: str) -> None:
    result = c.parse(line)
    if isinstance(result, c.Usage):
        assert "\n" not in result.message
        assert not any(ch < " " for ch in result.message)
    else:
        assert result is None or isinstance(result, c.Command)


def test_help_names_every_command_and_key() -> None:
    for name in [*c.NAMES, *c.ALIASES]:
        assert f"/{name}" in c.HELP
    for key in ("Alt-Enter", "Tab", "Alt-1", "Alt-0", "Ctrl-N", "Alt-R", "PageUp", "Ctrl-L", "Ctrl-D", "Ctrl-C"):
        assert key in c.HELP
    assert max(map(len, c.HELP.splitlines())) <= 78  # no row wraps in an 80-column terminal


NICKS = ["alice", "Albert", "bob"]
ROOMS = ["general", "dev", "devops"]


@pytest.mark.parametrize(
    ("before", "start", "candidates"),
    [
        ("al", 0, ["Albert: ", "alice: "]),
        ("AL", 0, ["Albert: ", "alice: "]),
        ("hi al", 3, ["Albert ", "alice "]),
        ("b", 0, ["bob: "]),
        ("z", 0, []),
        ("", 0, []),
        ("hi ", 3, []),
        ("/j", 0, ["/join "]),
        ("/j de", 3, ["#dev", "#devops"]),
        ("/names #g", 7, ["#general"]),
        ("/", 0, [f"/{n} " for n in c.NAMES]),
        ("/h", 0, ["/history ", "/help "]),
        ("//x", 0, []),
        ("see #de", 4, ["#dev", "#devops"]),
        ("#", 0, ["#dev", "#devops", "#general"]),
        ("/join de", 6, ["#dev", "#devops"]),
        ("/switch ", 8, ["#dev", "#devops", "#general"]),
        ("/part #g", 6, ["#general"]),
        ("/msg al", 5, ["Albert ", "alice "]),
        ("/query b", 7, ["bob "]),
        ("/ignore A", 8, ["Albert ", "alice "]),
        ("/topic #d", 7, ["#dev", "#devops"]),
        ("/me greets al", 11, ["Albert ", "alice "]),
    ],
)
def test_complete(before: str, start: int, candidates: list[str]) -> None:
    assert c.complete(before, nicks=NICKS, rooms=ROOMS) == (start, candidates)


@pytest.mark.parametrize(
    "command",
    [
        c.Say("hi", "general"),
        c.Me("waves\nhard"),
        c.Msg("alice", "psst"),
        c.Who(),
        c.History(3, "dev"),
        c.Join("dev"),
        c.Part("dev"),
        c.Part(),
        c.Part("dev", "lunch"),
        c.Say("hi", "general", ref=7),
        c.Msg("alice", "psst", ref=8),
        c.Nick("robert"),
        c.Away(),
        c.Away("lunch"),
        c.Topic("dev", ""),
        c.Topic(None, None),
        c.Query("alice"),
        c.Search("deploy", "general", before=12),
        c.Goto(812, "general"),
    ],
)
def test_network_commands_survive_the_hand_over(command: c.NetworkCommand) -> None:
    assert c.decode(c.encode(command)) == command
