"""How the full-screen client presents things, as pure functions: no terminal needed to test them.

This module owns the look of the interactive client: the stable colour of each nick, when a line
mentions you, how an event's parts (:func:`zchat.term.render.event_parts`, the one place that says
how each kind reads, with every network string made inert) become styled text (``(style, text)``
fragments, prompt_toolkit's formatted-text shape), what the status line says, and how a
multi-line paste splits into messages. It never draws, reads keys, or talks to the network;
:mod:`zchat.term.tui` does, with the styles named here (``class:…``).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from zchat.protocol import Event
from zchat.term import render

__all__ = [
    "PALETTE",
    "PASTE_CONFIRM_LINES",
    "Fragments",
    "RoomStatus",
    "connection_label",
    "event_fragments",
    "is_mention",
    "mentions",
    "nick_color",
    "paste_lines",
    "plain",
    "status_fragments",
]

#: prompt_toolkit formatted text: ``(style, text)`` pairs.
Fragments = list[tuple[str, str]]

#: Nick colours: the 12 ANSI colours that read on both dark and light backgrounds (no black,
#: white or grey, which are the background, the text and the notices).
PALETTE = (
    "ansired",
    "ansigreen",
    "ansiyellow",
    "ansiblue",
    "ansimagenta",
    "ansicyan",
    "ansibrightred",
    "ansibrightgreen",
    "ansibrightyellow",
    "ansibrightblue",
    "ansibrightmagenta",
    "ansibrightcyan",
)

#: A paste of more lines than this is sent only after a confirmation.
PASTE_CONFIRM_LINES = 5

#: Characters that may be part of a nick: a mention is the nick with none of these around it.
_NICK_CHARS = "A-Za-z0-9_-"


def nick_color(nick: str) -> str:
    """The colour of ``nick``: the same in every run and every client (nicks are unique
    case-insensitively, so ``Alice`` and ``alice`` share one)."""
    digest = hashlib.blake2s(nick.lower().encode("utf-8", "surrogatepass"), digest_size=4).digest()
    return PALETTE[int.from_bytes(digest, "big") % len(PALETTE)]


def mentions(text: str, nick: str | None) -> bool:
    """Whether ``text`` names ``nick`` as a word (any case): "bob:", "hi Bob!", not "bobby"."""
    if not nick:
        return False
    pattern = rf"(?<![{_NICK_CHARS}]){re.escape(nick)}(?![{_NICK_CHARS}])"
    return re.search(pattern, text, re.IGNORECASE) is not None


def is_mention(event: Event, me: str | None) -> bool:
    """Whether ``event`` is someone else speaking to you: a private message, or a message or
    action that names you."""
    if event.kind not in ("message", "action", "private") or not me or event.nick.lower() == me.lower():
        return False
    return event.kind == "private" or mentions(event.text, me)


def paste_lines(text: str) -> list[str]:
    """The messages a multi-line paste becomes: one per non-blank line, in order (a pasted
    ``\\r\\n`` or ``\\r`` ends a line too; trailing whitespace is dropped, indentation kept)."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return [line.rstrip() for line in lines if line.strip()]


def event_fragments(event: Event, *, me: str | None, show_room: bool = False) -> Fragments:
    """``event``'s :func:`render.event_parts` as styled text; its characters are exactly
    :func:`render.format_event`'s.

    Nicks get :func:`nick_color` (``class:nick``, plus ``class:own`` for yours), the time
    ``class:time``, joins and the like ``class:system``, errors ``class:error``, private
    messages ``class:private``, and the text of what :func:`is_mention` finds ``class:mention``.
    """
    parts = render.event_parts(event)
    prefix = f"{parts.clock} "
    out: Fragments = [("class:time", prefix)]
    if show_room and event.room:
        room = f"#{event.room} "
        out.append(("class:room", room))
        prefix += room
    text = parts.indented(" " * len(prefix) + "  ")
    mark = f"class:{parts.style}" if parts.style else ""
    if parts.nick is None:  # an error or a notice: the whole line in its kind's style
        out.append((mark, f"{parts.mark} {text}"))
        return out
    # Colour, "own" and mentions are about who sent it and to whom, so they go by the nicks
    # themselves rather than their inert spelling.
    own = me is not None and event.nick.lower() == me.lower()
    nick_style = f"class:nick {nick_color(event.nick)}" + (" class:own" if own else "")
    text_style = "class:mention" if is_mention(event, me) else ""
    if parts.to is not None:  # a private message
        to = event.to or ""
        to_style = f"class:nick {nick_color(to)}" + (" class:own" if me and to.lower() == me.lower() else "")
        out += [
            (mark, "["),
            (nick_style, parts.nick),
            (mark, " → "),
            (to_style, parts.to),
            (mark, "] "),
            (text_style, text),
        ]
    elif parts.shape == "action":
        out += [(mark, "* "), (nick_style, parts.nick), (mark, " "), (text_style, text)]
    else:
        out += [(nick_style, parts.nick), (mark, ": "), (text_style, text)]
    return out


def connection_label(state: str) -> str:
    """What the status line says about a :attr:`Client.state`."""
    return state if state in ("connected", "reconnecting") else "offline"


@dataclass(frozen=True)
class RoomStatus:
    """A room as the status line shows it."""

    name: str
    unread: int = 0
    mentioned: bool = False


def status_fragments(
    nick: str, current: str | None, rooms: Sequence[RoomStatus], state: str, *, scrolled: bool = False
) -> tuple[Fragments, Fragments]:
    """The status line's left part (nick, current room, other rooms with unread counts such as
    ``#dev(3)``) and right part (``more below`` while scrolled up, then the connection)."""
    left: Fragments = [("class:status.nick", f" {nick} "), ("class:status", " ")]
    left.append(("class:status.current", f"#{current}" if current else "(no room)"))
    for room in rooms:
        if room.name == current:
            continue
        label = f"#{room.name}" + (f"({room.unread})" if room.unread else "")
        style = "class:status.mention" if room.mentioned else "class:status.unread" if room.unread else "class:status"
        left += [("class:status", "  "), (style, label)]
    right: Fragments = []
    if scrolled:
        right += [("class:status.more", "more below"), ("class:status", "  ")]
    label = connection_label(state)
    right.append((f"class:status.{label}", f"{label} "))
    return left, right


def plain(fragments: Iterable[tuple[str, str]]) -> str:
    """The text of ``fragments``, without styles."""
    return "".join(text for _, text in fragments)
