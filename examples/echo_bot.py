"""An echo bot on the zchat Bot API: it says back, in the same room, whatever anyone else says.

    python examples/echo_bot.py --nick echo --room general --room dev

Against a secure broker, give its public key and the bot's key file (``zchat keygen --name echo``;
the broker must allow that key to use the bot's nick):

    python examples/echo_bot.py --server-key server.key --key ~/.config/zchat/echo.key_secret

:class:`zchat.Bot` does the protocol work (the readiness handshake, hello, heartbeats, ignoring
the bot's own messages so an echo cannot loop, leaving on exit); the bot is the handler.
Ctrl-C or SIGTERM makes it leave its rooms cleanly ("echo left (quit)").
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from zchat import Bot, Endpoints, Event, ZChatError
from zchat.keys import client_curve
from zchat.protocol import DEFAULT_HOST, DEFAULT_PORT, DEFAULT_ROOM


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="A zchat bot that echoes every message.")
    ap.add_argument("--nick", default="echo")
    ap.add_argument("--room", dest="rooms", action="append", help=f"room to join; repeat for several ({DEFAULT_ROOM})")
    ap.add_argument("--host", default=DEFAULT_HOST, help=f"broker host ({DEFAULT_HOST})")
    ap.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"base port ({DEFAULT_PORT}); feed +1, rpc +2")
    for name in ("ingest", "feed", "rpc"):
        ap.add_argument(f"--{name}", metavar="ENDPOINT", help=f"full {name} endpoint; overrides --host/--port")
    ap.add_argument("--server-key", metavar="KEY|FILE", help="a secure broker's public key: z85, or its key file")
    ap.add_argument("--key", metavar="FILE", type=Path, help="with --server-key: the bot's secret key file")
    args = ap.parse_args(argv)
    endpoints = Endpoints.from_host_port(args.host, args.port, ingest=args.ingest, feed=args.feed, rpc=args.rpc)
    if (args.server_key is None) != (args.key is None):
        ap.error("--server-key and --key go together")

    try:
        curve = client_curve(args.server_key, args.key) if args.key else None  # CURVE on all three sockets
        bot = Bot(args.nick, args.rooms or [DEFAULT_ROOM], endpoints=endpoints, curve=curve)
    except ZChatError as exc:  # an invalid nick or room, an unreadable key
        print(f"echo_bot: {exc}", file=sys.stderr)
        return 2

    @bot.on_message
    def echo(bot: Bot, event: Event) -> str | None:
        # Called for messages and actions from others; the returned text goes to event.room.
        return event.text if event.kind == "message" else None

    for sig in (signal.SIGINT, signal.SIGTERM):  # both stop us like Ctrl-C, even if SIGINT came in ignored
        signal.signal(sig, signal.default_int_handler)
    try:
        bot.run()  # connects, then dispatches until interrupted; leaves the rooms on the way out
    except KeyboardInterrupt:
        pass
    except ZChatError as exc:  # no broker there, the nick is taken, or the broker refused the key
        print(f"echo_bot: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
