"""The broker's I/O shell: three bound sockets, one thread, one poll loop.

:class:`Broker` binds ingest (PULL), feed (XPUB) and rpc (ROUTER), drains each ready socket in a
batch without blocking, hands the frames to :class:`zchat.broker.core.BrokerCore` and sends what it
returns. It owns sockets, the poll timeout, stopping on a signal or :meth:`Broker.stop`, and the
shutdown notice. It must not hold protocol rules or per-connection state: everything it knows of
users lives in the core as leases.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

import zmq
from zmq.auth.thread import ThreadAuthenticator

from zchat import transport
from zchat.broker.config import BrokerConfig
from zchat.broker.core import BrokerCore, Publish
from zchat.broker.identity import Authority
from zchat.broker.store import Store
from zchat.protocol import MAX_FRAME_BYTES, Endpoints

__all__ = ["Broker"]

log = logging.getLogger("zchat.broker")

#: Most messages taken from one socket per poll: big enough to amortise the poll, small
#: enough that a flood on one socket cannot starve the others.
BATCH = 1024
#: How long the shutdown notice may take to leave, within the 1 s exit budget.
SHUTDOWN_LINGER_MS = 500
#: Seconds between two heartbeats on the feed. Sent even when the feed is busy: a client whose
#: own rooms are quiet must still hear that the broker lives.
FEED_HEARTBEAT = 1.0
#: The ZAP domain of the broker's sockets.
ZAP_DOMAIN = "zchat"
#: Seconds between two prunings of the dedupe window.
HOUSEKEEPING_INTERVAL = 60.0


class Broker(transport.Service):
    """A zchat broker as ``config`` describes it. Use as a context manager: the store opens and
    the sockets bind on enter; everything closes on exit.

    ``store`` replaces the one ``config.db`` names (tests hand in one they look into).
    """

    def __init__(
        self,
        config: BrokerConfig,
        *,
        store: Store | None = None,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wallclock: Callable[[], float] = time.time,
    ) -> None:
        """``clock`` (monotonic) times leases and timers; ``wallclock`` stamps events."""
        super().__init__(context)
        self.config = config
        self.endpoints = config.endpoints
        self._own_store = store is None and config.db is not None
        if store is None and config.db is not None:
            store = Store(config.db, history_limit=config.history_limit)
        self.store = store
        self._authority: Authority | None = None
        if config.secure:
            claims = store.claims() if store is not None else {}
            self._authority = Authority(config.allowlist, open_registration=config.open_registration, claims=claims)
        self._auth: ThreadAuthenticator | None = None
        self._clock = clock
        self.core = BrokerCore(clock(), config, store=store, authority=self._authority, wallclock=wallclock)
        # Replies wait until the batch they belong to is stored and published, so that every
        # seq a client hears of in a reply can already be fetched from history.
        self._replies: list[list[bytes]] = []
        self._next_beat = clock()
        self._waker = transport.Waker()

    # --- lifecycle -----------------------------------------------------------------------------

    def bind(self) -> Endpoints:
        """Bind the three sockets; returns the endpoints as bound (``*`` ports resolved)."""
        e = self.endpoints
        if self._authority is not None:
            self._start_authenticator(self._authority)
        self.ingest, ingest = self._bind(zmq.PULL, e.ingest)
        # XPUB_MANUAL: the broker decides what each subscriber really gets (core._vet).
        self.feed, feed = self._bind(zmq.XPUB, e.feed, SNDHWM=self.config.feed_hwm, XPUB_MANUAL=1)
        self.rpc, rpc = self._bind(zmq.ROUTER, e.rpc)
        e = self.endpoints = Endpoints(ingest, feed, rpc)
        log.info("zchat broker listening: ingest %s (PULL), feed %s (XPUB), rpc %s (ROUTER)", e.ingest, e.feed, e.rpc)
        log.info(
            "security: %s", "CURVE on all sockets" if self.config.secure else "open (no authentication, no encryption)"
        )
        return self.endpoints

    def _start_authenticator(self, authority: Authority) -> None:
        """ZAP, in pyzmq's authenticator thread: a key connects only if the authority knows it.
        Each accepted connection's frames then carry the key as their ``User-Id``."""

        class Keys:
            def callback(self, domain: str, key: bytes) -> bool:
                return authority.may_connect(key.decode("ascii"))

        self._auth = ThreadAuthenticator(self._ctx, log=logging.getLogger("zchat.zap"))
        self._auth.start()
        self._auth.configure_curve_callback(domain=ZAP_DOMAIN, credentials_provider=Keys())

    def _bind(self, kind: int, endpoint: str, **options: int) -> tuple[zmq.Socket[bytes], str]:
        """A bound socket of the broker's (CURVE server in secure mode) and where it is bound."""
        sock = self._socket(kind, endpoint, None, MAXMSGSIZE=MAX_FRAME_BYTES, **options)
        if self.config.curve is not None:
            sock.curve_server = True
            sock.curve_publickey, sock.curve_secretkey = (k.encode("ascii") for k in self.config.curve)
            sock.zap_domain = ZAP_DOMAIN.encode()
        return sock, transport.bind(sock, endpoint)

    def stop(self) -> None:
        """Ask :meth:`run` to publish the shutdown notice and return. Signal- and thread-safe."""
        self._waker.wake()

    def close(self) -> None:
        # The authenticator's thread has sockets in our context: it goes before the context.
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        super().close()  # LINGER is 0 but for the feed after a shutdown notice
        self._waker.close()
        if self._own_store and self.store is not None:
            self.store.close()
            self._own_store = False

    # --- the loop ------------------------------------------------------------------------------

    def run(self) -> None:
        """Serve until :meth:`stop`; then publish the shutdown notice to every room."""
        core, clock = self.core, self._clock
        poller = zmq.Poller()
        for sock in (self.ingest, self.rpc, self.feed):
            poller.register(sock, zmq.POLLIN)
        wake = self._waker.fileno()
        poller.register(wake, zmq.POLLIN)
        next_housekeeping = clock() + HOUSEKEEPING_INTERVAL
        while True:
            now = clock()
            timer = min(core.next_expiry(), self._next_beat, next_housekeeping)
            ready = dict(poller.poll(_timeout_ms(timer - now)))
            if wake in ready:
                break
            now = clock()
            out: list[Publish] = []
            if self.ingest in ready:
                out += self._drain(self.ingest, core.ingest, now)
            if self.rpc in ready:
                out += self._drain(self.rpc, self._reply, now)
            if self.feed in ready:
                out += self._drain(self.feed, self._subscription, now)
            out += core.expire(now)
            if now >= self._next_beat:
                out.append(core.heartbeat())
                self._next_beat = now + FEED_HEARTBEAT
            if now >= next_housekeeping:
                core.housekeeping()
                next_housekeeping = now + HOUSEKEEPING_INTERVAL
            self._commit_and_publish(out)
        self._commit_and_publish(core.shutdown())
        self.feed.setsockopt(zmq.LINGER, SHUTDOWN_LINGER_MS)
        log.info("zchat broker stopped")

    def _drain(
        self,
        sock: zmq.Socket[bytes],
        handle: Callable[[list[bytes], float, str | None], Iterable[Publish]],
        now: float,
    ) -> list[Publish]:
        out: list[Publish] = []
        secure = self.config.secure
        for _ in range(BATCH):
            identity = None
            try:
                if secure:
                    # The sender is whoever the ZAP handler said, on the frame itself.
                    parts = sock.recv_multipart(transport.NOBLOCK, copy=False)
                    identity = _user_id(parts[-1])
                    frames = [f.bytes for f in parts]
                else:
                    frames = sock.recv_multipart(transport.NOBLOCK)
            except zmq.Again:
                break
            try:
                out += handle(frames, now, identity)
            except Exception:
                # A bug must cost one message, never the broker.
                log.exception("internal error on a message; dropped it")
        return out

    def _reply(self, frames: list[bytes], now: float, identity: str | None) -> list[Publish]:
        reply, events = self.core.request(frames, now, identity)
        if reply is not None:
            self._replies.append(reply)
        return events

    def _subscription(self, frames: list[bytes], now: float, identity: str | None) -> list[Publish]:
        granted, events = self.core.subscription(frames[0], identity)
        # XPUB_MANUAL applies these to the pipe of the message just received: before any recv.
        option = zmq.SUBSCRIBE if frames[0][:1] == b"\x01" else zmq.UNSUBSCRIBE
        for topic in granted:
            self.feed.setsockopt(option, topic)
        return events

    def _commit_and_publish(self, out: list[Publish]) -> None:
        """Store the batch in one transaction, then publish it, then send its replies."""
        if self.store is not None and self.store.staged:
            try:
                self.store.commit()
            except Exception:
                # Publishing what is not stored would break "history has all the feed had";
                # clients see the hole as a gap, named by a marker when they repair it.
                log.exception("could not store a batch of %d events; not publishing it", len(out))
                out = []
        send = self.feed.send_multipart
        for topic, payload in out:
            send((topic, payload))
        for reply in self._replies:
            self.rpc.send_multipart(reply)
        self._replies.clear()


def _user_id(frame: zmq.Frame) -> str | None:
    """The ZAP ``User-Id`` of a received frame; None on messages libzmq made up itself (the
    unsubscriptions of a subscriber that went away carry no metadata)."""
    try:
        return str(frame.get("User-Id"))
    except zmq.ZMQError:
        return None


def _timeout_ms(seconds: float) -> int:
    # Wake at least once a second so lapsed leases are swept even on an idle broker.
    return 1000 if seconds >= 1 else max(0, int(seconds * 1000) + 1)
