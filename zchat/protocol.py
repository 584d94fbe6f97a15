"""The zchat wire protocol: message types, limits, topics, encoding and validation.

This module owns everything that crosses a socket as bytes: the typed structs for what clients
push (posts), ask (requests) and receive (replies and feed events), the nick/room/text rules,
the topic frames of the feed, and the endpoint layout. It is pure Python over msgspec and never
touches a socket or a clock; the broker, the client and the docs all follow it. A decode error
here is always the *peer's* fault and is raised as :class:`RemoteProtocolError`; invalid input
from our own caller is a :class:`LocalProtocolError`.
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass
from typing import Literal, TypeVar

import msgspec

from zchat.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "DEFAULT_ROOM",
    "HEARTBEAT_TOPIC",
    "INBOX_SECRET_CHARS",
    "MAX_FRAME_BYTES",
    "MAX_HISTORY",
    "MAX_ID_CHARS",
    "MAX_ROOMS",
    "MAX_TEXT_BYTES",
    "NICK_RULE",
    "ROOM_RULE",
    "SYSTEM_NICK",
    "Endpoints",
    "Event",
    "Heartbeat",
    "Hello",
    "History",
    "Join",
    "Leave",
    "Part",
    "Post",
    "PostKind",
    "Request",
    "Seqs",
    "Stats",
    "Who",
    "check_nick",
    "check_room",
    "check_text",
    "decode_event",
    "decode_post",
    "decode_reply",
    "decode_request",
    "encode",
    "format_ts",
    "inbox_topic",
    "is_probe_topic",
    "new_inbox_topic",
    "normalize_room",
    "parse_inbox",
    "post_token",
    "probe_topic",
    "request_id",
    "room_topic",
]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5555
DEFAULT_ROOM = "general"

#: Longest message text, in UTF-8 bytes.
MAX_TEXT_BYTES = 4096
#: Largest frame any broker socket accepts (libzmq ``MAXMSGSIZE``); larger ones cost the
#: sender its connection.
MAX_FRAME_BYTES = 64 * 1024
#: Longest client-chosen message or request id.
MAX_ID_CHARS = 64
#: Most rooms one session may be in.
MAX_ROOMS = 32
#: Most events one history request returns.
MAX_HISTORY = 1000

#: Nick rule: an ASCII letter, then up to 23 letters, digits, ``_`` or ``-``. Nicks are unique
#: case-insensitively (``Alice`` and ``alice`` are the same person) but keep their case.
NICK_RULE = "1-24 characters: a letter, then letters, digits, '_' or '-'"
_NICK_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,23}")
#: Room rule: lower-case ASCII letters, digits, ``_`` or ``-``, starting with a letter or digit.
ROOM_RULE = "1-32 characters: lower-case letters, digits, '_' or '-', not starting with '_' or '-'"
_ROOM_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")

#: The ``nick`` of events the broker itself originates (``*`` can never be a user's nick).
SYSTEM_NICK = "*"


# --- validation ---------------------------------------------------------------------------


def check_nick(nick: str) -> str:
    """Return ``nick`` if it follows :data:`NICK_RULE`, else raise LocalProtocolError."""
    if not _NICK_RE.fullmatch(nick):
        raise LocalProtocolError(f"invalid nick {nick!r}: {NICK_RULE}")
    return nick


def normalize_room(room: str) -> str:
    """Accept the ways a person writes a room (``#Dev``, ``dev``) and return the wire name."""
    return room.strip().removeprefix("#").lower()


def check_room(room: str) -> str:
    """Return ``room`` if it follows :data:`ROOM_RULE`, else raise LocalProtocolError."""
    if not _ROOM_RE.fullmatch(room):
        raise LocalProtocolError(f"invalid room {room!r}: {ROOM_RULE}")
    return room


def check_text(text: str) -> str:
    """Return ``text`` if it is non-blank and at most :data:`MAX_TEXT_BYTES` in UTF-8."""
    if not text.strip():
        raise LocalProtocolError("empty message")
    # A character is at most 4 UTF-8 bytes, so short texts need no encoding to be measured.
    if len(text) * 4 > MAX_TEXT_BYTES:
        size = len(text.encode("utf-8", "surrogatepass"))
        if size > MAX_TEXT_BYTES:
            raise LocalProtocolError(f"message too long ({size} bytes; limit {MAX_TEXT_BYTES})")
    return text


# --- topics -------------------------------------------------------------------------------
# ZeroMQ matches subscriptions by byte prefix. Every topic ends in ':', a character no room or
# nick may contain, so subscribing to "#dev:" can never match "#devops:".


def room_topic(room: str) -> bytes:
    """Feed topic of a room's events: ``#<room>:``."""
    return f"#{room}:".encode()


#: Length of the secret part of an inbox topic. In open mode the secret is what keeps private
#: messages private: the broker grants an inbox subscription only with a secret of exactly this
#: length, so no shorter prefix of someone's inbox can match it.
INBOX_SECRET_CHARS = 24
_INBOX_RE = re.compile(rb"@([a-z][a-z0-9_-]{0,23}):([A-Za-z0-9_-]*)")


def inbox_topic(nick: str, secret: str = "") -> bytes:
    """Feed topic of events addressed to one session (errors, private messages):
    ``@<nick>:<secret>``, the nick lower-cased, the secret chosen by the client."""
    return f"@{nick.lower()}:{secret}".encode()


def new_inbox_topic(nick: str) -> bytes:
    """An inbox topic with a fresh random secret."""
    return inbox_topic(nick, secrets.token_urlsafe(INBOX_SECRET_CHARS * 3 // 4))


def parse_inbox(topic: bytes) -> tuple[str, str] | None:
    """``(nick, secret)`` of an inbox topic, or None if ``topic`` is not one."""
    m = _INBOX_RE.fullmatch(topic)
    return (m.group(1).decode(), m.group(2).decode()) if m else None


#: The broker's liveness beacon (about once a second on an idle feed), carrying its epoch.
HEARTBEAT_TOPIC = b"!hb:"


def probe_topic(nonce: str) -> bytes:
    """A one-off topic a subscriber uses to learn that its subscriptions are live."""
    return f"~{nonce}:".encode()


def is_probe_topic(topic: bytes) -> bool:
    return topic.startswith(b"~") and topic.endswith(b":")


# --- endpoints ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoints:
    """Where the broker's three sockets are: ingest (PULL), feed (XPUB) and rpc (ROUTER)."""

    ingest: str
    feed: str
    rpc: str

    @classmethod
    def from_host_port(
        cls,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        *,
        ingest: str | None = None,
        feed: str | None = None,
        rpc: str | None = None,
    ) -> Endpoints:
        """The default layout (ingest=port, feed=port+1, rpc=port+2); explicit endpoints win."""
        h = f"[{host}]" if ":" in host and not host.startswith("[") else host
        return cls(
            ingest=ingest or f"tcp://{h}:{port}",
            feed=feed or f"tcp://{h}:{port + 1}",
            rpc=rpc or f"tcp://{h}:{port + 2}",
        )


# --- wire structs -------------------------------------------------------------------------


#: The kinds of event a client may post.
PostKind = Literal["message", "action"]


class Post(msgspec.Struct, frozen=True):
    """What a client pushes on the ingest socket: one JSON frame.

    Fields the broker does not know (a ``nick``, say) are ignored: the sender is whoever holds
    ``token``.
    """

    token: str
    text: str
    room: str = ""
    kind: PostKind = "message"
    id: str | None = None
    #: A private message: the nick it is for (``room`` is then ignored).
    to: str | None = None


class _Req(msgspec.Struct, frozen=True, tag_field="type"):
    # `req` is echoed in the reply so a DEALER client can match replies to requests.
    req: str | None = None


class Hello(_Req, frozen=True, tag="hello"):
    nick: str = ""
    rooms: list[str] = msgspec.field(default_factory=lambda: [DEFAULT_ROOM])
    #: The inbox topic this client subscribed to (``@<nick>:<secret>``); errors and private
    #: messages for the session go there.
    inbox: str | None = None


class Heartbeat(_Req, frozen=True, tag="heartbeat"):
    token: str = ""


class Leave(_Req, frozen=True, tag="leave"):
    token: str = ""
    reason: str = "quit"


class Join(_Req, frozen=True, tag="join"):
    token: str = ""
    room: str = ""


class Part(_Req, frozen=True, tag="part"):
    token: str = ""
    room: str = ""


class Who(_Req, frozen=True, tag="who"):
    room: str = DEFAULT_ROOM


class Stats(_Req, frozen=True, tag="stats"):
    pass


class History(_Req, frozen=True, tag="history"):
    """Stored events of ``room`` with ``seq > after`` (oldest first), or its last ``limit``."""

    room: str = DEFAULT_ROOM
    after: int | None = None
    limit: int = 50


class Seqs(_Req, frozen=True, tag="seqs"):
    """The newest ``seq`` of each room: how a reader without a session finds tail losses."""

    rooms: list[str] = msgspec.field(default_factory=list)


Request = Hello | Heartbeat | Leave | Join | Part | Who | Stats | History | Seqs


class Event(msgspec.Struct, frozen=True, omit_defaults=True):
    """One event on the feed (the JSON frame after the topic frame).

    ``seq`` is gapless per room and 0 for events outside any room's sequence (errors addressed
    to one session, probe answers). ``nick`` is ``*`` for events the broker originates.
    """

    seq: int
    ts: str
    room: str
    kind: str
    nick: str
    text: str
    id: str | None = None
    reason: str | None = None
    code: str | None = None
    epoch: str | None = None
    dup_of: int | None = None
    to: str | None = None
    #: Made up by the client itself (a lost connection, a gap marker, a message not sent); never
    #: sent by a broker. Left out of the JSON when false.
    local: bool = False


# --- encoding -----------------------------------------------------------------------------

_T = TypeVar("_T")
_encoder = msgspec.json.Encoder()
_post_decoder = msgspec.json.Decoder(Post)
_request_decoder: msgspec.json.Decoder[Request] = msgspec.json.Decoder(Request)
_event_decoder = msgspec.json.Decoder(Event)
_reply_decoder = msgspec.json.Decoder(dict[str, object])


def encode(obj: object) -> bytes:
    """Compact JSON (one line: newlines inside strings are escaped)."""
    return _encoder.encode(obj)


def _decode(decoder: msgspec.json.Decoder[_T], data: bytes, what: str) -> _T:
    try:
        return decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise RemoteProtocolError(f"invalid {what}: {exc}") from None
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        # msgspec lets the last two escape: invalid UTF-8 inside a string, and deep nesting.
        raise RemoteProtocolError(f"malformed {what}: {exc}") from None


def decode_post(data: bytes) -> Post:
    return _decode(_post_decoder, data, "post")


def decode_request(data: bytes) -> Request:
    return _decode(_request_decoder, data, "request")


def decode_event(data: bytes) -> Event:
    return _decode(_event_decoder, data, "event")


def decode_reply(data: bytes) -> dict[str, object]:
    return _decode(_reply_decoder, data, "reply")


class _Salvage(msgspec.Struct):
    # What can still be read from a body that failed validation: any JSON value is accepted.
    req: object = None
    token: object = None
    id: object = None


_salvage_decoder = msgspec.json.Decoder(_Salvage)


def _salvage(data: bytes) -> _Salvage:
    try:
        return _salvage_decoder.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return _Salvage()


def request_id(data: bytes) -> str | None:
    """The ``req`` of a request body that is not a valid request, if it has a readable one, so
    the error reply can still be matched to its request. Never raises."""
    req = _salvage(data).req
    return req if isinstance(req, str) else None


def post_token(data: bytes) -> tuple[str | None, str | None]:
    """``(token, id)`` of a post that is not valid, where readable, so the broker can tell its
    sender what was wrong with it. Never raises."""
    s = _salvage(data)
    return (s.token if isinstance(s.token, str) else None, s.id if isinstance(s.id, str) else None)


class _TsFormatter:
    """ISO-8601 UTC with milliseconds, cached per millisecond because bursts share it."""

    def __init__(self) -> None:
        # One tuple, replaced whole: threads sharing the cache never see one time's number
        # with another time's text.
        self._cache = (-1, "")

    def __call__(self, t: float) -> str:
        ms = int(t * 1000)
        cached, text = self._cache
        if ms != cached:
            sec, frac = divmod(ms, 1000)
            text = f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(sec))}.{frac:03d}Z"
            self._cache = (ms, text)
        return text


format_ts = _TsFormatter()
