"""The full-screen chat: a title line, a message area, a status line and an input line no message
disturbs.

Two halves, one per thread, talking only by messages. :class:`Screen` is the prompt_toolkit
Application on the main thread's asyncio loop: the title line (the current window and its
topic), the message area (the current window of the numbered
:class:`~zchat.term.windows.Windows`: rooms, and private conversations that open as messages
come), the status line (the windows by number, with unread counts, and the connection) and the
input line, with its keys, commands, tab completion and paste handling. It shows what you send at
once, as pending, until the broker has it (or refused it: then one key sends it again), hides
whom you ignore, and shows search matches and, on ``/goto``, the message itself in its room's
window. It never touches the :class:`~zchat.client.shell.Client`:
what needs the broker it hands to the network thread as an encoded command. :class:`Front` is
what the network thread (:mod:`zchat.term.plain`) drives: it carries out those commands on the
client it owns and passes events, results and state to the screen, only ever through
``loop.call_soon_threadsafe``. Wording and styling live in :mod:`zchat.term.ui` and
:mod:`zchat.term.commands`, what a window holds in :mod:`zchat.term.windows`; this module owns the
wiring and the behaviour of the screen.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVarTuple, Unpack

import msgspec
from prompt_toolkit.application import Application
from prompt_toolkit.buffer import Buffer
from prompt_toolkit.document import Document
from prompt_toolkit.filters import Always, Condition, Filter
from prompt_toolkit.formatted_text import FormattedText
from prompt_toolkit.history import InMemoryHistory
from prompt_toolkit.input import Input
from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent
from prompt_toolkit.keys import Keys
from prompt_toolkit.layout import HSplit, Layout, Window
from prompt_toolkit.layout.controls import BufferControl, UIContent, UIControl
from prompt_toolkit.layout.dimension import Dimension
from prompt_toolkit.layout.processors import BeforeInput
from prompt_toolkit.output import ColorDepth, Output, create_output
from prompt_toolkit.output.vt100 import Vt100_Output
from prompt_toolkit.styles import Style

from zchat import protocol as p
from zchat.client.shell import Client
from zchat.errors import LocalProtocolError, Refused, ZChatError
from zchat.protocol import Event
from zchat.term import commands as c
from zchat.term import render, ui, windows

__all__ = ["Front", "Screen"]

#: Most rows the input line grows to for a multi-line message.
MAX_INPUT_ROWS = 6
#: Unsent messages that Alt-R can still send again (older ones are only shown).
MAX_FAILED = 100
#: Matches one ``/search`` shows (the broker gives at most 100).
SEARCH_LIMIT = 20
#: Events fetched on each side of a ``/goto`` target that is not in its window.
AROUND = 10
#: Messages of a conversation a query window opens with, from the newest of the inbox.
QUERY_BACKLOG = 100
#: Query windows open at once. Each one holds a scrollback and costs a fetch of the inbox when it
#: opens, and anyone may message you under ever new nicks; past it, private messages from
#: others show in the current window.
MAX_QUERIES = 50

_STYLE = {
    "time": "ansibrightblack",
    "room": "ansibrightblack",
    "system": "ansibrightblack",
    "marker": "ansibrightblack",
    "pending": "ansibrightblack",
    "failed": "ansibrightblack strike",
    "error": "ansired bold",
    "notice": "",
    "private": "ansimagenta",
    "own": "bold",
    "mention": "ansiyellow bold reverse",
    "prompt": "bold",
    "confirm": "ansiyellow bold",
    "found": "ansicyan bold reverse",
    "seq": "ansibrightblack",
    "title": "bg:ansiblue ansiwhite",
    "status": "bg:ansiblue ansiwhite",
    "status.nick": "bold",
    "status.current": "bold",
    "status.unread": "bold",
    "status.mention": "bold ansibrightyellow",
    "status.more": "bold",
    "status.reconnecting": "bold ansibrightyellow",
    "status.offline": "bold ansibrightred",
}
#: Without colour: the same emphasis with attributes only.
_MONO = {
    "found": "bold underline",
    "title": "reverse",
    "status": "reverse",
    "status.mention": "bold underline",
    "mention": "bold reverse",
    "pending": "italic",
    "failed": "strike",
}

_Ts = TypeVarTuple("_Ts")


@dataclass
class _Cycle:
    """Tab completion in progress: pressing Tab again on the text it made takes the next one."""

    original: str
    start: int
    end: int
    candidates: list[str]
    index: int = 0
    made: tuple[str, int] = ("", 0)


@dataclass(eq=False)
class _Outgoing:
    """A message you sent, and the line that shows it until the broker has it."""

    command: c.Message
    window: windows.Window
    entry: windows.Entry
    #: The line as it will read once sent (the entry shows it dim until then).
    line: ui.Fragments
    #: The line saying that it was not sent.
    error: windows.Entry | None = None


class _Sized(UIControl):
    """A control drawn for the size it is given (a FormattedTextControl never learns its width):
    the message rows are wrapped for it, the status line fits it."""

    def __init__(self, rows: Callable[[int, int], Sequence[ui.Fragments]]) -> None:
        self._rows = rows

    def create_content(self, width: int, height: int) -> UIContent:
        rows = self._rows(width, height)
        return UIContent(get_line=lambda i: [*rows[i]], line_count=len(rows), show_cursor=False)


class Screen:
    """The full-screen UI. Its methods run on the UI thread only (the network thread reaches
    them through :class:`Front`)."""

    def __init__(
        self,
        nick: str,
        rooms: Sequence[str],
        *,
        color: bool = True,
        bell: bool = True,
        time_format: str = render.DEFAULT_TIME_FORMAT,
        input: Input | None = None,
        output: Output | None = None,
    ) -> None:
        self.nick = nick
        self.bell = bell
        self.time_format = time_format
        self.windows = windows.Windows()
        for room in rooms:
            self.windows.open(windows.Window(room))
        self.state = "connected"
        #: A long paste waiting for its confirmation.
        self.paste: list[str] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._lobby = windows.Window()  # what is shown while you are in no window
        self._cycle: _Cycle | None = None
        self._send: Callable[[c.NetworkCommand], bool] = lambda _: False
        self._quit: Callable[[str], object] = lambda _: None
        #: The message area's size when last drawn: what paging pages through.
        self._size = (80, 22)
        # The outbox as the screen shows it: messages handed over (by ref) until the network
        # thread names their id, then (by id) until the broker confirms or refuses them.
        self._refs = itertools.count(1)
        self._handed: dict[int, _Outgoing] = {}
        self._pending: dict[str, _Outgoing] = {}
        self._failed: collections.deque[_Outgoing] = collections.deque(maxlen=MAX_FAILED)
        #: Whether the user was told that no more query windows may open (see MAX_QUERIES).
        self._told_queries_full = False
        #: Your away message (None: here), for the status line.
        self.away: str | None = None
        #: Every nick you had in this run: a message sent just before a /nick comes back under
        #: the old one.
        self._nicks = {nick.lower()}
        self.ignored = ui.IgnoreList()
        #: Each room's last search: its words are highlighted in the message ``/goto`` shows.
        self._searched: dict[str, str] = {}

        self.input = Buffer(multiline=True, history=InMemoryHistory(), accept_handler=self._accept)
        self.messages = Window(_Sized(self._message_rows), style="class:messages")
        title = Window(_Sized(self._title_rows), height=1, style="class:title")
        status = Window(_Sized(self._status_rows), height=1, style="class:status")
        input_window = Window(
            BufferControl(self.input, input_processors=[BeforeInput(lambda: FormattedText(self._prompt()))]),
            height=Dimension(min=1, max=MAX_INPUT_ROWS),
            wrap_lines=True,
            dont_extend_height=True,
        )
        output = output or create_output()
        if isinstance(output, Vt100_Output):
            output.enable_cpr = False  # a full-screen app needs no cursor position reports
        style = dict(_STYLE)
        if not color:
            style.update(_MONO)
        self.app: Application[None] = Application(
            layout=Layout(HSplit([title, self.messages, status, input_window]), focused_element=input_window),
            key_bindings=self._key_bindings(),
            style=Style.from_dict(style),
            include_default_pygments_style=False,
            full_screen=True,
            color_depth=None if color else ColorDepth.MONOCHROME,
            input=input,
            output=output,
        )
        where = ", ".join(f"#{r}" for r in rooms) or "no room"
        self.notice(f"-- joined {where} as {nick}; /help for commands")

    @property
    def current(self) -> str | None:
        """The room of the current window."""
        return self.windows.current.room if self.windows.current else None

    @property
    def query(self) -> str | None:
        """The other party of the current window, if it is a query."""
        return self.windows.current.query if self.windows.current else None

    # --- running ---------------------------------------------------------------------------

    def run(self, send: Callable[[bytes], bool], quit: Callable[[str], object], network: threading.Thread) -> None:
        """Show the screen until the user quits or ``network`` dies. ``send`` hands an encoded
        command to the network thread (False: it is gone), ``quit`` hands it the quit."""
        self._send = lambda command: send(c.encode(command))
        self._quit = quit

        def start() -> None:
            self.loop = asyncio.get_running_loop()
            network.start()

        self.app.run(pre_run=start)

    def stop(self) -> None:
        """End the screen (if it still runs), as when the network thread is gone."""
        if self.app.future is not None and not self.app.future.done():
            self.app.exit()

    def quit(self, reason: str = "quit") -> None:
        self._quit(reason)
        self.stop()

    # --- what the network thread reports ---------------------------------------------------

    def add_events(self, events: list[Event]) -> None:
        ring = False
        earlier = self._earlier_sessions(events)
        for i, event in enumerate(events):
            ring |= self._add_event(event, backlog=i in earlier)
        if ring and self.bell:
            self.app.output.bell()
        self.app.invalidate()

    def _earlier_sessions(self, events: list[Event]) -> set[int]:
        """Which of ``events`` lie between a join of yours and your leave after it: an earlier
        session in the backlog (which comes in one piece), not this one."""
        me = self.nick.lower()
        opened: dict[str, int] = {}
        earlier: set[int] = set()
        for i, event in enumerate(events):
            if event.nick.lower() != me or not event.room or event.kind not in ("join", "leave"):
                continue
            if event.kind == "join":
                opened[event.room] = i
            else:
                start = opened.pop(event.room, 0)
                earlier.update(j for j in range(start, i + 1) if events[j].room == event.room)
        return earlier

    def _add_event(self, event: Event, *, backlog: bool = False) -> bool:
        """Show ``event`` where it belongs; True if it should ring the bell."""
        own = event.nick.lower() == self.nick.lower()
        if event.id in self._pending and (event.kind == "error" or event.nick.lower() in self._nicks):
            self._settle(self._pending.pop(event.id), event)  # (only the broker sends errors)
            return False
        hidden = self.ignored.hides(event)
        self.ignored.follow(event)
        if event.kind == "private":
            return not hidden and self._add_private(event)
        window = self.windows.room(event.room) if event.room else None
        mention = ui.is_mention(event, self.nick) and not hidden
        if window is None:  # local, or from a room no longer shown
            if not hidden:
                self._show(self._view(), event, show_room=bool(event.room))
            return mention
        key = event.nick.lower()
        if event.kind == "join":
            window.nicks[key] = event.nick
            window.live |= own
        elif event.kind == "leave":
            window.nicks.pop(key, None)
            window.live &= not own
        elif event.kind == "nick" and event.new_nick:
            window.nicks.pop(key, None)
            window.nicks[event.new_nick.lower()] = event.new_nick
        elif event.kind in ("message", "action"):
            window.nicks.setdefault(key, event.nick)
        live = window.live and not backlog
        if event.kind == "nick" and live and event.new_nick and (query := self.windows.query(event.nick)):
            query.query = event.new_nick  # the conversation goes on, under the new name
            query.nicks = {event.new_nick.lower(): event.new_nick}
        if hidden:
            return False
        # Your own coming and going is the edge of what you read, not something new in it.
        new = live and not (own and event.kind in ("join", "leave"))
        self._show(window, event, new=new, fold=event.kind in ("join", "leave") and not own)
        if own and event.kind == "join" and live and window.topic:
            self._say(window, f"-- topic: {window.topic}")
        if window is not self._view() and live and event.kind in ("message", "action"):
            window.unread += 1
            window.mentioned |= mention
        return mention and live

    def _add_private(self, event: Event) -> bool:
        """A private message goes to the query window of the other party, opened (with what the
        inbox holds of the conversation) if need be, as irssi does; True if it should ring."""
        other = (event.to or event.nick) if event.nick.lower() == self.nick.lower() else event.nick
        window = self._query_window(other)
        if event.seq > 0 and window.find((event.room, event.seq)) is not None:
            return False  # shown already: the conversation fetched for the window had it
        mention = ui.is_mention(event, self.nick)
        self._show(window, event, new=True)
        if window is not self._view():
            window.unread += 1
            window.mentioned |= mention
        return mention

    def _query_window(self, nick: str) -> windows.Window:
        """The query window with ``nick``, opened if need be; the current window if no more
        may open (said once, until one closes)."""
        window = self.windows.query(nick)
        if window is not None:
            return window
        if self._queries_full():
            if not self._told_queries_full:
                self._told_queries_full = True
                self.notice(f"-- {MAX_QUERIES} query windows are open, the most there may be: private messages"
                            " with others show here (/part in a query window closes it)")  # fmt: skip
            return self._view()
        return self._open_query(nick)

    def _queries_full(self) -> bool:
        return sum(w.query is not None for w in self.windows) >= MAX_QUERIES

    def _open_query(self, nick: str, *, switch: bool = False) -> windows.Window:
        """A new query window with ``nick`` (the next number); the network thread is asked for
        the conversation so far (:meth:`add_conversation`)."""
        window = self.windows.open(windows.Window(query=nick, nicks={nick.lower(): nick}))
        if switch:
            self._go(window)
        self._hand_over(c.Query(nick))
        return window

    def add_conversation(self, nick: str, events: list[Event]) -> None:
        """What the inbox holds of the conversation with ``nick`` (oldest first): it goes above
        what the query window shows, each message once."""
        window = self.windows.query(nick)
        if window is not None:
            window.insert([self._entry(e) for e in events if not self.ignored.hides(e)])
            self.app.invalidate()

    def _show(
        self, window: windows.Window, event: Event, *, new: bool = False, fold: bool = False, show_room: bool = False
    ) -> None:
        """Add ``event``'s line to ``window`` (a join or leave to the burst it folds into), after
        a line saying the day changed if it did."""
        day = render.local_day(event.ts)
        if window.new_day(day) and window.day is not None:
            window.append(windows.day_entry(window.day), new=new)
        if fold:
            window.fold(event, self._fold_line, new=new, key=_key(event), day=day)
            return
        window.append(self._entry(event, show_room=show_room), new=new)

    def _fold_line(self, burst: list[Event]) -> ui.Fragments:
        return ui.fold_fragments(burst, time_format=self.time_format)

    def _entry(self, event: Event, *, show_room: bool = False) -> windows.Entry:
        """``event``'s line, knowing where the event stands and its day."""
        line = ui.event_fragments(event, me=self.nick, show_room=show_room, time_format=self.time_format)
        key = _key(event)
        return windows.Entry(line, ui.text_column(line), keys=[key] if key else (), day=render.local_day(event.ts))

    def _say(self, window: windows.Window, text: str, style: str = "class:system") -> None:
        """A line for the person in ``window`` (made inert: it may quote the network)."""
        indent = 3 if text.startswith(("-- ", "!! ")) else 0  # wrapped rows go under the text
        window.append(windows.Entry([(style, render.inert(text))], indent))
        self.app.invalidate()

    def set_status(self, state: str, rooms: list[str], topics: dict[str, str] | None = None) -> None:
        """The client's connection state, rooms and their topics (the first time, and whenever
        they change): a room joined gets the next window number, a room left loses its window."""
        self.state = state
        for room in rooms:
            if self.windows.room(room) is None:
                self.windows.open(windows.Window(room))
        for window in list(self.windows):
            if window.room is not None and window.room not in rooms:
                self.windows.close(window)
            elif window.room is not None and topics is not None:
                window.topic = topics.get(window.room)
        self.app.invalidate()

    def renamed(self, nick: str) -> None:
        """Your nick is now ``nick`` (the broker said so)."""
        self.nick = nick
        self._nicks.add(nick.lower())
        if self.current is None:  # a room's window shows the room's nick event instead
            self.notice(f"-- you are now known as {nick}")
        self.app.invalidate()

    def set_away(self, text: str | None) -> None:
        self.away = text
        if text is None:
            self.notice("-- you are back")
        else:
            self.notice(f"-- you are away: {text} (whoever writes to you is told so; /away to come back)")

    def set_nicks(self, room: str, nicks: list[str]) -> None:
        window = self.windows.room(room)
        if window is not None:
            window.nicks = {n.lower(): n for n in nicks}

    def add_search(self, room: str, text: str, events: list[Event], before: int | None) -> None:
        """The matches of ``/search`` (newest first) in ``room``'s window, with their seqs."""
        window = self.windows.room(room) or self._view()
        self._searched[room] = text
        shown = [e for e in events if not self.ignored.hides(e)]
        hidden = f", {len(events) - len(shown)} of them from nicks you ignore" if len(shown) < len(events) else ""
        older = f" older than #{before}" if before is not None else ""
        if not events:
            self._say(window, f"-- no message in #{room}{older} has all of: {text}")
            return
        self._say(
            window,
            f"-- {len(events)} found in #{room}{older} for: {text} (newest first{hidden}; /goto SEQ shows one in"
            " its place)",
        )
        for event in shown:
            line, indent = ui.found_fragments(event, text, me=self.nick, time_format=self.time_format)
            window.append(windows.Entry(line, indent))
        if len(events) == SEARCH_LIMIT:
            self._say(window, f"-- older ones: /search -before {events[-1].seq} {text}")

    def goto(self, seq: int) -> None:
        """``/goto``: scroll the current room's window to event ``seq``, or ask the network thread
        for the events around it (:meth:`add_around`)."""
        window, room = self.windows.current, self.current
        if window is None or room is None:
            self.error("/goto: go to the window of the room first")
            return
        entry = window.find((room, seq))
        if entry is None:
            self._hand_over(c.Goto(seq, room))
        else:
            self._jump(window, entry, room)

    def add_around(self, room: str, seq: int, events: list[Event]) -> None:
        """The events around ``seq`` in ``room``: in their place in its window, then shown."""
        window = self.windows.room(room)
        if window is None:
            return
        window.insert([self._entry(e) for e in events if not self.ignored.hides(e)], gaps=True)
        entry = window.find((room, seq))
        if entry is None:
            self._say(window, f"-- #{seq} is not among the events of #{room} the broker keeps")
        else:
            self._jump(window, entry, room)

    def _jump(self, window: windows.Window, entry: windows.Entry, room: str) -> None:
        if room in self._searched:
            entry.set(ui.highlight(entry.fragments, self._searched[room]), entry.indent)
        columns, height = self._size
        window.scroll_to(entry, columns, height)
        self.app.invalidate()

    def add_history(self, room: str, events: list[Event]) -> None:
        self.notice(f"-- the last {len(events)} events of #{room}:")
        for event in (e for e in events if not self.ignored.hides(e)):  # as everywhere else
            line = ui.event_fragments(event, me=self.nick, time_format=self.time_format)
            self._view().append(windows.Entry(line, ui.text_column(line)))
        self.notice("-- end of history")

    def notice(self, text: str, style: str = "class:notice") -> None:
        """A line (or lines) for the person, in the current window (made inert: it may quote
        the network)."""
        self._say(self._view(), text, style)

    def error(self, text: str) -> None:
        self.notice(f"!! {text}", "class:error")

    # --- your messages: pending, sent, not sent ------------------------------------------------

    def _post(self, command: c.Message) -> None:
        """Show ``command``'s message at once, dim until the broker has it, and hand it over. A
        private message goes to the query window with its recipient, which opens if need be
        and becomes the current one."""
        command = msgspec.structs.replace(command, ref=next(self._refs))
        now = p.format_ts(time.time())
        if isinstance(command, c.Msg):
            event = Event(0, now, "", "private", self.nick, command.text, to=command.nick)
            window = self._query_window(command.nick)
            self._go(window)
        else:
            kind = "action" if isinstance(command, c.Me) else "message"
            event = Event(0, now, command.room or "", kind, self.nick, command.text)
            window = (self.windows.room(event.room) if event.room else None) or self._view()
        line = ui.event_fragments(event, me=self.nick, time_format=self.time_format)
        out = _Outgoing(command, window, windows.Entry(ui.restyle(line, "class:pending"), ui.text_column(line)), line)
        window.append(out.entry)
        self._handed[command.ref] = out
        self.app.invalidate()
        if not self._send(command):
            self.stop()  # the network thread is gone: run() reports why

    def sent(self, ref: int, msg_id: str) -> None:
        """The network thread sent message ``ref`` as ``msg_id``: the broker's answer names it."""
        out = self._handed.pop(ref, None)
        if out is not None:
            self._pending[msg_id] = out

    def refused(self, ref: int, reason: str, again: bool) -> None:
        """The client would not send message ``ref`` (``again``: it may later)."""
        out = self._handed.pop(ref, None)
        if out is not None:
            error = Event(0, p.format_ts(time.time()), "", "error", p.SYSTEM_NICK, f"not sent: {reason}")
            self._fail(out, error, again=again)

    def _settle(self, out: _Outgoing, event: Event) -> None:
        """The broker's answer to a message of yours: the message itself, or an error."""
        if event.kind == "error":
            self._fail(out, event, again=True)
            return
        key = _key(event)
        if key is not None and out.window.find(key) is not None:
            out.window.remove(out.entry)  # shown already: the conversation fetched for its window had it
        else:
            line = ui.event_fragments(event, me=self.nick, time_format=self.time_format)
            out.entry.set(line, ui.text_column(line))
            out.entry.day = render.local_day(event.ts)
            if key is not None:
                out.window.note(out.entry, key)
        self.app.invalidate()

    def _fail(self, out: _Outgoing, error: Event, *, again: bool) -> None:
        out.entry.set(ui.restyle(out.line, "class:failed"), out.entry.indent)
        line = ui.event_fragments(error, me=self.nick, time_format=self.time_format)
        indent = ui.text_column(line)
        if again:
            line.append(("class:error", " — Alt-R sends it again"))
            self._failed.append(out)
        out.error = windows.Entry(line, indent)
        out.window.append(out.error)
        self.app.invalidate()

    def resend(self) -> None:
        """Alt-R: send the current window's newest unsent message again, as new."""
        view = self._view()
        out = next((o for o in reversed(self._failed) if o.window is view), None)
        if out is None:
            self.notice("-- no unsent message in this window")
            return
        self._failed.remove(out)
        view.remove(out.entry)
        if out.error is not None:
            view.remove(out.error)
        self._post(out.command)

    # --- the message area and the status line ----------------------------------------------

    def _view(self) -> windows.Window:
        return self.windows.current or self._lobby

    def _message_rows(self, columns: int, height: int) -> list[ui.Fragments]:
        self._size = (columns, height)
        return self._view().view(columns, height).rows

    def _status_rows(self, columns: int, height: int) -> list[ui.Fragments]:
        return [self.status_line(columns)]

    def status_line(self, columns: int) -> ui.Fragments:
        shown = [ui.WindowStatus(n, w.name, w.unread, w.mentioned) for n, w in enumerate(self.windows, 1)]
        here = self.windows.current
        number = self.windows.number(here) if here is not None else None
        scrolled = self._view().anchor is not None
        return ui.status_fragments(
            self.nick, shown, number, self.state, columns=columns, scrolled=scrolled, away=self.away is not None
        )

    def _title_rows(self, columns: int, height: int) -> list[ui.Fragments]:
        return [self.title_line(columns)]

    def title_line(self, columns: int) -> ui.Fragments:
        """The current window and its topic (a query: whose conversation it is)."""
        here = self._view()
        topic = f"private messages with {here.query}" if here.query is not None else here.topic
        return ui.title_fragments(here.name, topic, columns)

    def _prompt(self) -> ui.Fragments:
        if self.paste is not None:
            n = len(self.paste)
            return [("class:confirm", f"send {n} pasted lines as {n} messages? [y/N] ")]
        here = self.windows.current
        return [("class:prompt", f"{here.name}> " if here is not None else "> ")]

    def switch(self, room: str) -> None:
        window = self.windows.room(room)
        if window is None:
            self.error(f"not in #{room}: /join #{room}")
            return
        self._go(window)

    def go_to(self, number: int) -> None:
        """Alt-digit: window ``number``, if there is one."""
        window = self.windows.get(number)
        if window is not None:
            self._go(window)

    def cycle_room(self, step: int) -> None:
        self.windows.cycle(step)
        self._cycle = None
        self.app.invalidate()

    def _go(self, window: windows.Window) -> None:
        self.windows.switch(window)
        self._cycle = None
        self.app.invalidate()

    def page(self, up: bool) -> None:
        """PageUp: the top row goes to the bottom; PageDown: the bottom row to the top.

        Worked out on the rows of the last drawing's size, so presses that come faster than the
        screen is redrawn still each turn a page.
        """
        columns, height = self._size
        self._view().page(up=up, columns=columns, height=height)
        self.app.invalidate()

    def clear(self) -> None:
        self._view().clear()
        self.app.invalidate()

    # --- input ------------------------------------------------------------------------------

    def _accept(self, buffer: Buffer) -> bool:
        self.run_line(buffer.text)
        return False

    def run_line(self, line: str) -> None:
        """Do what a line typed and sent with Enter asks."""
        command = c.parse(line, [w.room for w in self.windows if w.room])
        if command is None:
            return
        if isinstance(command, c.Usage):
            self.error(command.message)
        elif isinstance(command, c.Help):
            self.notice(c.HELP)
        elif isinstance(command, c.Clear):
            self.clear()
        elif isinstance(command, c.Rooms):
            self.notice("-- rooms: " + (", ".join(self._room_summary(w) for w in self.windows) or "none"))
        elif isinstance(command, c.Switch):
            self.switch(command.room)
        elif isinstance(command, c.Quit):
            self.quit(command.reason)
        elif isinstance(command, c.Join) and (window := self.windows.room(command.room)) is not None:
            self._go(window)
            self.notice(f"-- you are already in #{command.room} (window {self.windows.number(window)})")
        elif isinstance(command, c.Ignore | c.Unignore):
            self._ignore(command)
        elif isinstance(command, c.Query):
            self._query(command.nick)
        elif isinstance(command, c.Nick) and command.nick == self.nick:
            self.notice(f"-- you are {self.nick} already")
        elif isinstance(command, c.Goto):
            self.goto(command.seq)
        elif isinstance(command, c.Part) and command.room is None and (window := self.windows.current) is not None:
            if window.query is None:
                self._hand_over(command)
            else:
                self.windows.close(window)  # a query is only a window: closing it is leaving it
                self._told_queries_full = False
                self.app.invalidate()
        else:
            self._hand_over(command)

    def _query(self, nick: str) -> None:
        if nick.lower() == self.nick.lower():
            self.notice("-- that is you: /query someone else")
        elif (window := self.windows.query(nick)) is not None:
            self._go(window)
        elif self._queries_full():
            self.error(f"{MAX_QUERIES} query windows are open, the most there may be: /part in one closes it")
        else:
            self._open_query(nick, switch=True)

    def _ignore(self, command: c.Ignore | c.Unignore) -> None:
        nick = command.nick
        if nick is None:
            listed = ", ".join(self.ignored)
            self.notice(f"-- you ignore: {listed}" if listed else "-- you ignore nobody (/ignore NICK hides someone)")
        elif isinstance(command, c.Unignore):
            if self.ignored.remove(nick):
                self.notice(f"-- you no longer ignore {nick}: what they say from now on shows")
            else:
                self.notice(f"-- you do not ignore {nick}")
        elif nick.lower() == self.nick.lower():
            self.error("you cannot ignore yourself")
        elif self.ignored.add(nick):
            self.notice(
                f"-- ignoring {nick}: their messages, private messages, joins and leaves are hidden"
                f" until /unignore {nick} (for this run only)"
            )
        else:
            self.notice(f"-- you already ignore {nick}")

    def _room_summary(self, window: windows.Window) -> str:
        name = f"{self.windows.number(window)}:{window.name}"
        if window is self.windows.current:
            return f"{name} (current)"
        return f"{name} ({window.unread} unread)" if window.unread else name

    def _hand_over(self, command: c.NetworkCommand) -> None:
        if isinstance(command, c.Say) and self.query is not None:
            command = c.Msg(self.query, command.text)  # a line typed in a query window is for its nick
        rooms = c.Say | c.Me | c.History | c.Part | c.Who | c.Topic | c.Search | c.Goto
        if isinstance(command, rooms) and command.room is None:
            if self.query is not None:
                what = "private messages have no actions" if isinstance(command, c.Me) else "that needs a room"
                self.error(f"{what}: @{self.query} is a private window (go to a room's window for it)")
                return
            if self.current is None:
                self.error("not in any room: /join #ROOM")
                return
            command = msgspec.structs.replace(command, room=self.current)
        if isinstance(command, c.Message):
            self._post(command)
        elif not self._send(command):
            self.stop()  # the network thread is gone: run() reports why

    def paste_text(self, data: str) -> None:
        """A bracketed paste: one line is typed in; several are sent as one message each (after
        a confirmation when there are more than :data:`ui.PASTE_CONFIRM_LINES`)."""
        if "\n" not in data and "\r" not in data:
            self.input.insert_text(data)
            return
        doc = self.input.document
        lines = ui.paste_lines(doc.text_before_cursor + data + doc.text_after_cursor)
        self.input.reset()
        if len(lines) > ui.PASTE_CONFIRM_LINES:
            self.paste = lines
        else:
            self._send_lines(lines)

    def answer_paste(self, key: str) -> None:
        lines, self.paste = self.paste or [], None
        if key in ("y", "Y"):
            self._send_lines(lines)
        else:
            self.notice(f"-- paste of {len(lines)} lines not sent")

    def _send_lines(self, lines: list[str]) -> None:
        for line in lines:
            self._hand_over(c.Say(line))

    def complete(self) -> None:
        """Tab: complete the word before the cursor, or take the next candidate."""
        buf = self.input
        cycle = self._cycle
        if cycle is not None and cycle.made == (buf.text, buf.cursor_position):
            cycle.index = (cycle.index + 1) % len(cycle.candidates)
        else:
            me = self.nick.lower()
            nicks = [n for key, n in self._view().nicks.items() if key != me]
            rooms = [w.room for w in self.windows if w.room]
            start, candidates = c.complete(buf.document.text_before_cursor, nicks=nicks, rooms=rooms)
            if not candidates:
                self._cycle = None
                return
            cycle = _Cycle(buf.text, start, buf.cursor_position, candidates)
        choice = cycle.candidates[cycle.index]
        text = cycle.original[: cycle.start] + choice + cycle.original[cycle.end :]
        buf.document = Document(text, cycle.start + len(choice))
        cycle.made = (buf.text, buf.cursor_position)
        self._cycle = cycle

    def _enter(self) -> None:
        if self.paste is not None:
            self.answer_paste("")
        else:
            self.input.validate_and_handle()

    def _interrupt(self) -> None:
        if self.paste is not None:
            self.answer_paste("")
        else:
            self.quit()

    def _clear_screen(self) -> None:
        self.clear()
        self.app.renderer.clear()  # and repaint the whole screen, as Ctrl-L does elsewhere

    def _key_bindings(self) -> KeyBindings:
        """Every key the screen adds to prompt_toolkit's Emacs editing keys, in one table."""
        confirming = Condition(lambda: self.paste is not None)
        empty = Condition(lambda: not self.input.text)
        anytime = Always()
        table: list[tuple[tuple[str | Keys, ...], Filter, Callable[[KeyPressEvent], object]]] = [
            (("enter",), anytime, lambda e: self._enter()),
            (("escape", "enter"), ~confirming, lambda e: self.input.insert_text("\n")),
            (("tab",), ~confirming, lambda e: self.complete()),
            (("c-n",), anytime, lambda e: self.cycle_room(1)),
            (("escape", "right"), anytime, lambda e: self.cycle_room(1)),
            (("c-p",), anytime, lambda e: self.cycle_room(-1)),
            (("escape", "left"), anytime, lambda e: self.cycle_room(-1)),
            (("pageup",), anytime, lambda e: self.page(up=True)),
            (("pagedown",), anytime, lambda e: self.page(up=False)),
            (("escape", "r"), ~confirming, lambda e: self.resend()),
            (("c-l",), anytime, lambda e: self._clear_screen()),
            (("c-d",), empty, lambda e: self._interrupt()),
            (("c-c",), anytime, lambda e: self._interrupt()),
            (("<sigint>",), anytime, lambda e: self._interrupt()),
            ((Keys.BracketedPaste,), ~confirming, lambda e: self.paste_text(e.data)),
            ((Keys.Any,), confirming, lambda e: self.answer_paste(e.data)),
        ]

        # Alt-1 ... Alt-9 and Alt-0 go to windows 1 to 10. Bound here, they also never reach
        # prompt_toolkit's Emacs repeat count (Alt-3 x types xxx), which would multiply the next
        # key: Alt-1 Alt-2 then "/" typed 12 slashes.
        def window_key(number: int) -> Callable[[KeyPressEvent], object]:
            return lambda e: self.go_to(number)

        table += [(("escape", str(n % 10)), anytime, window_key(n)) for n in range(1, 11)]
        kb = KeyBindings()
        for keys, active, handler in table:
            kb.add(*keys, filter=active)(handler)
        return kb


