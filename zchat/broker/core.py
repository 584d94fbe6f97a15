"""The broker's brain, sans-IO: sessions as leases, rooms and inboxes with their sequences, limits.

:class:`BrokerCore` takes the frames the broker shell received, with the monotonic time and who
sent them (the routing id of an rpc connection, the CURVE key and address a frame carries), and
works out what they change. Two rules shape it:

- **Effects after commit.** A batch of input changes the core tentatively and stages its writes
  in the store; :meth:`BrokerCore.finish` hands the shell a :class:`Batch` of what to send. The
  shell commits the store, then calls :meth:`BrokerCore.keep` and sends the batch — or, if the
  commit failed, :meth:`BrokerCore.undo`, which puts every seq, post number, session and room
  back as it was and returns only the refusals ("unavailable, resend") to send instead. Nothing
  is published, delivered or confirmed that the store does not hold.
- **The feed is public; one session's traffic rides its own route.** Room events go on the feed;
  private messages, errors and notices for one session go to the routing id of that session's
  latest authenticated rpc message (:attr:`Session.route`), never on the feed.

It owns the session table (token -> nick, rooms, inbox, lease, route, the newest post number it
committed), nick uniqueness, room membership, per-room and per-inbox ``seq``, stamping, topics,
away messages, and every bound a hostile client could push against (hellos, sessions, joins,
requests, rooms, reply sizes), each with a counter in ``stats``. It never touches a socket,
never sleeps and reads no clock but the injected wall clock for timestamps.
"""

from __future__ import annotations

import collections
import logging
import math
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import msgspec

from zchat import protocol as p
from zchat.broker.config import BrokerConfig
from zchat.broker.identity import Authority, ClaimRefused
from zchat.broker.ratelimit import RateLimiter
from zchat.broker.store import MAX_PAGE_BYTES, TOMBSTONE_SECONDS, SessionRecord, Store, StoreError, TopicRecord
from zchat.errors import LocalProtocolError, RemoteProtocolError

__all__ = ["Batch", "BrokerCore", "Publish", "Session", "probe_answer", "standby_answer"]

log = logging.getLogger("zchat.broker")

#: A message for the feed: (topic frame, JSON frame).
Publish = tuple[bytes, bytes]
#: A message for one session's rpc connection: (routing id, JSON frame).
Delivery = tuple[bytes, bytes]

#: A core with every setting at its default (what unit tests mostly want).
DEFAULTS = BrokerConfig()

# --- bounds ----------------------------------------------------------------------------------
# Each is what one peer may cost the broker; past it the peer gets a clear refusal (and the
# broker counts it), never more memory. IRC networks allow ~1 connection a second per address
# with small bursts (ircd-hybrid's throttle: 1 per 2 s); Matrix Synapse rate-limits logins at
# 0.17/s with a burst of 3 per address; Slack's RTM allowed ~1 message a second per client.

#: Hellos one rpc connection may send: a reconnecting client sends one per connection.
HELLO_PER_ROUTE_RATE = 1.0
HELLO_PER_ROUTE_BURST = 5
#: Requests one rpc connection may send (heartbeats are 1/s; history repair comes in bursts).
REQUESTS_PER_ROUTE_RATE = 50.0
REQUESTS_PER_ROUTE_BURST = 200
#: Joins, parts, nick, away and topic changes one session may make.
MOVES_RATE = 1.0
MOVES_BURST = 20
#: Sessions one CURVE key may hold at once (secure mode).
SESSIONS_PER_KEY = 16
#: Rooms kept in memory at once (rooms with members; an empty one is forgotten, its history stays).
MAX_ACTIVE_ROOMS = 10_000
#: Ended sessions whose last post number is remembered (so their late resends are recognised).
MAX_TOMBSTONES = 10_000
#: A loop iteration this much later than the previous one means the broker itself was stalled
#: (SIGSTOP, swap, a long GC): the loop wakes at least once a second when it is running.
STALL_SECONDS = 1.5


@dataclass(slots=True, eq=False)
class Session:
    token: str
    nick: str
    #: The CURVE key it authenticated with (secure mode), or None.
    identity: str | None
    #: The address it connected from (open mode's bounds), or None.
    peer: str | None
    #: Its inbox stream: private messages to and from it, gapless, for it alone.
    inbox: str
    rooms: set[str]
    expires: float
    #: The routing id of its latest authenticated rpc message: where its own traffic goes.
    route: bytes | None = None
    #: The newest post number (``n``) it committed: posts are accepted once, in order.
    acked: int = 0
    away: str | None = None
    #: The ``expected`` number it was last told (out of order, rate limited): told once.
    told: int = 0
    #: Its latest posts refused for good (number -> why), told again in every hello and
    #: heartbeat reply beside ``acked``: ``acked`` counts them too, and a refusal delivered to a
    #: connection that just went away must not read as a confirmation. Stored with the session,
    #: and kept in its tombstone: a client back after a restart or a lapse is told them too.
    refused: dict[int, str] = field(default_factory=dict)

    def record(self, ended: float | None = None) -> SessionRecord:
        rooms = sorted(self.rooms)
        return SessionRecord(
            self.token,
            self.nick,
            self.identity,
            self.peer,
            self.inbox,
            rooms,
            self.acked,
            self.away,
            ended,
            dict(self.refused),
        )


class _Tombstone(NamedTuple):
    """What an ended session leaves: what its client needs to know of its posts."""

    acked: int  # the last post number it committed
    ended: float  # wall time it ended
    refused: dict[int, str]  # its latest posts refused for good (see Session.refused)


