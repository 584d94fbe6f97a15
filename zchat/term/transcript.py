"""Transcripts: each room's conversation appended, as plain text, to ``DIR/<room>.log``.

This module owns the transcript format (``2026-11-21T10:00:00.123Z <alice> text``,
``… * alice waves``, ``… -- bob joined``; private messages go to ``DIR/@<nick>.log``, named after
the other person) and the files; which kinds are kept, and how each reads, come from
:func:`zchat.term.render.event_parts`. Each file goes on from its newest entry, so the backlog
shown on joining is not written again each time you come back. Text from the network is made
inert (no control character reaches the file) except the newlines of a multi-line message, whose
continuation lines are indented. It does not display anything or talk to the network.
"""

from __future__ import annotations

import collections
import os
import re
from collections.abc import Iterable
from pathlib import Path

from zchat.protocol import Event
from zchat.term import render

__all__ = ["Transcript", "transcript_line"]

_ROOM = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
_NICK = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,23}")


def transcript_line(event: Event) -> str | None:
    """``event`` as one transcript entry (several lines for a multi-line message), or None for
    events a transcript leaves out."""
    parts = render.event_parts(event)
    if not parts.logged:
        return None
    if parts.shape == "message":
        head = f"{parts.ts} <{parts.nick}> "
    elif parts.shape == "action":
        head = f"{parts.ts} * {parts.nick} "
    elif parts.shape == "private":
        head = f"{parts.ts} [{parts.nick} → {parts.to}] "
    else:
        head = f"{parts.ts} {parts.mark} "
    return head + parts.indented(" " * len(head))


class Transcript:
    """Appends events to files in ``directory`` (created if missing) for the user ``me``.

    Each file goes on where it left off: an event older than the newest entry already in it (the
    backlog shown again on joining) is not written twice.
    """

    def __init__(self, directory: Path, me: str | None) -> None:
        self.directory = directory
        self.me = me.lower() if me else None
        #: Per file: the newest timestamp in it, and the first lines of the entries with it.
        self._newest: dict[Path, tuple[str, set[str]]] = {}

    def file_for(self, event: Event) -> Path | None:
        """The file ``event`` belongs in, or None if it is not written."""
        if event.kind == "private":
            other = event.to if event.nick.lower() == self.me else event.nick
            return self.directory / f"@{other.lower()}.log" if other and _NICK.fullmatch(other) else None
        if not _ROOM.fullmatch(event.room) or (event.seq == 0 and event.kind != "error"):
            return None  # not a room's event (local notices say nothing about the room)
        return self.directory / f"{event.room}.log"

    def write(self, events: Iterable[Event]) -> None:
        """Append each event to its file; raises OSError if a file cannot be written."""
        batches: dict[Path, list[str]] = collections.defaultdict(list)
        for event in events:
            path = self.file_for(event)
            entry = transcript_line(event) if path is not None else None
            if path is None or entry is None:
                continue
            if path not in self._newest:
                self._newest[path] = _newest(path)
            newest, heads = self._newest[path]
            ts, head = render.inert(event.ts), entry.partition("\n")[0]
            if ts < newest or (ts == newest and head in heads):
                continue
            self._newest[path] = (ts, {*heads, head} if ts == newest else {head})
            batches[path].append(entry + "\n")
        if batches:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        for path, lines in batches.items():
            # Transcripts hold private messages: a file is created readable by its owner only
            # (as irssi's log_create_mode 600), whatever the umask; an existing one keeps its mode.
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            with open(fd, "a", encoding="utf-8", errors="replace") as f:
                f.writelines(lines)


def _newest(path: Path, tail: int = 65536) -> tuple[str, set[str]]:
    """The newest timestamp among the entries at the end of ``path``, and their first lines."""
    try:
        with path.open("rb") as f:
            f.seek(max(0, f.seek(0, 2) - tail))
            text = f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return "", set()
    newest, heads = "", set()
    for line in text.splitlines():
        if not line[:1].isdigit():
            continue  # a continuation line, or the cut-off start of the tail
        ts = line.partition(" ")[0]
        if ts > newest:
            newest, heads = ts, {line}
        elif ts == newest:
            heads.add(line)
    return newest, heads
