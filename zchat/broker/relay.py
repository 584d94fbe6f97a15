"""A feed relay: XSUB from an upstream feed, XPUB to subscribers here; public topics only.

:class:`Relay` spreads fan-out over machines: subscribers connect to a relay near them instead of
the broker, and relays chain. It forwards room events, heartbeats and readiness probes, and
never any inbox (``@``) topic: libzmq's own ``zmq.proxy`` / ``proxy_steerable`` pass every
subscription through unvetted, and a subscriber of "" at a relay would then receive every private
message that any other subscriber there asked for. So the subscription path is vetted here, with
``XPUB_MANUAL`` and reference counts, in a small poll loop; messages are forwarded zero-copy in
batches. Clients behind a relay still push to the broker and use its rpc socket for hello and gap
repair. It holds no chat state and decodes no message.
"""

from __future__ import annotations

import logging
from collections import Counter

import zmq

from zchat import transport
from zchat.broker.config import FEED_HWM
from zchat.broker.shell import BATCH
from zchat.protocol import HEARTBEAT_TOPIC, MAX_FRAME_BYTES

__all__ = ["Relay"]

log = logging.getLogger("zchat.broker.relay")


def public_topics(topic: bytes) -> list[bytes]:
    """What a relay forwards for a subscription to ``topic``: rooms, heartbeats and probes."""
    if topic == b"":
        return [b"#", HEARTBEAT_TOPIC]
    return [topic] if topic[:1] in (b"#", b"!", b"~") else []


class Relay(transport.Service):
    """Forwards an upstream feed to subscribers of its own XPUB. A context manager."""

    def __init__(
        self,
        upstream: str,
        bind: str,
        *,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
        curve: transport.Curve | None = None,
        hwm: int = FEED_HWM,
    ) -> None:
        super().__init__(context)
        self.upstream = upstream
        self.endpoint = bind
        self._curve = curve
        self._hwm = hwm
        # How many downstream subscriptions want each upstream topic: subscribe upstream on the
        # first, unsubscribe on the last.
        self._wanted: Counter[bytes] = Counter()
        self.forwarded = 0
        self._waker = transport.Waker()

    def bind(self) -> str:
        """Bind the downstream XPUB and connect upstream; returns the endpoint as bound."""
        self.down = self._socket(
            zmq.XPUB, self.endpoint, SNDHWM=self._hwm, XPUB_MANUAL=1, XPUB_VERBOSER=1, MAXMSGSIZE=MAX_FRAME_BYTES
        )
        self.endpoint = transport.bind(self.down, self.endpoint)
        self.up = self._socket(zmq.XSUB, self.upstream, self._curve, RCVHWM=self._hwm)
        self.up.connect(self.upstream)
        log.info("zchat relay: %s -> %s (public topics only)", self.upstream, self.endpoint)
        return self.endpoint

    def stop(self) -> None:
        """Make :meth:`run` return. Signal- and thread-safe."""
        self._waker.wake()

    def close(self) -> None:
        super().close()
        self._waker.close()

    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.up, zmq.POLLIN)
        poller.register(self.down, zmq.POLLIN)
        wake = self._waker.fileno()
        poller.register(wake, zmq.POLLIN)
        while True:
            ready = dict(poller.poll())
            if wake in ready:
                break
            if self.down in ready:
                self._subscriptions()
            if self.up in ready:
                self._forward()
        log.info("zchat relay stopped after forwarding %d messages", self.forwarded)

    def _forward(self) -> None:
        up, down = self.up, self.down
        for _ in range(BATCH):
            try:
                frames = up.recv_multipart(transport.NOBLOCK, copy=False)
            except zmq.Again:
                return
            down.send_multipart(frames, copy=False)
            self.forwarded += 1

    def _subscriptions(self) -> None:
        for _ in range(BATCH):
            try:
                msg = self.down.recv(transport.NOBLOCK)
            except zmq.Again:
                return
            if not msg or msg[0] not in (0, 1):
                continue
            subscribe = msg[0] == 1
            for topic in public_topics(msg[1:]):
                # XPUB_MANUAL: this applies to the subscriber whose message we just read.
                self.down.setsockopt(zmq.SUBSCRIBE if subscribe else zmq.UNSUBSCRIBE, topic)
                self._wanted[topic] += 1 if subscribe else -1
                count = self._wanted[topic]
                if (subscribe and count == 1) or (not subscribe and count == 0):
                    self.up.send((b"\x01" if subscribe else b"\x00") + topic)
                if count <= 0:
                    del self._wanted[topic]
