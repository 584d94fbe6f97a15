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
from collections.abc import Callable

import zmq
from zmq.auth.thread import ThreadAuthenticator

from zchat import transport
from zchat.broker.config import BrokerConfig
from zchat.broker.core import BrokerCore
from zchat.broker.identity import Authority
from zchat.broker.store import SQLiteStore, Store, StoreError
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
#: Largest message a feed peer may send: a subscription (the longest topic a client uses is a
#: room's, 34 bytes). A larger one costs its sender the connection. libzmq applies the limit to
#: handshake commands too, and CURVE's INITIATE is some 250 bytes plus the peer's metadata.
MAX_SUBSCRIPTION_BYTES = 1024
#: The ZAP domain of the broker's sockets.
ZAP_DOMAIN = "zchat"
#: Seconds between two rounds of housekeeping: retention, tombstones, unused counters.
HOUSEKEEPING_INTERVAL = 1.0
#: While the store keeps failing, how often the log says so.
STORE_FAILURE_LOG_INTERVAL = 10.0
#: Messages queued for one rpc connection before more are dropped: a peer that asks and never
#: reads costs at most this many replies of at most 64 KiB (history pages are bounded).
RPC_HWM = 64
_SNDMORE = int(zmq.SNDMORE)
_NOBLOCK_SNDMORE = int(zmq.NOBLOCK | zmq.SNDMORE)


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
        # The store first: a store another broker holds is refused before anything else is made.
        self._own_store = store is None and config.db is not None
        if store is None and config.db is not None:
            store = SQLiteStore(config.db, history_limit=config.history_limit)
        self.store = store
        super().__init__(context)
        self.config = config
        self.endpoints = config.endpoints
        self._authority: Authority | None = None
        if config.secure:
            claims = store.claims() if store is not None else {}
            self._authority = Authority(config.allowlist, open_registration=config.open_registration, claims=claims)
        self._auth: ThreadAuthenticator | None = None
        self._clock = clock
        self.core = BrokerCore(clock(), config, store=store, authority=self._authority, wallclock=wallclock)
        self._next_beat = clock()
        self._failing_since: float | None = None
        self._next_failure_log = 0.0
        self._waker = transport.Waker()

    # --- lifecycle -----------------------------------------------------------------------------

    def bind(self) -> Endpoints:
        """Bind the three sockets; returns the endpoints as bound (``*`` ports resolved)."""
        e = self.endpoints
        if self._authority is not None:
            self._start_authenticator(self._authority)
        self.ingest, ingest = self._bind(zmq.PULL, e.ingest)
        # A plain XPUB: libzmq applies subscriptions itself, and the broker reads them only to
        # answer readiness probes. Nothing secret is published (no XPUB_MANUAL to get wrong).
        # What a feed peer sends is a subscription, and libzmq keeps each in a trie of about
        # 48 bytes per byte of topic for as long as the peer stays: a 64 KiB one cost 2.7 MB.
        # Topics are short (rooms 34 bytes, probes 18), so the feed takes nothing much longer.
        self.feed, feed = self._bind(zmq.XPUB, e.feed, SNDHWM=self.config.feed_hwm, MAXMSGSIZE=MAX_SUBSCRIPTION_BYTES)
        # ROUTER_MANDATORY: a send to a connection that is gone fails instead of vanishing, so
        # the broker knows a session's route is gone.
        self.rpc, rpc = self._bind(zmq.ROUTER, e.rpc, ROUTER_MANDATORY=1, SNDHWM=RPC_HWM)
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
        sock = self._socket(kind, endpoint, None, **{"MAXMSGSIZE": MAX_FRAME_BYTES, **options})
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
        trimming = False  # retention has more to remove: the loop comes straight back for it
        while True:
            now = clock()
            timer = min(core.next_expiry(), self._next_beat, next_housekeeping)
            ready = dict(poller.poll(0 if trimming else _timeout_ms(timer - now)))
            if wake in ready:
                break
            now = clock()
            core.begin(now)
            if self.ingest in ready:
                self._drain_ingest(now)
            if self.rpc in ready:
                self._drain_rpc(now)
            if self.feed in ready:
                self._drain_feed()
            core.expire(now)
            if now >= self._next_beat:
                core.heartbeat()
                self._next_beat = now + FEED_HEARTBEAT
            if now >= next_housekeeping:
                core.housekeeping(now)
                if self.store is not None:
                    self.store.plan_retention(time.time())
                next_housekeeping = now + HOUSEKEEPING_INTERVAL
            self._commit_and_send()
            # Retention a little at a time, once the batch is out (see Store.trim).
            trimming = self.store is not None and self.store.trim()
        core.begin(clock())
        core.shutdown()
        self._commit_and_send()
        self.feed.setsockopt(zmq.LINGER, SHUTDOWN_LINGER_MS)
        log.info("zchat broker stopped")

    def _drain_ingest(self, now: float) -> None:
        ingest, ingest_one, secure = self.ingest, self.core.ingest, self.config.secure
        # A post is one frame: the first frame's ``more`` says whether there are others (reading
        # RCVMORE with getsockopt, as recv_multipart does, costs more than the receive).
        recv, noblock = ingest.recv, transport.NOBLOCK
        for _ in range(BATCH):
            try:
                frame = recv(noblock, copy=False)
                rest = ingest.recv_multipart(noblock, copy=False) if frame.more else None
            except zmq.Again:
                return
            if rest is None:
                frames, last = [frame.bytes], frame
            else:  # not a post: the core counts it and drops it
                frames, last = [frame.bytes, *(f.bytes for f in rest)], rest[-1]
            # The sender (secure mode) is whoever the ZAP handler said, on the frame itself.
            identity = _user_id(last) if secure else None
            # (A try per message, not a context manager: this is the broker's hottest loop.)
            try:
                ingest_one(frames, now, identity)
            except Exception:
                _internal_error()

    def _drain_rpc(self, now: float) -> None:
        for _ in range(BATCH):
            try:
                parts = self.rpc.recv_multipart(transport.NOBLOCK, copy=False)
            except zmq.Again:
                return
            # Who sent it, from the frame's own metadata: the ZAP key (secure mode) and the
            # address it came from (open mode's per-address bounds).
            identity = _user_id(parts[-1]) if self.config.secure else None
            try:
                self.core.request([f.bytes for f in parts], now, identity, _peer_address(parts[-1]))
            except Exception:
                _internal_error()

    def _drain_feed(self) -> None:
        for _ in range(BATCH):
            try:
                msg = self.feed.recv(transport.NOBLOCK)
            except zmq.Again:
                return
            try:
                self.core.subscription(msg)
            except Exception:
                _internal_error()

    def _commit_and_send(self) -> None:
        """Store the batch in one transaction; then, only if that worked, publish it, deliver it
        and send its replies. A failed commit sends the refusals instead (see BrokerCore.undo)."""
        core, store = self.core, self.store
        batch = core.finish()
        if store is not None and store.staged:
            try:
                store.commit()
            except StoreError as exc:
                store.rollback()
                batch = core.undo()
                self._store_failed(exc)
            else:
                core.keep()
                self._store_ok()
        else:
            core.keep()
        feed = self.feed
        for topic, payload in batch.publish:
            feed.send(topic, _SNDMORE)
            feed.send(payload)
        for route, payload in batch.deliver:
            if not self._route(route, payload):
                core.dropped()
        for reply in batch.replies:
            if not self._route(*reply[::2]):
                core.counters.replies_dropped += 1

    def _route(self, route: bytes, payload: bytes) -> bool:
        """Send ``payload`` to one connection; False if it could not go (its queue is full,
        or the connection is gone, which the core then forgets as a route)."""
        try:
            self.rpc.send(route, _NOBLOCK_SNDMORE)
            self.rpc.send(b"", _NOBLOCK_SNDMORE)
            self.rpc.send(payload, transport.NOBLOCK)
        except zmq.Again:
            return False
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            self.core.unreachable(route)
            return False
        return True

    def _store_failed(self, exc: StoreError) -> None:
        """Say it once per interval while it lasts, not per batch."""
        now = self._clock()
        if self._failing_since is None:
            self._failing_since = now
            log.error("%s: nothing of that batch was sent; senders were told to resend", exc)
        elif now >= self._next_failure_log:
            log.error("the store still fails (%d batches so far): %s", self.core.counters.store_failures, exc)
        else:
            return
        self._next_failure_log = now + STORE_FAILURE_LOG_INTERVAL

    def _store_ok(self) -> None:
        if self._failing_since is not None:
            log.warning("the store works again after %.1f s", self._clock() - self._failing_since)
            self._failing_since = None


def _internal_error() -> None:
    """A bug must cost one message, never the broker (called from an ``except`` block)."""
    log.exception("internal error on a message; dropped it")


def _user_id(frame: zmq.Frame) -> str | None:
    """The ZAP ``User-Id`` of a received frame; None on messages libzmq made up itself."""
    try:
        return str(frame.get("User-Id"))
    except zmq.ZMQError:
        return None


def _peer_address(frame: zmq.Frame) -> str | None:
    """The address a received frame came from (None for ipc and inproc peers)."""
    try:
        return str(frame.get("Peer-Address")) or None
    except zmq.ZMQError:
        return None


def _timeout_ms(seconds: float) -> int:
    # Wake at least once a second so lapsed leases are swept even on an idle broker.
    return 1000 if seconds >= 1 else max(0, int(seconds * 1000) + 1)
