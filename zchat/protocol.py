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
import time
from dataclasses import dataclass
from typing import Annotated, Literal, TypeVar

import msgspec

from zchat.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "DEFAULT_ROOM",
    "HEARTBEAT_TOPIC",
    "MAX_AWAY_CHARS",
    "MAX_FRAME_BYTES",
    "MAX_HISTORY",
    "MAX_ID_CHARS",
    "MAX_QUERY_CHARS",
    "MAX_REASON_CHARS",
    "MAX_ROOMS",
    "MAX_SEARCH",
    "MAX_SEQ",
    "MAX_TEXT_BYTES",
    "MAX_TOPIC_CHARS",
    "MIN_ROUTE_BYTES",
    "NICK_RULE",
    "PROTOCOL_VERSION",
    "ROOM_RULE",
    "SYSTEM_NICK",
    "Away",
    "Endpoints",
    "Event",
    "Heartbeat",
    "Hello",
    "History",
    "Join",
    "Leave",
    "Nick",
    "Part",
    "Post",
    "PostKind",
    "Request",
    "Search",
    "Seqs",
    "Stats",
    "Topic",
    "Who",
    "check_nick",
    "check_room",
    "check_text",
    "decode_event",
    "decode_post",
    "decode_reply",
    "decode_request",
    "delivered_event",
    "delivery",
    "encode",
    "format_ts",
    "inbox_name",
    "is_inbox",
    "is_probe_topic",
    "normalize_room",
    "post_token",
    "probe_topic",
    "request_id",
    "room_topic",
]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5555
DEFAULT_ROOM = "general"

#: The wire protocol this module speaks. A broker refuses a ``hello`` of any other version with
#: one clear line (code ``protocol``); a hello without the field is version 1.
PROTOCOL_VERSION = 2

#: Longest message text, in UTF-8 bytes.
MAX_TEXT_BYTES = 4096
#: Largest frame any broker socket accepts (libzmq ``MAXMSGSIZE``); larger ones cost the
#: sender its connection.
MAX_FRAME_BYTES = 64 * 1024
#: Longest client-chosen message or request id, and longest session token.
MAX_ID_CHARS = 64
#: Most rooms one session may be in.
MAX_ROOMS = 32
#: Most events one history request returns.
MAX_HISTORY = 1000
#: Most results one search returns.
MAX_SEARCH = 100
#: Largest ``seq``, ``after`` or post number anyone may name: beyond it a value is ``invalid``
#: (SQLite's integers end at 2**63 - 1; JavaScript's exact ones at 2**53).
MAX_SEQ = 2**53
#: Longest reason (leave, part), away message, topic and search text, in characters.
MAX_REASON_CHARS = 200
MAX_AWAY_CHARS = 200
MAX_TOPIC_CHARS = 400
MAX_QUERY_CHARS = 200
#: Refused post numbers a hello or heartbeat reply names at most, the latest: when it names this
#: many, whether a processed post below the smallest of them was refused is not known.
MAX_REFUSED = 32
#: Shortest routing id a session's rpc connection may have (client-chosen, random): private
#: traffic is routed to it, so it must be unguessable (see docs/protocol.md, "Your route").
MIN_ROUTE_BYTES = 16

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
    if not text or text.isspace():  # (what strip() would leave empty, without a copy)
        raise LocalProtocolError("empty message")
    # A character is at most 4 UTF-8 bytes, so short texts need no encoding to be measured.
    if len(text) * 4 > MAX_TEXT_BYTES:
        size = len(text.encode("utf-8", "surrogatepass"))
        if size > MAX_TEXT_BYTES:
            raise LocalProtocolError(f"message too long ({size} bytes; limit {MAX_TEXT_BYTES})")
    return text


# --- inboxes ------------------------------------------------------------------------------
# Private messages are stored per inbox, a stream with its own gapless seq, read like a room
# but only by the session (secure mode: the key) it belongs to, and delivered on that session's
# own rpc connection, never on the feed. An inbox's name starts with '@', which no room can.


def is_inbox(name: str) -> bool:
    return name.startswith("@")


def inbox_name(nick: str, session_id: str | None = None) -> str:
    """The inbox of ``nick``: ``@nick`` in secure mode, where a nick belongs to a key and its
    messages wait for it; ``@nick~<session id>`` in open mode, where a nick belongs to nobody
    once its session ends, so each session has an inbox of its own."""
    name = f"@{nick.lower()}"
    return f"{name}~{session_id}" if session_id else name