@dataclass
class Counters:
    received: int = 0  # posts accepted and published (or delivered, if private)
    rejected: int = 0  # well-formed posts refused (too long, not in room), answered by an error
    dropped_malformed: int = 0  # frames that are not zchat protocol, on any socket
    dropped_unknown_session: int = 0  # posts whose token is unknown or expired
    dropped_wrong_identity: int = 0  # posts or requests with a token of another key's session
    duplicates: int = 0  # resent posts already committed (answered "duplicate")
    out_of_order: int = 0  # posts ahead of the next expected number (answered once per gap)
    rate_limited: int = 0  # posts refused because their sender exceeded its rate
    private: int = 0  # private messages stored and delivered
    requests: int = 0  # rpc requests answered
    requests_limited: int = 0  # rpc requests refused: the connection asked too fast
    hellos_limited: int = 0  # hellos refused: too many from one connection, address or key
    sessions_refused: int = 0  # hellos refused: a cap on sessions (total, per key, per address)
    moves_limited: int = 0  # joins, parts, nick/away/topic changes refused as too fast
    rooms_refused: int = 0  # joins refused: too many rooms (per session, or on the broker)
    claims_refused: int = 0  # first claims of a nick refused: too many (per key, or on the broker)
    weak_routes: int = 0  # session requests from a routing id too short or not client-chosen
    published: int = 0  # events put on the feed
    delivered: int = 0  # events sent to one session's rpc connection
    routes_lost: int = 0  # sends to a route whose connection is gone
    deliveries_dropped: int = 0  # sends dropped at a route's high-water mark (repaired from history)
    replies_dropped: int = 0  # replies not sent: the asker's queue was full (it asks faster than it reads), or it left
    joins: int = 0
    leaves: int = 0
    timeouts: int = 0
    resumed: int = 0  # hellos that continued a session
    stalls: int = 0  # times the broker found itself stalled and granted leases a grace
    store_failures: int = 0  # batches whose commit failed (nothing of them was sent)


@dataclass(eq=False)
class _Room:
    #: Its topic frame on the feed (``#<room>:``).
    feed: bytes
    seq: int = 0
    members: dict[str, Session] = field(default_factory=dict)  # nick.lower() -> session
    topic: TopicRecord | None = None


