"""The interactive chat for people: the full-screen client on a terminal, plain lines without one.

Two threads, sharing nothing but messages. The network thread owns the :class:`Client` and does
all socket work: it shows events (and appends them to the transcripts, with ``log_dir``) and runs
what it is handed. The input side (the main thread) reads: on a terminal it is the full-screen
:class:`~zchat.term.tui.Screen`, which hands over encoded commands; otherwise it reads stdin lines and
hands them over as they are. Hand-overs travel on an ``inproc://`` PAIR socket, which also wakes
the network thread's poll at once. ``/quit``, ``exit``, Ctrl-D and Ctrl-C all leave the same way:
the network thread flushes what was typed, then the client says goodbye. Should the network
thread die of a bug, input stops (at once on a terminal, at the next stdin line otherwise) and
:func:`run` re-raises its error, rather than leave the user typing into nothing. Protocol rules,
rendering and the screen live elsewhere; this module owns the threads and the plain mode.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import secrets
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import zmq

from zchat.client.shell import Client
from zchat.errors import ZChatError
from zchat.protocol import Event
from zchat.term import render, tui
from zchat.term.transcript import Transcript

__all__ = ["HELP", "run"]

HELP = """\
commands:
  /me TEXT        send an action (* alice waves)
  /msg NICK TEXT  a private message: only NICK sees it
  /who [ROOM]     who is in the room
  /quit [REASON]  leave (also: exit, Ctrl-D, Ctrl-C)
  /help           this text"""

_QUIT = b"quit"
_LINE = b"line"
#: How often a hand-over blocked on a full queue checks that the network thread still lives.
_HANDOVER_CHECK_MS = 100

#: Hands the network thread a line or the quit: ``hand_over(_LINE, data)``; False if it is gone.
_HandOver = Callable[[bytes, bytes], bool]


class _Front(Protocol):
    """What the network thread shows events and results on, and runs hand-overs with."""

    def started(self, client: Client) -> None: ...
    def show(self, client: Client, events: list[Event]) -> None: ...
    def notice(self, text: str) -> None: ...
    def run(self, client: Client, data: bytes) -> None: ...
    def died(self) -> None: ...


class _Plain:
    """Plain lines on stdout; a hand-over is a line as typed."""

    def __init__(self, time_format: str) -> None:
        self.time_format = time_format
        self.day: dt.date | None = None  # of the newest event printed

    def started(self, client: Client) -> None:
        pass

    def show(self, client: Client, events: list[Event]) -> None:
        for event in events:
            day = render.local_day(event.ts)
            if day is not None and self.day is not None and day != self.day:
                _show(render.day_line(day))
            self.day = day or self.day
            _show(render.format_event(event, show_room=len(client.rooms) > 1, time_format=self.time_format))

    def notice(self, text: str) -> None:
        _show(text)

    def run(self, client: Client, data: bytes) -> None:
        _command(client, data.decode("utf-8", "replace"))

    def died(self) -> None:
        pass  # the input loop notices at its next line


class _Network(threading.Thread):
    """The network thread: events out, hand-overs in. Its failure, if any, is kept in ``error``."""

    def __init__(self, client: Client, address: str, front: _Front, transcript: Transcript | None) -> None:
        super().__init__(name="zchat-network")
        self.client = client
        self.address = address
        self.front = front
        self.transcript = transcript
        self.reason = "quit"
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            _network(self)
        except BaseException as exc:  # a bug: run() re-raises it in the main thread
            self.error = exc
            self.front.died()


def run(
    client: Client,
    *,
    plain: bool,
    color: bool = True,
    bell: bool = True,
    log_dir: Path | None = None,
    time_format: str = render.DEFAULT_TIME_FORMAT,
) -> None:
    """Chat until the user quits; ``client`` must be connected and is closed on return.

    ``plain`` reads lines from stdin and prints plain lines; otherwise the full-screen client
    runs on the terminal (``color`` and ``bell`` off for none). ``log_dir`` keeps transcripts;
    ``time_format`` (strftime) is how times read. An interrupt (Ctrl-C outside the screen, which
    reads Ctrl-C as a key) leaves as ``/quit`` does, then raises KeyboardInterrupt.
    """
    address = f"inproc://zchat-terminal-{secrets.token_hex(4)}"
    transcript = Transcript(log_dir, client.nick) if log_dir is not None else None
    try:
        screen = (
            None
            if plain
            else tui.Screen(client.nick or "", client.rooms, color=color, bell=bell, time_format=time_format)
        )
    except BaseException:
        client.close()
        raise
    front = _Plain(time_format) if screen is None else tui.Front(screen)
    network = _Network(client, address, front, transcript)
    try:
        with client.context.socket(zmq.PAIR) as to_network:
            to_network.setsockopt(zmq.LINGER, 0)
            to_network.setsockopt(zmq.SNDTIMEO, _HANDOVER_CHECK_MS)
            to_network.bind(address)

            def hand_over(what: bytes, data: bytes) -> bool:
                """Give the network thread a line or the quit; False (at once) if that thread is gone."""
                while network.is_alive():
                    with contextlib.suppress(zmq.Again):
                        to_network.send_multipart([what, data])
                        return True
                return False

            try:
                if screen is None:
                    network.start()
                    _read_plain(hand_over)
                else:
                    # The screen starts the network thread once its loop runs, to be reachable.
                    screen.run(
                        lambda command: hand_over(_LINE, command),
                        lambda reason: hand_over(_QUIT, reason.encode("utf-8", "surrogateescape")),
                        network,
                    )
            except BaseException:  # Ctrl-C outside the screen (or in plain mode), or a bug
                hand_over(_QUIT, b"quit")
                raise
            finally:
                _join(network)
    finally:
        # Only now, with the network thread gone and the inproc sockets closed, may the client
        # (which may own the context) be closed.
        client.close(network.reason)
    if network.error is not None:
        raise network.error


def _join(network: threading.Thread) -> None:
    """Wait for the network thread (bounded by its flush); a Ctrl-C now cannot hurry it."""
    while network.is_alive():
        with contextlib.suppress(KeyboardInterrupt):
            network.join()


def _quit_reason(line: str) -> str | None:
    """The reason if ``line`` asks to quit, else None."""
    words = line.strip()
    if words in ("exit", "/quit"):
        return "quit"
    if words.startswith("/quit "):
        return words.removeprefix("/quit ").strip() or "quit"
    return None


def _read_plain(hand_over: _HandOver) -> None:
    for raw in sys.stdin:
        line = raw.rstrip("\r\n")
        if (reason := _quit_reason(line)) is not None:
            hand_over(_QUIT, reason.encode("utf-8", "surrogateescape"))
            return
        if not hand_over(_LINE, line.encode("utf-8", "surrogateescape")):
            return
    hand_over(_QUIT, b"quit")


def _network(network: _Network) -> None:
    """Show events and run hand-overs until the input side says quit (its reason goes in ``reason``)."""
    client, front = network.client, network.front
    with client.context.socket(zmq.PAIR) as from_input:
        from_input.setsockopt(zmq.LINGER, 0)
        from_input.connect(network.address)
        front.started(client)
        while True:
            _deliver(network, client.poll(1.0, also=[from_input]))
            while from_input.poll(0):
                what, data = from_input.recv_multipart()
                if what == _QUIT:
                    network.reason = data.decode("utf-8", "replace")
                    _flush(network)
                    return
                front.run(client, data)


def _deliver(network: _Network, events: list[Event]) -> None:
    """Record ``events`` in the transcripts (if kept), then show them."""
    if network.transcript is not None and events:
        # Whose side of a private message is yours goes by your nick now (a /nick changes it):
        # with the nick you started with, a message sent after a /nick was filed under yourself.
        nick = network.client.nick
        network.transcript.me = nick.lower() if nick else None
        try:
            network.transcript.write(events)
        except OSError as exc:
            network.transcript = None
            network.front.notice(f"!! transcripts stopped: {exc}")
    network.front.show(network.client, events)


def _flush(network: _Network) -> None:
    """Before leaving: let what was typed reach the room, and show what arrived meanwhile."""
    try:
        network.client.wait_sent(timeout=2.0, raise_on_failure=False)
    except ZChatError as exc:
        network.front.notice(f"!! {render.inert(str(exc))}")
    _deliver(network, network.client.poll(0))


def _command(client: Client, line: str) -> None:
    if not line.strip():
        return
    try:
        if not line.startswith("/") or line.startswith("//"):
            client.say(line.removeprefix("/"))
            return
        name, _, arg = line[1:].partition(" ")
        arg = arg.strip()
        if name == "me" and arg:
            client.me(arg)
        elif name == "who":
            names = client.names(arg or None)
            _show(render.who_line(names.room, names.nicks, names.away))
        elif name == "help":
            _show(HELP)
        elif name == "msg" and len(arg.split(None, 1)) == 2:
            to, text = arg.split(None, 1)
            client.msg(to, text)
        elif name in ("me", "msg"):
            _show(f"!! usage: {'/me TEXT' if name == 'me' else '/msg NICK TEXT'}")
        else:
            _show(f"!! unknown command /{render.inert(name)}: /help lists the commands")
    except ZChatError as exc:
        _show(f"!! {render.inert(str(exc))}")


def _show(line: str) -> None:
    # One write with its newline: print() writes the two apart.
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
