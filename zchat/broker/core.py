"""The broker's brain, sans-IO: sessions as leases, rooms and their sequences, what to publish.

:class:`BrokerCore` takes the frames the broker shell received and the current monotonic time,
and returns what to send back: reply frames for the rpc socket and ``(topic, payload)`` pairs for
the feed. It owns the session table (token -> nick, rooms, lease deadline), room membership,
per-room ``seq`` counters, stamping (``seq``, ``ts``, the session's nick) and the drop counters.
It never touches a socket, never sleeps and never reads a clock except the injected wall clock
for timestamps, so every rule here is unit-tested without ZeroMQ.
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import msgspec

from zchat import protocol as p
from zchat.broker.config import BrokerConfig
from zchat.broker.identity import Authority
from zchat.broker.ratelimit import RateLimiter
from zchat.broker.store import Store
from zchat.errors import LocalProtocolError, RemoteProtocolError

__all__ = ["BrokerCore", "Publish", "Session"]

log = logging.getLogger("zchat.broker.shell")

#: A message for the feed: (topic frame, JSON frame).
Publish = tuple[bytes, bytes]

_MAX_REASON_CHARS = 200
#: A core with every setting at its default (what unit tests mostly want).
DEFAULTS = BrokerConfig()
#: How long a (sender, message id) is remembered to drop a resent duplicate, in seconds.
DEDUPE_WINDOW = 3600.0


@dataclass(slots=True, eq=False)
class Session:
    token: str
    nick: str
    rooms: set[str]
    expires: float
    inbox: bytes = b""  # the feed topic of this session's errors and private messages
    identity: str | None = None  # the CURVE key it authenticated with (secure mode)


@dataclass
class Counters:
    received: int = 0  # ingest messages that were published
    rejected: int = 0  # well-formed posts refused (too long, not in room), answered by an error
    dropped_malformed: int = 0  # frames that are not zchat protocol, on any socket
    dropped_unknown_session: int = 0  # posts whose token is unknown or expired
    duplicates: int = 0  # resent posts already published (answered on the sender's inbox)
    rate_limited: int = 0  # posts refused because their sender exceeded its rate
    private: int = 0  # private messages delivered
    dropped_wrong_identity: int = 0  # posts or requests with a token of another key's session
    subscriptions_refused: int = 0  # subscriptions to topics the subscriber may not see
    requests: int = 0  # rpc requests answered
    published: int = 0  # events put on the feed
    joins: int = 0
    leaves: int = 0
    timeouts: int = 0


@dataclass
class _Room:
    seq: int = 0
    members: dict[str, Session] = field(default_factory=dict)  # nick.lower() -> session


class BrokerCore:
    """Sessions, rooms and stamping for one broker run. Times are monotonic seconds."""

    def __init__(
        self,
        now: float,
        config: BrokerConfig = DEFAULTS,
        *,
        wallclock: Callable[[], float] = time.time,
        new_token: Callable[[], str] = lambda: secrets.token_urlsafe(18),
        store: Store | None = None,
        epoch: str | None = None,
        dedupe_window: float = DEDUPE_WINDOW,
        authority: Authority | None = None,
    ) -> None:
        """``config`` gives the leases and the rate limit; ``store`` and ``authority`` (secure
        mode: who may be whom) are the ones the shell opened for it."""
        self.started = now
        #: Identifies this broker run: clients tell a restart from a gap by it changing.
        self.epoch = epoch or secrets.token_hex(6)
        self._store = store
        #: Secure mode: who may use which nick (None in open mode, where anyone may be anyone).
        self._authority = authority
        self._limiter = RateLimiter(config.rate, config.burst)
        #: Names the history this broker serves (the store's id; the epoch without a store).
        self.history_id = store.id if store is not None else self.epoch
        self._dedupe_window = dedupe_window
        self.heartbeat_interval = config.heartbeat
        self.lease = config.lease
        self.counters = Counters()
        self._wallclock = wallclock
        self._new_token = new_token
        self._sessions: dict[str, Session] = {}
        self._by_nick: dict[str, Session] = {}
        self._rooms: dict[str, _Room] = {}
        # No lease can lapse before this time. Leases only ever move later, so a minimum taken
        # at the last sweep stays a safe lower bound and the hot path need not scan sessions.
        self._next_sweep = math.inf
        # (sender, message id) -> (room, seq, wall time), oldest first.
        self._sent: dict[tuple[str, str], tuple[str, int, float]] = {}
        if store is not None:
            # A restarted broker continues every room's seq and its dedupe window.
            for room, seq in store.last_seqs().items():
                self._rooms[room] = _Room(seq=seq)
            for sender, msg_id, room, seq, at in store.sent_since(wallclock() - dedupe_window):
                self._sent[sender, msg_id] = (room, seq, at)

    # --- queries ---------------------------------------------------------------------------

    def session(self, token: str) -> Session | None:
        return self._sessions.get(token)

    def members(self, room: str) -> list[str]:
        r = self._rooms.get(room)
        return sorted((s.nick for s in r.members.values()), key=str.lower) if r else []

    def seq(self, room: str) -> int:
        r = self._rooms.get(room)
        return r.seq if r else 0

    def next_expiry(self) -> float:
        """Monotonic time before which no lease can run out (``inf`` with no sessions)."""
        return self._next_sweep

    # --- ingest (PULL) --------------------------------------------------------------------

    def ingest(self, frames: Sequence[bytes], now: float, identity: str | None = None) -> list[Publish]:
        """One message from the ingest socket: a single JSON frame holding a :class:`Post`.

        ``identity`` is the CURVE key the connection authenticated with (secure mode).
        """
        if len(frames) != 1:
            return self._drop(f"ingest message with {len(frames)} frames (want 1)")
        try:
            post = p.decode_post(frames[0])
        except RemoteProtocolError as exc:
            self._drop(str(exc))
            # If the wreck still names a live session, tell its owner why nothing happened.
            token, msg_id = p.post_token(frames[0])
            sender = self._sessions.get(token or "")
            if sender is None or sender.expires <= now or sender.identity != identity:
                return []
            return [self._inbox_error(sender, "bad_post", str(exc), "", msg_id)]
        session = self._sessions.get(post.token)
        if session is None or session.expires <= now:
            self.counters.dropped_unknown_session += 1
            log.debug("dropped post: unknown or expired session")
            return []
        if session.identity != identity:
            # Someone else's token: the key decides who speaks, never the payload.
            self.counters.dropped_wrong_identity += 1
            log.debug("dropped post: token of %s used by another key", session.nick)
            return []
        session.expires = now + self.lease
        # A resend of something already delivered costs nothing, so it is never limited.
        resend = post.id is not None and (session.nick.lower(), post.id) in self._sent
        if not resend and not self._limiter.allow(identity or session.nick.lower(), now):
            self.counters.rate_limited += 1
            per_second = self._limiter.rate
            rate = f"at most {per_second:g} message{'' if per_second == 1 else 's'} a second"
            why = f"slow down: {rate} (bursts of {self._limiter.burst:g}); this one was not sent"
            return [self._inbox_error(session, "rate_limited", why, post.room, post.id)]
        if post.to is not None:
            return self._private(session, post)
        try:
            room = post.room
            if room not in session.rooms:  # membership first: valid names are the common case
                p.check_room(room)
                raise LocalProtocolError(f"you are not in room {room!r}: join it first")
            p.check_text(post.text)
            if post.id is not None and len(post.id) > p.MAX_ID_CHARS:
                raise LocalProtocolError(f"message id longer than {p.MAX_ID_CHARS} characters")
        except LocalProtocolError as exc:
            # The sender's fault, but it has a session: tell it on its inbox topic.
            self.counters.rejected += 1
            return [self._inbox_error(session, "rejected", str(exc), post.room, post.id)]
        if post.id is None:
            self.counters.received += 1
            return [self._room_event(room, post.kind, session.nick, post.text)]
        key = (session.nick.lower(), post.id)
        if (prior := self._sent.get(key)) is not None:
            # A resend of something already published: confirm it to the sender, publish nothing.
            self.counters.duplicates += 1
            prior_room, prior_seq, _ = prior
            text = f"already delivered as #{prior_room} {prior_seq}"
            ev = p.Event(0, self._ts(), prior_room, "duplicate", p.SYSTEM_NICK, text, id=post.id, dup_of=prior_seq)
            return [self._publish(session.inbox, ev)]
        self.counters.received += 1
        at = self._wallclock()
        out = self._room_event(room, post.kind, session.nick, post.text, id=post.id, sent=(key[0], post.id, at))
        self._sent[key] = (room, self.seq(room), at)
        return [out]

    # --- subscriptions (XPUB) -------------------------------------------------------------

    def subscription(self, msg: bytes, identity: str | None = None) -> tuple[list[bytes], list[Publish]]:
        """A (un)subscription message from the feed, vetted (the feed runs ``XPUB_MANUAL``).

        Returns the topics to (un)subscribe that subscriber to — what it may see of what it
        asked for — and events: a probe topic is answered at once with ``ready``.
        """
        if not msg or msg[0] not in (0, 1):
            self._drop("malformed subscription message")
            return [], []
        topic = msg[1:]
        granted = self._vet(topic, identity)
        if not granted and msg[0] == 1:
            self.counters.subscriptions_refused += 1
            log.debug("refused subscription to %r", topic[:80])
        if msg[0] == 1 and p.is_probe_topic(topic):
            ev = p.Event(0, self._ts(), "", "ready", p.SYSTEM_NICK, "subscriptions are live")
            return granted, [self._publish(topic, ev)]
        return granted, []

    def _vet(self, topic: bytes, identity: str | None) -> list[bytes]:
        """The topics a subscription to ``topic`` may really get.

        Rooms, heartbeats and probes are public. An inbox needs its full secret — or, in secure
        mode, to be the subscriber's own, and then any prefix of it maps to all of it. So the
        empty subscription and ``@``, ``@b``… never reach another nick's private messages.
        """
        own = [p.inbox_topic(n) for n in self._authority.nicks(identity)] if self._authority and identity else []
        if topic == b"":
            return [b"#", p.HEARTBEAT_TOPIC, *own]
        if topic[:1] in (b"#", b"!", b"~"):
            return [topic]
        if topic[:1] != b"@":
            return []
        mine = [t if t.startswith(topic) else topic for t in own if t.startswith(topic) or topic.startswith(t)]
        if mine:
            return mine
        parsed = p.parse_inbox(topic)
        if parsed is None or len(parsed[1]) != p.INBOX_SECRET_CHARS:
            return []
        # In secure mode even a known secret is no key: another key's nick is never granted.
        if self._authority is not None and self._authority.owner(parsed[0]) not in (None, identity):
            return []
        return [topic]

    # --- rpc (ROUTER) -----------------------------------------------------------------------

    def request(
        self, frames: Sequence[bytes], now: float, identity: str | None = None
    ) -> tuple[list[bytes] | None, list[Publish]]:
        """One message from the rpc socket: ``[identity…, b"", json]``.

        Returns the reply frames (``None`` when the message cannot be addressed) and events.
        """
        if len(frames) < 3 or frames[-2] != b"":
            self._drop(f"rpc message without an envelope ({len(frames)} frames)")
            return None, []
        envelope = list(frames[:-1])
        try:
            req = p.decode_request(frames[-1])
        except RemoteProtocolError as exc:
            self._drop(str(exc))
            return [*envelope, p.encode(_error(p.request_id(frames[-1]), "bad_request", str(exc)))], []
        self.counters.requests += 1
        # A lapsed lease must not keep a nick taken, so sweep before any hello.
        lapsed = self.expire(now) if isinstance(req, p.Hello) else []
        try:
            reply, events = self._dispatch(req, now, identity)
        except LocalProtocolError as exc:
            code = getattr(exc, "code", "invalid")
            reply, events = _error(req.req, code, str(exc)), []
        return [*envelope, p.encode(reply)], lapsed + events

    def _dispatch(self, req: p.Request, now: float, identity: str | None) -> tuple[dict[str, object], list[Publish]]:
        if isinstance(req, p.Hello):
            return self._hello(req, now, identity)
        if isinstance(req, p.Who):
            room = p.check_room(req.room)
            return _ok(req, room=room, nicks=self.members(room)), []
        if isinstance(req, p.Stats):
            return _ok(req, **self.stats(now)), []
        if isinstance(req, p.History):
            return self._history(req), []
        if isinstance(req, p.Seqs):
            seqs = {room: self.seq(p.check_room(room)) for room in req.rooms[: p.MAX_ROOMS]}
            return _ok(req, seqs=seqs, history=self.history_id), []
        session = self._live(req.token, now, identity)
        session.expires = now + self.lease
        if isinstance(req, p.Heartbeat):
            # The rooms' newest seqs let the client notice messages it lost at the very end.
            return _ok(req, seqs={room: self.seq(room) for room in sorted(session.rooms)}), []
        if isinstance(req, p.Join):
            room = p.check_room(req.room)
            if room in session.rooms:
                return _ok(req, room=room, seq=self.seq(room)), []
            if len(session.rooms) >= p.MAX_ROOMS:
                raise _Code("too_many_rooms", f"at most {p.MAX_ROOMS} rooms per session")
            ev = self._join(session, room)
            return _ok(req, room=room, seq=self.seq(room)), [ev]
        if isinstance(req, p.Part):
            room = p.check_room(req.room)
            if room not in session.rooms:
                raise _Code("not_in_room", f"you are not in room {room!r}")
            return _ok(req, room=room), [self._part(session, room, "part", f"{session.nick} left (part)")]
        assert isinstance(req, p.Leave)
        return _ok(req), self._end(session, "quit", req.reason[:_MAX_REASON_CHARS])

    def _live(self, token: str, now: float, identity: str | None) -> Session:
        session = self._sessions.get(token)
        if session is not None and session.identity != identity:
            self.counters.dropped_wrong_identity += 1
            session = None
        if session is None or session.expires <= now:
            raise _Code("unknown_session", "unknown or expired session: say hello again")
        return session

    def _hello(self, req: p.Hello, now: float, identity: str | None) -> tuple[dict[str, object], list[Publish]]:
        nick = p.check_nick(req.nick)
        rooms = list(dict.fromkeys(p.check_room(r) for r in req.rooms))
        if len(rooms) > p.MAX_ROOMS:
            raise _Code("too_many_rooms", f"at most {p.MAX_ROOMS} rooms per session")
        inbox = p.inbox_topic(nick) if req.inbox is None else req.inbox.encode()
        parsed = p.parse_inbox(inbox)
        short = parsed is not None and req.inbox is not None and len(parsed[1]) != p.INBOX_SECRET_CHARS
        if parsed is None or parsed[0] != nick.lower() or (short and self._authority is None):
            # In open mode the feed grants no inbox without a full secret: say so now, not never.
            raise _Code(
                "bad_inbox", f"inbox must be '@{nick.lower()}:' and a secret of {p.INBOX_SECRET_CHARS} characters"
            )
        if nick.lower() in self._by_nick:
            raise _Code("nick_taken", f"nick {nick!r} is in use by a live session")
        if self._authority is not None:
            if identity is None:
                raise _Code("unauthenticated", "this broker needs CURVE authentication")
            try:
                claimed = self._authority.check(identity, nick)
            except LocalProtocolError as exc:
                raise _Code("nick_not_allowed", str(exc)) from None
            if claimed and self._store is not None:
                self._store.claim(nick.lower(), identity)
        session = Session(self._new_token(), nick, set(), now + self.lease, inbox, identity)
        self._sessions[session.token] = session
        self._by_nick[nick.lower()] = session
        self._next_sweep = min(self._next_sweep, session.expires)
        self.counters.joins += 1
        log.info("%s joined %s", nick, ", ".join(rooms) or "(no rooms)")
        events = [self._join(session, room) for room in rooms]
        reply = _ok(
            req,
            token=session.token,
            nick=nick,
            rooms={room: self.seq(room) for room in rooms},
            epoch=self.epoch,
            history=self.history_id,
            heartbeat_ms=round(self.heartbeat_interval * 1000),
            lease_ms=round(self.lease * 1000),
            max_text_bytes=p.MAX_TEXT_BYTES,
            inbox=inbox.decode(),
        )
        return reply, events

    def _history(self, req: p.History) -> dict[str, object]:
        room = p.check_room(req.room)
        limit = max(1, min(req.limit, p.MAX_HISTORY))
        last = self.seq(room)
        after = max(0, last - limit) if req.after is None else max(0, req.after)
        stored = self._store.range(room, after, limit) if self._store is not None else []
        first = self._store.first_seq(room) if self._store is not None else 0
        # Stored events are already JSON: embed them as they are, without a decode/encode trip.
        return _ok(req, room=room, first=first, last=last, events=[msgspec.Raw(e) for e in stored])

    # --- leases, heartbeats, housekeeping, shutdown -------------------------------------------------

    def heartbeat(self) -> Publish:
        """The feed's liveness beacon, with this run's epoch."""
        ev = p.Event(0, self._ts(), "", "heartbeat", p.SYSTEM_NICK, "", epoch=self.epoch)
        return self._publish(p.HEARTBEAT_TOPIC, ev)

    def housekeeping(self) -> None:
        """Forget dedupe records older than the window (call now and then, not per message)."""
        horizon = self._wallclock() - self._dedupe_window
        while self._sent:
            key, (_, _, at) = next(iter(self._sent.items()))
            if at >= horizon:
                break
            del self._sent[key]

    def expire(self, now: float) -> list[Publish]:
        """End every session whose lease ran out before ``now``."""
        if now < self._next_sweep:
            return []
        lapsed = [s for s in self._sessions.values() if s.expires <= now]
        events: list[Publish] = []
        for session in lapsed:
            self.counters.timeouts += 1
            events += self._end(session, "timed out", "")
        self._next_sweep = min((s.expires for s in self._sessions.values()), default=math.inf)
        return events

    def shutdown(self) -> list[Publish]:
        """The notice every room gets when the broker stops."""
        text = "the broker is shutting down"
        return [self._room_event(room, "system", p.SYSTEM_NICK, text, reason="shutdown") for room in self._rooms]

    def stats(self, now: float) -> dict[str, object]:
        return {
            "uptime_s": round(now - self.started, 3),
            "sessions": len(self._sessions),
            "rooms": len(self._rooms),
            "store_bytes": self._store.size() if self._store is not None else 0,
            "epoch": self.epoch,
            "secure": self._authority is not None,
            **vars(self.counters),
        }

    # --- internals ----------------------------------------------------------------------------

    def _join(self, session: Session, room: str) -> Publish:
        session.rooms.add(room)
        self._rooms.setdefault(room, _Room()).members[session.nick.lower()] = session
        return self._room_event(room, "join", session.nick, f"{session.nick} joined")

    def _part(self, session: Session, room: str, reason: str, text: str) -> Publish:
        session.rooms.discard(room)
        self._rooms[room].members.pop(session.nick.lower(), None)
        return self._room_event(room, "leave", session.nick, text, reason=reason)

    def _end(self, session: Session, reason: str, message: str) -> list[Publish]:
        del self._sessions[session.token]
        del self._by_nick[session.nick.lower()]
        self.counters.leaves += 1
        log.info("%s left (%s)", session.nick, reason)
        detail = f"{reason}: {message}" if message and message != reason else reason
        text = f"{session.nick} left ({detail})"
        return [self._part(session, room, reason, text) for room in sorted(session.rooms)]

    def _room_event(
        self,
        room: str,
        kind: str,
        nick: str,
        text: str,
        *,
        id: str | None = None,
        reason: str | None = None,
        sent: tuple[str, str, float] | None = None,
    ) -> Publish:
        r = self._rooms.setdefault(room, _Room())
        r.seq += 1
        ev = p.Event(r.seq, self._ts(), room, kind, nick, text, id=id, reason=reason)
        topic, payload = self._publish(p.room_topic(room), ev)
        if self._store is not None:
            self._store.append(room, r.seq, payload, sent)
        return topic, payload

    def _inbox_error(self, session: Session, code: str, text: str, room: str, ref: str | None) -> Publish:
        room = room if room in session.rooms else ""
        ev = p.Event(0, self._ts(), room, "error", p.SYSTEM_NICK, text, id=ref, code=code)
        return self._publish(session.inbox, ev)

    def _private(self, session: Session, post: p.Post) -> list[Publish]:
        """A message for one nick: to its inbox and the sender's (its confirmation), nowhere else."""
        assert post.to is not None
        recipient = self._by_nick.get(post.to.lower())
        try:
            p.check_text(post.text)
            if recipient is None:
                raise LocalProtocolError(f"no one called {post.to!r} is here")
            if post.id is not None and len(post.id) > p.MAX_ID_CHARS:
                raise LocalProtocolError(f"message id longer than {p.MAX_ID_CHARS} characters")
        except LocalProtocolError as exc:
            self.counters.rejected += 1
            return [self._inbox_error(session, "rejected", str(exc), "", post.id)]
        if post.id is not None:
            key = (session.nick.lower(), post.id)
            if key in self._sent:
                self.counters.duplicates += 1
                ev = p.Event(0, self._ts(), "", "duplicate", p.SYSTEM_NICK, "already delivered", id=post.id, dup_of=0)
                return [self._publish(session.inbox, ev)]
            self._sent[key] = ("", 0, self._wallclock())
        self.counters.private += 1
        ev = p.Event(0, self._ts(), "", "private", session.nick, post.text, id=post.id, to=recipient.nick)
        out = [self._publish(recipient.inbox, ev)]
        if recipient is not session:
            out.append((session.inbox, out[0][1]))
        return out

    def _publish(self, topic: bytes, ev: p.Event) -> Publish:
        self.counters.published += 1
        return topic, p.encode(ev)

    def _ts(self) -> str:
        return p.format_ts(self._wallclock())

    def _drop(self, why: str) -> list[Publish]:
        self.counters.dropped_malformed += 1
        log.debug("dropped: %s", why)
        return []


class _Code(LocalProtocolError):
    """A refusal with a machine-readable code for the error reply."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code


def _ok(req: p.Request, **fields: object) -> dict[str, object]:
    return {"type": req.__struct_config__.tag, "ok": True, "req": req.req, **fields}


def _error(req_id: str | None, code: str, reason: str) -> dict[str, object]:
    return {"type": "error", "ok": False, "req": req_id, "code": code, "error": reason}
