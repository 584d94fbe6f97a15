"""The full-screen chat: a message area, a status line and an input line no message disturbs.

Two halves, one per thread, talking only by messages. :class:`Screen` is the prompt_toolkit
Application on the main thread's asyncio loop: the message area (one scrollback per room), the
status line (nick, current room, other rooms with unread counts, the connection) and the input
line, with its keys, commands, tab completion and paste handling. It never touches the
:class:`~zchat.client.shell.Client`: what needs the broker it hands to the network thread as an encoded
command. :class:`Front` is what the network thread (:mod:`zchat.term.plain`) drives: it carries out
those commands on the client it owns and passes events, results and state to the screen, only
ever through ``loop.call_soon_threadsafe``. Wording and styling live in :mod:`zchat.term.ui` and
:mod:`zchat.term.commands`; this module owns the wiring and the behaviour of the screen.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVarTuple, Unpack

import msgspec
from prompt_toolkit.application import Application
from prompt_toolkit.buffer import Buffer
from prompt_toolkit.document import Document
from prompt_toolkit.filters import Condition
from prompt_toolkit.formatted_text import FormattedText, StyleAndTextTuples
from prompt_toolkit.formatted_text.utils import split_lines
from prompt_toolkit.history import InMemoryHistory
from prompt_toolkit.input import Input
from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent
from prompt_toolkit.keys import Keys
from prompt_toolkit.layout import HSplit, Layout, VSplit, Window
from prompt_toolkit.layout.controls import BufferControl, FormattedTextControl
from prompt_toolkit.layout.dimension import Dimension
from prompt_toolkit.layout.processors import BeforeInput
from prompt_toolkit.output import ColorDepth, Output, create_output
from prompt_toolkit.output.vt100 import Vt100_Output
from prompt_toolkit.styles import Style

from zchat.client.shell import Client
from zchat.errors import ZChatError
from zchat.protocol import Event
from zchat.term import commands as c
from zchat.term import render, ui

__all__ = ["Front", "Screen"]

#: Lines kept per room.
SCROLLBACK = 2000
#: Most rows the input line grows to for a multi-line message.
MAX_INPUT_ROWS = 6

_STYLE = {
    "time": "ansibrightblack",
    "room": "ansibrightblack",
    "system": "ansibrightblack",
    "error": "ansired bold",
    "notice": "",
    "private": "ansimagenta",
    "own": "bold",
    "mention": "ansiyellow bold reverse",
    "prompt": "bold",
    "confirm": "ansiyellow bold",
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
_MONO = {"status": "reverse", "status.mention": "bold underline", "mention": "bold reverse"}

_Ts = TypeVarTuple("_Ts")


@dataclass
class _Room:
    """One room's scrollback and what the status line and completion need to know of it."""

    lines: collections.deque[StyleAndTextTuples] = field(default_factory=lambda: collections.deque(maxlen=SCROLLBACK))
    unread: int = 0
    mentioned: bool = False
    #: Your own join has been seen, and not your leave after it: what comes now is live, not
    #: backlog (which may hold earlier sessions of yours: see ``_earlier_sessions``).
    live: bool = False
    nicks: dict[str, str] = field(default_factory=dict)  # lower case -> as written
    #: Lines between the newest and the one kept in view; 0 follows new messages.
    scroll: int = 0
    #: The line kept in view is at the top of it (after PageUp), not the bottom.
    kept_at_top: bool = False


