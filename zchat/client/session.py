"""The client's brain, sans-IO: one session with a broker as a state machine fed with bytes and time.

Two rules hold everything here together, as in h11's ``_state.py``:

- Everything that decides what the client does next lives in this module: joining and
  rejoining, lease and heartbeat timing, judging the broker lost, backoff, the outbox (message
  ids, resends, expiry), matching replies to requests, and what to fetch to repair a gap (the
  ordering itself is :class:`~zchat.client.sequencer.RoomSequencer`).
- This module never touches a socket or reads a clock. :class:`ClientSession` takes what
  arrived (feed payloads, rpc replies) and the monotonic time, and hands back what to send
  (:meth:`ClientSession.take_outgoing`: requests, and :data:`REOPEN` when the rpc socket must be
  replaced), what to push (:meth:`ClientSession.next_post`) and the events to deliver
  (:meth:`ClientSession.take_events`). The shell (:mod:`zchat.client.shell`) owns the sockets,
  the polling and blocking.

The states and what moves between them are the table :data:`TRANSITIONS`; every change of
:attr:`ClientSession.state` goes through it, so a test can walk it.
"""

from __future__ import annotations

import collections
import itertools
import math
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final, Literal

import msgspec

from zchat import protocol as p
from zchat.client.sequencer import RoomSequencer
from zchat.errors import LocalProtocolError, RemoteProtocolError, ZChatError

__all__ = [
    "MAX_BACKOFF",
    "REOPEN",
    "TRANSITIONS",
    "ClientSession",
    "Outgoing",
    "Pending",
    "Reopen",
    "State",
]

State = Literal["new", "connecting", "connected", "reconnecting", "closed"]

#: What makes the session move, from which state to which. Anything else is a bug.
TRANSITIONS: Final[dict[tuple[State, str], State]] = {
    ("new", "connect"): "connecting",
    ("connecting", "joined"): "connected",
    ("connected", "lost"): "reconnecting",
    ("reconnecting", "joined"): "connected",
    ("new", "close"): "closed",
    ("connecting", "close"): "closed",
    ("connected", "close"): "closed",
    ("reconnecting", "close"): "closed",
}

#: Longest wait between two attempts to rejoin a lost broker; the first retry comes at once,
#: then 0.5 s, doubling (the Lazy Pirate pattern).
FIRST_BACKOFF = 0.5
MAX_BACKOFF = 8.0
#: Heartbeat at least this often even if the broker allows less: the replies carry the rooms'
#: newest seq, which is how a lost tail is noticed.
MAX_HEARTBEAT = 1.0


class Reopen:
    """Tells the shell to replace the rpc socket before sending what follows (a fresh DEALER,
    so no stale request reaches a restarted broker)."""

    def __repr__(self) -> str:
        return "REOPEN"


REOPEN: Final = Reopen()
#: What the shell sends on rpc, in order.
Outgoing = p.Request | Reopen


@dataclass
class Pending:
    """A sent message the feed has not shown back yet."""

    room: str
    kind: p.PostKind
    text: str
    at: float  # monotonic time of the send
    to: str | None = None  # a private message's recipient


