"""A zchat bot in plain pyzmq and the standard library: no zchat import, only docs/protocol.md.

It answers "!ping" with "pong" and "!time" with the UTC time: in the room it was asked in, or,
asked in a private message, privately to the asker.

    python examples/raw_pyzmq_bot.py --nick pingbot --room general --room dev

Against a secure broker (``zchat broker --secure``) give the broker's public key and the bot's
keypair, which the broker must allow to use the bot's nick:

    python examples/raw_pyzmq_bot.py --server-key server.key --key pingbot.key_secret

(A z85 key may start with "-": give it as ``--server-key=KEY``, or argparse takes it for an option.)

The broker has three sockets, and so has the bot: PUSH to ingest (posts), SUB to the feed
([topic, event] pairs) and DEALER to rpc ([b"", request] -> [b"", reply]). Its errors and
private messages come on an inbox topic with a secret only it knows. Ctrl-C or SIGTERM makes it
leave its rooms cleanly ("pingbot left (quit)").
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import re
import secrets
import signal
import sys
import time
from datetime import UTC, datetime
from typing import Any, NoReturn

import zmq
import zmq.auth
from zmq.utils.monitor import parse_monitor_message

Json = dict[str, Any]
#: CURVE keys of one client, z85: (the broker's public key, our public key, our secret key).
Keys = tuple[bytes, bytes, bytes]

_Z85_KEY = re.compile(r"[0-9a-zA-Z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}")
#: What a socket monitor reports when the security handshake fails.
_HANDSHAKE_FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
)


class BrokerUnusable(Exception):
    """The broker will not talk to us (a failed security handshake): one line for the user."""


class RawBot:
    def __init__(self, nick: str, rooms: list[str], *, ingest: str, feed: str, rpc: str, keys: Keys | None) -> None:
        self.nick, self.rooms, self.keys = nick, rooms, keys
        self.ctx = zmq.Context()
        self.push = self.ctx.socket(zmq.PUSH)  # posts: one JSON frame each
        self.sub = self.ctx.socket(zmq.SUB)  # events: [topic, JSON]
        self.rpc = self.ctx.socket(zmq.DEALER)  # requests: [b"", JSON]; replies come back the same way
        # The feed is the first socket we wait on: its monitor tells why a secure handshake fails.
        self.monitor = self.sub.get_monitor_socket(_HANDSHAKE_FAILED)
        for sock, endpoint in ((self.push, ingest), (self.sub, feed), (self.rpc, rpc)):
            sock.setsockopt(zmq.LINGER, 1000 if sock is self.push else 0)  # let a last "pong" leave
            if keys is not None:  # CURVE: before connect, on every socket
                sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = keys
            sock.connect(endpoint)
        # Our inbox: errors about our posts and private messages. The secret keeps others out.
        self.inbox = f"@{nick.lower()}:{secrets.token_urlsafe(18)}"
        self.token = ""
        self.heartbeat = 2.0  # seconds; the hello reply says how often the broker wants one
        self.reqs = itertools.count(1)  # request ids ("req"), echoed in each reply
        # Message ids must never repeat for this nick (the broker drops repeats as resends).
        prefix = secrets.token_hex(4)
        self.ids = (f"{prefix}-{n}" for n in itertools.count(1))

    # --- rpc: requests and replies -------------------------------------------------------

    def send(self, request: Json) -> str:
        req = str(next(self.reqs))
        self.rpc.send_multipart([b"", json.dumps({**request, "req": req}).encode()])
        return req

    def call(self, request: Json, timeout: float = 3.0) -> Json:
        """Send a request and wait for the reply that carries its ``req``."""
        req = self.send(request)
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if self.rpc.poll(int(left * 1000) + 1):
                reply: Json = json.loads(self.rpc.recv_multipart()[-1])
                if reply.get("req") == req:
                    return reply  # anything else is a late reply to an earlier heartbeat
        raise TimeoutError(f"no reply to {request['type']!r} from the broker")

    # --- joining ---------------------------------------------------------------------------

    def wait_until_live(self, timeout: float = 5.0) -> None:
        """Subscribe to a one-off probe topic; the broker's "ready" on it means every earlier
        subscription is live, so we cannot miss our own join or anything after it."""
        probe = f"~{secrets.token_hex(8)}:".encode()
        self.sub.subscribe(probe)
        poller = zmq.Poller()
        poller.register(self.sub, zmq.POLLIN)
        poller.register(self.monitor, zmq.POLLIN)
        deadline = time.monotonic() + timeout
        try:
            while (left := deadline - time.monotonic()) > 0:
                ready = dict(poller.poll(int(left * 1000) + 1))
                if self.monitor in ready:
                    self.handshake_failed(parse_monitor_message(self.monitor.recv_multipart())["event"])
                if self.sub in ready and self.sub.recv_multipart()[0] == probe:
                    self.sub.unsubscribe(probe)
                    return
        finally:
            self.sub.disable_monitor()
            self.monitor.close()
        raise TimeoutError("the broker's feed did not answer the readiness probe")

    def handshake_failed(self, event: int) -> NoReturn:
        """Say why the broker's socket monitor reported a failed security handshake."""
        if self.keys is None:  # a mechanism mismatch: PROTOCOL, or NO_DETAIL if the broker hung up first
            why = "the broker is secure (CURVE): give --server-key and the bot's keys"
        elif event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:  # the broker's ZAP handler said 400
            why = f"the broker refused our key {self.keys[1].decode()}: ask its operator to allow it"
        elif event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:  # CURVE here, NULL there
            why = "the broker is not secure (no CURVE): drop --server-key and the keys"
        else:  # NO_DETAIL: the broker hung up; a wrong server key, or (at times) a broker without CURVE
            why = "the secure handshake failed: is --server-key the broker's public key, and is the broker secure?"
        raise BrokerUnusable(why)

    def hello(self) -> None:
        request = {"type": "hello", "nick": self.nick, "rooms": self.rooms, "inbox": self.inbox}
        reply = self.call(request)
        if not reply["ok"]:
            raise SystemExit(f"{self.nick}: hello refused ({reply['code']}): {reply['error']}")
        self.token = reply["token"]
        self.heartbeat = reply["heartbeat_ms"] / 1000
        print(f"{self.nick}: joined {', '.join(self.rooms)}", file=sys.stderr)

    def leave(self) -> None:
        if self.token:
            with contextlib.suppress(TimeoutError):  # if no reply, the lease ends the session
                self.call({"type": "leave", "token": self.token}, timeout=1.0)
        self.ctx.destroy()

    # --- the conversation ----------------------------------------------------------------

    def post(self, text: str, *, room: str = "", to: str = "") -> None:
        """A message for ``room``, or, with ``to``, for that nick only."""
        post = {"token": self.token, "text": text, "kind": "message", "id": next(self.ids)}
        post.update({"to": to} if to else {"room": room})
        self.push.send(json.dumps(post).encode())

    def answer(self, command: str) -> str | None:
        if command == "!ping":
            return "pong"
        if command == "!time":
            return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        return None

    def on_event(self, event: Json) -> None:
        kind, nick = event.get("kind"), str(event.get("nick", ""))
        if kind == "error":  # on our inbox: the broker refused one of our posts
            print(f"{self.nick}: refused {event.get('id')} ({event.get('code')}): {event.get('text')}", file=sys.stderr)
        if kind not in ("message", "private") or nick.lower() == self.nick.lower():
            return  # joins, leaves, unknown kinds, and our own messages (private ones come back to us too)
        answer = self.answer(str(event.get("text", "")).strip())
        if answer is None:
            return
        if kind == "private":  # asked privately: answer privately
            self.post(answer, to=nick)
        else:
            self.post(answer, room=event["room"])

    def run(self) -> None:
        for room in self.rooms:
            self.sub.subscribe(f"#{room}:".encode())  # the ':' keeps #dev: from matching #devops:
        self.sub.subscribe(self.inbox.encode())  # before hello: nothing addressed to us is missed
        self.wait_until_live()
        self.hello()
        next_beat = time.monotonic() + self.heartbeat
        poller = zmq.Poller()
        poller.register(self.sub, zmq.POLLIN)
        poller.register(self.rpc, zmq.POLLIN)
        while True:
            ready = dict(poller.poll(max(0, int((next_beat - time.monotonic()) * 1000)) + 1))
            while self.sub in ready and self.sub.poll(0):
                _topic, payload = self.sub.recv_multipart()
                self.on_event(json.loads(payload))
            while self.rpc in ready and self.rpc.poll(0):
                reply = json.loads(self.rpc.recv_multipart()[-1])
                if reply.get("code") == "unknown_session":  # lease lapsed or broker restarted
                    self.hello()  # the same inbox: our subscription to it still stands
            if time.monotonic() >= next_beat:
                self.send({"type": "heartbeat", "token": self.token})
                next_beat = time.monotonic() + self.heartbeat


