"""A zchat bot in plain pyzmq and the standard library: no zchat import, only docs/protocol.md.

It answers "!ping" with "pong" and "!time" with the UTC time: in the room it was asked in, or,
asked in a private message, privately to the asker.

    python examples/raw_pyzmq_bot.py --nick pingbot --room general --room dev

Against a secure broker (``zchat broker --secure``) give the broker's public key and the bot's
keypair, which the broker must allow to use the bot's nick:

    python examples/raw_pyzmq_bot.py --server-key server.key --key pingbot.key_secret

(A z85 key may start with "-": give it as ``--server-key=KEY``, or argparse takes it for an option.)

The broker has three sockets, and so has the bot: PUSH to ingest (posts), SUB to the public feed
([topic, event] pairs: rooms and the heartbeat) and DEALER to rpc ([b"", request] -> [b"", reply],
and the events for this session alone: private messages, refusals of its posts, notices). The
DEALER's routing id is random and new for each connection: the broker sends this session's
private traffic to it. Protocol 2 as the doc says it:

- posts are numbered 1, 2, 3…; the broker confirms them (``acked``) and says from which number to
  send again when it could not take one, so nothing is lost or doubled;
- a lost rpc connection or a restarted broker: a new DEALER (a new routing id) and a hello that
  resumes the session (no leave or join lines);
- private messages are read from the inbox in order (gaps fetched from its history) and what was
  read is told to the broker in each heartbeat.

Ctrl-C or SIGTERM makes it leave its rooms cleanly ("pingbot left (quit)").
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

PROTOCOL = 2
#: A request unanswered this long means the rpc connection (or the broker) is gone.
DEAD_AFTER = 3.0
#: Posts the broker has not confirmed this long are sent again.
RESEND_AFTER = 3.0

_Z85_KEY = re.compile(r"[0-9a-zA-Z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}")
#: What a socket monitor reports when the security handshake fails.
_HANDSHAKE_FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
)


class BrokerUnusable(Exception):
    """The broker will not talk to us (a failed security handshake): one line for the user."""


class RawBot:
    def __init__(self, nick: str, rooms: list[str], *, ingest: str, feed: str, rpc: str, keys: Keys | None) -> None:
        self.nick, self.rooms, self.keys, self.rpc_endpoint = nick, rooms, keys, rpc
        self.ctx = zmq.Context()
        self.push = self.ctx.socket(zmq.PUSH)  # posts: one JSON frame each
        self.sub = self.ctx.socket(zmq.SUB)  # the public feed: [topic, JSON]
        # The feed is the first socket we wait on: its monitor tells why a secure handshake fails.
        self.monitor = self.sub.get_monitor_socket(_HANDSHAKE_FAILED)
        self.push.setsockopt(zmq.LINGER, 1000)  # let a last "pong" leave
        self.sub.setsockopt(zmq.LINGER, 0)
        self.connect(self.push, ingest)
        self.connect(self.sub, feed)
        self.rpc = self.open_rpc()
        self.token = ""  # our session: in every post and session request
        self.epoch = ""  # the broker run: a new one in a heartbeat means it restarted
        self.heartbeat = 2.0  # seconds; the hello reply says how often the broker wants one
        self.reqs = itertools.count(1)  # request ids ("req"), echoed in each reply
        self.later: list[Json] = []  # rpc messages that came while we waited for a reply
        self.asked_at: float | None = None  # when the oldest unanswered heartbeat went out
        # Numbered posts the broker has not confirmed yet: n -> post (without the token).
        self.outbox: dict[int, Json] = {}
        self.next_n = 1
        self.moved_at = 0.0  # when the outbox last moved (a post confirmed, or sent again)
        self.resend_at: float | None = None  # send the outbox again from resend_from at this time
        self.resend_from = 1
        # Our inbox (private messages, gapless seq) and the newest seq of it we have handled.
        self.inbox, self.inbox_read = "", 0

    def connect(self, sock: zmq.Socket[bytes], endpoint: str) -> None:
        if self.keys is not None:  # CURVE: before connect, on every socket
            sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = self.keys
        sock.connect(endpoint)

    def open_rpc(self) -> zmq.Socket[bytes]:
        """A DEALER with a routing id of its own: random (so no one can guess it and take our
        traffic), and new for each connection (libzmq ignores a connection whose id is in use)."""
        rpc = self.ctx.socket(zmq.DEALER)
        rpc.setsockopt(zmq.LINGER, 0)
        rpc.setsockopt(zmq.ROUTING_ID, secrets.token_hex(16).encode())  # before connect
        self.connect(rpc, self.rpc_endpoint)
        return rpc

    # --- rpc: requests, replies and deliveries ---------------------------------------------

    def send(self, request: Json) -> str:
        req = str(next(self.reqs))
        self.rpc.send_multipart([b"", json.dumps({**request, "req": req}).encode()])
        return req

    def call(self, request: Json, timeout: float = DEAD_AFTER) -> Json:
        """Send a request and wait for the reply that carries its ``req``; whatever else comes
        meanwhile (deliveries, late replies) is handled afterwards."""
        req = self.send(request)
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if self.rpc.poll(int(left * 1000) + 1):
                message: Json = json.loads(self.rpc.recv_multipart()[-1])
                if message["type"] != "event" and message.get("req") == req:
                    return message
                self.later.append(message)
        raise TimeoutError(f"no reply to {request['type']!r} from the broker")

    def on_rpc(self, message: Json) -> None:
        if message["type"] == "event":  # a delivery: an event for this session alone
            self.on_delivered(message["event"])
            return
        self.asked_at = None  # a reply: the broker is there
        if message["type"] == "heartbeat":
            self.confirmed(message["acked"])
            if message["seqs"].get(self.inbox, 0) > self.inbox_read:
                self.catch_up()  # private messages we missed (a delivery can be dropped)
            if self.outbox and time.monotonic() - self.moved_at > RESEND_AFTER:
                self.resend(message["acked"] + 1)  # sent long ago, never confirmed: again
        elif message.get("code") == "unknown_session":  # our lease lapsed: a new session
            self.reconnect()

    def on_delivered(self, event: Json) -> None:
        kind, code, n = event["kind"], event.get("code"), event.get("n") or 0
        if kind == "private":
            self.on_inbox(event)
        elif kind == "duplicate":  # a resend of a post the broker had: confirmed
            self.outbox.pop(n, None)
        elif kind == "error" and event.get("expected") is not None:  # not taken, but it may be
            pause = 0.0 if code == "out_of_order" else 1.0  # rate_limited, unavailable: wait a bit
            self.resend(event["expected"], pause)
        else:  # a final refusal ("rejected": its number is used up), or a notice (away, offline)
            self.outbox.pop(n, None)
            print(f"{self.nick}: {kind} ({code}): {event['text']}", file=sys.stderr)

    # --- joining ---------------------------------------------------------------------------

    def wait_until_live(self, timeout: float = 5.0) -> None:
        """Subscribe to a one-off probe topic after the others; the broker's "ready" on it means
        every earlier subscription is live (behind a relay, which answers no probe, the
        heartbeat is the proof: it is subscribed after the rooms)."""
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
                if self.sub in ready and self.sub.recv_multipart()[0] in (probe, b"!hb:"):
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
        """Start a session, or, with the token of the one we had, go on with it."""
        request = {"type": "hello", "protocol": PROTOCOL, "nick": self.nick, "rooms": self.rooms}
        if self.token:
            request["resume"] = self.token
        reply = self.call(request)
        if not reply["ok"]:
            raise SystemExit(f"{self.nick}: hello refused ({reply['code']}): {reply['error']}")
        self.token, self.epoch, self.heartbeat = reply["token"], reply["epoch"], reply["heartbeat_ms"] / 1000
        if not reply["resumed"]:
            # A new session numbers its posts from 1. What the old one committed is done; the
            # rest goes again, renumbered.
            self.confirmed(reply["prior_acked"] or 0)
            self.outbox = dict(enumerate(self.outbox.values(), 1))
            self.next_n = len(self.outbox) + 1
        self.confirmed(reply["acked"])
        self.resend(reply["acked"] + 1)
        inbox = reply["inbox"]  # open mode: new for each session; secure mode: @nick, kept for us
        if inbox["name"] != self.inbox:
            self.inbox, self.inbox_read = inbox["name"], inbox["read"]
        if inbox["seq"] > self.inbox_read:
            self.catch_up()  # messages that waited for us
        print(f"{self.nick}: {'resumed' if reply['resumed'] else 'joined'} {', '.join(self.rooms)}", file=sys.stderr)

    def reconnect(self) -> None:
        """A new rpc connection (a new routing id), and the session resumed on it (or, if the
        broker no longer has it, a new one). No answer: tried again after DEAD_AFTER."""
        self.rpc.close()
        self.rpc, self.later = self.open_rpc(), []
        try:
            self.hello()
            self.asked_at = None
        except TimeoutError:
            self.asked_at = time.monotonic()

    def leave(self) -> None:
        if self.token:
            with contextlib.suppress(TimeoutError):  # if no reply, the lease ends the session
                self.call({"type": "heartbeat", "token": self.token, "inbox_read": self.inbox_read}, timeout=1.0)
                self.call({"type": "leave", "token": self.token}, timeout=1.0)
        self.ctx.destroy()

    # --- posting: numbered, confirmed, sent again from where the broker says ----------------

    def post(self, text: str, *, room: str = "", to: str = "") -> None:
        """A message for ``room``, or, with ``to``, for that nick only."""
        post = {"text": text, "n": self.next_n, **({"to": to} if to else {"room": room})}
        if not self.outbox:
            self.moved_at = time.monotonic()
        self.outbox[self.next_n] = post
        self.next_n += 1
        self.push_post(post)

    def push_post(self, post: Json) -> None:
        self.push.send(json.dumps({"token": self.token, **post}).encode())

    def confirmed(self, acked: int) -> None:
        """The broker has every post up to ``acked``."""
        for n in [n for n in self.outbox if n <= acked]:
            del self.outbox[n]
            self.moved_at = time.monotonic()

    def resend(self, first: int, pause: float = 0.0) -> None:
        """Send the outbox again from post ``first`` on, after ``pause`` seconds."""
        self.resend_at, self.resend_from = time.monotonic() + pause, first

    def resend_due(self) -> None:
        if self.resend_at is not None and time.monotonic() >= self.resend_at:
            self.resend_at, self.moved_at = None, time.monotonic()
            for n, post in self.outbox.items():
                if n >= self.resend_from:
                    self.push_post(post)

    # --- the conversation ----------------------------------------------------------------

    def answer(self, command: str) -> str | None:
        if command == "!ping":
            return "pong"
        if command == "!time":
            return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        return None

    def on_message(self, event: Json) -> None:
        """A room message, or a private one (which comes back to us too: our own copy)."""
        if event["nick"].lower() == self.nick.lower() or (answer := self.answer(event["text"].strip())) is None:
            return
        if event["kind"] == "private":  # asked privately: answer privately
            self.post(answer, to=event["nick"])
        else:
            self.post(answer, room=event["room"])

    def on_inbox(self, event: Json) -> None:
        """A private message: handled in inbox order, each once; a gap is fetched from history."""
        if event["seq"] > self.inbox_read + 1:
            self.catch_up()
        if event["seq"] == self.inbox_read + 1:
            self.inbox_read = event["seq"]
            self.on_message(event)

    def catch_up(self) -> None:
        """Read the inbox from its history, from where we are to its end."""
        while True:
            request = {"type": "history", "room": self.inbox, "after": self.inbox_read, "token": self.token}
            reply = self.call({**request, "limit": 100})
            if not reply["ok"]:
                return  # asked again at the next heartbeat
            for event in reply["events"]:
                if event["seq"] == self.inbox_read + 1:
                    self.inbox_read = event["seq"]
                    self.on_message(event)
            self.inbox_read = max(self.inbox_read, reply["upto"])  # (nothing is thinned in an inbox)
            if not reply["more"]:
                return

    def on_feed(self, topic: bytes, event: Json) -> None:
        if topic == b"!hb:":  # heartbeats, and the notice that the broker stops
            if event.get("epoch") != self.epoch:  # the broker restarted
                self.reconnect()
        elif event["kind"] == "message":
            self.on_message(event)

    def run(self) -> None:
        for room in self.rooms:
            self.sub.subscribe(f"#{room}:".encode())  # the ':' keeps #dev: from matching #devops:
        self.sub.subscribe(b"!hb:")  # after the rooms: a heartbeat proves them live
        self.wait_until_live()
        self.hello()
        next_beat = time.monotonic() + self.heartbeat
        while True:
            while self.later:
                self.on_rpc(self.later.pop(0))
            timeout = min(next_beat, self.resend_at or next_beat) - time.monotonic()
            ready, _, _ = zmq.select([self.sub, self.rpc], [], [], max(0.0, timeout))
            if self.sub in ready:
                topic, payload = self.sub.recv_multipart()
                self.on_feed(topic, json.loads(payload))
            if self.rpc in ready:
                self.on_rpc(json.loads(self.rpc.recv_multipart()[-1]))
            self.resend_due()
            now = time.monotonic()
            if self.asked_at is not None and now - self.asked_at > DEAD_AFTER:
                self.reconnect()  # no answer: the connection or the broker is gone
            elif now >= next_beat:
                self.send({"type": "heartbeat", "token": self.token, "inbox_read": self.inbox_read})
                self.asked_at = self.asked_at or now
                next_beat = now + self.heartbeat


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