class Front:
    """The network thread's side of the screen: it runs the commands the screen hands over on
    the client, and reports events, results and state changes to the screen."""

    def __init__(self, screen: Screen) -> None:
        self.screen = screen
        self._snapshot: tuple[str, tuple[str, ...], tuple[tuple[str, str], ...]] | None = None

    def _call(self, fn: Callable[[Unpack[_Ts]], None], *args: *_Ts) -> None:
        loop = self.screen.loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the screen has ended and its loop is closed
                loop.call_soon_threadsafe(fn, *args)

    def started(self, client: Client) -> None:
        """The network thread is running: learn who is in each room, for nick completion."""
        self._status(client)
        self._learn_nicks(client)

    def show(self, client: Client, events: list[Event]) -> None:
        self._status(client)
        if events:
            self._call(self.screen.add_events, events)
            if any(e.seq == 0 and e.code == "reconnected" for e in events):
                self._learn_nicks(client)

    def notice(self, text: str) -> None:
        self._call(self.screen.notice, text, "class:notice")

    def run(self, client: Client, data: bytes) -> None:
        """Carry out a command the screen handed over; its failure is one line on the screen
        (for a message, under the message's line)."""
        command = c.decode(data)
        try:
            self._execute(client, command)
        except ZChatError as exc:
            if isinstance(command, c.Message):
                # A text the protocol refuses stays refused; anything else may pass later.
                again = not isinstance(exc, LocalProtocolError)
                self._call(self.screen.refused, command.ref, str(exc), again)
            else:
                self._call(self.screen.error, str(exc))

    def died(self) -> None:
        self._call(self.screen.stop)

    def _execute(self, client: Client, command: c.NetworkCommand) -> None:
        if isinstance(command, c.Nick | c.Away | c.Topic | c.Query | c.Search | c.Goto):
            self._execute_more(client, command)
            return
        if isinstance(command, c.Say):
            self._call(self.screen.sent, command.ref, client.say(command.text, command.room))
        elif isinstance(command, c.Me):
            self._call(self.screen.sent, command.ref, client.me(command.text, command.room))
        elif isinstance(command, c.Msg):
            self._call(self.screen.sent, command.ref, client.msg(command.nick, command.text))
        elif isinstance(command, c.Who):
            names = client.names(command.room)
            self._call(self.screen.set_nicks, names.room, names.nicks)
            self.notice(render.who_line(names.room, names.nicks, names.away))
        elif isinstance(command, c.History):
            events = client.history(command.room, command.count)
            self._call(self.screen.add_history, command.room or "", events)
        elif isinstance(command, c.Join):
            client.join(command.room)
            self._status(client)
            self._call(self.screen.switch, command.room)
            self._learn_nicks(client, [command.room])
        else:
            room = command.room or (client.rooms[0] if client.rooms else "")
            client.part(room, command.reason or "")
            self._status(client)
            self.notice(f"-- you left #{room}")

    def _execute_more(self, client: Client, command: c.Nick | c.Away | c.Topic | c.Query | c.Search | c.Goto) -> None:
        """The commands about you (nick, away), topics, conversations and search."""
        if isinstance(command, c.Nick):
            try:
                nick = client.set_nick(command.nick)
            except Refused as exc:
                raise ZChatError(_nick_refusal(exc, command.nick)) from None
            self._call(self.screen.renamed, nick)
        elif isinstance(command, c.Away):
            self._call(self.screen.set_away, client.away(command.text))
        elif isinstance(command, c.Topic):
            topic = client.topic(command.room, command.text)
            self._status(client)
            if command.text is None:  # set or cleared: the room's topic event says so
                said = f"the topic of #{command.room}: {topic}" if topic else f"#{command.room} has no topic"
                self.notice(render.inert(f"-- {said}"))
        elif isinstance(command, c.Query):
            inbox = client.history(client.inbox, p.MAX_HISTORY)
            talk = windows.conversation(inbox, command.nick)[-QUERY_BACKLOG:]
            self._call(self.screen.add_conversation, command.nick, talk)
        elif isinstance(command, c.Search):
            found = client.search(command.text, command.room, SEARCH_LIMIT, command.before)
            self._call(self.screen.add_search, command.room or "", command.text, found, command.before)
        else:
            around = client.history(command.room, 2 * AROUND + 1, after=max(0, command.seq - AROUND - 1))
            self._call(self.screen.add_around, command.room or "", command.seq, around)

    def _status(self, client: Client) -> None:
        topics = client.session.topics
        snapshot = (client.state, tuple(client.rooms), tuple(sorted(topics.items())))
        if snapshot != self._snapshot:
            self._snapshot = snapshot
            self._call(self.screen.set_status, client.state, list(client.rooms), dict(topics))

    def _learn_nicks(self, client: Client, rooms: Sequence[str] | None = None) -> None:
        for room in list(client.rooms if rooms is None else rooms):
            with contextlib.suppress(ZChatError):  # only completion suffers
                self._call(self.screen.set_nicks, room, client.who(room))


def _key(event: Event) -> windows.Key | None:
    """Where ``event`` stands (room or inbox, and seq); None for one outside any sequence."""
    return (event.room, event.seq) if event.seq > 0 else None


def _nick_refusal(exc: Refused, nick: str) -> str:
    """Why the broker would not give you ``nick``, for the person who asked."""
    if exc.code == "nick_taken":
        return f"/nick: {nick} is taken: someone connected uses it"
    if exc.code == "nick_not_allowed":
        return f"/nick: {exc.reason} (on this secure broker, nicks belong to keys)"
    return f"/nick: {exc.reason}"