@dataclass
class Batch:
    """What one batch of input makes the shell send, after the store committed it."""

    publish: list[Publish] = field(default_factory=list)
    deliver: list[Delivery] = field(default_factory=list)
    #: Whole rpc messages: [routing id, b"", JSON].
    replies: list[list[bytes]] = field(default_factory=list)


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
        authority: Authority | None = None,
    ) -> None:
        """``config`` gives the leases and limits; ``store`` and ``authority`` (secure mode: who
        may be whom) are the ones the shell opened for it."""
        self.started = now
        self.config = config
        #: "active", or "standby" once the broker gave way to the other one of a pair.
        self.role = "active"
        #: Identifies this broker run: clients tell a restart from a gap by it changing.
        self.epoch = epoch or secrets.token_hex(6)
        self._store = store
        self._authority = authority
        #: Names the history this broker serves (the store's id; the epoch without a store).
        self.history_id = store.id if store is not None else self.epoch
        self.heartbeat_interval = config.heartbeat
        self.lease = config.lease
        self.counters = Counters()
        self._wallclock = wallclock
        self._new_token = new_token
        self._posts = RateLimiter(config.rate, config.burst)
        self._hello_routes = RateLimiter(HELLO_PER_ROUTE_RATE, HELLO_PER_ROUTE_BURST)
        self._hello_peers = RateLimiter(config.hello_rate, config.hello_burst)
        self._requests = RateLimiter(REQUESTS_PER_ROUTE_RATE, REQUESTS_PER_ROUTE_BURST)
        self._moves = RateLimiter(MOVES_RATE, MOVES_BURST)
        self._sessions: dict[str, Session] = {}
        self._by_nick: dict[str, Session] = {}
        self._per_owner: collections.Counter[str] = collections.Counter()  # key or address -> sessions
        self._rooms: dict[str, _Room] = {}
        self._inboxes: dict[str, int] = {}  # inbox -> newest seq, for the inboxes in use
        self._reads: dict[str, int] = {}  # inbox -> newest seq its owner has read
        #: Ended sessions by token, oldest first.
        self._tombstones: collections.OrderedDict[str, _Tombstone] = collections.OrderedDict()
        # No lease can lapse before this time. Leases only ever move later, so a minimum taken
        # at the last sweep stays a safe lower bound and the hot path need not scan sessions.
        self._next_sweep = math.inf
        #: After a stall, no lease lapses before this time.
        self._grace_until = now
        self._last_begin = now
        self._counted = vars(self.counters).copy()  # the counters before the batch
        #: The batch's timestamp: the wall clock is read once a batch, when it first stamps.
        self._stamp: str | None = None
        # The batch in progress: what it sends, and how to take it back.
        self._batch = Batch()
        self._signals: list[Publish] = []  # probe answers and heartbeats: sent even if the commit fails
        self._asked: list[tuple[list[bytes], str | None]] = []  # (envelope, req id) of each reply
        self._seq_before: dict[str, int] = {}  # stream -> its seq before the batch
        self._acked_before: dict[Session, int] = {}
        self._unnumbered: list[tuple[Session, str | None]] = []  # posts without a number, with their id
        self._undo: list[Callable[[], object]] = []
        if store is not None:
            self._restore(store, now)

    def _restore(self, store: Store, now: float) -> None:
        """A restarted broker takes back its sessions, each with a fresh lease: a client that
        comes back within it resumes silently (no leave, no join)."""
        records = store.sessions()
        # Tombstones oldest first (housekeeping forgets from the front), and only the newest as
        # many as a running broker keeps: the store keeps an hour's worth, which a hostile hour
        # of hellos could make many more.
        ended = [(r.token, _Tombstone(r.acked, r.ended, r.refused)) for r in records if r.ended is not None]
        self._tombstones.update(sorted(ended, key=lambda t: t[1].ended)[-MAX_TOMBSTONES:])
        for record in (r for r in records if r.ended is None):
            session = Session(
                record.token,
                record.nick,
                record.identity,
                record.peer,
                record.inbox,
                set(),
                now + self.lease,
                acked=record.acked,
                away=record.away,
                refused=record.refused,
            )
            self._add_session(session)
            for room in record.rooms:
                self._room(room).members[session.nick.lower()] = session
                session.rooms.add(room)
        self._undo.clear()  # what was restored is the starting point, not a change to take back

    # --- the batch ---------------------------------------------------------------------------

    def begin(self, now: float) -> None:
        """Start a batch at ``now``. A broker that finds itself much later than its last batch
        was stalled, not its clients: no lease lapses for one lease more."""
        if now - self._last_begin > STALL_SECONDS:
            self.counters.stalls += 1
            self._grace_until = now + self.lease
            log.warning(
                "the broker was stalled for %.1f s: leases get %.0f s of grace", now - self._last_begin, self.lease
            )
        self._last_begin = now
        self._counted = vars(self.counters).copy()
        self._stamp = None

    def finish(self) -> Batch:
        """What the batch sends once its store writes are committed (then :meth:`keep`)."""
        batch = self._batch
        batch.publish[:0] = self._signals
        return batch

    def keep(self) -> None:
        """The batch is committed: its changes stand."""
        if self._store is not None:
            for room in [r for r, room in self._rooms.items() if not room.members]:
                del self._rooms[room]  # its history stays in the store, its seq comes back from it
        self._reset()

    def undo(self) -> Batch:
        """The batch could not be stored: take every change back and return what to send
        instead — each request answered ``unavailable``, each sender told to resend."""
        # What the batch counted did not happen (it comes again when the senders resend).
        self.counters = Counters(**self._counted)
        self.counters.store_failures += 1
        for stream, seq in self._seq_before.items():
            if p.is_inbox(stream):
                self._inboxes[stream] = seq
            elif stream in self._rooms:
                self._rooms[stream].seq = seq
        for action in reversed(self._undo):
            action()
        refusals = Batch(publish=list(self._signals))
        why = "could not store this message: resend it"
        for session, acked in self._acked_before.items():
            session.acked = session.told = acked
            if session.route is not None:
                ev = msgspec.structs.replace(self._notice("error", why, code="unavailable"), expected=acked + 1)
                refusals.deliver.append((session.route, p.delivery(p.encode(ev))))
        for session, ref in self._unnumbered:  # (posts without a number: each one is told)
            if session.route is not None:
                ev = self._notice("error", why, ref=ref, code="unavailable")
                refusals.deliver.append((session.route, p.delivery(p.encode(ev))))
        for envelope, req_id in self._asked:
            reason = "the broker could not store this request: try again"
            refusals.replies.append([*envelope, p.encode(_error(req_id, "unavailable", reason))])
        self._reset()
        return refusals

    def _reset(self) -> None:
        self._stamp = None
        self._batch = Batch()
        self._signals = []
        self._asked = []
        self._seq_before = {}
        self._acked_before = {}
        self._unnumbered = []
        self._undo = []

    def unreachable(self, route: bytes) -> None:
        """The shell could not send to ``route``: its connection is gone."""
        self.counters.routes_lost += 1
        for session in self._sessions.values():
            if session.route == route:
                session.route = None

    def dropped(self) -> None:
        """The shell dropped a delivery at a route's high-water mark."""
        self.counters.deliveries_dropped += 1

    # --- queries ---------------------------------------------------------------------------

    def session(self, token: str) -> Session | None:
        return self._sessions.get(token)

    def members(self, room: str) -> list[str]:
        r = self._rooms.get(room)
        return sorted((s.nick for s in r.members.values()), key=str.lower) if r else []

    def seq(self, room: str) -> int:
        """The newest seq of a room or an inbox."""
        if p.is_inbox(room):
            return self._inbox_seq(room)
        r = self._rooms.get(room)
        if r is not None:
            return r.seq
        return self._store.last_seq(room) if self._store is not None else 0

    def next_expiry(self) -> float:
        """Monotonic time before which no lease can run out (``inf`` with no sessions)."""
        return max(self._next_sweep, self._grace_until) if self._sessions else math.inf

    # --- ingest (PULL) --------------------------------------------------------------------

    def ingest(self, frames: Sequence[bytes], now: float, identity: str | None = None) -> None:
        """One message from the ingest socket: a single JSON frame holding a :class:`Post`.

        ``identity`` is the CURVE key the connection authenticated with (secure mode).
        """
        if len(frames) != 1:
            self._drop(f"ingest message with {len(frames)} frames (want 1)")
            return
        try:
            post = p.decode_post(frames[0])
        except RemoteProtocolError as exc:
            self._drop(str(exc))
            # If the wreck still names a live session, tell its owner why nothing happened; a
            # number it carries is used up, or every later post would wait behind it.
            token, msg_id, n = p.post_token(frames[0])
            sender = self._sessions.get(token or "")
            if sender is None or sender.identity != identity or self._lapsed(sender, now):
                return
            if n is None or self._its_turn(sender, n, msg_id):
                if n is not None:
                    self._use_number(sender, n)
                self._error(sender, "bad_post", str(exc), ref=msg_id, n=n)
            return
        # (The broker's hottest path: the common case inline, each rare one in a method.)
        session = self._sessions.get(post.token)
        if session is None or (session.expires <= now and now >= self._grace_until):  # (see _lapsed)
            self.counters.dropped_unknown_session += 1
            log.debug("dropped post: unknown or expired session")
            return
        if session.identity != identity:
            # Someone else's token: the key decides who speaks, never the payload.
            self.counters.dropped_wrong_identity += 1
            log.debug("dropped post: token of %s used by another key", session.nick)
            return
        lease = now + self.lease
        if session.expires < lease:  # noqa: PLR1730 (max() is a call more per post)
            session.expires = lease
        n = post.n
        if n is not None and n != session.acked + 1:
            self._its_turn(session, n, post.id)  # a resend, or ahead of its turn: answered there
            return
        if post.void:  # a number given up: used up, nothing published, never limited (it costs nothing)
            if n is not None:
                self._use_number(session, n)
            return
        if self._posts.rate > 0 and not self._posts.allow(session.identity or session.token, now):
            self._rate_limited(session, post)
            return
        if n is not None:
            self._use_number(session, n)
        text = post.text
        try:
            if post.id is not None and len(post.id) > p.MAX_ID_CHARS:
                raise LocalProtocolError(f"message id longer than {p.MAX_ID_CHARS} characters")
            p.check_text(text)
            if post.to is not None:
                self._private(session, post)
                if n is None:
                    self._unnumbered.append((session, post.id))
                return
            if post.room not in session.rooms:  # membership first: valid names are the common case
                p.check_room(post.room)
                raise LocalProtocolError(f"you are not in room {post.room!r}: join it first")
        except LocalProtocolError as exc:
            # The sender's fault, and final: the post number is used up, the sender told why.
            self.counters.rejected += 1
            self._error(session, "rejected", str(exc), room=post.room, ref=post.id, n=n)
            return
        self.counters.received += 1
        self._room_event(post.room, post.kind, session.nick, text, id=post.id, n=n)
        if n is None:  # should its batch not be stored, it is told (a numbered one resends)
            self._unnumbered.append((session, post.id))

    def _rate_limited(self, session: Session, post: p.Post) -> None:
        self.counters.rate_limited += 1
        per_second = self._posts.rate
        rate = f"at most {per_second:g} message{'' if per_second == 1 else 's'} a second"
        self._refuse(session, "rate_limited", f"slow down: {rate} (bursts of {self._posts.burst:g})", post.id, post.n)

    def _its_turn(self, session: Session, n: int, ref: str | None) -> bool:
        """Whether post number ``n`` is the one the session's next: a number already used is a
        resend (confirmed, nothing published), one ahead of its turn is refused (once a gap)."""
        if n <= session.acked:
            self.counters.duplicates += 1
            self._deliver(session, self._notice("duplicate", "already delivered", ref=ref, n=n))
            return False
        if n > session.acked + 1:
            self.counters.out_of_order += 1
            self._refuse(session, "out_of_order", f"post {n} came before post {session.acked + 1}", ref, n)
            return False
        return True

    def _use_number(self, session: Session, n: int) -> None:
        self._acked_before.setdefault(session, session.acked)
        session.acked = session.told = n
        if self._store is not None:
            self._store.set_acked(session.token, n)

    def _refuse(self, session: Session, code: str, why: str, ref: str | None, n: int | None) -> None:
        """A post that may be sent again: say from which number, once per gap."""
        expected = session.acked + 1
        if n is not None and session.told == expected:
            return  # told already; the sender is resending from there
        told, session.told = session.told, expected
        # (Not stored, the notice is not sent either: the next post of the gap is told.)
        self._undo.append(lambda: setattr(session, "told", told))
        ev = self._notice("error", f"{why}; not sent", ref=ref, n=n, code=code)
        self._deliver(session, msgspec.structs.replace(ev, expected=expected if n is not None else None))

    def _private(self, session: Session, post: p.Post) -> None:
        """A message for one nick: stored in its inbox and the sender's, delivered on their own
        connections, never on the feed."""
        assert post.to is not None
        to = p.check_nick(post.to)
        recipient = self._by_nick.get(to.lower())
        owner = self._authority.owner(to) if self._authority is not None else None
        if recipient is None and (owner is None or self._store is None):
            raise LocalProtocolError(f"no one called {to!r} is here")
        inbox = recipient.inbox if recipient is not None else p.inbox_name(to)
        name = recipient.nick if recipient is not None else to
        self.counters.private += 1
        ts = self._ts()  # one message, one time: both copies carry it
        ev = self._stream_event(inbox, ts, session.nick, post.text, id=post.id, n=post.n, to=name)
        if recipient is not None:
            self._deliver(recipient, ev)
        if recipient is not session:  # the sender's copy, in its own inbox
            copy = self._stream_event(session.inbox, ts, session.nick, post.text, id=post.id, n=post.n, to=name)
            self._deliver(session, copy)
        if recipient is None:
            notice = self._notice("system", f"{name} is offline: the message waits for them", code="offline")
            self._deliver(session, notice)
        elif recipient.away is not None:
            self._deliver(session, self._notice("system", f"{name} is away: {recipient.away}", code="away"))

    # --- subscriptions (XPUB) -------------------------------------------------------------

    def subscription(self, msg: bytes) -> None:
        """A message from the feed socket: a subscription (libzmq applies it itself; a probe
        is answered with ``ready``) or anything else a peer sent, which is dropped."""
        if not msg or msg[0] not in (0, 1):
            self._drop("a feed peer sent a message that is not a subscription")
        elif (answer := probe_answer(msg, self._ts())) is not None:
            self._signals.append(answer)

    # --- rpc (ROUTER) -----------------------------------------------------------------------

    def request(
        self, frames: Sequence[bytes], now: float, identity: str | None = None, peer: str | None = None
    ) -> None:
        """One message from the rpc socket: ``[routing id, b"", json]``. ``identity`` is the
        CURVE key of the connection (secure mode), ``peer`` its address."""
        if len(frames) != 3 or frames[1] != b"":
            self._drop(f"rpc message that is not [routing id, empty, request] ({len(frames)} frames)")
            return
        route, envelope = frames[0], [frames[0], b""]
        try:
            req = p.decode_request(frames[-1])
        except RemoteProtocolError as exc:
            self._drop(str(exc))
            self._reply(envelope, p.request_id(frames[-1]), _error(p.request_id(frames[-1]), "invalid", str(exc)))
            return
        if not self._requests.allow(route, now):
            self.counters.requests_limited += 1
            self._reply(envelope, req.req, _error(req.req, "rate_limited", "too many requests: slow down"))
            return
        self.counters.requests += 1
        try:
            reply = self._dispatch(req, now, route, identity, peer)
        except LocalProtocolError as exc:
            reply = _error(req.req, getattr(exc, "code", "invalid"), str(exc))
        except StoreError:
            # The store could not be read. What the request changed is taken back with its batch,
            # whose commit fails for it too (see Store.commit); the asker hears it, and retries.
            reply = _error(req.req, "unavailable", "the broker could not read its store: try again")
        self._reply(envelope, req.req, reply)

    def _reply(self, envelope: list[bytes], req_id: str | None, reply: dict[str, object]) -> None:
        self._asked.append((envelope, req_id))
        self._batch.replies.append([*envelope, p.encode(reply)])

    def _dispatch(
        self, req: p.Request, now: float, route: bytes, identity: str | None, peer: str | None
    ) -> dict[str, object]:
        if isinstance(req, p.Hello):
            return self._hello(req, now, route, identity, peer)
        if isinstance(req, p.Who):
            return self._who(req)
        if isinstance(req, p.Stats):
            return _ok(req, **self.stats(now))
        if isinstance(req, p.History):
            return self._history(req, now, route, identity)
        if isinstance(req, p.Seqs):
            return _ok(
                req, seqs={r: self.seq(p.check_room(r)) for r in req.rooms[: p.MAX_ROOMS]}, history=self.history_id
            )
        if isinstance(req, p.Search):
            return self._search(req)
        session = self._live(req.token, now, route, identity)
        if isinstance(req, p.Heartbeat):
            return self._heartbeat(req, session)
        if isinstance(req, p.Leave):
            self._end(session, "quit", req.reason[: p.MAX_REASON_CHARS])
            return _ok(req)
        if isinstance(req, p.Topic) and req.text is None:
            topic = self._topic_of(p.check_room(req.room))
            return _ok(req, room=req.room, topic=topic.text if topic else None, by=topic.nick if topic else None)
        if not self._moves.allow(session.token, now):
            self.counters.moves_limited += 1
            raise _Code("rate_limited", "too many changes at once: slow down")
        if isinstance(req, p.Join):
            return self._join_request(req, session)
        if isinstance(req, p.Part):
            room = p.check_room(req.room)
            if room not in session.rooms:
                raise _Code("not_in_room", f"you are not in room {room!r}")
            reason = req.reason[: p.MAX_REASON_CHARS]
            self._part(session, room, "part", f"{session.nick} left ({'part: ' + reason if reason else 'part'})")
            self._save(session)
            return _ok(req, room=room)
        if isinstance(req, p.Nick):
            return self._nick(req, session)
        if isinstance(req, p.Away):
            return self._away(req, session)
        assert isinstance(req, p.Topic)
        return self._set_topic(req, session)

    def _live(self, token: str, now: float, route: bytes, identity: str | None) -> Session:
        """The session ``token`` names, if it lives and this connection may act for it; its
        lease is renewed and its traffic now goes to ``route``."""
        session = self._sessions.get(token)
        if session is not None and session.identity != identity:
            self.counters.dropped_wrong_identity += 1
            session = None
        if session is None or self._lapsed(session, now):
            raise _Code("unknown_session", "unknown or expired session: say hello again")
        _check_route(route, self.counters)
        session.expires = max(session.expires, now + self.lease)
        session.route = route
        return session

    def _lapsed(self, session: Session, now: float) -> bool:
        return session.expires <= now and now >= self._grace_until

    # --- hello ------------------------------------------------------------------------------

    def _hello(
        self, req: p.Hello, now: float, route: bytes, identity: str | None, peer: str | None
    ) -> dict[str, object]:
        if req.protocol != p.PROTOCOL_VERSION:
            versions = f"this broker speaks zchat protocol {p.PROTOCOL_VERSION}, the client {req.protocol}"
            raise _Code("protocol", f"{versions}: upgrade the client")
        _check_route(route, self.counters)
        if self._authority is not None and identity is None:
            raise _Code("unauthenticated", "this broker needs CURVE authentication")
        owner = identity or peer or ""
        if not self._hello_routes.allow(route, now) or not self._hello_peers.allow(owner, now):
            self.counters.hellos_limited += 1
            raise _Code("rate_limited", "too many hellos: wait a few seconds")
        nick = p.check_nick(req.nick)
        rooms = list(dict.fromkeys(p.check_room(p.normalize_room(r)) for r in req.rooms))
        if len(rooms) > p.MAX_ROOMS:
            raise _Code("too_many_rooms", f"at most {p.MAX_ROOMS} rooms per session")
        prior = self._sessions.get(req.resume or "")
        if prior is not None and prior.identity == identity and prior.nick.lower() == nick.lower():
            return self._resume(req, prior, rooms, now, route)
        ended = self._tombstones.get(req.resume or "")
        session = self._new_session(nick, rooms, now, route=route, identity=identity, peer=peer, owner=owner)
        return self._welcome(req, session, resumed=False, prior=ended)

    def _resume(self, req: p.Hello, session: Session, rooms: list[str], now: float, route: bytes) -> dict[str, object]:
        """The same client again (a new connection, or a restarted broker): the session goes on,
        with no leave or join — only rooms the client no longer lists are left, new ones joined."""
        self.counters.resumed += 1
        session.expires = max(session.expires, now + self.lease)
        session.route = route
        for room in sorted(session.rooms - set(rooms)):
            self._part(session, room, "part", f"{session.nick} left (part)")
        for room in rooms:
            if room not in session.rooms:
                self._join(session, room)
        self._save(session)
        log.debug("%s resumed", session.nick)
        return self._welcome(req, session, resumed=True)

    def _new_session(
        self,
        nick: str,
        rooms: list[str],
        now: float,
        *,
        route: bytes,
        identity: str | None,
        peer: str | None,
        owner: str,
    ) -> Session:
        if nick.lower() in self._by_nick:
            raise _Code("nick_taken", f"nick {nick!r} is in use by a live session")
        cap = SESSIONS_PER_KEY if identity is not None else self.config.max_sessions_per_peer
        if len(self._sessions) >= self.config.max_sessions or self._per_owner[owner] >= cap:
            self.counters.sessions_refused += 1
            raise _Code("too_many_sessions", "too many sessions: close one first")
        # Checked before the session is made: a refusal must leave no session, join or claim.
        self._check_room_space(sum(room not in self._rooms for room in rooms))
        # Last: a first claim is recorded (and stored with the batch), so only for a session made.
        if self._authority is not None:
            assert identity is not None
            self._claim(identity, nick)
        session_id = None if self._authority is not None else secrets.token_urlsafe(9)
        inbox = p.inbox_name(nick, session_id)
        session = Session(self._new_token(), nick, identity, peer, inbox, set(), now + self.lease, route)
        self._add_session(session)
        self.counters.joins += 1
        log.info("%s joined %s", nick, ", ".join(rooms) or "(no rooms)")
        for room in rooms:
            self._join(session, room)
        self._save(session)
        return session

    def _claim(self, identity: str, nick: str) -> None:
        """Secure mode: may this key use this nick? (A first claim is recorded.)"""
        assert self._authority is not None
        try:
            claimed = self._authority.check(identity, nick)
        except ClaimRefused as exc:
            self.counters.claims_refused += 1
            raise _Code("nick_not_allowed", str(exc)) from None
        except LocalProtocolError as exc:
            raise _Code("nick_not_allowed", str(exc)) from None
        if claimed:
            self._undo.append(lambda: self._authority.unclaim(nick) if self._authority else None)
            if self._store is not None:
                self._store.claim(nick.lower(), identity)

    def _welcome(
        self, req: p.Hello, session: Session, *, resumed: bool, prior: _Tombstone | None = None
    ) -> dict[str, object]:
        rooms = sorted(session.rooms)
        topics = {room: t.text for room in rooms if (t := self._topic_of(room)) is not None}
        return _ok(
            req,
            protocol=p.PROTOCOL_VERSION,
            token=session.token,
            nick=session.nick,
            resumed=resumed,
            rooms={room: self.seq(room) for room in rooms},
            topics=topics,
            inbox=self._inbox_state(session),
            acked=session.acked,
            refused=session.refused,
            prior_acked=prior.acked if prior is not None else None,
            prior_refused=prior.refused if prior is not None else None,
            epoch=self.epoch,
            history=self.history_id,
            heartbeat_ms=round(self.heartbeat_interval * 1000),
            lease_ms=round(self.lease * 1000),
            max_text_bytes=p.MAX_TEXT_BYTES,
            rate=self._posts.rate,
            burst=int(self._posts.burst),
        )

    def _inbox_state(self, session: Session) -> dict[str, object]:
        return {"name": session.inbox, "seq": self._inbox_seq(session.inbox), "read": self._read(session.inbox)}

    # --- session requests ---------------------------------------------------------------------

    def _heartbeat(self, req: p.Heartbeat, session: Session) -> dict[str, object]:
        if req.inbox_read is not None and req.inbox_read > self._read(session.inbox):
            read = min(req.inbox_read, self._inbox_seq(session.inbox))
            inbox, before = session.inbox, self._reads[session.inbox]
            self._reads[inbox] = read
            # (Not stored, it must be stored by the next heartbeat that says it.)
            self._undo.append(lambda: self._reads.__setitem__(inbox, before))
            if self._store is not None:
                self._store.set_read(session.inbox, read)
        # The newest seqs let the client notice what it lost at the very end; ``acked`` confirms
        # its posts even if it missed them on the feed.
        seqs = {room: self.seq(room) for room in sorted(session.rooms)}
        seqs[session.inbox] = self._inbox_seq(session.inbox)
        return _ok(req, seqs=seqs, acked=session.acked, refused=session.refused)

    def _join_request(self, req: p.Join, session: Session) -> dict[str, object]:
        room = p.check_room(p.normalize_room(req.room))
        if room not in session.rooms:
            if len(session.rooms) >= p.MAX_ROOMS:
                self.counters.rooms_refused += 1
                raise _Code("too_many_rooms", f"at most {p.MAX_ROOMS} rooms per session")
            self._join(session, room)
            self._save(session)
        topic = self._topic_of(room)
        return _ok(req, room=room, seq=self.seq(room), topic=topic.text if topic else None)

    def _nick(self, req: p.Nick, session: Session) -> dict[str, object]:
        new = p.check_nick(req.nick)
        old = session.nick
        if new == old:
            raise _Code("no_change", f"you are {old} already")
        holder = self._by_nick.get(new.lower())
        if holder is not None and holder is not session:
            raise _Code("nick_taken", f"nick {new!r} is in use by a live session")
        if self._authority is not None and new.lower() != old.lower():
            assert session.identity is not None
            self._claim(session.identity, new)
        old_inbox = session.inbox
        self._rename(session, new, p.inbox_name(new) if self._authority is not None else old_inbox)
        self._undo.append(lambda: self._rename(session, old, old_inbox))
        for room in sorted(session.rooms):
            self._room_event(room, "nick", old, f"{old} is now known as {new}", new_nick=new)
        self._save(session)
        log.info("%s is now known as %s", old, new)
        return _ok(req, nick=new, inbox=self._inbox_state(session))

    def _rename(self, session: Session, nick: str, inbox: str) -> None:
        self._by_nick.pop(session.nick.lower(), None)
        for room in session.rooms:
            members = self._room(room).members
            members.pop(session.nick.lower(), None)
            members[nick.lower()] = session
        session.nick, session.inbox = nick, inbox
        self._by_nick[nick.lower()] = session

    def _away(self, req: p.Away, session: Session) -> dict[str, object]:
        before = session.away
        session.away = req.text.strip() or None if req.text is not None else None
        self._undo.append(lambda: setattr(session, "away", before))
        self._save(session)
        return _ok(req, away=session.away)

    def _set_topic(self, req: p.Topic, session: Session) -> dict[str, object]:
        room = p.check_room(req.room)
        if room not in session.rooms:
            raise _Code("not_in_room", f"you are not in room {room!r}: join it first")
        assert req.text is not None
        text = req.text.strip()
        r = self._room(room)
        before = r.topic
        r.topic = TopicRecord(text, session.nick, self._ts()) if text else None
        self._undo.append(lambda: setattr(r, "topic", before))
        if self._store is not None:
            self._store.set_topic(room, r.topic)
        said = f"{session.nick} set the topic: {text}" if text else f"{session.nick} cleared the topic"
        self._room_event(room, "topic", session.nick, text or said, reason=None if text else "cleared")
        return _ok(req, room=room, topic=text or None)

    # --- questions anyone may ask -----------------------------------------------------------------

    def _who(self, req: p.Who) -> dict[str, object]:
        room = p.check_room(p.normalize_room(req.room))
        r = self._rooms.get(room)
        members = list(r.members.values()) if r else []
        topic = self._topic_of(room)
        return _ok(
            req,
            room=room,
            nicks=self.members(room),
            away={s.nick: s.away for s in members if s.away is not None},
            topic=topic.text if topic else None,
            exists=r is not None or self.seq(room) > 0,
        )

    def _history(self, req: p.History, now: float, route: bytes, identity: str | None) -> dict[str, object]:
        if p.is_inbox(req.room):
            session = self._live(req.token or "", now, route, identity)
            if req.room != session.inbox:
                raise _Code("not_yours", "that inbox is not yours")
            room = req.room
        else:
            room = p.check_room(req.room)
        last = self.seq(room)
        if self._store is None:
            return _ok(req, room=room, history=self.history_id, first=0, last=last, upto=last, more=False, events=[])
        page = self._store.page(room, req.after, req.limit, MAX_PAGE_BYTES)
        # Stored events are already JSON: embed them as they are, without a decode/encode trip.
        return _ok(
            req,
            room=room,
            history=self.history_id,
            first=self._store.first_seq(room),
            last=last,
            upto=page.upto,
            more=page.more,
            events=[msgspec.Raw(e) for e in page.events],
        )

    def _search(self, req: p.Search) -> dict[str, object]:
        room = p.check_room(p.normalize_room(req.room))
        found = self._store.search(room, req.text, req.limit, req.before) if self._store is not None else []
        more = len(found) == req.limit
        if found and not more and self._store is not None:
            # Fewer than asked: none left, or the page was cut at its byte bound. Only a look
            # past the oldest one tells which.
            more = bool(self._store.search(room, req.text, 1, p.decode_event(found[-1]).seq))
        return _ok(req, room=room, history=self.history_id, more=more, events=[msgspec.Raw(e) for e in found])

    # --- leases, heartbeats, housekeeping, shutdown -------------------------------------------------

    def heartbeat(self) -> None:
        """The feed's liveness beacon, with this run's epoch."""
        ev = p.Event(0, self._ts(), "", "heartbeat", p.SYSTEM_NICK, "", epoch=self.epoch)
        self._signals.append((p.HEARTBEAT_TOPIC, p.encode(ev)))

    def housekeeping(self) -> None:
        """Now and then, not per message: forget old tombstones and unused inbox counters."""
        horizon = self._wallclock() - TOMBSTONE_SECONDS
        while self._tombstones and next(iter(self._tombstones.values())).ended < horizon:
            self._tombstones.popitem(last=False)
        live = {s.inbox for s in self._sessions.values()}
        for inbox in [i for i in self._inboxes if i not in live]:
            del self._inboxes[inbox]
        for inbox in [i for i in self._reads if i not in live]:
            del self._reads[inbox]

    def expire(self, now: float) -> None:
        """End every session whose lease ran out before ``now`` (never during a grace)."""
        if now < self._next_sweep or now < self._grace_until:
            return
        for session in [s for s in self._sessions.values() if s.expires <= now]:
            self.counters.timeouts += 1
            self._end(session, "timed out", "")
        self._next_sweep = min((s.expires for s in self._sessions.values()), default=math.inf)

    def shutdown(self) -> None:
        """The notice that the broker stops: once, on the heartbeat topic every client and reader
        hears (a room with no members, followed by a reader, hears it too), and not stored."""
        text = "the broker is shutting down"
        ev = p.Event(0, self._ts(), "", "system", p.SYSTEM_NICK, text, reason="shutdown", epoch=self.epoch)
        self._signals.append((p.HEARTBEAT_TOPIC, p.encode(ev)))

    def stats(self, now: float) -> dict[str, object]:
        return {
            "uptime_s": round(now - self.started, 3),
            "sessions": len(self._sessions),
            "rooms": len(self._rooms),
            "tombstones": len(self._tombstones),
            "claims": self._authority.claims if self._authority is not None else 0,
            "store_bytes": self._store.size() if self._store is not None else 0,
            "wal_bytes": self._store.wal_size() if self._store is not None else 0,
            "epoch": self.epoch,
            "role": self.role,
            "secure": self._authority is not None,
            **vars(self.counters),
        }

    # --- sessions and rooms -------------------------------------------------------------------

    def _add_session(self, session: Session) -> None:
        self._sessions[session.token] = session
        self._by_nick[session.nick.lower()] = session
        owner = session.identity or session.peer or ""
        self._per_owner[owner] += 1
        self._next_sweep = min(self._next_sweep, session.expires)
        self._undo.append(lambda: self._remove_session(session))

    def _remove_session(self, session: Session) -> None:
        del self._sessions[session.token]
        if self._by_nick.get(session.nick.lower()) is session:
            del self._by_nick[session.nick.lower()]
        owner = session.identity or session.peer or ""
        self._per_owner[owner] -= 1
        if self._per_owner[owner] <= 0:
            del self._per_owner[owner]

    def _end(self, session: Session, reason: str, message: str) -> None:
        self._remove_session(session)
        self._undo.append(lambda: self._restore_session(session))
        self.counters.leaves += 1
        log.info("%s left (%s)", session.nick, reason)
        detail = f"{reason}: {message}" if message and message != reason else reason
        for room in sorted(session.rooms):
            self._part(session, room, reason, f"{session.nick} left ({detail})")
        ended = self._wallclock()
        self._tombstones[session.token] = _Tombstone(session.acked, ended, dict(session.refused))
        while len(self._tombstones) > MAX_TOMBSTONES:
            self._tombstones.popitem(last=False)
        if self._store is not None:
            self._store.save_session(session.record(ended))

    def _restore_session(self, session: Session) -> None:
        self._tombstones.pop(session.token, None)
        self._sessions[session.token] = session
        self._by_nick[session.nick.lower()] = session
        self._per_owner[session.identity or session.peer or ""] += 1
        # A lease that lapsed in a batch not stored lapses again at the next sweep, which
        # expire() set past it.
        self._next_sweep = min(self._next_sweep, session.expires)

    def _save(self, session: Session) -> None:
        if self._store is not None:
            self._store.save_session(session.record())

    def _room(self, name: str) -> _Room:
        """The room ``name`` in memory, brought back from the store if it was forgotten."""
        room = self._rooms.get(name)
        if room is None:
            self._check_room_space(1)
            stored = self._store
            feed = p.room_topic(name)
            room = _Room(feed, stored.last_seq(name), topic=stored.topic(name)) if stored else _Room(feed)
            self._rooms[name] = room
            self._undo.append(lambda: self._rooms.pop(name, None))
        return room

    def _check_room_space(self, new: int) -> None:
        """Refuse if ``new`` more rooms would not fit in memory."""
        if new and len(self._rooms) + new > MAX_ACTIVE_ROOMS:
            self.counters.rooms_refused += 1
            raise _Code("too_many_rooms", "the broker has too many rooms in use: try again later")

    def _topic_of(self, room: str) -> TopicRecord | None:
        r = self._rooms.get(room)
        if r is not None:
            return r.topic
        return self._store.topic(room) if self._store is not None else None

    def _join(self, session: Session, room: str) -> None:
        r = self._room(room)
        key = session.nick.lower()
        session.rooms.add(room)
        r.members[key] = session

        def undo() -> None:
            session.rooms.discard(room)
            r.members.pop(key, None)

        self._undo.append(undo)
        self._room_event(room, "join", session.nick, f"{session.nick} joined")

    def _part(self, session: Session, room: str, reason: str, text: str) -> None:
        r = self._room(room)
        key = session.nick.lower()
        session.rooms.discard(room)
        r.members.pop(key, None)

        def undo() -> None:
            session.rooms.add(room)
            r.members[key] = session

        self._undo.append(undo)
        self._room_event(room, "leave", session.nick, text, reason=reason)

    def _inbox_seq(self, inbox: str) -> int:
        seq = self._inboxes.get(inbox)
        if seq is None:
            seq = self._inboxes[inbox] = self._store.last_seq(inbox) if self._store is not None else 0
        return seq

    def _read(self, inbox: str) -> int:
        read = self._reads.get(inbox)
        if read is None:
            read = self._reads[inbox] = self._store.read(inbox) if self._store is not None else 0
        return read

    # --- events -----------------------------------------------------------------------------------

    def _room_event(
        self,
        room: str,
        kind: str,
        nick: str,
        text: str,
        *,
        id: str | None = None,
        n: int | None = None,
        reason: str | None = None,
        new_nick: str | None = None,
    ) -> None:
        """Stamp, stage and publish one event of a room."""
        r = self._rooms.get(room) or self._room(room)
        self._seq_before.setdefault(room, r.seq)
        r.seq = seq = r.seq + 1
        ev = p.Event(seq, self._ts(), room, kind, nick, text, id=id, reason=reason, n=n, new_nick=new_nick)
        payload = p.encode(ev)
        if self._store is not None:
            searchable = text if kind in ("message", "action") else None
            self._store.append(room, seq, payload, presence=kind in ("join", "leave"), text=searchable)
        self.counters.published += 1
        self._batch.publish.append((r.feed, payload))

    def _stream_event(
        self, inbox: str, ts: str, nick: str, text: str, *, id: str | None, n: int | None, to: str
    ) -> bytes:
        """Stamp and stage one private message in an inbox; returns it encoded (for delivery:
        an inbox is never published)."""
        seq = self._inbox_seq(inbox)
        self._seq_before.setdefault(inbox, seq)
        self._inboxes[inbox] = seq + 1
        payload = p.encode(p.Event(seq + 1, ts, inbox, "private", nick, text, id=id, n=n, to=to))
        if self._store is not None:
            self._store.append(inbox, seq + 1, payload)
        return payload

    def _notice(
        self, kind: str, text: str, *, ref: str | None = None, n: int | None = None, code: str | None = None
    ) -> p.Event:
        """An event for one session outside any sequence (seq 0)."""
        return p.Event(0, self._ts(), "", kind, p.SYSTEM_NICK, text, id=ref, n=n, code=code)

    def _error(
        self, session: Session, code: str, text: str, *, room: str = "", ref: str | None = None, n: int | None = None
    ) -> None:
        if n is not None:  # a refusal for good: its number is used up
            before = dict(session.refused)
            session.refused[n] = text
            # (Not stored, it must not be reminded of: the sender resends n, which may pass.)
            self._undo.append(lambda: setattr(session, "refused", before))
            while len(session.refused) > p.MAX_REFUSED:  # (a burst of refusals is rare)
                del session.refused[next(iter(session.refused))]
            self._save(session)  # with the batch: a restarted broker still tells it
        ev = self._notice("error", text, ref=ref, n=n, code=code)
        self._deliver(session, msgspec.structs.replace(ev, room=room if room in session.rooms else ""))

    def _deliver(self, session: Session, event: p.Event | bytes) -> None:
        """Send an event to one session's own connection (if it has one now: an inbox event it
        misses is in history; a notice is not worth keeping)."""
        if session.route is None:
            return
        payload = event if isinstance(event, bytes) else p.encode(event)
        self.counters.delivered += 1
        self._batch.deliver.append((session.route, p.delivery(payload)))

    def _ts(self) -> str:
        stamp = self._stamp
        if stamp is None:
            stamp = self._stamp = p.format_ts(self._wallclock())
        return stamp

    def _drop(self, why: str) -> None:
        self.counters.dropped_malformed += 1
        log.debug("dropped: %s", why)


