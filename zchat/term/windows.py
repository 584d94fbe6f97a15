"""The full-screen client's windows as plain data: what each one holds and where it is scrolled to.

A window shows one room (``#general``) or one private conversation (a query, ``@bob``), in the
same list. :class:`Windows` numbers them 1, 2, … in the order they were opened (a new one goes
at the end; switching never reorders them) and knows the current one. Each :class:`Window` keeps
its scrollback of :class:`Entry` lines, some of which change in place (a burst of joins folded
into one line, a message waiting for the broker), its unread count, the unread marker where you
left it, the day of its newest event, its topic, and how far it is scrolled. Lines of events
know where their events stand (room and seq), so that earlier events fetched later (a query's
history, the messages around a search match) go in their place, once, and a view can be
scrolled to one of them. Wrapping lines into rows for a width and choosing which rows a view
shows belong here too, so paging works on the rows the screen shows without waiting for it to
be drawn.

Nothing here draws, reads keys or talks to the network (:mod:`zchat.term.tui` does), and how
things look is :mod:`zchat.term.ui`'s.
"""

from __future__ import annotations

import collections
import datetime as dt
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from prompt_toolkit.formatted_text.utils import split_lines

from zchat.protocol import Event
from zchat.term import render, ui

__all__ = [
    "FOLD_MAX",
    "MARKER",
    "SCROLLBACK",
    "Entry",
    "Key",
    "Position",
    "View",
    "Window",
    "Windows",
    "conversation",
    "day_entry",
]

#: Entries kept per window: irssi keeps 500 lines a window by default, WeeChat 4096.
SCROLLBACK = 2000
#: The unread marker's label.
MARKER = "new"
#: Joins and leaves one folded line holds; a longer burst goes on in a new line. Without a bound
#: one line grew without end (someone's client reconnecting all night in a quiet room, or a
#: hostile one joining and leaving), past what the scrollback bounds, and refolding it on each
#: event took ever longer on the UI thread.
FOLD_MAX = 100

#: A row of a window: (index of its entry, index of the row within that entry).
Position = tuple[int, int]
#: Where an event stands: its room (or inbox) and its seq there.
Key = tuple[str, int]


class Entry:
    """One line of a window (several, for a multi-line message); it may be changed in place.

    ``indent`` is where its wrapped rows continue (the text column). A ``rule`` entry is a
    horizontal line across the window with its text in the middle (the unread marker).
    """

    def __init__(
        self,
        fragments: ui.Fragments,
        indent: int = 0,
        *,
        rule: bool = False,
        keys: Iterable[Key] = (),
        day: dt.date | None = None,
    ) -> None:
        self.fragments = fragments
        self.indent = indent
        self.rule = rule
        #: The events this line shows (several for a folded burst; none for a notice).
        self.keys = list(keys)
        #: The local day of its event; a day line has a day and no keys.
        self.day = day
        #: A rule saying that events are not shown here (it goes when they come).
        self.gap = False
        self._rows: tuple[int, list[ui.Fragments]] | None = None  # for the last width asked

    def set(self, fragments: ui.Fragments, indent: int) -> None:
        self.fragments, self.indent, self._rows = fragments, indent, None

    @property
    def is_day_line(self) -> bool:
        return self.day is not None and not self.keys

    def seq(self, stream: str) -> int | None:
        """The seq of its first event in ``stream`` (a room or an inbox), if it shows one."""
        return min((seq for room, seq in self.keys if room == stream), default=None)

    def rows(self, columns: int) -> list[ui.Fragments]:
        """The rows this entry takes in a window ``columns`` wide (at least one)."""
        if self._rows is None or self._rows[0] != columns:
            if self.rule:
                style, text = self.fragments[0]
                rows = [ui.rule(text, columns, style)]
            else:
                lines = ([(style, text) for style, text, *_ in line] for line in split_lines(self.fragments))
                rows = [row for line in lines for row in ui.wrap(line, columns, self.indent)]
            self._rows = (columns, rows)
        return self._rows[1]


