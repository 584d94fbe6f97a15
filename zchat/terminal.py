"""The interactive chat for people: a prompt that incoming messages never disturb.

Two threads, sharing nothing but messages. The network thread owns the :class:`Client` and does
all socket work: it prints events and runs the lines it is handed. The input thread (the main
one) only reads lines, with prompt_toolkit on a terminal or from stdin otherwise, and hands them
over an ``inproc://`` PAIR socket, which also wakes the network thread's poll at once. On a
terminal, output goes through ``patch_stdout`` so it is printed above the input line (whose
prompt names the current room), never through it. ``/quit``, ``exit``, Ctrl-D and Ctrl-C all
leave the same way: the network thread flushes what was typed, then the client says goodbye.
Should the network thread die of a bug, input stops (at once on a terminal, at the next stdin
line otherwise) and :func:`run` re-raises its error, rather than leave the user typing into
nothing. Protocol rules and rendering live elsewhere; this module owns the conversation.
"""

from __future__ import annotations

import contextlib
import secrets
import sys
import threading
from collections.abc import Callable

import zmq
from prompt_toolkit import PromptSession
from prompt_toolkit.application import Application
from prompt_toolkit.output import create_output
from prompt_toolkit.output.vt100 import Vt100_Output
from prompt_toolkit.patch_stdout import patch_stdout

from zchat import render
from zchat.client import Client
from zchat.errors import ZChatError
from zchat.protocol import Event

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

#: Hands the network thread a line or the quit: ``hand_over(_LINE, text)``; False if it is gone.
_HandOver = Callable[[bytes, str], bool]


class _Network(threading.Thread):
    """The network thread: events out, lines in. Its failure, if any, is kept in ``error``."""

    def __init__(self, client: Client, address: str, on_death: Callable[[], None]) -> None:
        super().__init__(name="zchat-network")
        self.client = client
        self.address = address
        self.on_death = on_death
        self.reason = "quit"
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            _network(self)
        except BaseException as exc:  # a bug: run() re-raises it in the main thread
            self.error = exc
            self.on_death()


def run(client: Client, *, plain: bool) -> None:
    """Chat until the user quits; ``client`` must be connected and is closed on return."""
    address = f"inproc://zchat-terminal-{secrets.token_hex(4)}"
    session = None if plain else _session()

    def on_death() -> None:
        if session is not None:
            _end_prompt(session.app)

    network = _Network(client, address, on_death)
    # On a terminal every line, the network thread's too, goes through patch_stdout from the start.
    output = contextlib.nullcontext() if session is None else patch_stdout()
    with output, client.context.socket(zmq.PAIR) as to_network:
        to_network.setsockopt(zmq.LINGER, 0)
        to_network.setsockopt(zmq.SNDTIMEO, _HANDOVER_CHECK_MS)
        to_network.bind(address)

        def hand_over(what: bytes, data: str) -> bool:
            """Give the network thread a line or the quit; False (at once) if that thread is gone."""
            while network.is_alive():
                with contextlib.suppress(zmq.Again):
                    to_network.send_multipart([what, data.encode("utf-8", "surrogateescape")])
                    return True
            return False

        network.start()
        try:
            if session is None:
                _read_plain(hand_over)
            else:
                _read_tty(client, session, hand_over, network)
        except KeyboardInterrupt:  # Ctrl-C outside the prompt (or anywhere in plain mode)
            hand_over(_QUIT, "quit")
        finally:
            _join(network)
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
            hand_over(_QUIT, reason)
            return
        if not hand_over(_LINE, line):
            return
    hand_over(_QUIT, "quit")


def _session() -> PromptSession[str]:
    output = create_output()
    if isinstance(output, Vt100_Output):
        # Cursor position requests only help place drop-down menus, and this prompt has none.
        # Without them nothing waits for (or warns about) a terminal that never answers, and a
        # late answer on a slow link cannot land in the input as "^[[5;1R".
        output.enable_cpr = False
    return PromptSession(output=output)


def _prompt(client: Client) -> str:
    room = f"#{client.rooms[0]} " if client.rooms else ""
    return f"{room}{client.nick}> "


def _read_tty(client: Client, session: PromptSession[str], hand_over: _HandOver, network: threading.Thread) -> None:
    def check_network() -> None:  # runs once the prompt is up: closes the race with _end_prompt
        if not network.is_alive():
            _exit_app(session.app)

    _show(f"-- joined {', '.join('#' + r for r in client.rooms)} as {client.nick}; /help for commands")
    while network.is_alive():
        try:
            line = session.prompt(lambda: _prompt(client), pre_run=check_network)
        except (EOFError, KeyboardInterrupt):  # Ctrl-D on an empty line, Ctrl-C
            line = "/quit"
        if (reason := _quit_reason(line)) is not None:
            hand_over(_QUIT, reason)
            return
        hand_over(_LINE, line)


def _end_prompt(app: Application[str]) -> None:
    """From another thread: end the running prompt as Ctrl-D would (if one is running)."""
    loop = app.loop
    if loop is not None:
        with contextlib.suppress(RuntimeError):  # that prompt's loop has just closed
            loop.call_soon_threadsafe(_exit_app, app)


def _exit_app(app: Application[str]) -> None:
    if app.future is not None and not app.is_done:
        app.exit(exception=EOFError())


def _network(network: _Network) -> None:
    """Show events and run lines until the input side says quit (its reason goes in ``reason``)."""
    client = network.client
    with client.context.socket(zmq.PAIR) as from_input:
        from_input.setsockopt(zmq.LINGER, 0)
        from_input.connect(network.address)
        while True:
            _show_events(client.poll(1.0, also=[from_input]), client)
            while from_input.poll(0):
                what, data = from_input.recv_multipart()
                if what == _QUIT:
                    network.reason = data.decode("utf-8", "replace")
                    _flush(client)
                    return
                _command(client, data.decode("utf-8", "replace"))


def _flush(client: Client) -> None:
    """Before leaving: let what was typed reach the room, and show what arrived meanwhile."""
    try:
        client.wait_sent(timeout=2.0, raise_on_failure=False)
    except ZChatError as exc:
        _show(f"!! {exc}")
    _show_events(client.poll(0), client)


def _show_events(events: list[Event], client: Client) -> None:
    for event in events:
        _show(render.format_event(event, show_room=len(client.rooms) > 1))


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
            room = arg or None
            _show(f"-- in #{room or client.rooms[0]}: {', '.join(client.who(room))}")
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
        _show(f"!! {exc}")


def _show(line: str) -> None:
    # One write with its newline: print() writes the two apart, and another thread's line could
    # land between them (patch_stdout's proxy keeps a write whole, not a print).
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
