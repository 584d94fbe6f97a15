"""Turning events into lines for a terminal, with every untrusted character made inert.

This module owns how an event reads on screen (``HH:MM nick: text``, ``* nick waves``,
``-- alice joined``) and the rule that text from the network can never drive the terminal:
control characters, ANSI/OSC escape sequences and bidirectional overrides are shown as visible
escapes. It produces strings only; printing, colour and prompts belong to the callers. JSON
output never goes through here, so it stays lossless.
"""

from __future__ import annotations

import datetime as dt
import re

from zchat.protocol import Event

__all__ = ["clock", "format_event", "inert"]

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


def clock(ts: str) -> str:
    """``HH:MM`` in local time for a feed timestamp (the raw value if it does not parse)."""
    try:
        return dt.datetime.fromisoformat(ts).astimezone().strftime("%H:%M")
    except ValueError:
        return inert(ts[:16])


def format_event(event: Event, *, show_room: bool = False) -> str:
    """One event as a terminal line (or lines, for a multi-line message)."""
    prefix = f"{clock(event.ts)} "
    if show_room and event.room:
        prefix += f"#{event.room} "
    indent = " " * len(prefix) + "  "
    nick = inert(event.nick)
    text = inert(event.text, indent)
    if event.kind == "message":
        return f"{prefix}{nick}: {text}"
    if event.kind == "action":
        return f"{prefix}* {nick} {text}"
    if event.kind == "private":
        return f"{prefix}[{nick} → {inert(event.to or '')}] {text}"
    if event.kind == "error":
        return f"{prefix}!! {text}"
    return f"{prefix}-- {text}"