def server_key(value: str) -> bytes:
    """The broker's public key: 40 z85 characters, or a key file (``zchat keygen --name server``)."""
    if _Z85_KEY.fullmatch(value):
        return value.encode("ascii")
    return zmq.auth.load_certificate(value)[0]


def load_keys(args: argparse.Namespace, ap: argparse.ArgumentParser) -> Keys | None:
    """The CURVE keys the options give, or None for an open broker."""
    own = args.key or args.public_key or args.secret_key
    if args.server_key is None:
        if own:
            ap.error("--key, --public-key and --secret-key need --server-key")
        return None
    if args.key and (args.public_key or args.secret_key):
        ap.error("give --key FILE or --public-key and --secret-key, not both")
    try:
        broker = server_key(args.server_key)
        if args.key:
            public, secret = zmq.auth.load_certificate(args.key)
            if secret is None:
                ap.error(f"{args.key} holds no secret key: give the .key_secret file")
        elif args.public_key and args.secret_key:
            public, secret = args.public_key.encode("ascii"), args.secret_key.encode("ascii")
        else:
            ap.error("--server-key needs the bot's keys: --key FILE, or --public-key and --secret-key")
    except (OSError, ValueError) as exc:
        ap.error(f"cannot read a key: {exc}")
    for what, key in (("--server-key", broker), ("public key", public), ("secret key", secret)):
        if not _Z85_KEY.fullmatch(key.decode("ascii", "replace")):
            ap.error(f"{what}: not a 40-character z85 key")
    return broker, public, secret


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="A zchat ping bot in plain pyzmq.")
    ap.add_argument("--nick", default="pingbot")
    ap.add_argument("--room", dest="rooms", action="append", help="room to join; repeat for several (general)")
    ap.add_argument("--host", default="127.0.0.1", help="broker host (127.0.0.1)")
    ap.add_argument("--port", type=int, default=5555, help="base port: ingest, feed = +1, rpc = +2 (5555)")
    for name in ("ingest", "feed", "rpc"):
        ap.add_argument(f"--{name}", metavar="ENDPOINT", help=f"full {name} endpoint; overrides --host/--port")
    secure = ap.add_argument_group("secure broker (CURVE)")
    secure.add_argument(
        "--server-key", metavar="KEY|FILE", help="the broker's public key: z85 (as --server-key=KEY), or its key file"
    )
    secure.add_argument("--key", metavar="FILE", help="the bot's secret key file (from 'zchat keygen')")
    secure.add_argument("--public-key", metavar="Z85", help="the bot's public key (instead of --key)")
    secure.add_argument(
        "--secret-key", metavar="Z85", help="the bot's secret key (instead of --key; visible to 'ps': prefer --key)"
    )
    args = ap.parse_args(argv)
    keys = load_keys(args, ap)
    base = f"tcp://{args.host}"
    bot = RawBot(
        args.nick,
        args.rooms or ["general"],
        ingest=args.ingest or f"{base}:{args.port}",
        feed=args.feed or f"{base}:{args.port + 1}",
        rpc=args.rpc or f"{base}:{args.port + 2}",
        keys=keys,
    )
    for sig in (signal.SIGINT, signal.SIGTERM):  # both stop us like Ctrl-C, even if SIGINT came in ignored
        signal.signal(sig, signal.default_int_handler)
    try:
        bot.run()
    except KeyboardInterrupt:
        pass
    except (TimeoutError, BrokerUnusable) as exc:
        print(f"{args.nick}: {exc}", file=sys.stderr)
        return 1
    finally:
        bot.leave()
    return 0


if __name__ == "__main__":
    sys.exit(main())
