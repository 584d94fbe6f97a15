"""The client's brain, sans-IO: one session with a broker as a state machine fed with bytes and time.

Two rules hold everything here together, as in h11's ``_state.py``:

- Everything that decides what the client does next lives in this module: joining and
  resuming, lease and heartbeat timing, judging the broker lost, backoff, the outbox (numbered
  posts, pacing to the broker's rate, resending from where the broker says, expiry), matching
  replies to requests, trusting the feed again after a reconnect, what to fetch to repair a
  gap (the ordering itself is :class:`~zchat.client.sequencer.RoomSequencer`), the nick, away
  message and room topics the session keeps, and every request it makes and how its reply reads.
- This module never touches a socket or reads a clock. :class:`ClientSession` takes what
  arrived (feed payloads, rpc messages) and the monotonic time, and hands back what to send
  (:meth:`ClientSession.take_outgoing`: requests, :data:`REOPEN` when the rpc socket must be
  replaced, :data:`PROBE` when the feed must prove its subscriptions live), what to push
  (:meth:`ClientSession.next_post`) and the events to deliver (:meth:`ClientSession.take_events`).
  The shell (:mod:`zchat.client.shell`) does the polling and blocking, with the sockets of
  :mod:`zchat.client.links`.

The states and what moves between them are the table :data:`TRANSITIONS`; every change of
:attr:`ClientSession.state` goes through it, so a test can walk it.

**The outbox.** Each message gets the next post number ``n`` of the session, and within a session
a number is never given to other content (a message given up on keeps its number and its text),
so the broker's answer for a number can only mean one message. The broker accepts each number
once and in order and reports the newest it processed (``acked``, in every hello and heartbeat
reply, with ``refused``: those it refused for good): everything up to it is settled, whatever
the feed showed. When the broker says a post came out of order, too fast, or could not be stored,
it names the number it wants next and the outbox resends from there — never from before a post
it knows processed, since an answer can be older than what the feed already showed; if the broker
says nothing while ``acked`` lags, the outbox resends after :data:`RESEND_AFTER` seconds. Posts
go out no faster than the broker's rate and burst (from the hello reply), so an honest pipe is
delivered whole.
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
    "PROBE",
    "REOPEN",
    "TRANSITIONS",
    "Action",
    "ClientSession",
    "Names",
    "Outgoing",
    "Pending",
    "State",
    "broker_events",
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

#: The first retry of a lost broker comes at once, then after 0.5 s, doubling to 8 s (the
#: Lazy Pirate pattern).
FIRST_BACKOFF = 0.5
MAX_BACKOFF = 8.0
#: Heartbeat at least this often even if the broker allows less: the replies carry the rooms'
#: newest seq and ``acked``, which is how a lost tail and a lost post are noticed.
MAX_HEARTBEAT = 1.0
#: Posts the broker has not confirmed this long after they went out are sent again from the
#: number it confirmed last.
RESEND_AFTER = 3.0
#: A store that could not take a post: wait this long before resending.
UNAVAILABLE_PAUSE = 1.0
#: Feed events held while the feed is being re-proved after a reconnect (more are dropped: the
#: sequencer fetches them from history).
MAX_UNVERIFIED = 10_000
#: Pace posts a little under the broker's rate: its bucket refills by its clock, ours by ours.
PACE_MARGIN = 0.9
#: Failed posts remembered by id, the newest: a bot that runs for months keeps no more
#: (``failures`` counts them all).
MAX_FAILED = 10_000


class Action:
    """Something the shell must do besides sending a request."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


#: Replace the rpc socket before sending what follows (a fresh DEALER with a fresh routing id,
#: so no stale request reaches a restarted broker).
REOPEN: Final = Action("REOPEN")
#: Prove the feed's subscriptions live again (a probe topic; then :meth:`ClientSession.feed_live`).
PROBE: Final = Action("PROBE")
#: What the shell sends on rpc, in order.
Outgoing = p.Request | Action


@dataclass
class Pending:
    """A sent message the broker has not confirmed yet."""

    room: str
    kind: p.PostKind
    text: str
    n: int  # its post number in the current session
    to: str | None = None  # a private message's recipient