@dataclass
class _Anchor:
    """Where a scrolled-up view is held: one row of one entry, at the top or bottom of the view."""

    #: Entries after the anchored one: counted from the newest, so new lines do not move it.
    after: int
    #: The anchored row within its entry; -1 is its last.
    row: int
    #: At the top of the view (after PageDown) rather than at the bottom (after PageUp).
    top: bool


def conversation(inbox: Iterable[Event], nick: str) -> list[Event]:
    """The private messages of an inbox that a query window with ``nick`` shows: those from
    ``nick`` and those to ``nick`` (the inbox is yours, so the other side is you, whatever
    nick you had then)."""
    other = nick.lower()
    return [e for e in inbox if e.kind == "private" and other in (e.nick.lower(), (e.to or "").lower())]


def day_entry(day: dt.date) -> Entry:
    """The line saying that the events below it are of ``day``."""
    return Entry(ui.day_fragments(day), day=day)


def _gap(missing: int) -> Entry:
    """The line between events whose seqs are not consecutive: some are not shown."""
    entry = Entry([("class:marker", f"{missing} not shown")], rule=True)
    entry.gap = True
    return entry


@dataclass(frozen=True)
class View:
    """The rows a window shows, top to bottom, and where they start and end in its entries."""

    rows: list[ui.Fragments]
    top: Position
    bottom: Position
    #: The newest row is shown.
    at_end: bool


