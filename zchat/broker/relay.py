"""A feed relay: libzmq's own proxy, in C, from an upstream feed to subscribers here.

:class:`Relay` spreads fan-out over machines: subscribers connect to a relay near them instead of
the broker, and relays chain. The feed is public (rooms, heartbeats, readiness probes; nothing
addressed to one session ever travels on it), so a relay needs no vetting and forwards every
message with no Python per message: ``zmq.proxy_steerable`` between a SUB subscribed to
everything upstream and a PUB that subscribers connect to here.

Why SUB → PUB and not XSUB → XPUB: a proxy between XSUB and XPUB passes its subscribers'
subscriptions upstream, and libzmq 4.3.5's XPUB also passes on a *cancel* for a topic the peer
never subscribed (``xpub.cpp``: ``rm_result == not_found`` notifies); the XSUB upstream then drops
its own subscription, and one raw peer's stray cancel cuts that room for everyone behind the
relay. A PUB applies each subscriber's (un)subscriptions to that subscriber alone. The price: the
relay receives the whole public feed, not only the rooms its subscribers want, and the broker
never sees their probes — clients behind a relay learn their subscriptions are live from the
broker's heartbeat (about once a second) instead.

Clients behind a relay still push to the broker and use its rpc socket (hello, history, and
everything addressed to them). A relay holds no chat state and decodes no message.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
from collections.abc import Sequence

import zmq

from zchat import transport
from zchat.broker.config import FEED_HWM

__all__ = ["Relay"]

log = logging.getLogger("zchat.relay")

#: How often the waiting thread lets a signal handler run.
STOP_CHECK_SECONDS = 0.2
#: Largest message a subscriber may send a relay: a subscription is a short topic.
MAX_SUBSCRIPTION_BYTES = 256


class Relay(transport.Service):
    """Forwards an upstream feed to subscribers of its own PUB. A context manager."""

    def __init__(
        self,
        upstream: str | Sequence[str],
        bind: str,
        *,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
        curve: transport.Curve | None = None,
        hwm: int = FEED_HWM,
    ) -> None:
        """``upstream``: a feed, or the feeds of both brokers of an active/standby pair (only the
        active one publishes, so the relay subscribes to all of them)."""
        super().__init__(context)
        self._stopping = False
        self._stopper: zmq.Socket[bytes] | None = None
        self.upstreams = [upstream] if isinstance(upstream, str) else list(upstream)
        self.endpoint = bind
        self._curve = curve
        self._hwm = hwm

    def bind(self) -> str:
        """Bind the downstream PUB and connect upstream; returns the endpoint as bound."""
        self.down = self._socket(zmq.PUB, self.endpoint, SNDHWM=self._hwm, MAXMSGSIZE=MAX_SUBSCRIPTION_BYTES)
        self.endpoint = transport.bind(self.down, self.endpoint)
        # One socket for every upstream: IPv6 on if any of them needs it (set from the first
        # alone, an IPv6 second broker of a pair would be connected to and never heard).
        ipv6 = int(any(u.startswith("tcp://[") for u in self.upstreams))
        self.up = self._socket(zmq.SUB, self.upstreams[0], self._curve, RCVHWM=self._hwm, IPV6=ipv6)
        self.up.setsockopt(zmq.SUBSCRIBE, b"")
        for upstream in self.upstreams:
            self.up.connect(upstream)
        # The steerable proxy's control pair: stop() says TERMINATE on one end.
        address = f"inproc://zchat-relay-{secrets.token_hex(4)}"
        self._control = self._socket(zmq.PAIR, address)
        self._control.bind(address)
        self._stopper = self._socket(zmq.PAIR, address)
        self._stopper.connect(address)
        upstream = ", ".join(self.upstreams)
        log.info("zchat relay: %s -> %s (the public feed, in libzmq's proxy)", upstream, self.endpoint)
        return self.endpoint

    def stop(self) -> None:
        """Make :meth:`run` return (at once if it has not started). Safe from a signal handler
        and from one other thread."""
        self._stopping = True
        if self._stopper is not None:
            with contextlib.suppress(zmq.ZMQError):  # already closed: nothing to stop
                self._stopper.send(b"TERMINATE", zmq.NOBLOCK)

    def run(self) -> None:
        """Relay until :meth:`stop`. The proxy runs in a thread of its own: a signal that comes
        while it forwards (not blocked in poll) would never reach a Python handler from inside
        it; this thread waits in Python, where handlers always run."""
        if self._stopping:
            return
        proxy = threading.Thread(
            target=zmq.proxy_steerable, args=(self.up, self.down, None, self._control), name="zchat-relay-proxy"
        )
        proxy.start()
        if self._stopping:  # stopped while the proxy started: its control socket may have missed it
            self.stop()
        while proxy.is_alive():
            proxy.join(STOP_CHECK_SECONDS)
        log.info("zchat relay stopped")