# --- topics -------------------------------------------------------------------------------
# ZeroMQ matches subscriptions by byte prefix. Every topic ends in ':', a character no room may
# contain, so subscribing to "#dev:" can never match "#devops:". The feed is public: it carries
# rooms, the heartbeat and readiness probes, nothing addressed to one session.


def room_topic(room: str) -> bytes:
    """Feed topic of a room's events: ``#<room>:``."""
    return f"#{room}:".encode()


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
# Every integer and string a peer sends is range-checked here, at decoding: a value out of range
# is an "invalid" answer, never an exception further in. Names (nicks, rooms) are checked against
# their rules by the broker, which says which rule.

Id = Annotated[str, msgspec.Meta(max_length=MAX_ID_CHARS)]
Name = Annotated[str, msgspec.Meta(max_length=64)]
Seq = Annotated[int, msgspec.Meta(ge=0, le=MAX_SEQ)]
PostNumber = Annotated[int, msgspec.Meta(ge=1, le=MAX_SEQ)]
#: Texts are measured in UTF-8 bytes by check_text, whose refusal is final (``rejected``: the
#: post number is used up); this bound, the largest frame, only keeps decoding cheap. A bound of
#: MAX_TEXT_BYTES characters here would make a too-long text undecodable (``bad_post``), whose
#: number is never used up: every later post of the session would wait behind it.
Text = Annotated[str, msgspec.Meta(max_length=MAX_FRAME_BYTES)]
Reason = Annotated[str, msgspec.Meta(max_length=MAX_REASON_CHARS)]

#: The kinds of event a client may post.
PostKind = Literal["message", "action"]


class Post(msgspec.Struct, frozen=True):
    """What a client pushes on the ingest socket: one JSON frame.

    Fields the broker does not know (a ``nick``, say) are ignored: the sender is whoever holds
    ``token``. ``n`` numbers a session's posts 1, 2, 3, … with no gap: the broker accepts each
    number once and in order, which is what makes resends safe.
    """

    token: Id
    text: Text = ""
    room: Name = ""
    kind: PostKind = "message"
    id: Id | None = None
    n: PostNumber | None = None
    #: A private message: the nick it is for (``room`` is then ignored).
    to: Name | None = None
    #: Gives number ``n`` up: the broker uses it up and publishes nothing (a sender that gave up
    #: on a message sends this for its number, so the posts after it go through; if the message
    #: itself was still on its way and came first, it was delivered and this is a duplicate).
    void: bool = False


class _Req(msgspec.Struct, frozen=True, tag_field="type"):
    # `req` is echoed in the reply so a DEALER client can match replies to requests.
    req: Id | None = None


class Hello(_Req, frozen=True, tag="hello"):
    #: 1 when absent: a client of the first protocol, which the broker refuses by name.
    protocol: Annotated[int, msgspec.Meta(ge=0, le=1000)] = 1
    nick: Name = ""
    rooms: Annotated[list[Name], msgspec.Meta(max_length=MAX_ROOMS * 2)] = msgspec.field(
        default_factory=lambda: [DEFAULT_ROOM]
    )
    #: The token of this client's previous session: continue it (no join or leave lines).
    resume: Id | None = None


class Heartbeat(_Req, frozen=True, tag="heartbeat"):
    token: Id = ""
    #: The newest seq of its inbox this client has delivered: what it has read.
    inbox_read: Seq | None = None


class Leave(_Req, frozen=True, tag="leave"):
    token: Id = ""
    reason: Annotated[str, msgspec.Meta(max_length=1000)] = "quit"


class Join(_Req, frozen=True, tag="join"):
    token: Id = ""
    room: Name = ""


class Part(_Req, frozen=True, tag="part"):
    token: Id = ""
    room: Name = ""
    reason: Annotated[str, msgspec.Meta(max_length=1000)] = ""


class Who(_Req, frozen=True, tag="who"):
    room: Name = DEFAULT_ROOM


class Stats(_Req, frozen=True, tag="stats"):
    pass


class History(_Req, frozen=True, tag="history"):
    """Stored events of ``room`` with ``seq > after`` (oldest first), or its last ``limit``. An
    inbox (``@…``) is read with the token of the session it belongs to."""

    room: Name = DEFAULT_ROOM
    after: Seq | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=MAX_HISTORY)] = 50
    token: Id | None = None


class Seqs(_Req, frozen=True, tag="seqs"):
    """The newest ``seq`` of each room: how a reader without a session finds tail losses."""

    rooms: Annotated[list[Name], msgspec.Meta(max_length=MAX_ROOMS * 2)] = msgspec.field(default_factory=list)


