"""``zchat store copy``: a broker's whole history from one store to another — SQLite to
PostgreSQL, back, or between two of a kind — such that a broker started on the copy carries on
where the one on the source stopped.

Everything moves: events with their room, ``seq``, JSON, presence and search text; sessions and
tombstones (so clients resume silently); claims, topics, inbox reads; and the history's id, so
clients see the same history rather than "history was reset". Events move in batches of
:data:`COPY_BATCH`, each read after the last one's (room, seq) and committed as one transaction:
memory stays bounded however large the history. Both stores are opened as a broker opens them,
so neither may have a broker on it meanwhile.

The target must hold nothing: a copy into a history would mix two of them (the same room and
``seq`` naming two events, clients of either confused), so a target with anything in it is
refused, and ``--force`` empties it first. Afterwards the copy is checked against the source:
every room's and inbox's first and last ``seq`` and number of events, and the number of search
entries, sessions, claims, topics and read marks.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from zchat.broker.store import Portable, StoreError

__all__ = ["COPY_BATCH", "CopyReport", "copy_store"]

#: Events read and committed at once: about 1.5 MB of JSON at 300 bytes an event.
COPY_BATCH = 5000


@dataclass(frozen=True)
class CopyReport:
    """What a copy moved, and how long it took."""

    source: str
    target: str
    history: str
    events: int
    rooms: int
    inboxes: int
    searchable: int
    sessions: int
    tombstones: int
    claims: int
    topics: int
    reads: int
    seconds: float

    def summary(self) -> str:
        """One paragraph for people."""
        rate = f", {self.events / self.seconds:,.0f} events/s" if self.seconds > 0 and self.events else ""
        return (
            f"Copied {self.events:,} events ({_n(self.rooms, 'room')} and {_n(self.inboxes, 'inbox', 'inboxes')};"
            f" {self.searchable:,} searchable), {_n(self.sessions, 'session')} and"
            f" {_n(self.tombstones, 'tombstone')}, {_n(self.claims, 'claim')}, {_n(self.topics, 'topic')} and"
            f" {_n(self.reads, 'read mark')} from {self.source} to {self.target} in {self.seconds:.1f} s{rate}."
            f" The copy keeps the history id {self.history}, so a broker started on it carries on where the"
            " source's stopped: same history for clients, and every room's seq continues. Verified: every room's"
            " and inbox's first and last seq and event count, and the counts of search entries, sessions, claims,"
            " topics and read marks match."
        )


def copy_store(source: Portable, target: Portable, *, force: bool = False, batch: int = COPY_BATCH) -> CopyReport:
    """Copy everything ``source`` holds into ``target`` (empty, or emptied with ``force``), then
    check the copy; raises :class:`StoreError` (one line) if either cannot be done."""
    started = time.monotonic()
    if not _holds_anything(source):
        raise StoreError(f"{source.where} holds no history: nothing to copy")
    if _holds_anything(target):
        if not force:
            raise StoreError(
                f"{target.where} holds a history already: copying into it would mix two histories"
                " (--force empties it first, and what it holds is lost)"
            )
        target.clear()
    after: tuple[str, int] | None = None
    while chunk := source.export(after, batch):
        for e in chunk:
            target.append(e.room, e.seq, e.data, presence=e.presence, text=e.text)
        target.commit()
        after = chunk[-1].room, chunk[-1].seq
    sessions = source.sessions()
    for record in sessions:
        target.save_session(record)
    for nick, key in source.claims().items():
        target.claim(nick, key)
    topics = source.topics()
    for room, topic in topics.items():
        target.set_topic(room, topic)
    reads = source.reads()
    for inbox, seq in reads.items():
        target.set_read(inbox, seq)
    target.commit()
    # Last: until the copy is whole, the target is not the source's history under its name.
    target.set_id(source.id)
    streams = _verified(source, target)
    return CopyReport(
        source=source.where,
        target=target.where,
        history=target.id,
        events=sum(count for _, _, count in streams.values()),
        rooms=sum(1 for name in streams if not name.startswith("@")),
        inboxes=sum(1 for name in streams if name.startswith("@")),
        searchable=target.searchable(),
        sessions=sum(1 for r in sessions if r.ended is None),
        tombstones=sum(1 for r in sessions if r.ended is not None),
        claims=len(target.claims()),
        topics=len(topics),
        reads=len(reads),
        seconds=time.monotonic() - started,
    )


def _holds_anything(store: Portable) -> bool:
    return bool(store.export(None, 1) or store.sessions() or store.claims() or store.topics() or store.reads())


def _verified(source: Portable, target: Portable) -> dict[str, tuple[int, int, int]]:
    """The target's streams, once it is checked to hold what the source holds."""
    streams = target.streams()
    if streams != (expected := source.streams()):
        differ = sorted(name for name in expected.keys() | streams.keys() if expected.get(name) != streams.get(name))
        raise StoreError(
            f"the copy in {target.where} differs from {source.where} in {len(differ)} rooms and inboxes,"
            f" first {differ[0]!r}: (first seq, last seq, events) {streams.get(differ[0])} there,"
            f" {expected.get(differ[0])} in the source"
        )
    counts: list[tuple[str, Callable[[Portable], int]]] = [
        ("search entries", lambda s: s.searchable()),
        ("sessions", lambda s: len(s.sessions())),
        ("claims", lambda s: len(s.claims())),
        ("topics", lambda s: len(s.topics())),
        ("read marks", lambda s: len(s.reads())),
    ]
    for what, count in counts:
        if (copied := count(target)) != (held := count(source)):
            raise StoreError(f"the copy in {target.where} has {copied} {what}, the source {source.where} {held}")
    return streams


def _n(count: int, one: str, many: str | None = None) -> str:
    return f"{count:,} {one if count == 1 else many or one + 's'}"