class _Code(LocalProtocolError):
    """A refusal with a machine-readable code for the error reply."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code


def probe_answer(msg: bytes, ts: str) -> Publish | None:
    """The answer to a subscription message from the feed, if it subscribes to a readiness probe:
    ``ready`` on the probe's own topic (every subscription made before it is live by then)."""
    if msg[:1] != b"\x01" or not p.is_probe_topic(msg[1:]):
        return None
    return msg[1:], p.encode(p.Event(0, ts, "", "ready", p.SYSTEM_NICK, "subscriptions are live"))


def standby_answer(frames: Sequence[bytes]) -> list[bytes] | None:
    """What a standby broker (one of a pair, not holding the lock) answers an rpc message: its
    role to ``stats``, and ``standby`` to everything else, so clients move to the other one."""
    if len(frames) != 3 or frames[1] != b"":
        return None
    try:
        req = p.decode_request(frames[2])
    except RemoteProtocolError as exc:
        reply = _error(p.request_id(frames[2]), "invalid", str(exc))
    else:
        why = "this broker is the standby of a pair: ask the other one"
        reply = _ok(req, role="standby") if isinstance(req, p.Stats) else _error(req.req, "standby", why)
    return [frames[0], b"", p.encode(reply)]


def _check_route(route: bytes, counters: Counters) -> None:
    """A session's traffic is routed to its connection's routing id, so that id must be one no
    other peer can guess: chosen by the client, random, at least :data:`MIN_ROUTE_BYTES` long.
    libzmq's own ids (a zero byte and a counter) are guessable and not accepted."""
    if len(route) < p.MIN_ROUTE_BYTES or route[0] == 0:
        counters.weak_routes += 1
        raise _Code(
            "weak_route",
            f"set ROUTING_ID on your rpc socket to {p.MIN_ROUTE_BYTES} or more random bytes (a new one per"
            " connection, not starting with a zero byte): private traffic is routed to it",
        )


def _ok(req: p.Request, **fields: object) -> dict[str, object]:
    return {"type": req.__struct_config__.tag, "ok": True, "req": req.req, **fields}


def _error(req_id: str | None, code: str, reason: str) -> dict[str, object]:
    return {"type": "error", "ok": False, "req": req_id, "code": code, "error": reason}