class Nick(_Req, frozen=True, tag="nick"):
    """Change the session's nick."""

    token: Id = ""
    nick: Name = ""


class Away(_Req, frozen=True, tag="away"):
    """Set an away message (``text``), or come back (no text)."""

    token: Id = ""
    text: Annotated[str, msgspec.Meta(max_length=MAX_AWAY_CHARS)] | None = None


class Topic(_Req, frozen=True, tag="topic"):
    """Set a room's topic (``text``; ``""`` clears it), or with no text ask what it is."""

    token: Id = ""
    room: Name = DEFAULT_ROOM
    text: Annotated[str, msgspec.Meta(max_length=MAX_TOPIC_CHARS)] | None = None


class Search(_Req, frozen=True, tag="search"):
    """Stored messages of ``room`` that contain ``text`` (all its words), newest first; with
    ``before``, only those with a smaller seq (the next page)."""

    room: Name = DEFAULT_ROOM
    text: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_QUERY_CHARS)] = " "
    limit: Annotated[int, msgspec.Meta(ge=1, le=MAX_SEARCH)] = 20
    before: Seq | None = None


Request = Hello | Heartbeat | Leave | Join | Part | Who | Stats | History | Seqs | Nick | Away | Topic | Search


class Event(msgspec.Struct, frozen=True, omit_defaults=True):
    """One event: on the feed (the JSON frame after the topic frame), in a history reply, or
    delivered on a session's rpc connection (``{"type": "event", "event": …}``).

    ``seq`` is gapless per room (and per inbox: private messages carry their inbox as ``room``)
    and 0 for events outside any sequence (errors and notices for one session, probe answers).
    ``nick`` is ``*`` for events the broker originates.
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
    #: The post number an error, a duplicate or an accepted message answers.
    n: int | None = None
    #: With ``out_of_order``, ``rate_limited`` and ``unavailable``: the post number the broker
    #: wants next (resend from there).
    expected: int | None = None
    #: With a ``nick`` event: the new nick (``nick`` is the old one).
    new_nick: str | None = None
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


#: Compact JSON (one line: newlines inside strings are escaped). The encoder's own method: it is
#: called for every event the broker stamps.
encode = _encoder.encode


def _decode(decoder: msgspec.json.Decoder[_T], data: bytes, what: str) -> _T:
    try:
        return decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise RemoteProtocolError(f"invalid {what}: {exc}") from None
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        # msgspec lets the last two escape: invalid UTF-8 inside a string, and deep nesting.
        raise RemoteProtocolError(f"malformed {what}: {exc}") from None


def decode_post(data: bytes) -> Post:
    # _decode inlined: one call less for every post the broker takes.
    try:
        return _post_decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise RemoteProtocolError(f"invalid post: {exc}") from None
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise RemoteProtocolError(f"malformed post: {exc}") from None


def decode_request(data: bytes) -> Request:
    return _decode(_request_decoder, data, "request")


def decode_event(data: bytes) -> Event:
    return _decode(_event_decoder, data, "event")


def decode_reply(data: bytes) -> dict[str, object]:
    """A message from rpc: a reply (``type`` is the request's, or ``error``) or a delivery."""
    return _decode(_reply_decoder, data, "reply")


def delivery(event: bytes) -> bytes:
    """An event for one session, as the broker sends it on that session's rpc connection:
    ``{"type": "event", "event": …}`` (the event's JSON is embedded as it is)."""
    return b'{"type":"event","event":' + event + b"}"


def delivered_event(message: dict[str, object]) -> Event | None:
    """The event of a decoded rpc message if it is a delivery; None if it is a reply. Raises
    RemoteProtocolError if it claims to be a delivery but holds no valid event."""
    if message.get("type") != "event":
        return None
    try:
        return msgspec.convert(message.get("event"), Event)
    except msgspec.ValidationError as exc:
        raise RemoteProtocolError(f"invalid delivery: {exc}") from None


class _Salvage(msgspec.Struct):
    # What can still be read from a body that failed validation: any JSON value is accepted.
    req: object = None
    token: object = None
    id: object = None
    n: object = None


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


def post_token(data: bytes) -> tuple[str | None, str | None, int | None]:
    """``(token, id, n)`` of a post that is not valid, where readable, so the broker can tell its
    sender what was wrong with it (and use up its number). Never raises."""
    s = _salvage(data)
    n = s.n if isinstance(s.n, int) and not isinstance(s.n, bool) and 1 <= s.n <= MAX_SEQ else None
    return (s.token if isinstance(s.token, str) else None, s.id if isinstance(s.id, str) else None, n)


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
