"""Turning events into lines for a terminal, with every untrusted character made inert.

This module owns how each kind of event reads: :func:`event_parts` is the one place that says
which shape an event takes (``nick: text``, ``* nick waves``, ``[alice → bob] psst``, ``!! error``,
``-- alice joined``, ``-- bob is now known as robert``, ``-- alice set the topic: …``), its style
and whether transcripts keep it. :func:`format_event` (terminal
lines), :func:`zchat.term.ui.event_fragments` (styled text) and
:func:`zchat.term.transcript.transcript_line` (log files) only lay those parts out. The lines a
screen makes of several events or of the calendar read here too: a burst of joins and leaves
folded into one (:func:`fold_text`), the change of day (:func:`day_line`) and who is in a
room (:func:`who_line`). It also owns
the rule that text from the network can never drive the terminal: control characters, ANSI/OSC
escape sequences and bidirectional overrides are shown as visible escapes. It produces strings
only; printing, colour and prompts belong to the callers. JSON output never goes through here,
so it stays lossless.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from zchat.protocol import Event

__all__ = [
    "DEFAULT_TIME_FORMAT",
    "EventParts",
    "Shape",
    "Style",
    "clock",
    "day_line",
    "event_parts",
    "fold_text",
    "format_event",
    "inert",
    "local_day",
    "who_line",
]

#: How a screen shows an event's time (``zchat join --timestamp-format``): strftime, local time.
DEFAULT_TIME_FORMAT = "%H:%M"

# C0 controls except newline, DEL, C1 controls, and the Unicode bidi/invisible direction marks.
_UNSAFE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _escape(m: re.Match[str]) -> str:
    ch = m.group()
    code = ord(ch)
    if code < 0x20:
        return chr(0x2400 + code)  # the Unicode "control picture": ESC shows as ␛
    if code == 0x7F:
        return "\u2421"  # ␡
    return f"\\u{code:04x}" if code > 0xFF else f"\\x{code:02x}"


def inert(text: str, indent: str = "") -> str:
    """``text`` with nothing left that a terminal would interpret; continuation lines of a
    multi-line message are indented by ``indent``."""
    text = _UNSAFE.sub(_escape, text)
    return text.replace("\n", "\n" + indent) if indent else text


def _local_time(ts: str) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(ts).astimezone()
    except ValueError:
        return None


def clock(ts: str, time_format: str = DEFAULT_TIME_FORMAT) -> str:
    """A feed timestamp in local time as ``time_format`` (strftime) says, ``HH:MM`` by default
    (the raw value if it does not parse)."""
    local = _local_time(ts)
    return inert(ts[:16] if local is None else local.strftime(time_format))


def local_day(ts: str) -> dt.date | None:
    """The local calendar day of a feed timestamp; None if it does not parse."""
    local = _local_time(ts)
    return None if local is None else local.date()


def day_line(day: dt.date) -> str:
    """The line between events of different days: ``-- Tuesday 1 December 2026 --``."""
    # Built by hand: strftime has no portable day of the month without a leading zero.
    return f"-- {day:%A} {day.day} {day:%B %Y} --"


#: How an event reads: ``nick: text``, ``* nick text``, ``[nick → to] text``, ``!! text`` or
#: ``-- text``.
Shape = Literal["message", "action", "private", "error", "notice"]
#: The style (``class:…`` on screen) of the characters an event's kind owns: a private message's
#: brackets and arrow, a whole error or notice line. Messages and actions have none: only their
#: nick is coloured, by whom it names.
Style = Literal["private", "error", "system"]


@dataclass(frozen=True)
class EventParts:
    """One event as its pieces, each network string already made inert; the formatters only
    lay them out."""

    #: The feed timestamp, whole (transcripts keep it).
    ts: str
    #: The local time as the screen shows it (``HH:MM`` by default).
    clock: str
    #: The room (without ``#``), ``""`` for none.
    room: str
    shape: Shape
    #: Who the event is from; None for the shapes that do not show it (errors, notices).
    nick: str | None
    #: Whom a private message is for; None for every other shape.
    to: str | None
    #: Newlines are kept: each layout indents the continuation lines under its own head.
    text: str
    style: Style | None
    #: Whether a transcript keeps this kind (it leaves out what is only the link talking).
    logged: bool

    @property
    def mark(self) -> str:
        """What an error (``!!``) or a notice (``--``) line starts with."""
        return "!!" if self.shape == "error" else "--"

    def indented(self, indent: str) -> str:
        """The text, each continuation line starting with ``indent``."""
        return self.text.replace("\n", "\n" + indent)


#: Each kind a person reads: (shape, style, kept in transcripts). Any other kind (``heartbeat``,
#: ``duplicate``, one a newer broker invents) reads as a notice and stays out of transcripts.
_KINDS: dict[str, tuple[Shape, Style | None, bool]] = {
    "message": ("message", None, True),
    "action": ("action", None, True),
    "private": ("private", "private", True),
    "error": ("error", "error", True),
    "join": ("notice", "system", True),
    "leave": ("notice", "system", True),
    "nick": ("notice", "system", True),
    "topic": ("notice", "system", True),
    "system": ("notice", "system", True),
}
_OTHER_KIND: tuple[Shape, Style | None, bool] = ("notice", "system", False)


def event_parts(event: Event, *, time_format: str = DEFAULT_TIME_FORMAT) -> EventParts:
    """How ``event`` reads: the one place that decides it for every kind."""
    shape, style, logged = _KINDS.get(event.kind, _OTHER_KIND)
    return EventParts(
        ts=inert(event.ts),
        clock=clock(event.ts, time_format),
        room=inert(event.room),
        shape=shape,
        nick=inert(event.nick) if shape in ("message", "action", "private") else None,
        to=inert(event.to or "") if shape == "private" else None,
        text=inert(_sentence(event)),
        style=style,
        logged=logged,
    )


def _sentence(event: Event) -> str:
    """What a notice says. A topic event's text is the topic itself, so the sentence around it is
    made here; a nick change is said from its fields (the text is only the broker's wording)."""
    if event.kind == "topic":
        return (
            f"{event.nick} cleared the topic"
            if event.reason == "cleared"
            else f"{event.nick} set the topic: {event.text}"
        )
    if event.kind == "nick" and event.new_nick:
        return f"{event.nick} is now known as {event.new_nick}"
    return event.text


def who_line(room: str, nicks: Iterable[str], away: Mapping[str, str]) -> str:
    """A ``/who`` answer as one notice: ``-- in #general: alice, bob (away: lunch)``."""
    listed = ", ".join(n + (f" (away: {away[n]})" if n in away else "") for n in nicks)
    return inert(f"-- in #{room}: {listed or 'nobody'}")


def fold_text(events: Iterable[Event]) -> str:
    """A burst of joins and leaves as one notice: ``joined: alice, bob; left: dave`` (each nick
    once per list, in the order they came)."""
    joined: dict[str, None] = {}
    left: dict[str, None] = {}
    for event in events:
        (joined if event.kind == "join" else left)[inert(event.nick)] = None
    lists = [f"{what}: {', '.join(nicks)}" for what, nicks in (("joined", joined), ("left", left)) if nicks]
    return "; ".join(lists)


def format_event(event: Event, *, show_room: bool = False, time_format: str = DEFAULT_TIME_FORMAT) -> str:
    """One event as a terminal line (or lines, for a multi-line message)."""
    parts = event_parts(event, time_format=time_format)
    prefix = f"{parts.clock} "
    if show_room and parts.room:
        prefix += f"#{parts.room} "
    text = parts.indented(" " * len(prefix) + "  ")
    if parts.shape == "message":
        return f"{prefix}{parts.nick}: {text}"
    if parts.shape == "action":
        return f"{prefix}* {parts.nick} {text}"
    if parts.shape == "private":
        return f"{prefix}[{parts.nick} → {parts.to}] {text}"
    return f"{prefix}{parts.mark} {text}"
