"""What a line typed in the full-screen client means: commands, their help, and tab completion.

This module owns the command language of the interactive client: :func:`parse` turns a typed
line into a typed command (or one line saying what is wrong with it), :data:`HELP` describes the
commands and keys, and :func:`complete` lists what Tab may put in place of the word before the
cursor. Commands that need the broker travel from the UI to the network thread as bytes
(:func:`encode`, :func:`decode`). It is pure: it opens no socket, touches no terminal and never
calls a :class:`~zchat.client.shell.Client`; running the commands belongs to :mod:`zchat.term.tui`.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable

import msgspec

from zchat import protocol as p
from zchat.errors import LocalProtocolError
from zchat.term.render import inert

__all__ = [
    "ALIASES",
    "CLEAR_TOPIC",
    "DEFAULT_HISTORY",
    "HELP",
    "NAMES",
    "Away",
    "Clear",
    "Command",
    "Goto",
    "Help",
    "History",
    "Ignore",
    "Join",
    "Me",
    "Message",
    "Msg",
    "NetworkCommand",
    "Nick",
    "Part",
    "Query",
    "Quit",
    "Rooms",
    "Say",
    "Search",
    "Switch",
    "Topic",
    "Unignore",
    "Usage",
    "Who",
    "complete",
    "decode",
    "encode",
    "parse",
]

#: Events ``/history`` shows without a count.
DEFAULT_HISTORY = 20
#: What ``/topic`` takes to clear the topic, as in irssi and WeeChat.
CLEAR_TOPIC = "-delete"


class _Command(msgspec.Struct, frozen=True, tag=str.lower):
    pass


# Commands the network thread carries out (``room`` None: the UI's current room, filled in by it).
# ``ref`` numbers the line the UI shows for a message until the broker has it (0: none), so the
# network thread can tell which line the message id it gets belongs to.
class Say(_Command, frozen=True):
    text: str
    room: str | None = None
    ref: int = 0


class Me(_Command, frozen=True):
    text: str
    room: str | None = None
    ref: int = 0


class Msg(_Command, frozen=True):
    nick: str
    text: str
    ref: int = 0


class Who(_Command, frozen=True):
    room: str | None = None


class History(_Command, frozen=True):
    count: int = DEFAULT_HISTORY
    room: str | None = None


class Join(_Command, frozen=True):
    room: str


class Part(_Command, frozen=True):
    room: str | None = None
    #: Shown to the room: "alice left (part: REASON)".
    reason: str | None = None


class Nick(_Command, frozen=True):
    nick: str


class Away(_Command, frozen=True):
    #: None: back.
    text: str | None = None


class Topic(_Command, frozen=True):
    room: str | None = None
    #: The new topic; ``""`` clears it; None only asks.
    text: str | None = None


class Query(_Command, frozen=True):
    """Open (or go to) the private conversation with ``nick``: the UI opens the window, the
    network thread fetches what the inbox holds of it."""

    nick: str


class Search(_Command, frozen=True):
    text: str
    room: str | None = None
    #: Only matches older than this seq (the next page).
    before: int | None = None


class Goto(_Command, frozen=True):
    """Show event ``seq`` of the room in its window (fetched from history if it is not there)."""

    seq: int
    room: str | None = None


# Commands the UI carries out by itself.
class Rooms(_Command, frozen=True):
    pass


class Switch(_Command, frozen=True):
    room: str


class Help(_Command, frozen=True):
    pass


class Clear(_Command, frozen=True):
    pass


class Quit(_Command, frozen=True):
    reason: str = "quit"


class Ignore(_Command, frozen=True):
    #: None: list who is ignored.
    nick: str | None = None


class Unignore(_Command, frozen=True):
    nick: str


NetworkCommand = Say | Me | Msg | Who | History | Join | Part | Nick | Away | Topic | Query | Search | Goto
Command = NetworkCommand | Rooms | Switch | Help | Clear | Quit | Ignore | Unignore
#: The messages: what the UI shows as pending until the broker has them.
Message = Say | Me | Msg


class Usage(msgspec.Struct, frozen=True):
    """Why a line is not a valid command: one line for the person who typed it."""

    message: str


#: Each command's usage: the first word is what Tab completes.
_USAGE = {
    "join": "/join #ROOM",
    "part": "/part [#ROOM] [REASON]",
    "switch": "/switch #ROOM",
    "rooms": "/rooms",
    "me": "/me TEXT",
    "msg": "/msg NICK TEXT",
    "query": "/query NICK",
    "who": "/who [#ROOM]",
    "topic": f"/topic [#ROOM] [TEXT | {CLEAR_TOPIC}]",
    "nick": "/nick NICK",
    "away": "/away [MESSAGE]",
    "ignore": "/ignore [NICK]",
    "unignore": "/unignore NICK",
    "history": f"/history [N]  (N: 1-{p.MAX_HISTORY})",
    "search": "/search [-before SEQ] WORDS",
    "goto": "/goto SEQ",
    "clear": "/clear",
    "quit": "/quit [REASON]",
    "help": "/help",
}
#: The command names, for completion.
NAMES = tuple(_USAGE)
#: Other names irssi and WeeChat users type: alias -> command.
ALIASES = {"j": "join", "names": "who", "q": "query", "t": "topic"}

HELP = f"""\
commands:
  /join #ROOM             join a room and make it the current one (also /j)
  /part [#ROOM] [REASON]  leave a room (default: the current one); in a @NICK
                          window: close it
  /switch #ROOM           make ROOM the current window (also Alt-1...)
  /rooms                  your windows, numbered, with unread counts
  /me TEXT                send an action (* alice waves)
  /msg NICK TEXT          a private message only NICK sees (in @NICK's window)
  /query NICK             a @NICK window: your private messages with NICK (/q)
  /who [#ROOM]            who is in the room, and who is away (also /names)
  /topic [#ROOM] [TEXT]   show or set the topic; /topic {CLEAR_TOPIC} clears it (/t)
  /nick NICK              change your nick
  /away [MESSAGE]         say you are away (whoever writes to you is told);
                          no message: you are back
  /ignore [NICK]          hide NICK's messages, joins and leaves (this run);
                          no NICK: the list; /unignore NICK shows them again
  /history [N]            the room's last N events (default {DEFAULT_HISTORY})
  /search WORDS           the room's stored messages with all the words, and
                          their seqs (/search -before SEQ WORDS: older ones)
  /goto SEQ               scroll the room's window to message SEQ
  /clear                  clear the message area
  /quit [REASON]          leave (also: exit, Ctrl-D on an empty line, Ctrl-C)
  /help                   this text
  //TEXT                  send a line that starts with /
keys:
  Enter                   send (Alt-Enter or Esc Enter: a new line)
  Tab                     complete a nick, #room or /command (again: the next)
  Alt-1...Alt-9, Alt-0    window 1 to 10
  Ctrl-N, Ctrl-P          next, previous window (also Alt-Right, Alt-Left)
  Alt-R                   send this window's newest unsent message again
  Up, Down                input history
  PageUp, PageDown        scroll the messages (Ctrl-L clears them)
  Ctrl-D, Ctrl-C          quit (Ctrl-D on an empty line)"""

_COMMAND = re.compile(r"/(\S*)\s*(.*)", re.DOTALL)
#: Commands whose first argument is a room, and those whose first argument is a nick.
_ROOM_ARG = frozenset({"/join", "/j", "/part", "/switch", "/who", "/names"})
_MSG = re.compile(r"(\S+)\s+(.*)", re.DOTALL)


def parse(line: str, rooms: Collection[str] = ()) -> Command | Usage | None:
    """What ``line`` asks for; None for a blank line.

    A line not starting with ``/`` is a message (``//`` sends one starting with ``/``), and
    ``exit`` alone quits. Room arguments may be written ``#Dev`` or ``dev``; ``/part``'s first
    word is a room only if it starts with ``#`` or is one of ``rooms`` (yours), else its reason.
    """
    if not line.strip():
        return None
    if line.strip() == "exit":
        return Quit()
    if not line.startswith("/") or line.startswith("//"):
        return Say(line.removeprefix("/"))
    m = _COMMAND.fullmatch(line)
    assert m is not None  # any line starting with "/" matches
    name, arg = m.group(1).lower(), m.group(2).strip()
    name = ALIASES.get(name, name)
    words = arg.split()
    try:
        return _parse(name, arg, words, rooms)
    except LocalProtocolError as exc:
        return Usage(f"/{name}: {exc}")


def _parse(name: str, arg: str, words: list[str], rooms: Collection[str]) -> Command | Usage:
    if name not in _USAGE:
        return Usage(f"unknown command /{inert(name)[:40]}: /help lists the commands")
    usage = Usage(f"usage: {_USAGE[name]}")
    if name in ("me", "msg", "search") and not arg:
        return usage
    if name == "me":
        return Me(arg)
    if name == "msg":
        m = _MSG.fullmatch(arg)
        return Msg(p.check_nick(m.group(1)), m.group(2)) if m else usage
    if name == "quit":
        return Quit(arg or "quit")
    if name == "away":
        return Away(arg or None)
    if name == "topic":
        room = _room(words[0]) if words and words[0].startswith("#") else None
        text = arg.removeprefix(words[0]).strip() if room is not None else arg
        return Topic(room, "" if text == CLEAR_TOPIC else text or None)
    if name == "search":
        if words[0] != "-before":
            return Search(arg)
        before = _seq(words[1]) if len(words) >= 3 else None
        return usage if before is None else Search(arg.split(None, 2)[2], before=before)
    if name in ("nick", "query", "ignore", "unignore", "goto"):
        if len(words) > 1 or (not words and name != "ignore"):
            return usage
        if name == "goto":
            seq = _seq(words[0].removeprefix("#"))
            return usage if seq is None else Goto(seq)
        nick = p.check_nick(words[0]) if words else None
        if name == "ignore":
            return Ignore(nick)
        assert nick is not None
        return _ONE_NICK[name](nick)
    if name in _NO_ARGS:
        return usage if words else _NO_ARGS[name]()
    if name == "history":
        count = _number(words[0], p.MAX_HISTORY) if words else DEFAULT_HISTORY
        return usage if len(words) > 1 or count is None else History(count)
    if name == "part":
        if words and (words[0].startswith("#") or p.normalize_room(words[0]) in rooms):
            reason = arg.removeprefix(words[0]).strip()
            return Part(_room(words[0]), reason or None)
        return Part(None, arg or None)
    # join, switch, who: one room, required for join and switch
    if len(words) > 1 or (not words and name in ("join", "switch")):
        return usage
    room = _room(words[0]) if words else None
    if name == "who":
        return Who(room)
    assert room is not None
    return Join(room) if name == "join" else Switch(room)


#: The commands that take exactly one nick, and those that take nothing.
_ONE_NICK: dict[str, type[Nick | Query | Unignore]] = {"nick": Nick, "query": Query, "unignore": Unignore}
_NO_ARGS: dict[str, type[Rooms | Help | Clear]] = {"rooms": Rooms, "help": Help, "clear": Clear}


def _room(word: str) -> str:
    """A room argument as typed (``#Dev``, ``dev``), checked; raises LocalProtocolError."""
    return p.check_room(p.normalize_room(word))


def _number(word: str, high: int) -> int | None:
    """``word`` as a whole number from 1 to ``high``, or None. A word with more digits than
    ``high`` is not one: it is refused before int(), which raises on more than 4300 digits."""
    digits = word.lstrip("0")
    if not word.isdecimal() or len(digits) > len(str(high)):
        return None
    n = int(digits or "0")
    return n if 1 <= n <= high else None


def _seq(word: str) -> int | None:
    """``word`` as a seq (ASCII digits only), or None."""
    return _number(word, p.MAX_SEQ) if word.isascii() else None


def complete(before: str, *, nicks: Iterable[str], rooms: Iterable[str]) -> tuple[int, list[str]]:
    """What Tab may put in place of the word that ends ``before`` (the text left of the cursor).

    Returns where that word starts and the candidates, best first: a command name at the start
    of a line, a room after ``#`` or as a room command's argument, otherwise a nick (followed
    by ``: `` when it starts the line, as people address each other).
    """
    word = re.search(r"\S*\Z", before)
    assert word is not None
    start, prefix = word.start(), word.group()
    head = before[:start]
    first = head.split(maxsplit=1)[0].lower() if head.strip() else ""
    arg_index = len(head.split())  # 0: the first word of the line
    if arg_index == 0 and prefix.startswith("/") and not prefix.startswith("//"):
        found = [f"/{n} " for n in NAMES if n.startswith(prefix[1:].lower())]
        return start, found
    if prefix.startswith("#") or (arg_index == 1 and first in _ROOM_ARG):
        want = prefix.removeprefix("#").lower()
        return start, [f"#{r}" for r in sorted(set(rooms)) if r.startswith(want)]
    if not prefix:
        return start, []
    lower = prefix.lower()
    names = sorted({n for n in nicks if n.lower().startswith(lower)}, key=str.lower)
    return start, [f"{n}: " if arg_index == 0 else f"{n} " for n in names]


_encoder = msgspec.msgpack.Encoder()
_decoder: msgspec.msgpack.Decoder[NetworkCommand] = msgspec.msgpack.Decoder(NetworkCommand)


def encode(command: NetworkCommand) -> bytes:
    """``command`` as bytes for the hand-over to the network thread."""
    return _encoder.encode(command)


def decode(data: bytes) -> NetworkCommand:
    """The command :func:`encode` made."""
    return _decoder.decode(data)