class ClientSession:
    """The rules of one client session (or, with ``nick=None``, of a reader of rooms).

    Times are monotonic seconds passed in; ``wallclock`` only stamps the events the client
    makes up itself (notices, markers).
    """

    def __init__(
        self,
        nick: str | None,
        rooms: Iterable[str],
        *,
        backlog: int = 0,
        since: int | None = None,
        send_timeout: float = 30.0,
        dead_after: float = 3.0,
        wallclock: Callable[[], float] = time.time,
        id_prefix: str | None = None,
    ) -> None:
        self.nick = p.check_nick(nick) if nick is not None else None
        self.rooms = list(dict.fromkeys(p.check_room(p.normalize_room(r)) for r in rooms))
        self.backlog = max(0, backlog)
        self.since = since
        self.send_timeout = send_timeout
        self.dead_after = dead_after
        self._wallclock = wallclock
        # Errors and private messages for this session come on a topic only it knows.
        self.inbox = p.new_inbox_topic(nick) if nick is not None else b""
        self.state: State = "new"
        self.token = ""
        self.epoch: str | None = None
        self.history_id: str | None = None
        self.heartbeat = MAX_HEARTBEAT
        # Message ids: unique per client run, so the broker can drop a resend but nothing else.
        prefix = id_prefix or secrets.token_hex(4)
        self._ids = (f"{prefix}-{n}" for n in itertools.count(1))
        self._reqs = (str(n) for n in itertools.count(1))
        self.sequencer = RoomSequencer()
        #: Sent messages the feed has not shown back yet, in send order.
        self.pending: dict[str, Pending] = {}
        #: Messages refused by the broker or never confirmed -> the reason.
        self.failed: dict[str, str] = {}
        #: The client has unread feed input waiting (a full drain): confirmations may be in it.
        self.behind = False
        self._unsent: collections.deque[str] = collections.deque()  # ids of pending not pushed yet
        self._outgoing: list[Outgoing] = []
        self._events: collections.deque[p.Event] = collections.deque()
        self._replies: dict[str, dict[str, object]] = {}
        self._calls: set[str] = set()  # request ids a caller is waiting for
        # Requests sent on the current rpc socket and not answered yet: a reply to anything else
        # comes from before a reconnect (or from nowhere) and is not trusted.
        self._asked: set[str] = set()
        self._history_reqs: dict[str, str] = {}  # request id -> room
        self._next_heartbeat = 0.0
        # When the oldest unanswered request went out; None when every one was answered. The
        # broker is judged lost when this gets older than dead_after.
        self._waiting_since: float | None = None
        self._retry_at = 0.0
        self._backoff = FIRST_BACKOFF
        self._rejoin_req: str | None = None

    # --- the state machine ---------------------------------------------------------------------

    def _goto(self, trigger: str) -> None:
        try:
            self.state = TRANSITIONS[self.state, trigger]
        except KeyError:
            raise ZChatError(f"the client is {self.state}") from None

    def connect(self) -> p.Request:
        """Start joining: the request to send once the feed's subscriptions are live. Its reply
        goes to :meth:`joined`."""
        self._goto("connect")
        return self._join_request()

    def joined(self, reply: dict[str, object], now: float) -> None:
        """The broker accepted the join (a hello, or for a reader a seqs reply)."""
        if self.nick is not None:
            self.token = str(reply["token"])
            hb = reply.get("heartbeat_ms")
            self.heartbeat = min(MAX_HEARTBEAT, hb / 1000) if isinstance(hb, int) and hb > 0 else MAX_HEARTBEAT
            epoch = reply.get("epoch")
            self.epoch = epoch if isinstance(epoch, str) else None
            reply = {"seqs": reply.get("rooms"), "history": reply.get("history")}
        self._goto("joined")
        self._waiting_since = None
        self._next_heartbeat = now + self.heartbeat
        self._start_rooms(reply)

    def close(self) -> None:
        if self.state != "closed":
            self._goto("close")

    def _lost(self, why: str, now: float) -> None:
        self._goto("lost")
        self._retry_at = now
        self._backoff = FIRST_BACKOFF
        self._history_reqs.clear()
        self.sequencer.retry_all()
        self._events.append(self._local("system", "disconnected", f"{why} — reconnecting…"))

    # --- what the shell reads back -------------------------------------------------------------

    def take_outgoing(self) -> list[Outgoing]:
        """Requests to send on rpc now, in order (after :data:`REOPEN`, on a new socket)."""
        out, self._outgoing = self._outgoing, []
        return out

    def take_events(self) -> list[p.Event]:
        out = list(self._events)
        self._events.clear()
        return out

    def next_event(self) -> p.Event | None:
        return self._events.popleft() if self._events else None

    @property
    def has_events(self) -> bool:
        return bool(self._events)

    def next_timer(self) -> float:
        """Monotonic time by which :meth:`tick` has something to do (``inf``: nothing)."""
        if self.state == "reconnecting":
            return self._retry_at
        if self.state != "connected":
            return math.inf
        if self._waiting_since is None:
            return self._next_heartbeat
        return min(self._next_heartbeat, self._waiting_since + self.dead_after + 0.01)

    # --- sending -------------------------------------------------------------------------------

    def post(
        self,
        text: str,
        room: str | None,
        kind: p.PostKind,
        now: float,
        to: str | None = None,
    ) -> str:
        """Queue a message (or, with ``to``, a private message); returns its id. It stays
        pending until the feed shows it back; :meth:`next_post` hands it to the shell."""
        if self.nick is None:
            raise ZChatError("a reader cannot speak: give a nick")
        if self.state not in ("connected", "reconnecting"):
            raise ZChatError(f"the client is {self.state}")
        room = "" if to is not None else self.room(room)
        p.check_text(text)
        msg_id = next(self._ids)
        self.pending[msg_id] = Pending(room, kind, text, now, to)
        self._unsent.append(msg_id)
        return msg_id

    def next_post(self) -> bytes | None:
        """The next message to push on ingest, or None. Call :meth:`posted` once it went out;
        while the broker is being reconnected nothing is handed out (the outbox keeps it)."""
        if self.state != "connected":
            return None
        while self._unsent:
            out = self.pending.get(self._unsent[0])
            if out is not None:
                msg_id = self._unsent[0]
                post = p.Post(token=self.token, room=out.room, text=out.text, kind=out.kind, id=msg_id, to=out.to)
                return p.encode(post)
            self._unsent.popleft()  # confirmed or failed meanwhile
        return None

    def posted(self) -> None:
        self._unsent.popleft()

    # --- requests ------------------------------------------------------------------------------

    def call(self, req: p.Request, now: float) -> str:
        """Queue ``req`` for a caller that will wait for its reply (:meth:`take_reply`)."""
        if req.req is None:
            req = msgspec.structs.replace(req, req=next(self._reqs))
        assert req.req is not None
        self._calls.add(req.req)
        self._send(req, now)
        return req.req

    def take_reply(self, req_id: str) -> dict[str, object] | None:
        """The reply to a :meth:`call`, once it came (the call is then done)."""
        reply = self._replies.pop(req_id, None)
        if reply is not None:
            self._calls.discard(req_id)
        return reply

    def forget_call(self, req_id: str) -> None:
        """The caller gave up waiting: a late reply is dropped."""
        self._calls.discard(req_id)
        self._asked.discard(req_id)
        self._replies.pop(req_id, None)

    def join_room(self, room: str) -> p.Request:
        """The request that joins ``room`` (for a reader: asks where it stands)."""
        if self.nick is None:
            return p.Seqs(rooms=[room])
        return p.Join(token=self.token, room=room)

    def room_joined(self, room: str, reply: dict[str, object]) -> None:
        """Its reply: deliver from where the room stands (its backlog first)."""
        if self.nick is not None:
            reply = {"seqs": {room: reply.get("seq")}}
        if room not in self.rooms:
            self.rooms.append(room)
        self._start_rooms(reply)

    def part_room(self, room: str) -> p.Request | None:
        """The request that leaves ``room`` (None for a reader, which has nothing to tell)."""
        return p.Part(token=self.token, room=room) if self.nick is not None else None

    def room_parted(self, room: str) -> None:
        self.rooms.remove(room)
        self.sequencer.stop(room)

    def leave_request(self, reason: str) -> p.Request | None:
        """The goodbye, if there is a session to end."""
        if self.state == "connected" and self.nick is not None:
            return p.Leave(token=self.token, reason=reason)
        return None

    def _send(self, req: p.Request, now: float) -> None:
        if self._waiting_since is None:
            self._waiting_since = now
        if req.req is not None:
            self._asked.add(req.req)
        self._outgoing.append(req)

    def _reopen(self) -> None:
        """Ask for a fresh rpc socket: nothing sent on the old one will be answered."""
        self._outgoing.append(REOPEN)
        self._asked.clear()
        self._waiting_since = None

    def _join_request(self) -> p.Request:
        req = next(self._reqs)
        if self.nick is None:
            return p.Seqs(rooms=self.rooms, req=req)
        return p.Hello(nick=self.nick, rooms=self.rooms, req=req, inbox=self.inbox.decode())

    def _beat_request(self) -> p.Request:
        if self.nick is None:
            return p.Seqs(rooms=self.rooms, req=next(self._reqs))
        return p.Heartbeat(token=self.token, req=next(self._reqs))

    # --- receiving -----------------------------------------------------------------------------

    def feed_message(self, payload: bytes, now: float) -> None:
        """One event frame from the feed (the topic frame has been read by the shell)."""
        try:
            event = p.decode_event(payload)
        except RemoteProtocolError:
            return  # not from a zchat broker: nothing to show
        if event.kind == "heartbeat":
            if self.epoch is not None and event.epoch != self.epoch and self.state == "connected":
                self._lost("the broker restarted", now)
            return
        if event.seq > 0:
            for ready in self.sequencer.offer(event):
                self._deliver(ready)
        else:
            self._deliver(event)

    def rpc_message(self, body: bytes, now: float) -> None:
        """One reply body from rpc (the shell has taken off the empty delimiter frame)."""
        try:
            reply = p.decode_reply(body)
        except RemoteProtocolError:
            return
        req = reply.get("req")
        if not isinstance(req, str) or req not in self._asked:
            return  # stale (sent before a reconnect), or never asked
        self._asked.discard(req)
        self._waiting_since = None
        if req == self._rejoin_req:
            self._on_rejoin(reply, now)
        elif req in self._history_reqs:
            self._on_history(self._history_reqs.pop(req), reply)
        elif req in self._calls:
            self._replies[req] = reply
        elif reply.get("ok"):
            self._observe(reply)  # a heartbeat's (or a reader's seqs) reply
        elif reply.get("code") == "unknown_session" and self.state == "connected":
            self._lost("the broker forgot this session", now)

    def _observe(self, reply: dict[str, object]) -> None:
        seqs = reply.get("seqs")
        if isinstance(seqs, dict):
            for room, seq in seqs.items():
                if isinstance(seq, int):
                    self.sequencer.observe(room, seq)

    def _on_history(self, room: str, reply: dict[str, object]) -> None:
        raw = reply.get("events")
        if not reply.get("ok") or not isinstance(raw, list):
            self.sequencer.retry(room)
            return
        try:
            events = [msgspec.convert(e, p.Event) for e in raw]
        except msgspec.ValidationError:
            self.sequencer.retry(room)
            return
        for event in self.sequencer.fill(room, events):
            self._deliver(event)

    def _on_rejoin(self, reply: dict[str, object], now: float) -> None:
        self._rejoin_req = None
        if reply.get("ok"):
            self.joined(reply, now)
            # Whatever was pushed before may have died with the connection: send it all again;
            # the broker drops what it already has and says so.
            self._unsent = collections.deque(self.pending)
            self._events.append(self._local("system", "reconnected", "reconnected"))
        elif self._backoff >= MAX_BACKOFF:
            self._events.append(self._local("system", "rejoin_failed", f"cannot rejoin yet: {reply.get('error')}"))

    def _deliver(self, event: p.Event) -> None:
        if not event.ts:
            event = msgspec.structs.replace(event, ts=p.format_ts(self._wallclock()))
        if event.id is not None and event.id in self.pending:
            if event.kind == "error":
                del self.pending[event.id]
                self.failed[event.id] = event.text
            elif event.kind == "duplicate":
                del self.pending[event.id]
                return  # a resend of what we already saw: nothing new to show
            elif self.nick is not None and event.nick.lower() == self.nick.lower():
                del self.pending[event.id]
        self._events.append(event)

    def _start_rooms(self, reply: dict[str, object]) -> None:
        seqs = reply.get("seqs")
        if not isinstance(seqs, dict):
            return
        history = reply.get("history")
        reset = False
        if isinstance(history, str):
            reset = self.history_id is not None and history != self.history_id
            self.history_id = history
        for room, latest in seqs.items():
            if not isinstance(latest, int):
                continue
            if self.since is not None:
                first = self.since + 1
            elif self.nick is None:
                first = latest + 1 - self.backlog  # a reader: the backlog, then what comes
            else:
                first = latest + 1 - max(1, self.backlog)  # a member: at least its own join
            for event in self.sequencer.start(room, first, latest, reset=reset):
                self._deliver(event)

    # --- time ----------------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Do what is due at ``now``: heartbeat, judge the broker lost, retry a rejoin, expire
        the outbox, and ask history for what the rooms lack."""
        if self.state == "connected":
            # Only an unanswered request says the broker is gone: a quiet feed may just be a
            # restarting relay, and a client that was paused sends a heartbeat before judging.
            if self._waiting_since is not None and now - self._waiting_since > self.dead_after:
                self._lost("connection lost", now)
            elif now >= self._next_heartbeat:
                self._next_heartbeat = now + self.heartbeat
                self._send(self._beat_request(), now)
        if self.state == "reconnecting" and now >= self._retry_at:
            request = self._join_request()
            self._rejoin_req = request.req
            self._reopen()
            self._send(request, now)
            self._retry_at = now + self._backoff
            self._backoff = min(self._backoff * 2, MAX_BACKOFF)
        self._expire_outbox(now)
        self._fetch_missing(now)

    def _expire_outbox(self, now: float) -> None:
        if self.behind:
            return  # the confirmation may be in the backlog we have not read yet
        # pending is in send order, so only its head can be stale.
        while self.pending:
            msg_id, out = next(iter(self.pending.items()))
            if now - out.at <= self.send_timeout:
                return
            del self.pending[msg_id]
            why = f"not sent: no confirmation from the broker in {self.send_timeout:g} s"
            self.failed[msg_id] = why
            self._events.append(self._local("error", "not_sent", f"{why}: {out.text[:60]}", out.room, msg_id))

    def _fetch_missing(self, now: float) -> None:
        if self.state != "connected":
            return
        for room, after, limit in self.sequencer.wants():
            req_id = next(self._reqs)
            self._history_reqs[req_id] = room
            self._send(p.History(room=room, after=after, limit=limit, req=req_id), now)

    # --- helpers ---------------------------------------------------------------------------------

    def room(self, room: str | None, *, member: bool = True) -> str:
        """The wire name of ``room`` (default: the first room joined), which must be one of
        ours unless ``member`` is False."""
        if room is None:
            if not self.rooms:
                raise ZChatError("not in any room")
            return self.rooms[0]
        room = p.check_room(p.normalize_room(room))
        if member and room not in self.rooms:
            raise ZChatError(f"not in room {room!r}")
        return room

    def _local(self, kind: str, code: str, text: str, room: str = "", msg_id: str | None = None) -> p.Event:
        return p.Event(
            0, p.format_ts(self._wallclock()), room, kind, p.SYSTEM_NICK, text, id=msg_id, code=code, local=True
        )


def check_history_limit(limit: int) -> int:
    """``limit`` if a history request may ask for it."""
    if not 1 <= limit <= p.MAX_HISTORY:
        raise LocalProtocolError(f"history limit must be 1-{p.MAX_HISTORY}, not {limit}")
    return limit
