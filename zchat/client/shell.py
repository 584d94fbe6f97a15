"""The zchat client's I/O shell: one session with a broker as a blocking, single-threaded Python API.

:class:`Client` blocks until a reply, an event or a timeout, pumping its sockets to the brokers
(:class:`~zchat.client.links.Links`). Every rule — joining, heartbeats, judging the broker lost,
rejoining, the outbox, gap repair — is the sans-IO :class:`~zchat.client.session.ClientSession`'s;
this module feeds it what arrives and the time, and sends what it asks. Everything happens
inside the calls the user makes (:meth:`Client.recv`, :meth:`Client.events`, :meth:`Client.poll`):
there is no background thread, so a client must be polled at least once a second or so.
Rendering is not its job.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator, Sequence
from types import TracebackType

import zmq

from zchat import protocol as p
from zchat import transport
from zchat.client.feed import DRAIN_BATCH, Feed
from zchat.client.links import Links
from zchat.client.session import PROBE, REOPEN, ClientSession, Names, Pending, State, broker_events
from zchat.errors import Refused, Unreachable, ZChatError

__all__ = ["Client", "Feed", "Names"]


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
        failover: Sequence[p.Endpoints] = (),
    ) -> None:
        """``failover`` lists more brokers of the same chat (an active/standby pair): the client
        reads the feeds of all of them (only the active one publishes) and moves its requests and
        posts to the next one when it loses the one it uses, or is told it is a standby."""
        #: The rules of this session; the client only does its I/O.
        self.session = ClientSession(
            nick, rooms, backlog=backlog, since=since, send_timeout=send_timeout, dead_after=dead_after
        )
        #: The sockets to every broker of the chat; the client talks to one at a time.
        self.links = Links(
            [endpoints or p.Endpoints.from_host_port(host, port), *failover], context=context, curve=curve
        )
        self.timeout = timeout

    @property
    def brokers(self) -> list[p.Endpoints]:
        """Every broker of the chat, in the order they are tried."""
        return self.links.brokers

    @property
    def endpoints(self) -> p.Endpoints:
        """The broker the client talks to now."""
        return self.links.endpoints

    @property
    def curve(self) -> transport.Curve | None:
        return self.links.curve

    # The session's facts, as the client's own attributes.

    @property
    def nick(self) -> str | None:
        return self.session.nick

    @property
    def rooms(self) -> list[str]:
        return self.session.rooms

    @property
    def state(self) -> State:
        return self.session.state

    @property
    def epoch(self) -> str | None:
        return self.session.epoch

    @property
    def inbox(self) -> str:
        """This session's inbox (its private messages), as the broker named it."""
        return self.session.inbox

    @property
    def send_timeout(self) -> float:
        return self.session.send_timeout

    @property
    def pending(self) -> dict[str, Pending]:
        """Sent messages the feed has not shown back yet, oldest first."""
        return self.session.pending

    @property
    def failed(self) -> dict[str, str]:
        """Messages refused by the broker or never confirmed -> the reason (the newest 10 000)."""
        return self.session.failed

    @property
    def failures(self) -> int:
        """How many messages failed since the client started (all of them, unlike :attr:`failed`)."""
        return self.session.failures

    @property
    def context(self) -> zmq.Context[zmq.Socket[bytes]]:
        """The ZeroMQ context the client's sockets live in (for ``inproc://`` companions)."""
        return self.links.context

    # --- lifecycle -------------------------------------------------------------------------------

    def __enter__(self) -> Client:
        return self.connect()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def connect(self) -> Client:
        """Subscribe, wait until the subscriptions are live, then join with ``hello`` — at the
        first broker that answers and is not a standby.

        Raises :class:`Unreachable` if no broker answers within ``timeout`` and :class:`Refused`
        if one turns the nick down.
        """
        request = self.session.connect()
        try:
            reply = self.links.connect([p.room_topic(room) for room in self.rooms], lambda f: self._hello(f, request))
            self.session.joined(reply, time.monotonic())
        except BaseException:
            self.session.close()
            # Closed for good, and close() does nothing then: the own context is ended here or never.
            self.links.close()
            raise
        return self

    def _hello(self, feed: Feed, request: p.Request) -> dict[str, object]:
        """Prove the feed live, then say ``request`` (hello) to the current broker."""
        for _topic, payload in feed.wait_live(self.timeout):
            self.session.feed_message(payload, time.monotonic())
        return self._call(request)

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
                leave = self.session.leave_request(reason)
                if leave is not None:
                    with contextlib.suppress(ZChatError):
                        self._call(leave, timeout=min(self.timeout, 1.0))
        finally:
            self.links.close()
            self.session.close()

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
        return self._post(text, None, "message", to=to)

    def _post(self, text: str, room: str | None, kind: p.PostKind, to: str | None = None) -> str:
        msg_id = self.session.post(text, room, kind, time.monotonic(), to)
        self._flush()
        return msg_id

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
            raise Refused("not_sent", f"{self.failures} message(s) not sent: {reason}")

    # --- requests ------------------------------------------------------------------------------

    def who(self, room: str | None = None) -> list[str]:
        """Nicks in ``room`` (default: the first room joined)."""
        return self.names(room).nicks

    def names(self, room: str | None = None) -> Names:
        """Who is in ``room`` (default: the first room joined), who of them is away, and its
        topic: any room, ours or not."""
        return self.session.who_answered(self._call(p.Who(room=self.session.room(room, member=False))))

    def set_nick(self, nick: str) -> str:
        """Change this session's nick; returns it. Each of our rooms gets a ``nick`` event.

        Raises :class:`Refused` with the broker's code: ``nick_taken``, ``no_change`` (it is our
        nick already), and in secure mode ``nick_not_allowed`` (our key may not use it).
        """
        self.session.renamed(self._call(self.session.nick_request(nick)))
        assert self.nick is not None
        return self.nick

    def away(self, text: str | None = None) -> str | None:
        """Say we are away, with ``text`` (whoever sends us a private message is told it, and
        ``who`` shows it), or with no text that we are back; returns the away message kept."""
        return self.session.away_set(self._call(self.session.away_request(text)))

    def topic(self, room: str | None = None, text: str | None = None) -> str | None:
        """``room``'s topic (default: the first room joined): set to ``text``, cleared with
        ``""``, or with no ``text`` only asked. Returns the topic now (None: it has none).
        Setting and clearing need us in the room; asking works for any room."""
        return self.session.topic_answered(self._call(self.session.topic_request(room, text)))

    def search(self, text: str, room: str | None = None, limit: int = 20, before: int | None = None) -> list[p.Event]:
        """Stored messages and actions of ``room`` (default: the first room joined; any room)
        holding every word of ``text`` (whole words, any case), newest first: at most ``limit``
        (1 to ``MAX_SEARCH``; fewer if they pass the 64 KiB a reply holds). The next page is
        ``before`` the smallest ``seq`` returned; an empty page means there are no more."""
        reply = self._call(self.session.search_request(text, room, limit, before))
        return broker_events(reply.get("events"))

    def join(self, room: str) -> None:
        """Join another room (its backlog comes as for the first ones)."""
        room = self.session.room(room, member=False)
        self.links.subscribe(p.room_topic(room))  # first, so nothing after the join is missed
        try:
            reply = self._call(self.session.join_room(room))
        except ZChatError:
            if room not in self.rooms:
                self.links.unsubscribe(p.room_topic(room))
            raise
        self.session.room_joined(room, reply)

    def part(self, room: str, reason: str = "") -> None:
        """Leave ``room`` (``reason`` is shown to the room)."""
        room = self.session.room(room)
        request = self.session.part_room(room, reason)
        if request is not None:
            self._call(request)
        self.session.room_parted(room)
        self.links.unsubscribe(p.room_topic(room))

    def history(self, room: str | None = None, limit: int = 50, after: int | None = None) -> list[p.Event]:
        """Stored events of ``room`` (default: the first room joined; any room, or
        :attr:`inbox` for our private messages), oldest first: the last ``limit`` (1 to
        ``MAX_HISTORY``), or with ``after`` the first ``limit`` after that ``seq``. They are not
        delivered as events."""
        request = self.session.history_request(room, limit, after)
        return broker_events(self._call(request).get("events"))

    def stats(self) -> dict[str, object]:
        return self._call(p.Stats())

    def _call(self, req: p.Request, timeout: float | None = None) -> dict[str, object]:
        """Send a request on rpc and wait for its reply (other input is handled meanwhile)."""
        if self.links.rpc is None:
            raise ZChatError("the client is not connected")
        req_id = self.session.call(req, time.monotonic())
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        try:
            self._flush()
            while (reply := self.session.take_reply(req_id)) is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Unreachable(f"cannot reach the zchat broker at {self.endpoints.rpc} (no reply)")
                self._pump(left)
        finally:
            self.session.forget_call(req_id)
        if not reply.get("ok"):
            raise Refused(str(reply.get("code")), str(reply.get("error")))
        return reply

    # --- receiving -------------------------------------------------------------------------------

    def recv(self, timeout: float | None = None) -> p.Event | None:
        """The next event, or ``None`` after ``timeout`` seconds (``None``: wait forever)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.session.has_events:
            if self.state == "closed":
                raise ZChatError("the client is closed")
            left = 3600.0 if deadline is None else deadline - time.monotonic()
            if left <= 0:
                return None
            self._pump(left)
        return self.session.next_event()

    def poll(self, timeout: float = 0.0, *, also: Iterable[zmq.Socket[bytes] | int] = ()) -> list[p.Event]:
        """Wait up to ``timeout`` seconds for input, then return every event that is waiting.

        For event loops: ``also`` lists extra sockets or file descriptors whose input should
        end the wait early (the caller reads them itself).
        """
        if self.state == "closed":
            raise ZChatError("the client is closed")
        if not self.session.has_events:
            self._pump(timeout, also)
        return self.session.take_events()

    @property
    def sockets(self) -> list[zmq.Socket[bytes]]:
        """The sockets this client reads, for one loop that serves many clients: poll them all,
        then call :meth:`poll` with ``timeout=0`` on each client (which also keeps it alive)."""
        return self.links.sockets

    def events(self, timeout: float | None = None) -> Iterator[p.Event]:
        """Events as they come; stops after ``timeout`` seconds without one (``None``: never)."""
        while (event := self.recv(timeout)) is not None:
            yield event

    # --- the pump: the session meets the sockets here -------------------------------------------

    def _pump(self, timeout: float, also: Iterable[zmq.Socket[bytes] | int] = ()) -> None:
        """Wait up to ``timeout`` for input, hand it to the session, send what it asks."""
        session, links = self.session, self.links
        # Whatever is due goes out before the wait, not a wait later.
        session.tick(time.monotonic())
        self._flush()
        wait = max(0.0, min(timeout, session.next_timer() - time.monotonic()))
        batch, answered, replies = links.receive(wait, also)
        now = time.monotonic()
        # A full batch means more is waiting: this client is behind its own input.
        session.behind = len(batch) >= DRAIN_BATCH
        for _topic, payload in batch:
            session.feed_message(payload, now)
        if answered:
            session.feed_live()
        for body in replies:
            session.rpc_message(body, now)
        session.tick(time.monotonic())
        self._flush()

    def _flush(self) -> None:
        """Send what the session asks: rpc requests (on a new socket after REOPEN), then posts
        while the broker takes them (the rest on a later pump)."""
        links = self.links
        for item in self.session.take_outgoing():
            if item is REOPEN:  # a rejoin: at the next broker of a pair
                links.next_broker()
                links.reopen_rpc()
            elif item is PROBE:
                links.probe()
            elif isinstance(item, p.Request):
                links.request(item)
        while (post := self.session.next_post(time.monotonic())) is not None and links.post(post):
            self.session.posted()
