"""The client's sockets to the brokers of one chat: which broker it talks to, and opening,
replacing, waiting on and closing the sockets to it.

:class:`Links` owns the PUSH to ingest, the :class:`~zchat.client.feed.Feed` (a SUB on the feed
of every broker) and the DEALER to rpc, the ZeroMQ context unless one is injected, and the list
of brokers of the chat (an active/standby pair) with the one used now. It turns a failed
security handshake into a clear error. It knows no chat rules: what to send and when, when to
move to the next broker once joined, and what the replies mean are the session's
(:mod:`~zchat.client.session`), and :class:`~zchat.client.shell.Client` carries them out with
these sockets.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

import zmq
from zmq.utils.monitor import recv_monitor_message

from zchat import protocol as p
from zchat import transport
from zchat.client.feed import Feed
from zchat.errors import Refused, Unreachable, ZChatError

__all__ = ["Links"]

T = TypeVar("T")

_HANDSHAKE_FAILURES = (
    zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
)


class Links:
    """The sockets to the brokers of one chat: requests and posts go to one broker at a time
    (:attr:`endpoints`), the feed is read from all of them (only the active one publishes).

    :meth:`connect` opens them at the first broker that takes the client, :meth:`next_broker`
    and :meth:`reopen_rpc` move them on, :meth:`close_sockets` closes them to be opened again,
    :meth:`close` for good.
    """

    def __init__(
        self,
        brokers: Sequence[p.Endpoints],
        *,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
        curve: transport.Curve | None = None,
    ) -> None:
        transport.require_libzmq()
        if not brokers:
            raise ValueError("a chat needs at least one broker")
        #: Every broker of the chat, in the order they are tried.
        self.brokers = list(brokers)
        self.curve = curve
        self._current = 0
        self._own_context = context is None
        #: The context the sockets live in: terminated by :meth:`close` only if it is our own.
        self.context = context or zmq.Context()
        self.feed: Feed | None = None
        self.rpc: zmq.Socket[bytes] | None = None
        self._push: zmq.Socket[bytes] | None = None
        self._monitor: zmq.Socket[bytes] | None = None

    @property
    def endpoints(self) -> p.Endpoints:
        """The broker that requests and posts go to now."""
        return self.brokers[self._current]

    @property
    def sockets(self) -> list[zmq.Socket[bytes]]:
        """The sockets that bring input (the feed and rpc), while open."""
        return [s for s in (self.feed.socket if self.feed else None, self.rpc) if s is not None]

    # --- opening and moving on -------------------------------------------------------------------

    def connect(self, topics: Sequence[bytes], join: Callable[[Feed], T]) -> T:
        """Open the sockets to the current broker and ``join`` through them (``join`` gets the
        feed, subscribed to ``topics``, and may block). If that broker does not answer, or answers
        that it is a standby, close them and try the next: each broker once. Returns what ``join``
        returned; raises any other refusal at once, else the last broker's failure (a failed
        security handshake as such, not as no answer)."""
        last: ZChatError | None = None
        for _ in self.brokers:
            try:
                return self._join(topics, join)
            except Refused as exc:
                if exc.code != "standby":  # the active broker's refusal (a nick taken) is final
                    raise
                last = exc
            except Unreachable as exc:
                last = exc
            self.next_broker()
        assert last is not None
        raise last

    def _join(self, topics: Sequence[bytes], join: Callable[[Feed], T]) -> T:
        try:
            self.open(topics)
            assert self.feed is not None
            try:
                joined = join(self.feed)
            except Unreachable:
                self._diagnose()
                raise
        except BaseException:
            self.close_sockets()
            raise
        self._stop_watching()  # the broker answered: its handshake is done
        return joined

    def open(self, topics: Iterable[bytes]) -> None:
        """Open and connect the three sockets, the feed subscribed to ``topics``; until the broker
        answers, the rpc socket's failed handshakes are noted for :meth:`_diagnose`."""
        self.feed = Feed(self.context, [b.feed for b in self.brokers], topics, curve=self.curve)
        # IMMEDIATE: never queue a message for a broker we are not connected to (the outbox
        # keeps it instead); LINGER: a last message may still leave after close.
        self._push = transport.socket(
            self.context, zmq.PUSH, self.endpoints.ingest, self.curve, IMMEDIATE=1, LINGER=1000
        )
        transport.connect(self._push, self.endpoints.ingest)
        self.reopen_rpc(watch=True)

    def next_broker(self) -> None:
        """Move requests and posts to the next broker of the chat, after the last the first
        again (the feed reads them all already)."""
        if len(self.brokers) == 1:
            return
        if self._push is not None:
            self._push.disconnect(self.endpoints.ingest)
        self._current = (self._current + 1) % len(self.brokers)
        if self._push is not None:
            transport.connect(self._push, self.endpoints.ingest)

    def reopen_rpc(self, *, watch: bool = False) -> None:
        """Replace the rpc socket with a new one to the current broker: nothing sent on the old
        one will be answered. ``watch``: note its failed handshakes, from before it connects so
        that not even the first is missed."""
        self._stop_watching()
        if self.rpc is not None:
            self.rpc.close()
        self.rpc = transport.socket(self.context, zmq.DEALER, self.endpoints.rpc, self.curve)
        # What this session's own traffic is routed to: fresh and unguessable for each socket.
        self.rpc.setsockopt(zmq.ROUTING_ID, transport.new_route())
        if watch:
            self._monitor = self.rpc.get_monitor_socket(_HANDSHAKE_FAILURES)
        transport.connect(self.rpc, self.endpoints.rpc)

    def _stop_watching(self) -> None:
        if self._monitor is None:
            return
        if self.rpc is not None:
            self.rpc.disable_monitor()
        self._monitor.close()
        self._monitor = None

    def _diagnose(self) -> None:
        """Raise a clear error if a security handshake failed since the sockets were opened
        (the broker did not answer); return if none did."""
        events = set()
        while self._monitor is not None and self._monitor.poll(0):
            events.add(recv_monitor_message(self._monitor)["event"])
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

    # --- traffic -----------------------------------------------------------------------------------

    def subscribe(self, topic: bytes) -> None:
        """Read ``topic`` on the feed too (once the subscription has travelled: :meth:`probe`)."""
        if self.feed is not None:
            self.feed.subscribe(topic)

    def unsubscribe(self, topic: bytes) -> None:
        if self.feed is not None:
            self.feed.unsubscribe(topic)

    def probe(self) -> None:
        """Ask the feed to prove its subscriptions live (:meth:`receive` says when it did)."""
        if self.feed is not None:
            self.feed.probe()

    def request(self, req: p.Request) -> None:
        """Send ``req`` on rpc without waiting. Not connected yet (or not open): it is dropped,
        and the session's timers notice the missing reply."""
        if self.rpc is not None:
            with contextlib.suppress(zmq.Again):
                self.rpc.send_multipart([b"", p.encode(req)], transport.NOBLOCK)

    def post(self, post: bytes) -> bool:
        """Push ``post`` to ingest without waiting; False if it was not taken (not connected
        right now, or the queue is full), to be retried later."""
        if self._push is None:
            return False
        try:
            self._push.send(post, transport.NOBLOCK)
        except zmq.Again:
            return False
        return True

    def receive(
        self, timeout: float, also: Iterable[zmq.Socket[bytes] | int] = ()
    ) -> tuple[list[tuple[bytes, bytes]], bool, list[bytes]]:
        """Wait up to ``timeout`` seconds for input on the feed, rpc or ``also`` (sockets or file
        descriptors the caller reads itself), then read what waits: a batch of the feed's
        ``(topic, payload)`` (see :meth:`Feed.drain`), whether the feed answered its probe, and
        the body of every message on rpc."""
        feed, rpc = self.feed, self.rpc
        assert feed is not None and rpc is not None, "the sockets are not open"
        poller = zmq.Poller()
        for sock in (feed.socket, rpc, *also):
            poller.register(sock, zmq.POLLIN)
        ready = dict(poller.poll(math.ceil(timeout * 1000)))
        batch, answered, bodies = [], False, []
        if feed.socket in ready:
            batch = feed.drain()
            answered = feed.answered()
        if rpc in ready:
            while True:
                try:
                    bodies.append(rpc.recv_multipart(transport.NOBLOCK)[-1])
                except zmq.Again:
                    break
        return batch, answered, bodies

    # --- closing -----------------------------------------------------------------------------------

    def close_sockets(self) -> None:
        """Close the sockets and keep the context: :meth:`open` may open them again."""
        self._stop_watching()
        for sock in (self._push, self.rpc):
            if sock is not None:
                sock.close()
        if self.feed is not None:
            self.feed.close()
        self.feed, self._push, self.rpc = None, None, None

    def close(self) -> None:
        """Close the sockets, and the context if it is our own (an injected one is its owner's)."""
        if self.rpc is not None:
            self.rpc.setsockopt(zmq.LINGER, 200)  # a last request (a leave) may still go out
        self.close_sockets()
        if self._own_context:
            self.context.term()
            self._own_context = False