@dataclass
class _Cycle:
    """Tab completion in progress: pressing Tab again on the text it made takes the next one."""

    original: str
    start: int
    end: int
    candidates: list[str]
    index: int = 0
    made: tuple[str, int] = ("", 0)


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
        input: Input | None = None,
        output: Output | None = None,
    ) -> None:
        self.nick = nick
        self.bell = bell
        self.rooms: dict[str, _Room] = {r: _Room() for r in rooms}
        self.current: str | None = rooms[0] if rooms else None
        self.state = "connected"
        #: A long paste waiting for its confirmation.
        self.paste: list[str] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._lobby = _Room()  # what is shown while you are in no room
        self._cycle: _Cycle | None = None
        self._send: Callable[[c.NetworkCommand], bool] = lambda _: False
        self._quit: Callable[[str], object] = lambda _: None

        self.input = Buffer(multiline=True, history=InMemoryHistory(), accept_handler=self._accept)
        self.messages = Window(
            FormattedTextControl(self._message_text),
            wrap_lines=True,
            always_hide_cursor=True,
            style="class:messages",
        )
        status = VSplit(
            [
                Window(FormattedTextControl(lambda: FormattedText(self._status()[0]))),
                Window(FormattedTextControl(lambda: FormattedText(self._status()[1])), dont_extend_width=True),
            ],
            height=1,
            style="class:status",
        )
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
            layout=Layout(HSplit([self.messages, status, input_window]), focused_element=input_window),
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
        room = self.rooms.get(event.room) if event.room and event.kind != "private" else None
        own = event.nick.lower() == self.nick.lower()
        mention = ui.is_mention(event, self.nick)
        if room is None:  # private, local, or from a room no longer shown
            self._append(self._view(), ui.event_fragments(event, me=self.nick, show_room=bool(event.room)))
            return mention
        key = event.nick.lower()
        if event.kind == "join":
            room.nicks[key] = event.nick
            room.live |= own
        elif event.kind == "leave":
            room.nicks.pop(key, None)
            room.live &= not own
        elif event.kind in ("message", "action"):
            room.nicks.setdefault(key, event.nick)
        self._append(room, ui.event_fragments(event, me=self.nick))
        live = room.live and not backlog
        if room is not self._view() and live and event.kind in ("message", "action"):
            room.unread += 1
            room.mentioned |= mention
        return mention and live

    def set_status(self, state: str, rooms: list[str]) -> None:
        """The client's connection state and rooms (the first time, and whenever they change)."""
        self.state = state
        self.rooms = {r: self.rooms.get(r) or _Room() for r in rooms}
        if self.current not in self.rooms:
            self.current = rooms[0] if rooms else None
        self.app.invalidate()

    def set_nicks(self, room: str, nicks: list[str]) -> None:
        if room in self.rooms:
            self.rooms[room].nicks = {n.lower(): n for n in nicks}

    def add_history(self, room: str, events: list[Event]) -> None:
        self.notice(f"-- the last {len(events)} events of #{room}:")
        for event in events:
            self._append(self._view(), ui.event_fragments(event, me=self.nick))
        self.notice("-- end of history")

    def notice(self, text: str, style: str = "class:notice") -> None:
        """A line (or lines) for the person, in the current room's view (made inert: it may
        quote the network)."""
        self._append(self._view(), [(style, render.inert(text))])
        self.app.invalidate()

    def error(self, text: str) -> None:
        self.notice(f"!! {text}", "class:error")

    # --- the message area and the status line ----------------------------------------------

    def _view(self) -> _Room:
        return self.rooms.get(self.current or "", self._lobby)

    def _append(self, room: _Room, entry: ui.Fragments) -> None:
        lines = list(split_lines(entry))
        room.lines.extend(lines)
        if room.scroll:
            room.scroll = min(room.scroll + len(lines), len(room.lines) - 1)  # keep the same lines in view

    def _message_text(self) -> StyleAndTextTuples:
        room = self._view()
        last = len(room.lines) - 1
        # The window scrolls as little as it takes to show this (invisible) cursor: at the end of
        # the newest line, or of the line paging went to (its start, if that is the top line).
        keep = last - room.scroll
        out: StyleAndTextTuples = []
        at_start = room.scroll > 0 and room.kept_at_top
        for i, line in enumerate(room.lines):
            if i == keep and at_start:
                out.append(("[SetCursorPosition]", ""))
            out.extend(line)
            if i == keep and not at_start:
                out.append(("[SetCursorPosition]", ""))
            if i < last:
                out.append(("", "\n"))
        return out

    def _status(self) -> tuple[ui.Fragments, ui.Fragments]:
        rooms = [ui.RoomStatus(name, r.unread, r.mentioned) for name, r in self.rooms.items()]
        return ui.status_fragments(self.nick, self.current, rooms, self.state, scrolled=self._view().scroll > 0)

    def _prompt(self) -> ui.Fragments:
        if self.paste is not None:
            n = len(self.paste)
            return [("class:confirm", f"send {n} pasted lines as {n} messages? [y/N] ")]
        return [("class:prompt", f"#{self.current}> " if self.current else "> ")]

    def switch(self, room: str) -> None:
        if room not in self.rooms:
            self.error(f"not in #{room}: /join #{room}")
            return
        self.current = room
        self.rooms[room].unread = 0
        self.rooms[room].mentioned = False
        self._cycle = None
        self.app.invalidate()

    def cycle_room(self, step: int) -> None:
        names = list(self.rooms)
        if names:
            at = names.index(self.current) if self.current in names else -step
            self.switch(names[(at + step) % len(names)])

    def page(self, up: bool) -> None:
        """PageUp: the top line goes to the bottom; PageDown: the bottom line to the top.

        Worked out from where the last page left the view, so presses that come faster than
        the screen is redrawn still each turn a page.
        """
        room = self._view()
        info = self.messages.render_info
        last = len(room.lines) - 1
        step = max(1, (info.window_height if info else 24) - 1)
        if room.scroll == 0 and not up:
            return
        keep = last - room.scroll  # at the top edge of the view after PageUp, the bottom after PageDown
        if room.scroll == 0:
            top = info.first_visible_line() if info else last - step
            target = top - step
        elif up:
            target = keep - step if room.kept_at_top else keep - 2 * step
        else:
            target = keep + 2 * step if room.kept_at_top else keep + step
        room.kept_at_top = up
        room.scroll = max(0, last - max(0, target))
        self.app.invalidate()

    def clear(self) -> None:
        room = self._view()
        room.lines.clear()
        room.scroll = 0
        self.app.invalidate()

    # --- input ------------------------------------------------------------------------------

    def _accept(self, buffer: Buffer) -> bool:
        self.run_line(buffer.text)
        return False

    def run_line(self, line: str) -> None:
        """Do what a line typed and sent with Enter asks."""
        command = c.parse(line)
        if command is None:
            return
        if isinstance(command, c.Usage):
            self.error(command.message)
        elif isinstance(command, c.Help):
            self.notice(c.HELP)
        elif isinstance(command, c.Clear):
            self.clear()
        elif isinstance(command, c.Rooms):
            self.notice("-- rooms: " + (", ".join(self._room_summary(r) for r in self.rooms) or "none"))
        elif isinstance(command, c.Switch):
            self.switch(command.room)
        elif isinstance(command, c.Quit):
            self.quit(command.reason)
        elif isinstance(command, c.Join) and command.room in self.rooms:
            self.switch(command.room)
        else:
            self._hand_over(command)

    def _room_summary(self, name: str) -> str:
        room = self.rooms[name]
        if name == self.current:
            return f"#{name} (current)"
        return f"#{name} ({room.unread} unread)" if room.unread else f"#{name}"

    def _hand_over(self, command: c.NetworkCommand) -> None:
        if isinstance(command, c.Say | c.Me | c.History | c.Part | c.Who) and command.room is None:
            if self.current is None:
                self.error("not in any room: /join #ROOM")
                return
            command = msgspec.structs.replace(command, room=self.current)
        if not self._send(command):
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
            start, candidates = c.complete(buf.document.text_before_cursor, nicks=nicks, rooms=self.rooms)
            if not candidates:
                self._cycle = None
                return
            cycle = _Cycle(buf.text, start, buf.cursor_position, candidates)
        choice = cycle.candidates[cycle.index]
        text = cycle.original[: cycle.start] + choice + cycle.original[cycle.end :]
        buf.document = Document(text, cycle.start + len(choice))
        cycle.made = (buf.text, buf.cursor_position)
        self._cycle = cycle

    def _key_bindings(self) -> KeyBindings:
        kb = KeyBindings()
        confirming = Condition(lambda: self.paste is not None)
        empty = Condition(lambda: not self.input.text)

        @kb.add("enter")
        def _enter(event: KeyPressEvent) -> None:
            if self.paste is not None:
                self.answer_paste("")
            else:
                self.input.validate_and_handle()

        @kb.add("escape", "enter", filter=~confirming)
        def _newline(event: KeyPressEvent) -> None:
            self.input.insert_text("\n")

        @kb.add("tab", filter=~confirming)
        def _tab(event: KeyPressEvent) -> None:
            self.complete()

        @kb.add("c-n")
        @kb.add("escape", "right")
        def _next(event: KeyPressEvent) -> None:
            self.cycle_room(1)

        @kb.add("c-p")
        @kb.add("escape", "left")
        def _previous(event: KeyPressEvent) -> None:
            self.cycle_room(-1)

        @kb.add("pageup")
        def _up(event: KeyPressEvent) -> None:
            self.page(up=True)

        @kb.add("pagedown")
        def _down(event: KeyPressEvent) -> None:
            self.page(up=False)

        @kb.add("c-l")
        def _clear(event: KeyPressEvent) -> None:
            self.clear()
            event.app.renderer.clear()  # and repaint the whole screen, as Ctrl-L does elsewhere

        @kb.add("c-d", filter=empty)
        @kb.add("c-c")
        @kb.add("<sigint>")
        def _quit(event: KeyPressEvent) -> None:
            if self.paste is not None:
                self.answer_paste("")
            else:
                self.quit()

        @kb.add(Keys.BracketedPaste)
        def _paste(event: KeyPressEvent) -> None:
            if self.paste is None:
                self.paste_text(event.data)

        @kb.add("<any>", filter=confirming)
        def _answer(event: KeyPressEvent) -> None:
            self.answer_paste(event.data)

        return kb


