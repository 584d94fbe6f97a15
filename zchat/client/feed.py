"""The client's feed socket: a SUB on the broker's feed (or a relay's) that knows when its
subscriptions are live.

It owns the SUB socket, the readiness handshake (a one-off probe topic the broker answers) and
bounded draining. It decodes nothing: payloads go to :class:`~zchat.client.session.ClientSession`.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterable, Sequence

import zmq

from zchat import protocol as p
from zchat import transport
from zchat.errors import Unreachable

__all__ = ["DRAIN_BATCH", "Feed"]

#: Most feed messages handled per poll: the heartbeat is never more than one batch away.
DRAIN_BATCH = 1000


class Feed:
    """A SUB socket on the broker's feed (or a relay's) that knows when its subscriptions are live.

    ZeroMQ subscriptions travel to the publisher asynchronously (the "slow joiner"). After
    subscribing, :meth:`wait_live` (blocking) or :meth:`probe` (not) subscribes to a one-off
    probe topic, which the broker answers; subscriptions travel in order, so every earlier one is
    live by then. Behind a relay no probe is answered (the relay is libzmq's proxy), and the
    broker's heartbeat is the proof instead: the heartbeat topic is subscribed after the rooms.
    """

    def __init__(
        self,
        ctx: zmq.Context[zmq.Socket[bytes]],
        endpoint: str | Sequence[str],
        topics: Iterable[bytes],
        curve: transport.Curve | None = None,
    ) -> None:
        """``endpoint``: a feed, or the feeds of every broker of a pair (one publishes)."""
        endpoints = [endpoint] if isinstance(endpoint, str) else list(endpoint)
        self.endpoint = ", ".join(endpoints)
        # A deep receive queue: a client that stalls loses less, and repairs less from history.
        self.socket = transport.socket(ctx, zmq.SUB, endpoints[0], curve, RCVHWM=100_000)
        try:
            for each in endpoints:
                transport.connect(self.socket, each)
        except zmq.ZMQError:
            # Not yet ours to close for the caller: left open, it would block the context's
            # term() for ever (``zchat stats --feed bogus`` hung instead of saying why).
            self.socket.close()
            raise
        for topic in topics:
            self.subscribe(topic)
        self.subscribe(p.HEARTBEAT_TOPIC)  # last: a heartbeat proves the rooms live too
        self._probe: bytes | None = None
        self._answered = False

    def subscribe(self, topic: bytes) -> None:
        self.socket.setsockopt(zmq.SUBSCRIBE, topic)

    def unsubscribe(self, topic: bytes) -> None:
        self.socket.setsockopt(zmq.UNSUBSCRIBE, topic)

    def probe(self) -> None:
        """Ask for proof that the subscriptions are live; :meth:`answered` says when it came."""
        if self._probe is not None:
            self.unsubscribe(self._probe)
        self._probe = p.probe_topic(secrets.token_hex(8))
        self._answered = False
        self.subscribe(self._probe)

    def answered(self) -> bool:
        """Whether the last probe was answered since the last call (then it is forgotten)."""
        answered, self._answered = self._answered, False
        return answered

    def wait_live(self, timeout: float) -> list[tuple[bytes, bytes]]:
        """Block until the subscriptions are live; returns what arrived meanwhile.

        Raises :class:`Unreachable` if the broker does not answer within ``timeout`` seconds.
        """
        self.probe()
        received: list[tuple[bytes, bytes]] = []
        deadline = time.monotonic() + timeout
        # Before the first join there is no older broker whose heartbeat could still be queued:
        # any heartbeat is proof (the only one behind a relay).
        while not self.answered() and not any(topic == p.HEARTBEAT_TOPIC for topic, _ in received):
            left = deadline - time.monotonic()
            if left <= 0:
                raise Unreachable(f"cannot reach the zchat broker at {self.endpoint} (no answer in {timeout:g} s)")
            if self.socket.poll(int(left * 1000) + 1):
                received += self.drain()
        return received

    def drain(self, limit: int = DRAIN_BATCH) -> list[tuple[bytes, bytes]]:
        """Up to ``limit`` ``(topic, payload)`` waiting now; malformed messages and probe answers
        skipped (a probe answer marks the probe answered). Bounded, so a deep backlog cannot keep
        its reader from its heartbeats."""
        out: list[tuple[bytes, bytes]] = []
        for _ in range(limit):
            try:
                frames = self.socket.recv_multipart(transport.NOBLOCK)
            except zmq.Again:
                break
            if len(frames) != 2:
                continue
            topic = frames[0]
            if topic == self._probe:
                self.unsubscribe(topic)
                self._probe, self._answered = None, True
            elif not p.is_probe_topic(topic):
                out.append((topic, frames[1]))
        return out

    def close(self) -> None:
        self.socket.close()
