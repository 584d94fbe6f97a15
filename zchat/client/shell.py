"""The zchat client: one session with a broker, as a blocking, single-threaded Python API.

:class:`Client` owns three connected sockets (PUSH to ingest, SUB to the feed, DEALER to rpc) and
what keeps a conversation whole over them: the join handshake (subscribe, probe until the
subscriptions are live, then hello), the heartbeat that keeps its lease and reports the rooms'
newest ``seq``, late-join backlog and gap repair from history (ordering itself is the sans-IO
:class:`~zchat.client.sequencer.RoomSequencer`), noticing a dead or restarted broker and rejoining, and
the outbox of sent messages that stay pending until the feed shows them (resent after a
reconnect, deduplicated by the broker). Everything happens inside the calls the user makes
(:meth:`Client.recv`, :meth:`Client.events`, :meth:`Client.poll`): there is no background thread,
so a client must be polled at least once a second or so. Rendering is not its job.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import math
import secrets
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Literal

import msgspec
import zmq
from zmq.utils.monitor import recv_monitor_message

from zchat import protocol as p
from zchat import transport
from zchat.client.sequencer import RoomSequencer
from zchat.errors import LocalProtocolError, Refused, RemoteProtocolError, Unreachable, ZChatError

__all__ = ["Client", "Feed"]

State = Literal["new", "connecting", "connected", "reconnecting", "closed"]

_HANDSHAKE_FAILURES = (
    zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
)

#: Most feed messages handled per poll: the heartbeat is never more than one batch away.
DRAIN_BATCH = 1000

#: Longest wait between two attempts to rejoin a lost broker.
MAX_BACKOFF = 8.0


@dataclass
class _Outgoing:
    room: str
    kind: Literal["message", "action"]
    text: str
    at: float  # monotonic time of say()
    to: str | None = None  # a private message's recipient


class Client:
    """A session with a zchat broker (or, with ``nick=None``, a reader of its rooms).

    >>> with Client("alice", ["general"]) as chat:      # doctest: +SKIP
    ...     chat.say("hello")
    ...     for event in chat.events(timeout=5):
    ...         print(event.nick, event.text)

    ``backlog`` events per room are delivered first on joining (or everything after ``since``),
    then the live feed, with no duplicate and no gap. A message from :meth:`say` is pending until
    the feed shows it; if the broker is lost it is resent after the reconnect, and after
    ``send_timeout`` seconds unconfirmed it is reported as not sent (an ``error`` event).
    """

    def __init__(
        self,
        nick: str | None,
        rooms: Iterable[str] = (p.DEFAULT_ROOM,),
        *,
        endpoints: p.Endpoints | None = None,
        host: str = p.DEFAULT_HOST,
        port: int = p.DEFAULT_PORT,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
        timeout: float = 3.0,
        backlog: int = 0,
        since: int | None = None,
        send_timeout: float = 30.0,
        dead_after: float = 3.0,
        curve: transport.Curve | None = None,
        inbox_feed: str | None = None,
    ) -> None:
        transport.require_libzmq()
        self.nick = p.check_nick(nick) if nick is not None else None
        self.rooms = list(dict.fromkeys(p.check_room(p.normalize_room(r)) for r in rooms))
        self.endpoints = endpoints or p.Endpoints.from_host_port(host, port)
        self.timeout = timeout
        self.backlog = max(0, backlog)
        self.since = since
        self.send_timeout = send_timeout
        self.dead_after = dead_after
        self.curve = curve
        #: The broker's own feed, when ``endpoints.feed`` is a relay: relays carry no inbox, so
        #: errors and private messages are subscribed to here instead.
        self.inbox_feed = inbox_feed if inbox_feed != self.endpoints.feed else None
        # Errors and private messages for this session come on a topic only it knows.
        self.inbox = p.new_inbox_topic(nick) if nick is not None else b""
        self.state: State = "new"
        self.epoch: str | None = None
        self._history_id: str | None = None
        self._own_context = context is None
        self._ctx = context or zmq.Context()
        self._token = ""
        self._heartbeat = 1.0
        # Message ids: unique per client run, so the broker can drop a resend but nothing else.
        prefix = secrets.token_hex(4)
        self._ids = (f"{prefix}-{n}" for n in itertools.count(1))
        self._reqs = (str(n) for n in itertools.count(1))
        self._inbox: collections.deque[p.Event] = collections.deque()
        self._replies: dict[str, dict[str, object]] = {}
        self._history_reqs: dict[str, str] = {}  # request id -> room
        self._calls: set[str] = set()  # request ids a _call() is waiting for
        self._sequencer = RoomSequencer()
        #: Sent messages the feed has not shown back yet, oldest first.
        self.pending: dict[str, _Outgoing] = {}
        self._unsent: collections.deque[str] = collections.deque()  # ids of pending not pushed yet
        self._behind = False  # the last poll left feed messages unread
        #: Messages refused by the broker or never sent -> the reason.
        self.failed: dict[str, str] = {}
        self._next_heartbeat = 0.0
        # When the oldest unanswered rpc request (a heartbeat, mostly) went out; None when every
        # request has been answered. The broker is lost when this gets older than dead_after.
        self._waiting_since: float | None = None
        self._retry_at = 0.0
        self._backoff = 0.5
        self._rejoin_req: str | None = None
        self._feed: Feed | None = None
        self._inbox_feed: Feed | None = None
        self._push: zmq.Socket[bytes] | None = None
        self._rpc: zmq.Socket[bytes] | None = None

    @property
    def context(self) -> zmq.Context[zmq.Socket[bytes]]:
        """The ZeroMQ context the client's sockets live in (for ``inproc://`` companions)."""
        return self._ctx

    # --- lifecycle -------------------------------------------------------------------------------

    def __enter__(self) -> Client:
        return self.connect()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def connect(self) -> Client:
        """Subscribe, wait until the subscriptions are live, then join with ``hello``.

        Raises :class:`Unreachable` if the broker does not answer within ``timeout`` and
        :class:`Refused` if it turns the nick down.
        """
        self.state = "connecting"
        monitor = None
        try:
            monitor = self._open_sockets()
            assert self._feed is not None and self._rpc is not None
            try:
                for feed in self._feeds():
                    for _topic, payload in feed.wait_live(self.timeout):
                        self._on_payload(payload)
                self._accept_join(self._call(self._join_request()))
            except Unreachable:
                self._diagnose(monitor)
                raise
        except BaseException:
            self._close_sockets(monitor)
            self.state = "closed"
            raise
        self._rpc.disable_monitor()
        monitor.close()
        return self

    def _diagnose(self, monitor: zmq.Socket[bytes]) -> None:
        """Turn a failed security handshake seen while connecting into a clear error."""
        events = set()
        while monitor.poll(0):
            events.add(recv_monitor_message(monitor)["event"])
        where = self.endpoints.rpc
        if zmq.EVENT_HANDSHAKE_FAILED_AUTH in events:
            key = self.curve.public if self.curve else "(none)"
            raise Refused(
                "key_refused", f"the broker at {where} refused this client's key {key}: ask its operator to allow it"
            )
        if events and self.curve is None:
            raise Unreachable(f"the broker at {where} wants a secure connection: give its public key (--server-key)")
        if events:
            raise Unreachable(
                f"the secure handshake with the broker at {where} failed: is --server-key its public key,"
                " and does the broker run --secure?"
            )

    def close(self, reason: str = "quit") -> None:
        """Wait briefly for unconfirmed messages, leave the rooms, close the sockets."""
        if self.state == "closed":
            return
        try:
            if self.state == "connected" and self.nick is not None:
                # Leaving is best-effort (the lease ends the session anyway), but one failure
                # (a message never confirmed) must not skip the leave itself.
                with contextlib.suppress(ZChatError):
                    if self.pending:
                        self.wait_sent(timeout=min(self.timeout, 2.0), raise_on_failure=False)
                with contextlib.suppress(ZChatError):
                    self._call(p.Leave(token=self._token, reason=reason), timeout=min(self.timeout, 1.0))
        finally:
            if self._rpc is not None:
                self._rpc.setsockopt(zmq.LINGER, 200)  # an unanswered leave may still go out
            self._close_sockets()
            self.state = "closed"

    # --- sending -------------------------------------------------------------------------------

    def say(self, text: str, room: str | None = None) -> str:
        """Send a message; returns its id. :meth:`wait_sent` tells when the feed has shown it.

        While the broker is being reconnected the message waits in the outbox.
        """
        return self._post(text, room, "message")

    def me(self, text: str, room: str | None = None) -> str:
        """Send an action (``/me waves``)."""
        return self._post(text, room, "action")

    def msg(self, to: str, text: str) -> str:
        """Send a private message to ``to``: only that nick (and you) will see it."""
        return self._post(text, None, "message", to=p.check_nick(to))

    def _post(self, text: str, room: str | None, kind: Literal["message", "action"], to: str | None = None) -> str:
        if self.nick is None:
            raise ZChatError("a reader cannot speak: give a nick")
        if self.state not in ("connected", "reconnecting"):
            raise ZChatError(f"the client is {self.state}")
        room = "" if to is not None else self._room(room)
        p.check_text(text)
        msg_id = next(self._ids)
        self.pending[msg_id] = _Outgoing(room, kind, text, time.monotonic(), to)
        self._unsent.append(msg_id)
        self._flush_outbox()
        return msg_id

    def _flush_outbox(self) -> None:
        """Push what is not sent yet, in order, while the broker takes it."""
        if self.state != "connected" or self._push is None:
            return
        while self._unsent:
            out = self.pending.get(self._unsent[0])
            if out is not None:
                msg_id = self._unsent[0]
                post = p.Post(token=self._token, room=out.room, text=out.text, kind=out.kind, id=msg_id, to=out.to)
                try:
                    self._push.send(p.encode(post), transport.NOBLOCK)
                except zmq.Again:
                    return  # not connected right now (or the queue is full): retried on the next pump
            self._unsent.popleft()

    def wait_sent(self, timeout: float | None = None, *, raise_on_failure: bool = True) -> None:
        """Block until the feed has shown every sent message, or it was refused or timed out.

        Raises :class:`Unreachable` if messages are still pending after ``timeout`` and
        :class:`Refused` if any message failed.
        """
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while self.pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Unreachable(f"{len(self.pending)} message(s) not confirmed by the broker in time")
            self._pump(left)
        if self.failed and raise_on_failure:
            reason = next(iter(self.failed.values()))
            raise Refused("not_sent", f"{len(self.failed)} message(s) not sent: {reason}")

    # --- requests ------------------------------------------------------------------------------

    def who(self, room: str | None = None) -> list[str]:
        """Nicks in ``room`` (default: the first room joined)."""
        reply = self._call(p.Who(room=self._room(room, member=False)))
        nicks = reply.get("nicks")
        return [str(n) for n in nicks] if isinstance(nicks, list) else []

    def join(self, room: str) -> None:
        """Join another room (its backlog comes as for the first ones)."""
        room = p.check_room(p.normalize_room(room))
        assert self._feed is not None
        self._feed.subscribe(p.room_topic(room))  # first, so nothing after the join is missed
        try:
            if self.nick is None:
                reply = self._call(p.Seqs(rooms=[room]))
            else:
                reply = self._call(p.Join(token=self._token, room=room))
                reply = {"seqs": {room: reply.get("seq")}}
        except ZChatError:
            if room not in self.rooms:
                self._feed.unsubscribe(p.room_topic(room))
            raise
        if room not in self.rooms:
            self.rooms.append(room)
        self._start_rooms(reply)

    def part(self, room: str) -> None:
        room = self._room(room)
        if self.nick is not None:
            self._call(p.Part(token=self._token, room=room))
        self.rooms.remove(room)
        self._sequencer.stop(room)
        if self._feed is not None:
            self._feed.unsubscribe(p.room_topic(room))

    def history(self, room: str | None = None, limit: int = 50) -> list[p.Event]:
        """The last ``limit`` (1 to ``MAX_HISTORY``) stored events of ``room`` (default: the
        first room joined), oldest first. They are not delivered as events."""
        if not 1 <= limit <= p.MAX_HISTORY:
            raise LocalProtocolError(f"history limit must be 1-{p.MAX_HISTORY}, not {limit}")
        reply = self._call(p.History(room=self._room(room, member=False), limit=limit))
        raw = reply.get("events")
        try:
            return msgspec.convert(raw, list[p.Event])
        except msgspec.ValidationError as exc:
            raise RemoteProtocolError(f"bad history reply: {exc}") from None

    def stats(self) -> dict[str, object]:
        return self._call(p.Stats())

    # --- receiving -------------------------------------------------------------------------------

    def recv(self, timeout: float | None = None) -> p.Event | None:
        """The next event, or ``None`` after ``timeout`` seconds (``None``: wait forever)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._inbox:
            if self.state == "closed":
                raise ZChatError("the client is closed")
            left = 3600.0 if deadline is None else deadline - time.monotonic()
            if left <= 0:
                return None
            self._pump(left)
        return self._inbox.popleft()

    def poll(self, timeout: float = 0.0, *, also: Iterable[zmq.Socket[bytes] | int] = ()) -> list[p.Event]:
        """Wait up to ``timeout`` seconds for input, then return every event that is waiting.

        For event loops: ``also`` lists extra sockets or file descriptors whose input should
        end the wait early (the caller reads them itself).
        """
        if self.state == "closed":
            raise ZChatError("the client is closed")
        if not self._inbox:
            self._pump(timeout, also)
        events = list(self._inbox)
        self._inbox.clear()
        return events

    @property
    def sockets(self) -> list[zmq.Socket[bytes]]:
        """The sockets this client reads, for one loop that serves many clients: poll them all,
        then call :meth:`poll` with ``timeout=0`` on each client (which also keeps it alive)."""
        return [*(f.socket for f in self._feeds()), *([self._rpc] if self._rpc is not None else [])]

    def events(self, timeout: float | None = None) -> Iterator[p.Event]:
        """Events as they come; stops after ``timeout`` seconds without one (``None``: never)."""
        while (event := self.recv(timeout)) is not None:
            yield event

    # --- the pump: all socket reading happens here --------------------------------------------

    def _pump(self, timeout: float, also: Iterable[zmq.Socket[bytes] | int] = ()) -> None:
        """Wait up to ``timeout`` for input, handle it, and keep the session alive."""
        assert self._feed is not None and self._rpc is not None
        # Whatever is due goes out before the wait, not a wait later.
        self._flush_outbox()
        self._fetch_missing()
        now = time.monotonic()
        wait = max(0.0, min(timeout, self._next_timer() - now))
        poller = zmq.Poller()
        for feed in self._feeds():
            poller.register(feed.socket, zmq.POLLIN)
        poller.register(self._rpc, zmq.POLLIN)
        for extra in also:
            poller.register(extra, zmq.POLLIN)
        ready = dict(poller.poll(math.ceil(wait * 1000)))
        self._behind = False
        for feed in self._feeds():
            if feed.socket in ready:
                batch = feed.drain()
                # A full batch means more is waiting: this client is behind its own input.
                self._behind = self._behind or len(batch) >= DRAIN_BATCH
                for _topic, payload in batch:
                    self._on_payload(payload)
        if self._rpc in ready:
            self._drain_rpc()
        self._keepalive(time.monotonic())
        self._flush_outbox()
        self._fetch_missing()

    def _next_timer(self) -> float:
        if self.state == "reconnecting":
            return self._retry_at
        if self._waiting_since is None:
            return self._next_heartbeat
        return min(self._next_heartbeat, self._waiting_since + self.dead_after + 0.01)

    def _on_payload(self, payload: bytes) -> None:
        try:
            event = p.decode_event(payload)
        except RemoteProtocolError:
            return  # not from a zchat broker: nothing to show
        if event.kind == "heartbeat":
            if self.epoch is not None and event.epoch != self.epoch and self.state == "connected":
                self._lost("the broker restarted")
            return
        if event.seq > 0:
            for ready in self._sequencer.offer(event):
                self._deliver(ready)
        else:
            self._deliver(event)

    def _deliver(self, event: p.Event) -> None:
        if not event.ts:
            event = msgspec.structs.replace(event, ts=p.format_ts(time.time()))
        if event.id is not None and event.id in self.pending:
            if event.kind == "error":
                del self.pending[event.id]
                self.failed[event.id] = event.text
            elif event.kind == "duplicate":
                del self.pending[event.id]
                return  # a resend of what we already saw: nothing new to show
            elif self.nick is not None and event.nick.lower() == self.nick.lower():
                del self.pending[event.id]
        self._inbox.append(event)

    def _drain_rpc(self) -> None:
        assert self._rpc is not None
        while True:
            try:
                frames = self._rpc.recv_multipart(transport.NOBLOCK)
            except zmq.Again:
                return
            try:
                reply = p.decode_reply(frames[-1])
            except RemoteProtocolError:
                continue
            self._waiting_since = None
            req = reply.get("req")
            if not isinstance(req, str):
                continue
            if req == self._rejoin_req:
                self._on_rejoin(reply)
            elif req in self._history_reqs:
                self._on_history(self._history_reqs.pop(req), reply)
            elif req in self._calls:
                self._replies[req] = reply
            elif reply.get("ok"):
                self._observe(reply)  # a heartbeat's (or a reader's seqs) reply
            elif reply.get("code") == "unknown_session" and self.state == "connected":
                self._lost("the broker forgot this session")

    def _observe(self, reply: dict[str, object]) -> None:
        seqs = reply.get("seqs")
        if isinstance(seqs, dict):
            for room, seq in seqs.items():
                if isinstance(seq, int):
                    self._sequencer.observe(room, seq)

    def _fetch_missing(self) -> None:
        if self.state != "connected":
            return
        for room, after, limit in self._sequencer.wants():
            req_id = next(self._reqs)
            self._history_reqs[req_id] = room
            self._send(p.History(room=room, after=after, limit=limit, req=req_id))

    def _on_history(self, room: str, reply: dict[str, object]) -> None:
        raw = reply.get("events")
        if not reply.get("ok") or not isinstance(raw, list):
            self._sequencer.retry(room)
            return
        try:
            events = [msgspec.convert(e, p.Event) for e in raw]
        except msgspec.ValidationError:
            self._sequencer.retry(room)
            return
        for event in self._sequencer.fill(room, events):
            self._deliver(event)

    def _keepalive(self, now: float) -> None:
        if self.state == "connected":
            # Only an unanswered request says the broker is gone: a quiet feed may just be a
            # restarting relay, and a client that was paused sends a heartbeat before judging.
            if self._waiting_since is not None and now - self._waiting_since > self.dead_after:
                self._lost("connection lost")
            elif now >= self._next_heartbeat:
                self._next_heartbeat = now + self._heartbeat
                self._send(self._beat_request())
        elif self.state == "reconnecting" and now >= self._retry_at:
            # Lazy Pirate: a fresh DEALER, so no stale request reaches a restarted broker.
            self._reopen_rpc()
            request = self._join_request()
            self._rejoin_req = request.req
            self._send(request)
            self._retry_at = now + self._backoff
            self._backoff = min(self._backoff * 2, MAX_BACKOFF)
        self._expire_outbox(now)

    def _expire_outbox(self, now: float) -> None:
        if self._behind:
            return  # the confirmation may be in the backlog we have not read yet
        # pending is in say() order, so only its head can be stale.
        while self.pending:
            msg_id, out = next(iter(self.pending.items()))
            if now - out.at <= self.send_timeout:
                return
            del self.pending[msg_id]
            why = f"not sent: no confirmation from the broker in {self.send_timeout:g} s"
            self.failed[msg_id] = why
            self._inbox.append(self._local_event("error", "not_sent", f"{why}: {out.text[:60]}", out.room, msg_id))

    def _lost(self, why: str) -> None:
        self.state = "reconnecting"
        self._retry_at = time.monotonic()
        self._backoff = 0.5
        self._history_reqs.clear()
        self._sequencer.retry_all()
        self._inbox.append(self._local_event("system", "disconnected", f"{why} — reconnecting…"))

    def _on_rejoin(self, reply: dict[str, object]) -> None:
        self._rejoin_req = None
        if reply.get("ok"):
            self._accept_join(reply)
            # Whatever was pushed before may have died with the connection: send it all again;
            # the broker drops what it already has and says so.
            self._unsent = collections.deque(self.pending)
            self._inbox.append(self._local_event("system", "reconnected", "reconnected"))
        elif self._backoff >= MAX_BACKOFF:
            self._inbox.append(self._local_event("system", "rejoin_failed", f"cannot rejoin yet: {reply.get('error')}"))

    def _local_event(self, kind: str, code: str, text: str, room: str = "", msg_id: str | None = None) -> p.Event:
        return p.Event(0, p.format_ts(time.time()), room, kind, p.SYSTEM_NICK, text, id=msg_id, code=code)

    # --- joining -------------------------------------------------------------------------------------

    def _join_request(self) -> p.Request:
        req = next(self._reqs)
        if self.nick is None:
            return p.Seqs(rooms=self.rooms, req=req)
        return p.Hello(nick=self.nick, rooms=self.rooms, req=req, inbox=self.inbox.decode())

    def _beat_request(self) -> p.Request:
        if self.nick is None:
            return p.Seqs(rooms=self.rooms, req=next(self._reqs))
        return p.Heartbeat(token=self._token, req=next(self._reqs))

    def _accept_join(self, reply: dict[str, object]) -> None:
        """A hello (or, for a reader, seqs) reply: the session, and where each room stands."""
        if self.nick is not None:
            self._token = str(reply["token"])
            hb = reply.get("heartbeat_ms")
            # Heartbeat at least once a second: the replies carry the rooms' newest seq.
            self._heartbeat = min(1.0, hb / 1000) if isinstance(hb, int) and hb > 0 else 1.0
            epoch = reply.get("epoch")
            self.epoch = epoch if isinstance(epoch, str) else None
            reply = {"seqs": reply.get("rooms"), "history": reply.get("history")}
        now = time.monotonic()
        self._waiting_since = None
        self._next_heartbeat = now + self._heartbeat
        self.state = "connected"
        self._start_rooms(reply)

    def _start_rooms(self, reply: dict[str, object]) -> None:
        seqs = reply.get("seqs")
        if not isinstance(seqs, dict):
            return
        history = reply.get("history")
        reset = False
        if isinstance(history, str):
            reset = self._history_id is not None and history != self._history_id
            self._history_id = history
        for room, latest in seqs.items():
            if not isinstance(latest, int):
                continue
            if self.since is not None:
                first = self.since + 1
            elif self.nick is None:
                first = latest + 1 - self.backlog  # a reader: the backlog, then what comes
            else:
                first = latest + 1 - max(1, self.backlog)  # a member: at least its own join
            for event in self._sequencer.start(room, first, latest, reset=reset):
                self._deliver(event)

    # --- request/reply -----------------------------------------------------------------------------

    def _call(self, req: p.Request, timeout: float | None = None) -> dict[str, object]:
        """Send a request on rpc and wait for its reply (other input is handled meanwhile)."""
        if self._rpc is None:
            raise ZChatError("the client is not connected")
        if req.req is None:
            req = msgspec.structs.replace(req, req=next(self._reqs))
        req_id = req.req
        assert req_id is not None
        self._calls.add(req_id)
        try:
            self._send(req)
            deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
            while req_id not in self._replies:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Unreachable(f"cannot reach the zchat broker at {self.endpoints.rpc} (no reply)")
                self._pump(left)
        finally:
            self._calls.discard(req_id)
        reply = self._replies.pop(req_id)
        if not reply.get("ok"):
            raise Refused(str(reply.get("code")), str(reply.get("error")))
        return reply

    def _send(self, req: p.Request) -> None:
        assert self._rpc is not None
        if self._waiting_since is None:
            self._waiting_since = time.monotonic()
        with contextlib.suppress(zmq.Again):  # not connected yet: the caller's timeout reports it
            self._rpc.send_multipart([b"", p.encode(req)], transport.NOBLOCK)

    # --- sockets ---------------------------------------------------------------------------------

    def _open_sockets(self) -> zmq.Socket[bytes]:
        """Open and connect the three sockets; returns a monitor of the rpc socket's handshakes,
        attached before it connects so that not even the first failure is missed."""
        e = self.endpoints
        topics = [p.HEARTBEAT_TOPIC, *map(p.room_topic, self.rooms)]
        if self.nick is not None and self.inbox_feed is not None:
            self._inbox_feed = Feed(self._ctx, self.inbox_feed, [self.inbox], curve=self.curve)
        elif self.nick is not None:
            topics.append(self.inbox)
        self._feed = Feed(self._ctx, e.feed, topics, curve=self.curve)
        # IMMEDIATE: never queue a message for a broker we are not connected to (the outbox
        # keeps it instead); LINGER: a last message may still leave after close.
        self._push = transport.socket(self._ctx, zmq.PUSH, e.ingest, self.curve, IMMEDIATE=1, LINGER=1000)
        self._push.connect(e.ingest)
        monitor = self._reopen_rpc(monitor=True)
        assert monitor is not None
        return monitor

    def _reopen_rpc(self, *, monitor: bool = False) -> zmq.Socket[bytes] | None:
        if self._rpc is not None:
            self._rpc.close()
        self._rpc = transport.socket(self._ctx, zmq.DEALER, self.endpoints.rpc, self.curve)
        watcher = self._rpc.get_monitor_socket(_HANDSHAKE_FAILURES) if monitor else None
        self._rpc.connect(self.endpoints.rpc)
        return watcher

    def _close_sockets(self, monitor: zmq.Socket[bytes] | None = None) -> None:
        if monitor is not None:
            monitor.close()
        for sock in (self._push, self._rpc):
            if sock is not None:
                sock.close()
        for feed in self._feeds():
            feed.close()
        self._feed, self._inbox_feed, self._push, self._rpc = None, None, None, None
        if self._own_context:
            self._ctx.term()
            self._own_context = False

    def _feeds(self) -> list[Feed]:
        return [f for f in (self._feed, self._inbox_feed) if f is not None]

    def _room(self, room: str | None, *, member: bool = True) -> str:
        if room is None:
            if not self.rooms:
                raise ZChatError("not in any room")
            return self.rooms[0]
        room = p.check_room(p.normalize_room(room))
        if member and room not in self.rooms:
            raise ZChatError(f"not in room {room!r}")
        return room


class Feed:
    """A SUB socket on the broker's feed that knows when its subscriptions are live.

    ZeroMQ subscriptions travel to the publisher asynchronously (the "slow joiner"). After
    subscribing, :meth:`wait_live` subscribes to a one-off probe topic and waits for the broker's
    answer on it; subscriptions travel in order, so every earlier one is live by then.
    """

    def __init__(
        self,
        ctx: zmq.Context[zmq.Socket[bytes]],
        endpoint: str,
        topics: Iterable[bytes],
        curve: transport.Curve | None = None,
        inbox_feed: str | None = None,
    ) -> None:
        self.endpoint = endpoint
        # A deep receive queue: a client that stalls loses less, and repairs less from history.
        self.socket = transport.socket(ctx, zmq.SUB, endpoint, curve, RCVHWM=100_000)
        self.socket.connect(endpoint)
        for topic in topics:
            self.subscribe(topic)
        self._probe: bytes | None = None

    def subscribe(self, topic: bytes) -> None:
        self.socket.setsockopt(zmq.SUBSCRIBE, topic)

    def unsubscribe(self, topic: bytes) -> None:
        self.socket.setsockopt(zmq.UNSUBSCRIBE, topic)

    def wait_live(self, timeout: float) -> list[tuple[bytes, bytes]]:
        """Block until the subscriptions are live; returns what arrived meanwhile.

        Raises :class:`Unreachable` if the broker does not answer within ``timeout`` seconds.
        """
        probe = self._probe = p.probe_topic(secrets.token_hex(8))
        self.subscribe(probe)
        received: list[tuple[bytes, bytes]] = []
        deadline = time.monotonic() + timeout
        while self._probe is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Unreachable(f"cannot reach the zchat broker at {self.endpoint} (no answer in {timeout:g} s)")
            if self.socket.poll(int(left * 1000) + 1):
                received += self.drain()
        self.unsubscribe(probe)
        return received

    def drain(self, limit: int = DRAIN_BATCH) -> list[tuple[bytes, bytes]]:
        """Up to ``limit`` ``(topic, payload)`` waiting now; malformed messages and probe answers
        skipped. Bounded, so a deep backlog cannot keep its reader from its heartbeats."""
        out: list[tuple[bytes, bytes]] = []
        for _ in range(limit):
            try:
                frames = self.socket.recv_multipart(transport.NOBLOCK)
            except zmq.Again:
                break
            if len(frames) != 2:
                continue
            if frames[0] == self._probe:
                self._probe = None
            elif not p.is_probe_topic(frames[0]):
                out.append((frames[0], frames[1]))
        return out

    def close(self) -> None:
        self.socket.close()
