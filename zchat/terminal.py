"""The interactive chat for people: a prompt that incoming messages never disturb.

Two threads, sharing nothing but messages. The network thread owns the :class:`Client` and does
all socket work: it prints events and runs the lines it is handed. The input thread (the main
one) only reads lines, with prompt_toolkit on a terminal or from stdin otherwise, and hands them
over an ``inproc://`` PAIR socket, which also wakes the network thread's poll at once. On a
terminal, output goes through ``patch_stdout`` so it is printed above the input line, never
through it. Protocol rules and rendering live elsewhere; this module owns the conversation.
"""

from __future__ import annotations

import secrets
import sys
import threading

import zmq
from prompt_toolkit import PromptSession
from prompt_toolkit.patch_stdout import patch_stdout

from zchat import render
from zchat.client import Client
from zchat.errors import ZChatError
from zchat.protocol import Event

__all__ = ["HELP", "run"]

HELP = """\
commands:
  /me TEXT        send an action (* alice waves)
  /who [ROOM]     who is in the room
  /quit [REASON]  leave (also: exit, Ctrl-D, Ctrl-C)
  /help           this text"""

_QUIT = b"quit"
_LINE = b"line"


def run(client: Client, *, plain: bool) -> None:
    """Chat until the user quits; ``client`` must be connected and is closed on return."""
    address = f"inproc://zchat-terminal-{secrets.token_hex(4)}"
    with client.context.socket(zmq.PAIR) as to_network:
        to_network.setsockopt(zmq.LINGER, 0)
        to_network.bind(address)
        reason: list[str] = []
        network = threading.Thread(target=_network, args=(client, address, reason), name="zchat-network")
        network.start()
        try:
            if plain:
                _read_plain(to_network)
            else:
                _read_tty(client, to_network, network)
        except KeyboardInterrupt:
            to_network.send_multipart([_QUIT, b"quit"])
        finally:
            network.join()
    # Only now, with the network thread gone and the inproc sockets closed, may the client
    # (which may own the context) be closed.
    client.close(reason[0] if reason else "quit")


def _quit_reason(line: str) -> str | None:
    """The reason if ``line`` asks to quit, else None."""
    words = line.strip()
    if words in ("exit", "/quit"):
        return "quit"
    if words.startswith("/quit "):
        return words.removeprefix("/quit ").strip() or "quit"
    return None


def _read_plain(to_network: zmq.Socket[bytes]) -> None:
    for raw in sys.stdin:
        line = raw.rstrip("\r\n")
        if (reason := _quit_reason(line)) is not None:
            to_network.send_multipart([_QUIT, reason.encode()])
            return
        to_network.send_multipart([_LINE, line.encode("utf-8", "surrogateescape")])
    to_network.send_multipart([_QUIT, b"quit"])


def _read_tty(client: Client, to_network: zmq.Socket[bytes], network: threading.Thread) -> None:
    session: PromptSession[str] = PromptSession()
    with patch_stdout():
        print(f"-- joined {', '.join('#' + r for r in client.rooms)} as {client.nick}; /help for commands")
        while network.is_alive():
            try:
                line = session.prompt(f"{client.nick}> ")
            except EOFError:
                line = "/quit"
            if (reason := _quit_reason(line)) is not None:
                to_network.send_multipart([_QUIT, reason.encode()])
                return
            to_network.send_multipart([_LINE, line.encode("utf-8", "surrogateescape")])


def _network(client: Client, address: str, reason: list[str]) -> None:
    """Show events and run lines until the input side says quit (its reason goes in ``reason``)."""
    with client.context.socket(zmq.PAIR) as from_input:
        from_input.setsockopt(zmq.LINGER, 0)
        from_input.connect(address)
        while True:
            _show_events(client.poll(1.0, also=[from_input]), client)
            while from_input.poll(0):
                what, data = from_input.recv_multipart()
                if what == _QUIT:
                    reason.append(data.decode("utf-8", "replace"))
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
        elif name == "me":
            _show("!! usage: /me TEXT")
        else:
            _show(f"!! unknown command /{render.inert(name)}: /help lists the commands")
    except ZChatError as exc:
        _show(f"!! {exc}")


def _show(line: str) -> None:
    print(line, flush=True)