@dataclass(eq=False)
class Window:
    """One numbered window: a room's scrollback and what the status line and completion need."""

    #: The room shown here; None for a window that is not a room.
    room: str | None = None
    #: A query's other party, as written; None for a window that is not a query.
    query: str | None = None
    #: The room's topic, for the title line.
    topic: str | None = None
    entries: collections.deque[Entry] = field(default_factory=lambda: collections.deque(maxlen=SCROLLBACK))
    #: Messages that came while you were elsewhere, and whether one of them named you.
    unread: int = 0
    mentioned: bool = False
    #: Your own join has been seen, and not your leave after it: what comes now is live, not
    #: backlog (which may hold earlier sessions of yours).
    live: bool = False
    nicks: dict[str, str] = field(default_factory=dict)  # lower case -> as written
    #: The unread marker's line, while it is in the scrollback.
    marker: Entry | None = None
    #: You left this window: the next new line gets the marker above it.
    marker_due: bool = False
    #: The local day of the newest event shown, for the line that says the day changed.
    day: dt.date | None = None
    #: None: the view follows the newest line.
    anchor: _Anchor | None = None
    #: The folded burst of joins and leaves that the newest entry shows, if it shows one.
    _fold: tuple[Entry, list[Event]] | None = None
    #: The entry that shows each event shown.
    _keys: dict[Key, Entry] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """As the status line shows it: ``#general``, ``@alice`` for a query (derived, so that a
        query whose other party changes nick is renamed with it). Made inert: a query's nick
        comes from the network, and the title, status and prompt lines show the name as is."""
        if self.room is not None:
            return f"#{render.inert(self.room)}"
        return f"@{render.inert(self.query)}" if self.query is not None else "(no room)"

    # --- lines ------------------------------------------------------------------------------

    def append(self, entry: Entry, *, new: bool = False) -> None:
        """Add ``entry`` at the end; a ``new`` one (it arrived live) while you were away first
        gets the unread marker above it."""
        if new and self.marker_due:
            self.marker_due = False
            self.marker = Entry([("class:marker", MARKER)], rule=True)
            self._push(self.marker)
        self._push(entry)

    def fold(
        self,
        event: Event,
        make: Callable[[list[Event]], ui.Fragments],
        *,
        new: bool = False,
        key: Key | None = None,
        day: dt.date | None = None,
    ) -> None:
        """Add a join or leave to the burst the newest line shows, or start one; ``make`` turns
        a burst into its line."""
        if self._fold is not None and len(self._fold[1]) < FOLD_MAX and not (new and self.marker_due):
            entry, events = self._fold
            events.append(event)
            entry.set(make(events), entry.indent)
            if key is not None:
                self.note(entry, key)
            return
        line = make([event])
        entry = Entry(line, ui.text_column(line), keys=[key] if key else (), day=day)
        self.append(entry, new=new)
        self._fold = (entry, [event])

    def find(self, key: Key) -> Entry | None:
        """The line showing the event at ``key``, if it is shown."""
        return self._keys.get(key)

    def note(self, entry: Entry, key: Key) -> None:
        """``entry`` (a line of this window) now shows the event at ``key`` too."""
        entry.keys.append(key)
        self._keys[key] = entry

    def _forget(self, entry: Entry) -> None:
        for key in entry.keys:
            if self._keys.get(key) is entry:
                del self._keys[key]

    def remove(self, entry: Entry) -> None:
        """Take ``entry`` out (if it is still kept), leaving the view where it was."""
        try:
            at = self.entries.index(entry)
        except ValueError:
            return
        anchored = len(self.entries) - 1 - self.anchor.after if self.anchor else None
        del self.entries[at]
        self._forget(entry)
        if self._fold is not None and self._fold[0] is entry:
            self._fold = None
        if self.marker is entry:
            self.marker = None
        if self.anchor is None or anchored is None:
            return
        if at > anchored:
            self.anchor.after -= 1
        elif at == anchored:
            self.anchor.row = -1  # the entry before it takes its place
        if not self.entries:
            self.anchor = None
        elif self.anchor.after >= len(self.entries):
            self.anchor.after, self.anchor.row = len(self.entries) - 1, 0

    def clear(self) -> None:
        self.entries.clear()
        self._keys.clear()
        self.anchor = self.marker = self._fold = None

    def new_day(self, day: dt.date | None) -> bool:
        """Note that an event of ``day`` is shown; True if the day before it was another."""
        if day is None:
            return False
        changed = self.day is not None and day != self.day
        self.day = day
        return changed

    def _push(self, entry: Entry) -> None:
        self._fold = None
        full = len(self.entries) == self.entries.maxlen
        if full:
            self._forget(self.entries[0])
        self.entries.append(entry)  # a full deque drops its oldest entry
        for key in entry.keys:
            self._keys[key] = entry
        if self.anchor is not None:
            self.anchor.after += 1
            if full and self.anchor.after >= len(self.entries):
                self.anchor.after, self.anchor.row = len(self.entries) - 1, 0

    def insert(self, block: list[Entry], *, gaps: bool = False) -> None:
        """Put ``block``, the lines of earlier events fetched later (oldest first, each with its
        key and day, all of one room or inbox), in their places: each before the first line of
        a later event of the same room or inbox (and before the unread marker, day line or
        notices just above that line), else at the end. Events already shown are left out. Day
        lines go where the day changes; with ``gaps`` (a room, whose seqs have no holes), a rule
        says how many events are not shown wherever the seqs of the lines put in and of the
        lines around them jump (a rule there before goes: it counted what is now shown).
        A full scrollback first makes room by dropping its oldest lines (as many as the block
        could take, with its day lines and rules). The view stays where it was."""
        block = [e for e in block if e.keys and not all(k in self._keys for k in e.keys)]
        if not block:
            return
        stream = block[0].keys[0][0]
        # Each line brings at most a rule and a day line above it, and each place the lines go
        # to a rule and a day line below (places <= lines): 3 a line and 2 a place. (3 a line
        # and 3 in all was short when the lines fall into many places, and a full deque refuses
        # an insert with IndexError.) A block of one line still makes room for 6.
        most = 3 * len(block) + 3 + 2 * (len(block) - 1)
        maxlen = self.entries.maxlen or len(self.entries) + most
        for _ in range(min(len(self.entries), len(self.entries) + most - maxlen)):
            self._drop_oldest()
        entries = list(self.entries)
        keyed = [(i, seq) for i, e in enumerate(entries) if (seq := e.seq(stream)) is not None]
        # Each line goes before the first later one shown: the block falls into groups, one per
        # place, put in from the last place to the first so that the earlier places stay valid.
        groups: dict[int, list[Entry]] = {}
        j = 0
        for entry in block:
            seq = entry.seq(stream) or 0
            while j < len(keyed) and keyed[j][1] < seq:
                j += 1
            groups.setdefault(keyed[j][0] if j < len(keyed) else len(entries), []).append(entry)
        for later_at in sorted(groups, reverse=True):
            self._insert_group(entries, groups[later_at], later_at, stream, gaps)

    def _insert_group(self, entries: list[Entry], group: list[Entry], later_at: int, stream: str, gaps: bool) -> None:
        """Put ``group`` (lines of consecutive events) before ``entries[later_at]`` (or at the end)."""
        at = later_at
        while later_at < len(entries) and at > 0 and not entries[at - 1].keys:
            at -= 1  # the marker, day line or notices above the later line stay with it
        prev_seq = next((seq for e in reversed(entries[:at]) if (seq := e.seq(stream)) is not None), None)
        day = next((e.day for e in reversed(entries[:at]) if e.day is not None), None)
        last = group[-1].seq(stream) or 0
        out: list[Entry] = []
        for entry in group:
            seq = entry.seq(stream) or 0
            if gaps and prev_seq is not None and seq > prev_seq + 1:
                out.append(_gap(seq - prev_seq - 1))
            prev_seq = seq
            if entry.day is not None and entry.day != day:
                day = entry.day
                out.append(day_entry(day))
            out.append(entry)
        if later_at < len(entries):
            later = entries[later_at]
            run = entries[at:later_at]
            for stale in (e for e in run if e.gap):  # it counted what is now (partly) shown
                self.remove(stale)
            later_seq = later.seq(stream) or 0
            if gaps and later_seq > last + 1:
                out.append(_gap(later_seq - last - 1))
            if later.day not in (None, day) and not any(e.is_day_line for e in run):
                assert later.day is not None
                out.append(day_entry(later.day))
        else:
            self._fold = None  # what comes next is not part of a burst before these lines
            self.day = day or self.day
        # (Groups are put in from the last place to the first: the lines before ``at`` are
        # still those of ``entries``.)
        if self.anchor is not None and at > len(self.entries) - 1 - self.anchor.after:
            self.anchor.after += len(out)  # the lines go below the anchored line
        for i, entry in enumerate(out):
            self.entries.insert(at + i, entry)
            for key in entry.keys:
                self._keys[key] = entry

    def _drop_oldest(self) -> None:
        self._forget(self.entries.popleft())
        if self.anchor is not None and self.anchor.after >= len(self.entries):
            self.anchor.after, self.anchor.row = len(self.entries) - 1, 0
            if not self.entries:
                self.anchor = None
        if self.marker is not None and self.marker not in self.entries:
            self.marker = None

    # --- coming and going -------------------------------------------------------------------

    def enter(self) -> None:
        self.unread, self.mentioned, self.marker_due = 0, False, False

    def leave(self) -> None:
        """You go elsewhere: the old marker has been read past, and a new one waits for the next
        new line."""
        if self.marker is not None:
            self.remove(self.marker)
        self.marker_due = True

    # --- the view ---------------------------------------------------------------------------

    def view(self, columns: int, height: int) -> View:
        """The rows shown in ``height`` rows of ``columns`` cells: the newest ones, or those
        around the row paging left the view at. The view is always full if there are rows
        enough: the oldest entry may be cut, never a row left blank."""
        if not self.entries or height <= 0:
            return View([], (0, 0), (0, 0), True)
        last = len(self.entries) - 1
        end = (last, len(self.entries[last].rows(columns)) - 1)
        a = self.anchor
        if a is not None and a.top:
            shown = self._down((last - a.after, a.row), columns, height)
            if shown.at_end:  # paged down to the end: the newest rows fill the view from below
                shown = self._up(end, columns, height)
        else:
            shown = self._up(end if a is None else (last - a.after, a.row), columns, height)
            if len(shown.rows) < height and shown.top == (0, 0):  # paged up to the oldest row
                shown = self._down((0, 0), columns, height)
        return shown

    def scroll_to(self, entry: Entry, columns: int, height: int) -> None:
        """Scroll so that ``entry`` shows a third of the way down the view (or as near as the
        oldest or newest lines allow)."""
        at = self.entries.index(entry)
        top = self._up((at, 0), columns, max(1, height // 3 + 1)).top
        self.anchor = _Anchor(len(self.entries) - 1 - top[0], top[1], top=True)
        if self.view(columns, height).at_end:
            self.anchor = None

    def page(self, *, up: bool, columns: int, height: int) -> None:
        """PageUp: the top row goes to the bottom; PageDown: the bottom row to the top, and at
        the end the view follows new lines again."""
        shown = self.view(columns, height)
        last = len(self.entries) - 1
        if up and shown.top != (0, 0):
            at, row = shown.top if height > 1 else self._before(shown.top, columns)
            self.anchor = _Anchor(last - at, row, top=False)
        elif not up and self.anchor is not None:
            at, row = shown.bottom
            self.anchor = _Anchor(last - at, row, top=True)
            if self.view(columns, height).at_end:
                self.anchor = None

    def _before(self, position: Position, columns: int) -> Position:
        at, row = position
        return (at, row - 1) if row > 0 else (at - 1, len(self.entries[at - 1].rows(columns)) - 1)

    def _up(self, bottom: Position, columns: int, height: int) -> View:
        """``height`` rows (or all there are) ending with ``bottom``."""
        at, row = bottom
        rows_at = self.entries[at].rows(columns)
        row = len(rows_at) - 1 if not 0 <= row < len(rows_at) else row
        bottom = (at, row)
        out: list[ui.Fragments] = []
        top = bottom
        while at >= 0 and len(out) < height:
            rows = self.entries[at].rows(columns)
            row = len(rows) - 1 if row < 0 else row
            first = max(0, row + 1 - (height - len(out)))
            out[:0] = rows[first : row + 1]
            top = (at, first)
            at, row = at - 1, -1
        last = len(self.entries) - 1
        return View(out, top, bottom, bottom == (last, len(self.entries[last].rows(columns)) - 1))

    def _down(self, top: Position, columns: int, height: int) -> View:
        """``height`` rows (or as many as there are) starting with ``top``."""
        at, row = top
        row = min(max(row, 0), len(self.entries[at].rows(columns)) - 1)
        top = (at, row)
        out: list[ui.Fragments] = []
        bottom = top
        while at < len(self.entries) and len(out) < height:
            rows = self.entries[at].rows(columns)
            upto = min(len(rows), row + height - len(out))
            out += rows[row:upto]
            bottom = (at, upto - 1)
            at, row = at + 1, 0
        last = len(self.entries) - 1
        return View(out, top, bottom, bottom == (last, len(self.entries[last].rows(columns)) - 1))


class Windows:
    """The numbered windows (1 is the first opened) and the current one."""

    def __init__(self) -> None:
        self._windows: list[Window] = []
        self.current: Window | None = None

    def __iter__(self) -> Iterator[Window]:
        return iter(self._windows)

    def __len__(self) -> int:
        return len(self._windows)

    def number(self, window: Window) -> int:
        return self._windows.index(window) + 1

    def get(self, number: int) -> Window | None:
        return self._windows[number - 1] if 1 <= number <= len(self._windows) else None

    def room(self, room: str) -> Window | None:
        return next((w for w in self._windows if w.room == room), None)

    def query(self, nick: str) -> Window | None:
        """The query window with ``nick`` (in any case: nicks are unique case-insensitively)."""
        return next((w for w in self._windows if w.query is not None and w.query.lower() == nick.lower()), None)

    def open(self, window: Window) -> Window:
        """Add ``window`` at the end; the first one becomes current, the others wait in the
        background (where new lines get the unread marker above them)."""
        self._windows.append(window)
        if self.current is None:
            self.current = window
        else:
            window.marker_due = True
        return window

    def close(self, window: Window) -> None:
        """Remove ``window``; if it was the current one, the window before it becomes current."""
        at = self._windows.index(window)
        del self._windows[at]
        if self.current is window:
            self.current = None
            if self._windows:
                self.switch(self._windows[max(0, at - 1)])

    def switch(self, window: Window) -> None:
        if window is self.current:
            return
        if self.current is not None:
            self.current.leave()
        self.current = window
        window.enter()

    def cycle(self, step: int) -> None:
        """The next (``step`` 1) or previous (-1) window by number, round the end."""
        if self._windows:
            at = self._windows.index(self.current) if self.current in self._windows else -step
            self.switch(self._windows[(at + step) % len(self._windows)])
