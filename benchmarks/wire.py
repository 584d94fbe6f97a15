"""What the bench says on the wire: zchat's protocol as the load speaks it, and the proxy's stand-in.

This is the one module that knows the zchat protocol (docs/protocol.md): the rpc DEALER and its
routing id, ``hello`` and what its reply means, the ``Post`` frame, heartbeats and ``stats``.
When the protocol changes, this is the file to adapt. It already sends what version 2 adds,
which a version-1 broker ignores: ``"protocol": 2`` in ``hello``, a random routing id on every
rpc DEALER, and ``"n"``, the post's number within its session (1, 2, 3, … gapless), in every post.

It also owns the shape of the load that publishers and subscribers share: the room and topic, the
text (``<mark> <monotonic_ns> xxx…``, whose first letter says what the message is) and, for the
proxy, the feed event zchat would publish for a post, byte for byte the same shape, sent as
``[topic, event]`` (zchat's two frames) or as one frame ``topic + event``.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from typing import Literal

import zmq

from benchmarks.fleet import BenchError, Ctx, Json, Sock

#: The protocol version the bench announces in ``hello``.
PROTOCOL = 2

ROOM = "bench"
TOPIC = b"#bench:"

#: What a message is, by the first letter of its text: the measured load, the warm-up that comes
#: before the clock, and the fence each publisher session sends once its warm-up is over.
MEASURED, WARMUP, FENCE = b"M", b"W", b"F"
#: Where the text starts in a feed event.
TEXT_KEY = b'"text":"'
SEQ_KEY = b'"seq":'
#: The proxy's events carry a fixed timestamp of the length zchat's have.
FAKE_TS = b"2000-01-01T00:00:00.000Z"

#: How a publisher's messages look on the ingest socket: a zchat Post (one frame), or the
#: finished feed event for the proxy, in zchat's two frames or in one.
Shape = Literal["post", "event2", "event1"]
#: Frames per message, by shape: on the ingest socket (what a publisher sends), and on the feed
#: (what a subscriber receives: zchat publishes ``[topic, event]``).
INGEST_FRAMES: dict[Shape, int] = {"post": 1, "event2": 2, "event1": 1}
FEED_FRAMES: dict[Shape, int] = {"post": 2, "event2": 2, "event1": 1}


# === rpc ==========================================================================================


def routing_id() -> bytes:
    """A fresh random 16-byte routing id; its first byte is never 0 (libzmq reserves those)."""
    return bytes([1 + secrets.randbelow(255)]) + os.urandom(15)


def rpc_dealer(ctx: Ctx, endpoint: str) -> Sock:
    """A DEALER connected to a broker's rpc socket, with a routing id of its own (protocol 2)."""
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.ROUTING_ID, routing_id())
    sock.connect(endpoint)
    return sock


def send_request(sock: Sock, request: Json) -> None:
    """Send a request on an rpc DEALER: ``[b"", json]``."""
    sock.send_multipart([b"", json.dumps(request, separators=(",", ":")).encode()])


def read_reply(sock: Sock) -> Json:
    """The next reply waiting on an rpc DEALER."""
    reply: Json = json.loads(sock.recv_multipart()[-1])
    return reply


def call(sock: Sock, request: Json, timeout: float) -> Json:
    """One request and its reply (the DEALER must have no other request in flight)."""
    send_request(sock, request)
    if not sock.poll(int(timeout * 1000)):
        raise BenchError(f"no answer to {request['type']!r} in {timeout:.0f} s")
    return read_reply(sock)


def new_inbox(nick: str) -> str:
    """A fresh inbox topic for a session of ``nick``."""
    return f"@{nick.lower()}:{secrets.token_urlsafe(18)}"


def hello(nick: str, rooms: list[str], inbox: str) -> Json:
    return {"type": "hello", "req": "hello", "protocol": PROTOCOL, "nick": nick, "rooms": rooms, "inbox": inbox}


def heartbeat(token: str) -> Json:
    return {"type": "heartbeat", "req": "hb", "token": token}


def stats() -> Json:
    return {"type": "stats", "req": "stats"}


def token_of(reply: Json) -> str:
    """The session token of a hello reply; a refusal raises."""
    if not reply.get("ok"):
        raise BenchError(f"hello refused: {reply}")
    return str(reply["token"])


def heartbeat_ok(reply: bytes) -> bool:
    """Whether a raw heartbeat reply frame says the session is alive (no JSON parse: cheap)."""
    return b'"ok":true' in reply


#: The broker's counter of posts it published in a room (``stats``).
POSTS_COUNTER = "received"


# === the load =====================================================================================


def text(mark: bytes, stamp_ns: int, size: int) -> bytes:
    """A message text: ``<mark> <stamp_ns> xxx…``, ``size`` bytes."""
    head = b"%s %d " % (mark, stamp_ns)
    return head + b"x" * (size - len(head))


@dataclass
class Poster:
    """One publisher session's messages, in the shape its broker takes. For zchat, each Post
    carries the session's token and its number ``n`` in the session (counted here, so it is
    gapless whatever the mark); for the proxy, the event zchat would publish for it."""

    shape: Shape
    nick: bytes
    token: bytes = b""
    seq_base: int = 0  # the proxy's seqs: distinct over all publishers
    n: int = 0

    def frames(self, mark: bytes, txt: bytes) -> list[bytes]:
        self.n += 1
        msg_id = b"%s%d" % (self.nick, self.n)
        if self.shape == "post":
            post = b'{"token":"%s","room":"bench","kind":"message","id":"%s","n":%d,"text":"%s"}'
            return [post % (self.token, msg_id, self.n, txt)]
        seq = self.seq_base + self.n if mark == MEASURED else 0
        event = b'{"seq":%d,"ts":"%s","room":"bench","kind":"message","nick":"%s","text":"%s","id":"%s"}' % (
            seq,
            FAKE_TS,
            self.nick,
            txt,
            msg_id,
        )
        return [TOPIC, event] if self.shape == "event2" else [TOPIC + event]


def parse(payload: bytes) -> tuple[bytes, int, int]:
    """A feed message's last frame: (its mark, its seq, the stamp in its text); mark b"" and
    zeros for an event that is not a bench message (a join, say)."""
    i = payload.find(TEXT_KEY)
    if i < 0:
        return b"", 0, 0
    start = i + len(TEXT_KEY)
    mark = payload[start : start + 1]
    j = payload.find(SEQ_KEY) + len(SEQ_KEY)
    seq = int(payload[j : payload.index(b",", j)])
    stamp = payload[start + 2 : payload.find(b" ", start + 2)]
    return mark, seq, int(stamp) if stamp.isdigit() else 0
