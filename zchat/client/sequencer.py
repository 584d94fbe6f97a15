"""Client-side ordering, sans-IO: each room's events exactly once, in ``seq`` order, gaps named.

:class:`RoomSequencer` takes room events from wherever they come (the live feed, history replies)
and hands back the ones to deliver now, in order, dropping duplicates and holding early arrivals.
It notices gaps (a jump in ``seq``, or a broker that reports a newer ``seq`` than we have) and
says which ranges to fetch from history; when history can no longer supply a range it yields one
marker event instead of silence. It is what makes late joining (the Clone pattern), gap repair
and reconnects lose nothing, and it never touches a socket or a clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from zchat.protocol import SYSTEM_NICK, Event

__all__ = ["MAX_FETCH", "RoomSequencer"]

#: Most events asked for in one history request.
MAX_FETCH = 1000


@dataclass
class _Room:
    expected: int | None = None  # next seq to deliver; None until the broker told us where to start
    latest: int = 0  # newest seq the broker is known to have
    held: dict[int, Event] = field(default_factory=dict)  # arrived early, waiting for the gap to fill
    fetching: bool = False


class RoomSequencer:
    """Orders the events of several rooms. Events with ``seq == 0`` are not its business."""

    def __init__(self) -> None:
        self._rooms: dict[str, _Room] = {}

    def start(self, room: str, first: int, latest: int, *, reset: bool = False) -> list[Event]:
        """Deliver from ``first`` on; the broker has up to ``latest``. Returns what is ready.

        Called at join (``first`` = where the backlog begins) and at every rejoin, which keeps
        the position: ``latest`` may even be older than what was delivered, as a reply can
        overtake feed events. ``reset`` (the broker's history is not the one we read from
        before) starts the room again at ``first``, with a marker, and drops everything held:
        it belongs to the old history, whatever its seq.
        """
        r = self._rooms.setdefault(room, _Room())
        out: list[Event] = []
        if reset:
            if r.expected is not None:
                out.append(_marker(room, "the broker's history was reset; starting again"))
            r.expected, r.latest, r.held = None, 0, {}
        if r.expected is None:
            r.expected = max(1, first)
        r.latest = max(r.latest, latest)
        r.fetching = False
        return out + self._release(room, r)

    def stop(self, room: str) -> None:
        self._rooms.pop(room, None)

    def expected(self, room: str) -> int | None:
        r = self._rooms.get(room)
        return r.expected if r else None

    def offer(self, event: Event) -> list[Event]:
        """One room event from the feed; returns the events to deliver now (maybe none)."""
        r = self._rooms.setdefault(event.room, _Room())
        r.latest = max(r.latest, event.seq)
        if r.expected is not None and event.seq < r.expected:
            return []  # already delivered
        r.held[event.seq] = event
        return self._release(event.room, r)

    def observe(self, room: str, latest: int) -> None:
        """The broker says ``room`` is at ``latest`` (heartbeat reply): a tail loss shows up here."""
        r = self._rooms.get(room)
        if r is not None:
            r.latest = max(r.latest, latest)

    def wants(self) -> list[tuple[str, int, int]]:
        """History to ask for now: ``(room, after, limit)``; each is asked for once until filled."""
        out = []
        for room, r in self._rooms.items():
            if r.expected is None or r.fetching or r.expected > r.latest:
                continue
            upto = min(r.held) - 1 if r.held else r.latest
            r.fetching = True
            out.append((room, r.expected - 1, min(MAX_FETCH, upto - r.expected + 1)))
        return out

    def fill(self, room: str, events: list[Event], upto: int | None = None) -> list[Event]:
        """A history reply for ``room``: the stored events after the ``after`` we asked for, and
        ``upto``, the seq through which the reply is complete (every kept event up to it is in
        ``events``; None: through the last event, or the room's newest if there is none).

        History answers with what it still has, oldest first. Whatever lies between what we
        expected and the first event it has is gone for good, and is named by one marker; a seq
        missing further on was a join or leave that retention thinned out, and is skipped.
        """
        r = self._rooms.get(room)
        if r is None or r.expected is None:
            return []
        r.fetching = False
        for event in events:
            if event.seq >= r.expected:
                r.held[event.seq] = event
            r.latest = max(r.latest, event.seq)
        if upto is None:
            upto = events[-1].seq if events else r.latest
        r.latest = max(r.latest, upto)
        first = events[0].seq if events else upto + 1
        out: list[Event] = []
        # Below the first event history still has, every seq we do not hold is gone for good:
        # each run of them is named by one marker (what we hold came live and is delivered).
        while r.expected < first:
            if r.expected in r.held:
                out += self._release(room, r)
                continue
            upcoming = min([s for s in r.held if s > r.expected] + [first])
            missing = upcoming - r.expected
            out.append(_marker(room, f"… {missing} older message{'s' if missing != 1 else ''} not available …"))
            r.expected = upcoming
        out += self._release(room, r)
        # From there to upto, a seq history did not return was thinned out: skip it silently.
        while r.expected <= upto and r.expected not in r.held:
            r.expected = min([s for s in r.held if s > r.expected] + [upto + 1])
            out += self._release(room, r)
        return out

    def retry(self, room: str) -> None:
        """A history request was lost (reconnect): allow asking again."""
        r = self._rooms.get(room)
        if r is not None:
            r.fetching = False

    def retry_all(self) -> None:
        for room in self._rooms:
            self.retry(room)

    def _release(self, room: str, r: _Room) -> list[Event]:
        if r.expected is None:
            return []
        out = []
        while r.expected in r.held:
            out.append(r.held.pop(r.expected))
            r.expected += 1
        for seq in [s for s in r.held if s < r.expected]:
            del r.held[seq]
        return out


def _marker(room: str, text: str) -> Event:
    return Event(0, "", room, "system", SYSTEM_NICK, text, code="gap", local=True)