@dataclass(frozen=True)
class Names:
    """A ``who`` answer: who is in a room (sorted as the broker sorts them), who of them is
    away and why, and the room's topic."""

    room: str
    nicks: list[str]
    away: dict[str, str]
    topic: str | None
    #: The room has members or history (a room nobody ever used does not).
    exists: bool


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
        self.state: State = "new"
        self.token = ""
        #: This session's inbox (private messages), named by the broker at hello.
        self.inbox = ""
        self.epoch: str | None = None
        self.history_id: str | None = None
        self.heartbeat = MAX_HEARTBEAT
        #: The topic of each of our rooms that has one, as the broker last said.
        self.topics: dict[str, str] = {}
        #: Our away message (None: here), kept so that a new session after a reconnect says it again.
        self.away: str | None = None
        # Message ids: unique per client run, so a message can be told apart on the feed.
        prefix = id_prefix or secrets.token_hex(4)
        self._ids = (f"{prefix}-{n}" for n in itertools.count(1))
        self._reqs = (str(n) for n in itertools.count(1))
        self.sequencer = RoomSequencer()
        #: Sent messages the broker has not confirmed yet, in send order (= post number order).
        self.pending: dict[str, Pending] = {}
        #: Messages refused by the broker or never confirmed -> the reason (the newest MAX_FAILED).
        self.failed: dict[str, str] = {}
        #: How many messages are failed, remembered or not.
        self.failures = 0
        #: The client has unread feed input waiting (a full drain): confirmations may be in it.
        self.behind = False
        self._next_n = 1
        self._sent_upto = 0  # highest post number handed to the shell
        self._acked = 0  # highest post number known to be processed by the broker
        # Messages given up on (reported not sent) keep their numbers: a number is never given to
        # other content in a session, so the broker's answer for it can only mean this message.
        # If the broker wants one, it gets a void for it, not the message.
        self._given_up: dict[str, Pending] = {}
        self._progress_at = 0.0  # when the outbox last moved (a confirmation, or it filled)
        self._hold_until = 0.0  # no posts before this (the broker asked for a pause)
        self._rate = 0.0  # posts a second the broker allows (0: no limit)
        self._burst = 1.0
        self._tokens = 1.0
        self._tokens_at = 0.0
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
        # After a rejoin the feed may still hold the old broker's events: they are kept aside
        # until a probe proves the subscriptions live again, then offered or (after a reset of
        # the history) dropped.
        self._verifying = False
        self._reset = False
        self._unverified: list[p.Event] = []

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
        seqs = reply.get("rooms") if self.nick is not None else reply.get("seqs")
        if self.nick is not None:
            self._take_session(reply, now)
        self._goto("joined")
        self._waiting_since = None
        self._next_heartbeat = now + self.heartbeat
        self._start_rooms(seqs, reply.get("history"))
        if self.nick is not None:
            self._start_inbox(reply.get("inbox"))

    def _take_session(self, reply: dict[str, object], now: float) -> None:
        resumed = reply.get("resumed") is True and reply.get("token") == self.token
        self.token = str(reply["token"])
        hb = reply.get("heartbeat_ms")
        self.heartbeat = min(MAX_HEARTBEAT, hb / 1000) if isinstance(hb, int) and hb > 0 else MAX_HEARTBEAT
        epoch = reply.get("epoch")
        self.epoch = epoch if isinstance(epoch, str) else None
        nick = reply.get("nick")
        if isinstance(nick, str):
            self.nick = nick
        topics = reply.get("topics")
        if isinstance(topics, dict):
            # The topics now, whole: a topic cleared while we were away is gone.
            self.topics = {str(r): str(t) for r, t in topics.items()}
        rate, burst = reply.get("rate"), reply.get("burst")
        if isinstance(rate, int | float) and isinstance(burst, int):
            self._rate = rate * PACE_MARGIN if rate > 0 else 0.0
            self._burst = float(max(1, burst - 2))
            self._tokens, self._tokens_at = self._burst, now
        acked = reply.get("acked")
        acked = acked if isinstance(acked, int) else 0
        if resumed:
            self._settle(acked, _refused(reply), now)
        else:
            # A new session numbers its posts from 1. What the old one processed (the broker
            # remembers it for a while) is settled, refused or taken; the rest goes again, as
            # this session's.
            prior = reply.get("prior_acked")
            self._settle(prior if isinstance(prior, int) else 0, _refused(reply, "prior_refused"), now)
            self._given_up.clear()  # the old session's numbers: nothing can be sent under them now
            for n, out in enumerate(self.pending.values(), 1):
                out.n = n
            self._next_n = len(self.pending) + 1
            self._acked = self._sent_upto = 0
        self._rewind(acked + 1)

    def close(self) -> None:
        if self.state != "closed":
            self._goto("close")

    def _lost(self, why: str, now: float) -> None:
        self._goto("lost")
        # From now until a probe proves the feed live again, what it brings may be the old
        # broker's or the new one's: kept aside (see feed_live).
        self._verifying = True
        self._retry_at = now
        self._backoff = FIRST_BACKOFF
        self._history_reqs.clear()
        self.sequencer.retry_all()
        self._events.append(self._local("system", "disconnected", f"{why} — reconnecting…"))

    # --- what the shell reads back -------------------------------------------------------------

    def take_outgoing(self) -> list[Outgoing]:
        """Requests to send on rpc now, in order, and actions (:data:`REOPEN`, :data:`PROBE`)."""
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
        """Monotonic time by which :meth:`tick` or :meth:`next_post` has something to do."""
        if self.state == "reconnecting":
            return self._retry_at
        if self.state != "connected":
            return math.inf
        timer = self._next_heartbeat
        if self._waiting_since is not None:
            timer = min(timer, self._waiting_since + self.dead_after + 0.01)
        if self._sent_upto < self._next_n - 1:  # posts waiting for their turn
            timer = min(
                timer, max(self._hold_until, self._tokens_at + (1 - self._tokens) / self._rate if self._rate else 0)
            )
        return timer

    # --- sending -------------------------------------------------------------------------------

    def post(self, text: str, room: str | None, kind: p.PostKind, now: float, to: str | None = None) -> str:
        """Queue a message (or, with ``to``, a private message); returns its id. It stays
        pending until the broker confirms it; :meth:`next_post` hands it to the shell."""
        self._speaking("speak")
        if self.state not in ("connected", "reconnecting"):
            raise ZChatError(f"the client is {self.state}")
        if to is None:
            room = self.room(room)
        else:
            room = ""  # a private message goes to a nick's inbox, not a room
            p.check_nick(to)
        p.check_text(text)
        msg_id = next(self._ids)
        if not self.pending:
            self._progress_at = now
        self.pending[msg_id] = Pending(room, kind, text, self._next_n, to)
        self._next_n += 1
        return msg_id

    def next_post(self, now: float) -> bytes | None:
        """The next message to push on ingest, or None (none waiting, not connected, or not its
        turn yet: see :meth:`next_timer`). Call :meth:`posted` once it went out."""
        if self.state != "connected" or self._sent_upto >= self._next_n - 1 or now < self._hold_until:
            return None
        if self._rate:
            self._tokens = min(self._burst, self._tokens + (now - self._tokens_at) * self._rate)
            self._tokens_at = now
            if self._tokens < 1:
                return None
        n = self._sent_upto + 1
        for msg_id, out in self.pending.items():
            if out.n == n:
                post = p.Post(token=self.token, room=out.room, text=out.text, kind=out.kind, id=msg_id, n=n, to=out.to)
                return p.encode(post)
        if any(out.n == n for out in self._given_up.values()):
            # Given up on: its number goes void, so the posts after it go through (the message
            # itself goes only if it was already on its way).
            return p.encode(p.Post(token=self.token, n=n, void=True))
        # Processed meanwhile (it has no entry any more): skip the number.
        self._sent_upto = n
        return self.next_post(now)

    def posted(self) -> None:
        self._sent_upto += 1
        if self._rate:
            self._tokens -= 1

    def _processed(self, n: int) -> None:
        """The broker has processed post ``n``, and so every post before it (it takes them in
        order): never send them again."""
        self._acked = max(self._acked, n)
        self._sent_upto = max(self._sent_upto, n)

    def _rewind(self, n: int) -> None:
        """The broker wants post ``n`` next: send again from there. Never from before a post
        known processed: an answer can be older than what the feed already showed."""
        self._sent_upto = max(n, self._acked + 1) - 1

    def _settle(self, acked: int, refused: dict[int, str], now: float) -> None:
        """A reply's word: every post up to ``acked`` was processed, and those in ``refused``
        were refused for good; the others are delivered (a message given up on, after all)."""
        # A full list names only the latest refusals: below them, a post may have been refused
        # unsaid, so it is not counted as sent (if it was, its event clears the failure).
        unknown_below = min(refused) if len(refused) >= p.MAX_REFUSED else 0
        for msg_id, out in [(i, o) for i, o in self.pending.items() if o.n <= acked]:
            del self.pending[msg_id]
            self._progress_at = now
            if msg_id in self.failed:
                continue
            if out.n in refused:
                self._fail(msg_id, refused[out.n])
                ev = p.Event(0, p.format_ts(self._wallclock()), out.room, "error", p.SYSTEM_NICK, refused[out.n])
                self._events.append(msgspec.structs.replace(ev, id=msg_id, code="rejected", n=out.n))
            elif out.n < unknown_below:
                why = "not sent: the broker refused too many messages meanwhile to say whether it took this one"
                self._fail(msg_id, why)
                self._events.append(self._local("error", "not_sent", f"{why}: {out.text[:60]}", out.room, msg_id))
        for msg_id in [i for i, o in self._given_up.items() if o.n <= acked]:
            # Its number was used: by the message (then its own event clears the failure when it
            # shows up) or by the void sent for it. Which one, only the event can tell.
            del self._given_up[msg_id]
        self._processed(acked)

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
        seqs = reply.get("seqs") if self.nick is None else {room: reply.get("seq")}
        if room not in self.rooms:
            self.rooms.append(room)
        topic = reply.get("topic")
        if isinstance(topic, str):
            self.topics[room] = topic
        self._start_rooms(seqs, None)

    def part_room(self, room: str, reason: str = "") -> p.Request | None:
        """The request that leaves ``room`` (None for a reader, which has nothing to tell)."""
        return p.Part(token=self.token, room=room, reason=reason) if self.nick is not None else None

    def room_parted(self, room: str) -> None:
        self.rooms.remove(room)
        self.sequencer.stop(room)
        self.topics.pop(room, None)

    def nick_request(self, nick: str) -> p.Request:
        """The request that renames this session; its reply goes to :meth:`renamed`."""
        self._speaking("change its nick")
        return p.Nick(token=self.token, nick=p.check_nick(nick))

    def renamed(self, reply: dict[str, object]) -> None:
        """A nick reply: the session's new nick (and, in secure mode, its new inbox)."""
        nick = reply.get("nick")
        if isinstance(nick, str):
            self.nick = nick
        self._start_inbox(reply.get("inbox"))

    def away_request(self, text: str | None) -> p.Request:
        """The request that sets our away message, or with ``text`` None or blank says we are
        back; its reply goes to :meth:`away_set`."""
        self._speaking("be away")
        text = text.strip() if text is not None else ""
        if len(text) > p.MAX_AWAY_CHARS:
            raise LocalProtocolError(f"away message too long ({len(text)} characters; limit {p.MAX_AWAY_CHARS})")
        return p.Away(token=self.token, text=text or None)

    def away_set(self, reply: dict[str, object]) -> str | None:
        """An away reply: the away message the broker keeps (None: back)."""
        away = reply.get("away")
        self.away = away if isinstance(away, str) else None
        return self.away

    def topic_request(self, room: str | None, text: str | None) -> p.Request:
        """The request that sets ``room``'s topic to ``text``, clears it (``""``) or, with
        ``text`` None, asks what it is. Setting and clearing need us in the room; asking does
        not. Its reply goes to :meth:`topic_answered`."""
        if text is None:
            return p.Topic(token=self.token, room=self.room(room, member=False))
        self._speaking("set a topic")
        text = text.strip()
        if len(text) > p.MAX_TOPIC_CHARS:
            raise LocalProtocolError(f"topic too long ({len(text)} characters; limit {p.MAX_TOPIC_CHARS})")
        return p.Topic(token=self.token, room=self.room(room), text=text)

    def topic_answered(self, reply: dict[str, object]) -> str | None:
        """A topic reply: the room's topic now (None: it has none)."""
        room, topic = reply.get("room"), reply.get("topic")
        topic = topic if isinstance(topic, str) and topic else None
        if isinstance(room, str):
            self._note_topic(room, topic)
        return topic

    def who_answered(self, reply: dict[str, object]) -> Names:
        """A who reply, as :class:`Names` (and the topic it shows, if the room is ours)."""
        room, nicks, away, topic = (reply.get(k) for k in ("room", "nicks", "away", "topic"))
        names = Names(
            room=room if isinstance(room, str) else "",
            nicks=[str(n) for n in nicks] if isinstance(nicks, list) else [],
            away={str(n): str(a) for n, a in away.items()} if isinstance(away, dict) else {},
            topic=topic if isinstance(topic, str) and topic else None,
            exists=reply.get("exists") is not False,
        )
        self._note_topic(names.room, names.topic)
        return names

    def _note_topic(self, room: str, topic: str | None) -> None:
        if room not in self.rooms:
            return  # only our rooms' topics are followed (their events keep them current)
        if topic is None:
            self.topics.pop(room, None)
        else:
            self.topics[room] = topic

    def history_request(self, room: str | None, limit: int, after: int | None = None) -> p.Request:
        """The request for ``room``'s stored events (default: the first room joined), or with
        our inbox's name for our private messages (a session request: it carries the token).
        Without ``after``: the newest ``limit``; with it, the ``limit`` oldest after that seq."""
        check_history_limit(limit)
        if after is not None and not 0 <= after <= p.MAX_SEQ:
            raise LocalProtocolError(f"after must be 0-{p.MAX_SEQ}, not {after}")
        if room is not None and p.is_inbox(room):
            self._speaking("have an inbox")
            if room != self.inbox:
                raise LocalProtocolError(f"{room!r} is not this session's inbox ({self.inbox!r})")
            return p.History(room=room, after=after, limit=limit, token=self.token)
        return p.History(room=self.room(room, member=False), after=after, limit=limit)

    def search_request(self, text: str, room: str | None, limit: int, before: int | None) -> p.Request:
        """The request for ``room``'s stored messages and actions holding every word of
        ``text`` (newest first; ``before``: only older than that seq)."""
        if not text.strip():
            raise LocalProtocolError("nothing to search for")
        if len(text) > p.MAX_QUERY_CHARS:
            raise LocalProtocolError(f"search text too long ({len(text)} characters; limit {p.MAX_QUERY_CHARS})")
        if not 1 <= limit <= p.MAX_SEARCH:
            raise LocalProtocolError(f"search limit must be 1-{p.MAX_SEARCH}, not {limit}")
        if before is not None and not 0 <= before <= p.MAX_SEQ:
            raise LocalProtocolError(f"before must be 0-{p.MAX_SEQ}, not {before}")
        return p.Search(room=self.room(room, member=False), text=text, limit=limit, before=before)

    def _speaking(self, what: str) -> None:
        if self.nick is None:
            raise ZChatError(f"a reader cannot {what}: give a nick")

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
        resume = self.token or None
        return p.Hello(protocol=p.PROTOCOL_VERSION, nick=self.nick, rooms=self.rooms, req=req, resume=resume)

    def _beat_request(self) -> p.Request:
        if self.nick is None:
            return p.Seqs(rooms=self.rooms, req=next(self._reqs))
        expected = self.sequencer.expected(self.inbox) if self.inbox else None
        read = expected - 1 if expected is not None else None
        return p.Heartbeat(token=self.token, req=next(self._reqs), inbox_read=read)

    # --- receiving -----------------------------------------------------------------------------

    def feed_message(self, payload: bytes, now: float) -> None:
        """One event frame from the feed (the topic frame has been read by the shell)."""
        try:
            event = _from_broker(p.decode_event(payload))
        except RemoteProtocolError:
            return  # not from a zchat broker: nothing to show
        if event.kind == "heartbeat":
            if self.epoch is not None and event.epoch != self.epoch and self.state == "connected":
                self._lost("the broker restarted", now)
            elif self._verifying and event.epoch == self.epoch:
                # The heartbeat is subscribed after the rooms: it proves them live (behind a
                # relay, where no probe is answered, it is the only proof).
                self.feed_live()
            return
        if self._verifying and event.seq > 0:
            if len(self._unverified) < MAX_UNVERIFIED:
                self._unverified.append(event)
            return
        self._offer(event)

    def feed_live(self) -> None:
        """The feed's subscriptions are proved live (the probe was answered)."""
        if not self._verifying:
            return
        self._verifying = False
        held, self._unverified = self._unverified, []
        if not self._reset:
            for event in held:
                self._offer(event)

    def _offer(self, event: p.Event) -> None:
        if event.seq > 0:
            for ready in self.sequencer.offer(event):
                self._deliver(ready)
        else:
            self._deliver(event)

    def rpc_message(self, body: bytes, now: float) -> None:
        """One message from rpc: a reply, or an event delivered to this session."""
        try:
            message = p.decode_reply(body)
            event = p.delivered_event(message)
        except RemoteProtocolError:
            return
        if event is not None:
            self._delivered(_from_broker(event), now)
            return
        req = message.get("req")
        if not isinstance(req, str) or req not in self._asked:
            return  # stale (sent before a reconnect), or never asked
        self._asked.discard(req)
        self._waiting_since = None
        if req == self._rejoin_req:
            self._on_rejoin(message, now)
        elif req in self._history_reqs:
            self._on_history(self._history_reqs.pop(req), message)
        elif req in self._calls:
            self._replies[req] = message
        elif message.get("ok"):
            self._observe(message, now)  # a heartbeat's (or a reader's seqs) reply
        elif message.get("code") == "unknown_session" and self.state == "connected":
            self._lost("the broker forgot this session", now)

    def _delivered(self, event: p.Event, now: float) -> None:
        """An event for this session alone: a private message (in its inbox's sequence), or a
        notice or an answer to one of its posts."""
        if event.seq > 0:
            if event.room == self.inbox:
                self._offer(event)
            return
        if event.kind == "duplicate" and event.n is not None:
            # Post n was processed before: this session's number n is that message and no other.
            self._settle_one(event.n, now)
            return
        if event.kind == "error" and event.n is not None and event.expected is not None:
            # Not sent, but it may be: resend from where the broker says, after a pause if asked.
            self._rewind(event.expected)
            if event.code == "rate_limited":
                self._tokens = 0.0
            elif event.code == "unavailable":
                self._hold_until = now + UNAVAILABLE_PAUSE
            return
        self._deliver(event)

    def _settle_one(self, n: int, now: float) -> None:
        """A duplicate: post ``n`` was processed before, by this very message (a number is never
        another's), or, for one given up on, by it or by its void."""
        self._processed(n)
        for msg_id, out in self.pending.items():
            if out.n == n:
                del self.pending[msg_id]
                self._progress_at = now
                return

    def _observe(self, reply: dict[str, object], now: float) -> None:
        seqs = reply.get("seqs")
        if isinstance(seqs, dict):
            for room, seq in seqs.items():
                if isinstance(seq, int):
                    self.sequencer.observe(room, seq)
        acked = reply.get("acked")
        if isinstance(acked, int):
            self._settle(acked, _refused(reply), now)
            if self._sent_upto > self._acked and now - self._progress_at > RESEND_AFTER:
                self._rewind(self._acked + 1)  # the broker says nothing of them: send them again
                self._progress_at = now

    def _on_history(self, room: str, reply: dict[str, object]) -> None:
        raw = reply.get("events")
        if not reply.get("ok") or not isinstance(raw, list) or reply.get("history") != self.history_id:
            # Refused, malformed, or from another history than ours (a restarted broker
            # answering the old one's question): ask again.
            self.sequencer.retry(room)
            return
        try:
            events = broker_events(raw)
        except RemoteProtocolError:
            self.sequencer.retry(room)
            return
        upto = reply.get("upto")
        for event in self.sequencer.fill(room, events, upto if isinstance(upto, int) else None):
            self._deliver(event)

    def _on_rejoin(self, reply: dict[str, object], now: float) -> None:
        self._rejoin_req = None
        if reply.get("ok"):
            resumed = reply.get("resumed") is True
            self.joined(reply, now)
            if self.away is not None and not resumed:
                # A new session starts "here": say again that we are not.
                self._send(p.Away(token=self.token, text=self.away, req=next(self._reqs)), now)
            self._outgoing.append(PROBE)
            self._events.append(self._local("system", "reconnected", "reconnected"))
        elif reply.get("code") == "standby":
            self._retry_at = now  # the other broker of a pair is the one to ask: at once
        elif self._backoff >= MAX_BACKOFF:
            self._events.append(self._local("system", "rejoin_failed", f"cannot rejoin yet: {reply.get('error')}"))

    def _deliver(self, event: p.Event) -> None:
        if not event.ts:
            event = msgspec.structs.replace(event, ts=p.format_ts(self._wallclock()))
        mine = self.nick is not None and event.nick.lower() == self.nick.lower()
        out = self.pending.get(event.id or "") or self._given_up.get(event.id or "")
        if out is not None and event.id is not None and (event.kind == "error" or mine):
            # The broker's answer to one of our messages: refused (the error), or here it is (given
            # up on, perhaps: then it was delivered after all).
            self.pending.pop(event.id, None)
            self._given_up.pop(event.id, None)
            if event.kind == "error":
                self._fail(event.id, event.text)
            elif self.failed.pop(event.id, None) is not None:
                self.failures -= 1
            if event.n == out.n:  # this session's answer: every post before it is processed too
                self._processed(out.n)
        if event.kind == "topic" and event.seq > 0:
            # Events come in seq order, so the newest topic event says what the topic is now.
            self._note_topic(event.room, None if event.reason == "cleared" else event.text)
        self._events.append(event)

    def _start_rooms(self, seqs: object, history: object) -> None:
        if not isinstance(seqs, dict):
            return
        reset = False
        if isinstance(history, str):
            reset = self.history_id is not None and history != self.history_id
            self.history_id = history
        self._reset = reset
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

    def _start_inbox(self, inbox: object) -> None:
        """Where this session's inbox stands: deliver what was not read yet, then what comes."""
        if not isinstance(inbox, dict):
            return
        name, latest, read = inbox.get("name"), inbox.get("seq"), inbox.get("read")
        if not (isinstance(name, str) and isinstance(latest, int) and isinstance(read, int)):
            return
        if name != self.inbox and self.inbox:
            self.sequencer.stop(self.inbox)
        self.inbox = name
        first = max(read + 1, latest + 1 - p.MAX_HISTORY)
        for event in self.sequencer.start(name, first, latest, reset=self._reset):
            self._deliver(event)

    # --- time ----------------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Do what is due at ``now``: heartbeat, judge the broker lost, retry a rejoin, expire
        the outbox, and ask history for what the rooms and the inbox lack."""
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

    def _fail(self, msg_id: str, why: str) -> None:
        if msg_id not in self.failed:
            self.failures += 1
            if len(self.failed) >= MAX_FAILED:
                del self.failed[next(iter(self.failed))]
        self.failed[msg_id] = why

    def _expire_outbox(self, now: float) -> None:
        """Nothing confirmed for ``send_timeout`` while messages wait: they are not sent (a
        broker that confirms slowly but steadily, as pacing does, keeps them alive)."""
        if self.behind or not self.pending or now - self._progress_at <= self.send_timeout:
            return  # (behind: the confirmations may be in the backlog we have not read yet)
        why = f"not sent: no confirmation from the broker in {self.send_timeout:g} s"
        for msg_id, out in self.pending.items():
            self._fail(msg_id, why)
            self._events.append(self._local("error", "not_sent", f"{why}: {out.text[:60]}", out.room, msg_id))
        self._given_up.update(self.pending)
        self.pending.clear()

    def _fetch_missing(self, now: float) -> None:
        if self.state != "connected":
            return
        for room, after, limit in self.sequencer.wants():
            req_id = next(self._reqs)
            self._history_reqs[req_id] = room
            token = self.token if p.is_inbox(room) else None
            self._send(p.History(room=room, after=after, limit=limit, req=req_id, token=token), now)

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


def _refused(reply: dict[str, object], field: str = "refused") -> dict[int, str]:
    """The post numbers a reply says were refused for good (in ``field``), with why."""
    refused = reply.get(field)
    if not isinstance(refused, dict):
        return {}
    return {int(n): str(why) for n, why in refused.items() if isinstance(n, str) and n.isdecimal()}


def _from_broker(event: p.Event) -> p.Event:
    """An event as a broker sent it: whatever it says, it is not one this client made up."""
    return msgspec.structs.replace(event, local=False) if event.local else event


def broker_events(raw: object) -> list[p.Event]:
    """The events of a history or search reply (raises RemoteProtocolError if they are not)."""
    try:
        return [_from_broker(e) for e in msgspec.convert(raw, list[p.Event])]
    except msgspec.ValidationError as exc:
        raise RemoteProtocolError(f"bad events in a reply: {exc}") from None


def check_history_limit(limit: int) -> int:
    """``limit`` if a history request may ask for it."""
    if not 1 <= limit <= p.MAX_HISTORY:
        raise LocalProtocolError(f"history limit must be 1-{p.MAX_HISTORY}, not {limit}")
    return limit
