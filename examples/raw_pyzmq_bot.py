"""A zchat bot in plain pyzmq and the standard library: no zchat import, only docs/protocol.md.

It answers "!ping" with "pong" and "!time" with the UTC time, in the room it was asked in.

    python examples/raw_pyzmq_bot.py --nick pingbot --room general --room dev

The broker has three sockets, and so has the bot: PUSH to ingest (posts), SUB to the feed
([topic, event] pairs) and DEALER to rpc ([b"", request] -> [b"", reply]). Ctrl-C or SIGTERM
makes it leave its rooms cleanly ("pingbot left (quit)").
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import secrets
import signal
import sys
import time
from datetime import UTC, datetime
from typing import Any

import zmq

Json = dict[str, Any]


class RawBot:
    def __init__(self, nick: str, rooms: list[str], ingest: str, feed: str, rpc: str) -> None:
        self.nick, self.rooms = nick, rooms
        self.ctx = zmq.Context()
        self.push = self.ctx.socket(zmq.PUSH)  # posts: one JSON frame each
        self.sub = self.ctx.socket(zmq.SUB)  # events: [topic, JSON]
        self.rpc = self.ctx.socket(zmq.DEALER)  # requests: [b"", JSON]; replies come back the same way
        for sock, endpoint in ((self.push, ingest), (self.sub, feed), (self.rpc, rpc)):
            sock.setsockopt(zmq.LINGER, 1000 if sock is self.push else 0)  # let a last "pong" leave
            sock.connect(endpoint)
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
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if self.sub.poll(int(left * 1000) + 1) and self.sub.recv_multipart()[0] == probe:
                self.sub.unsubscribe(probe)
                return
        raise TimeoutError("the broker's feed did not answer the readiness probe")

    def hello(self) -> None:
        reply = self.call({"type": "hello", "nick": self.nick, "rooms": self.rooms})
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

    def say(self, room: str, text: str) -> None:
        post = {"token": self.token, "room": room, "text": text, "kind": "message", "id": next(self.ids)}
        self.push.send(json.dumps(post).encode())

    def on_event(self, event: Json) -> None:
        if event.get("kind") == "error":  # on our inbox: the broker refused one of our posts
            print(f"{self.nick}: refused {event.get('id')}: {event.get('text')}", file=sys.stderr)
        if event.get("kind") != "message" or str(event.get("nick", "")).lower() == self.nick.lower():
            return  # joins, leaves, unknown kinds, and our own messages
        command = str(event.get("text", "")).strip()
        if command == "!ping":
            self.say(event["room"], "pong")
        elif command == "!time":
            self.say(event["room"], datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"))

    def run(self) -> None:
        for room in self.rooms:
            self.sub.subscribe(f"#{room}:".encode())  # the ':' keeps #dev: from matching #devops:
        self.sub.subscribe(f"@{self.nick.lower()}:".encode())  # our inbox: errors for our posts
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
                    self.hello()
            if time.monotonic() >= next_beat:
                self.send({"type": "heartbeat", "token": self.token})
                next_beat = time.monotonic() + self.heartbeat


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="A zchat ping bot in plain pyzmq.")
    ap.add_argument("--nick", default="pingbot")
    ap.add_argument("--room", dest="rooms", action="append", help="room to join; repeat for several (general)")
    ap.add_argument("--host", default="127.0.0.1", help="broker host (127.0.0.1)")
    ap.add_argument("--port", type=int, default=5555, help="base port: ingest, feed = +1, rpc = +2 (5555)")
    for name in ("ingest", "feed", "rpc"):
        ap.add_argument(f"--{name}", metavar="ENDPOINT", help=f"full {name} endpoint; overrides --host/--port")
    args = ap.parse_args(argv)
    base = f"tcp://{args.host}"
    bot = RawBot(
        args.nick,
        args.rooms or ["general"],
        ingest=args.ingest or f"{base}:{args.port}",
        feed=args.feed or f"{base}:{args.port + 1}",
        rpc=args.rpc or f"{base}:{args.port + 2}",
    )
    for sig in (signal.SIGINT, signal.SIGTERM):  # both stop us like Ctrl-C, even if SIGINT came in ignored
        signal.signal(sig, signal.default_int_handler)
    try:
        bot.run()
    except KeyboardInterrupt:
        pass
    except TimeoutError as exc:
        print(f"{args.nick}: {exc}", file=sys.stderr)
        return 1
    finally:
        bot.leave()
    return 0


if __name__ == "__main__":
    sys.exit(main())
