"""The zchat client: one session with a broker, as a blocking, single-threaded Python API.

:class:`Client` owns three connected sockets (PUSH to ingest, SUB to the feed, DEALER to rpc),
the session handshake (subscribe, probe until the subscriptions are live, then hello), the
heartbeat that keeps its lease, reconnecting after the broker is lost, and the record of which
sent messages the feed has confirmed. Everything happens inside the calls the user makes
(:meth:`Client.recv`, :meth:`Client.events`, ...): there is no background thread, so a client
must be polled at least once per heartbeat interval. Rendering and the terminal are not its job.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import secrets
import time
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import Literal

import msgspec
import zmq

from zchat import protocol as p
from zchat import transport
from zchat.errors import Refused, RemoteProtocolError, Unreachable, ZChatError

__all__ = ["Client", "Feed"]

State = Literal["new", "connecting", "connected", "reconnecting", "closed"]

#: Longest wait between two attempts to rejoin a lost broker.
MAX_BACKOFF = 8.0


class Client:
    """A session with a zchat broker.

    >>> with Client("alice", ["general"]) as chat:      # doctest: +SKIP
    ...     chat.say("hello")
    ...     for event in chat.events(timeout=5):
    ...         print(event.nick, event.text)
    """

    def __init__(
        self,
        nick: str,
        rooms: Iterable[str] = (p.DEFAULT_ROOM,),
        *,
        endpoints: p.Endpoints | None = None,
        host: str = p.DEFAULT_HOST,
        port: int = p.DEFAULT_PORT,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
        timeout: float = 3.0,
    ) -> None:
        transport.require_libzmq()
        self.nick = p.check_nick(nick)
        self.rooms = list(dict.fromkeys(p.check_room(p.normalize_room(r)) for r in rooms))
        self.endpoints = endpoints or p.Endpoints.from_host_port(host, port)
        self.timeout = timeout
        self.state: State = "new"
        self._own_context = context is None
        self._ctx = context or zmq.Context()
        self._token = ""
        self._heartbeat = 2.0
        self._lease = 6.0
        # Message ids: unique per client run, so the broker (and later dedupe) can tell them apart.
        prefix = secrets.token_hex(4)
        self._ids = (f"{prefix}-{n}" for n in itertools.count(1))
        self._reqs = (str(n) for n in itertools.count(1))
        self._inbox: collections.deque[p.Event] = collections.deque()
        self._replies: dict[str, dict[str, object]] = {}
        #: Sent message ids the feed has not shown back yet -> room.
        self.pending: dict[str, str] = {}
        #: Sent message ids the broker refused -> its reason.
        self.failed: dict[str, str] = {}
        self._next_heartbeat = 0.0
        self._last_ack = 0.0
        self._retry_at = 0.0
        self._backoff = 1.0
        self._rejoin_req: str | None = None
        self._feed: Feed | None = None
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
        try:
            self._open_sockets()
            self._await_probe()
            self._hello_sync()
        except BaseException:
            self._close_sockets()
            raise
        return self

    def close(self, reason: str = "quit") -> None:
        """Wait briefly for unconfirmed messages, leave the rooms, close the sockets."""
        if self.state == "closed":
            return
        try:
            if self.state == "connected":
                if self.pending:
                    self.wait_sent(timeout=min(self.timeout, 2.0), raise_on_failure=False)
                self._call(p.Leave(token=self._token, reason=reason), timeout=min(self.timeout, 1.0))
        except ZChatError:
            pass  # leaving is best-effort: the lease ends the session anyway
        finally:
            self._close_sockets()
            self.state = "closed"

    # --- sending -------------------------------------------------------------------------------

    def say(self, text: str, room: str | None = None) -> str:
        """Send a message; returns its id. :meth:`wait_sent` tells when the feed has shown it."""
        return self._post(text, room, "message")

    def me(self, text: str, room: str | None = None) -> str:
        """Send an action (``/me waves``)."""
        return self._post(text, room, "action")

    def _post(self, text: str, room: str | None, kind: Literal["message", "action"]) -> str:
        room = self._room(room)
        p.check_text(text)
        if self.state != "connected" or self._push is None:
            raise Unreachable(f"not connected to the zchat broker ({self.state})")
        msg_id = next(self._ids)
        data = p.encode(p.Post(token=self._token, room=room, text=text, kind=kind, id=msg_id))
        try:
            self._push.send(data)
        except zmq.Again:
            raise Unreachable(f"cannot reach the zchat broker at {self.endpoints.ingest}") from None
        self.pending[msg_id] = room
        return msg_id

    def wait_sent(self, timeout: float | None = None, *, raise_on_failure: bool = True) -> None:
        """Block until the feed has shown every sent message, or the broker refused it.

        Raises :class:`Unreachable` on timeout and :class:`Refused` for a refused message.
        """
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while self.pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Unreachable(f"{len(self.pending)} message(s) not confirmed by the broker in time")
            self._pump(left)
        if self.failed and raise_on_failure:
            reason = next(iter(self.failed.values()))
            raise Refused("rejected", f"{len(self.failed)} message(s) refused: {reason}")

    # --- requests ------------------------------------------------------------------------------

    def who(self, room: str | None = None) -> list[str]:
        """Nicks in ``room`` (default: the first room joined)."""
        reply = self._call(p.Who(room=self._room(room, member=False)))
        nicks = reply.get("nicks")
        return [str(n) for n in nicks] if isinstance(nicks, list) else []

    def join(self, room: str) -> None:
        room = p.check_room(p.normalize_room(room))
        assert self._feed is not None
        self._feed.subscribe(p.room_topic(room))
        self._call(p.Join(token=self._token, room=room))
        if room not in self.rooms:
            self.rooms.append(room)

    def part(self, room: str) -> None:
        room = self._room(room)
        self._call(p.Part(token=self._token, room=room))
        self.rooms.remove(room)
        if self._feed is not None:
            self._feed.unsubscribe(p.room_topic(room))

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

    def events(self, timeout: float | None = None) -> Iterator[p.Event]:
        """Events as they come; stops after ``timeout`` seconds without one (``None``: never)."""
        while (event := self.recv(timeout)) is not None:
            yield event

    # --- the pump: all socket reading happens here --------------------------------------------

    def _pump(self, timeout: float, also: Iterable[zmq.Socket[bytes] | int] = ()) -> None:
        """Wait up to ``timeout`` for input, handle it, and keep the session alive."""
        assert self._feed is not None and self._rpc is not None
        now = time.monotonic()
        wait = max(0.0, min(timeout, self._next_timer() - now))
        poller = zmq.Poller()
        poller.register(self._feed.socket, zmq.POLLIN)
        poller.register(self._rpc, zmq.POLLIN)
        for extra in also:
            poller.register(extra, zmq.POLLIN)
        ready = dict(poller.poll(int(wait * 1000) + 1))
        if self._feed.socket in ready:
            self._drain_feed()
        if self._rpc in ready:
            self._drain_rpc()
        self._keepalive(time.monotonic())

    def _next_timer(self) -> float:
        if self.state == "reconnecting":
            return self._retry_at
        return self._next_heartbeat

    def _drain_feed(self) -> None:
        assert self._feed is not None
        for _topic, payload in self._feed.drain():
            self._on_payload(payload)

    def _on_payload(self, payload: bytes) -> None:
        try:
            event = p.decode_event(payload)
        except RemoteProtocolError:
            return  # not from a zchat broker: nothing to show
        self._on_event(event)

    def _on_event(self, event: p.Event) -> None:
        if event.id is not None and event.id in self.pending:
            if event.kind == "error":
                del self.pending[event.id]
                self.failed[event.id] = event.text
            elif event.nick.lower() == self.nick.lower():
                del self.pending[event.id]
        self._inbox.append(event)

    def _drain_rpc(self) -> None:
        assert self._rpc is not None
        while True:
            try:
                frames = self._rpc.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                reply = p.decode_reply(frames[-1])
            except RemoteProtocolError:
                continue
            self._last_ack = time.monotonic()
            req = reply.get("req")
            if req is not None and req == self._rejoin_req:
                self._on_rejoin(reply)
            elif reply.get("code") == "unknown_session" and self.state == "connected":
                self._lost("the broker forgot this session (it restarted, or the lease lapsed)")
            elif isinstance(req, str):
                self._replies[req] = reply

    def _keepalive(self, now: float) -> None:
        if self.state == "connected":
            if now - self._last_ack > self._lease:
                self._lost("connection lost")
            elif now >= self._next_heartbeat:
                self._next_heartbeat = now + self._heartbeat
                self._send(p.Heartbeat(token=self._token, req=next(self._reqs)))
        elif self.state == "reconnecting" and now >= self._retry_at:
            # Lazy Pirate: a fresh DEALER so no stale request reaches a restarted broker.
            self._reopen_rpc()
            self._rejoin_req = next(self._reqs)
            self._send(p.Hello(nick=self.nick, rooms=self.rooms, req=self._rejoin_req))
            self._retry_at = now + self._backoff
            self._backoff = min(self._backoff * 2, MAX_BACKOFF)

    def _lost(self, why: str) -> None:
        self.state = "reconnecting"
        self._retry_at = time.monotonic()
        self._backoff = 1.0
        self._inbox.append(self._local_event("disconnected", f"{why} — reconnecting…"))

    def _on_rejoin(self, reply: dict[str, object]) -> None:
        self._rejoin_req = None
        if reply.get("ok"):
            self._accept_hello(reply)
            self._inbox.append(self._local_event("reconnected", "reconnected"))
        else:
            self._inbox.append(self._local_event("rejoin_failed", f"cannot rejoin: {reply.get('error')}"))

    def _local_event(self, code: str, text: str) -> p.Event:
        return p.Event(0, p.format_ts(time.time()), "", "system", p.SYSTEM_NICK, text, code=code)

    # --- request/reply -----------------------------------------------------------------------------

    def _call(self, req: p.Request, timeout: float | None = None) -> dict[str, object]:
        """Send a request on rpc and wait for its reply (other input is handled meanwhile)."""
        if self._rpc is None:
            raise ZChatError("the client is not connected")
        req_id = next(self._reqs)
        self._send(msgspec.structs.replace(req, req=req_id))
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while req_id not in self._replies:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Unreachable(f"cannot reach the zchat broker at {self.endpoints.rpc} (no reply)")
            self._pump(left)
        reply = self._replies.pop(req_id)
        if not reply.get("ok"):
            raise Refused(str(reply.get("code")), str(reply.get("error")))
        return reply

    def _send(self, req: p.Request) -> None:
        assert self._rpc is not None
        with contextlib.suppress(zmq.Again):  # not connected yet: the caller's timeout reports it
            self._rpc.send_multipart([b"", p.encode(req)], zmq.NOBLOCK)

    def _hello_sync(self) -> None:
        self.state = "connecting"
        reply = self._call(p.Hello(nick=self.nick, rooms=self.rooms))
        self._accept_hello(reply)

    def _accept_hello(self, reply: dict[str, object]) -> None:
        self._token = str(reply["token"])
        hb = reply.get("heartbeat_ms")
        lease = reply.get("lease_ms")
        self._heartbeat = hb / 1000 if isinstance(hb, int) and hb > 0 else 2.0
        self._lease = lease / 1000 if isinstance(lease, int) and lease > 0 else 3 * self._heartbeat
        now = time.monotonic()
        self._last_ack = now
        self._next_heartbeat = now + self._heartbeat
        self.state = "connected"

    # --- sockets ---------------------------------------------------------------------------------

    def _open_sockets(self) -> None:
        e = self.endpoints
        self._feed = Feed(self._ctx, e.feed, [p.inbox_topic(self.nick), *map(p.room_topic, self.rooms)])
        # IMMEDIATE: never queue a message for a broker we are not connected to; SNDTIMEO turns a
        # dead broker into a clear error instead of a hang.
        self._push = transport.socket(
            self._ctx, zmq.PUSH, e.ingest, IMMEDIATE=1, SNDTIMEO=int(self.timeout * 1000), LINGER=1000
        )
        self._push.connect(e.ingest)
        self._reopen_rpc()

    def _reopen_rpc(self) -> None:
        if self._rpc is not None:
            self._rpc.close()
        self._rpc = transport.socket(self._ctx, zmq.DEALER, self.endpoints.rpc)
        self._rpc.connect(self.endpoints.rpc)

    def _await_probe(self) -> None:
        assert self._feed is not None
        for _topic, payload in self._feed.wait_live(self.timeout):
            self._on_payload(payload)

    def _close_sockets(self) -> None:
        for sock in (self._push, self._rpc):
            if sock is not None:
                sock.close()
        if self._feed is not None:
            self._feed.close()
        self._feed, self._push, self._rpc = None, None, None
        if self._own_context:
            self._ctx.term()
            self._own_context = False

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

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str, topics: Iterable[bytes]) -> None:
        self.endpoint = endpoint
        self.socket = transport.socket(ctx, zmq.SUB, endpoint)
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

    def drain(self) -> list[tuple[bytes, bytes]]:
        """Every ``(topic, payload)`` waiting now; malformed messages and probe answers skipped."""
        out: list[tuple[bytes, bytes]] = []
        while True:
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return out
            if len(frames) != 2:
                continue
            if frames[0] == self._probe:
                self._probe = None
            elif not p.is_probe_topic(frames[0]):
                out.append((frames[0], frames[1]))

    def close(self) -> None:
        self.socket.close()