class Front:
    """The network thread's side of the screen: it runs the commands the screen hands over on
    the client, and reports events, results and state changes to the screen."""

    def __init__(self, screen: Screen) -> None:
        self.screen = screen
        self._snapshot: tuple[str, tuple[str, ...]] | None = None

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
        """Carry out a command the screen handed over; its failure is one line on the screen."""
        command = c.decode(data)
        try:
            self._execute(client, command)
        except ZChatError as exc:
            self._call(self.screen.error, str(exc))

    def died(self) -> None:
        self._call(self.screen.stop)

    def _execute(self, client: Client, command: c.NetworkCommand) -> None:
        if isinstance(command, c.Say):
            client.say(command.text, command.room)
        elif isinstance(command, c.Me):
            client.me(command.text, command.room)
        elif isinstance(command, c.Msg):
            client.msg(command.nick, command.text)
        elif isinstance(command, c.Who):
            room = command.room or (client.rooms[0] if client.rooms else None)
            nicks = client.who(room)
            self._call(self.screen.set_nicks, room or "", nicks)
            self.notice(f"-- in #{room}: {', '.join(render.inert(n) for n in nicks)}")
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
            client.part(room)
            self._status(client)
            self.notice(f"-- you left #{room}")

    def _status(self, client: Client) -> None:
        snapshot = (client.state, tuple(client.rooms))
        if snapshot != self._snapshot:
            self._snapshot = snapshot
            self._call(self.screen.set_status, client.state, list(client.rooms))

    def _learn_nicks(self, client: Client, rooms: Sequence[str] | None = None) -> None:
        for room in list(client.rooms if rooms is None else rooms):
            with contextlib.suppress(ZChatError):  # only completion suffers
                self._call(self.screen.set_nicks, room, client.who(room))
