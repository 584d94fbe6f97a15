"""The broker's I/O shell: three bound sockets, one thread, one poll loop.

:class:`Broker` binds ingest (PULL), feed (XPUB) and rpc (ROUTER), drains each ready socket in a
batch without blocking, hands the frames to :class:`zchat.broker.core.BrokerCore` and sends what it
returns. It owns sockets, the poll timeout, stopping on a signal or :meth:`Broker.stop`, and the
shutdown notice. It must not hold protocol rules or per-connection state: everything it knows of
users lives in the core as leases.
"""

from __future__ import annotations

import enum
import logging
import math
import time
from collections.abc import Callable

import zmq
from zmq.auth.thread import ThreadAuthenticator

from zchat import protocol as p
from zchat import transport
from zchat.broker.config import BrokerConfig
from zchat.broker.core import BrokerCore, probe_answer, standby_answer
from zchat.broker.identity import Authority
from zchat.broker.metrics import Metrics, Snapshot
from zchat.broker.store import LockingStore, Store, StoreError, is_postgres, open_store
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
#: How often a standby tries to take its store's lock: a takeover within this of the active
#: broker's death (its database session ends at once, and the lock with it). On a clock, not on
#: input, so that no flood at the standby's sockets becomes a flood of queries at the database.
STANDBY_POLL_MS = 100
#: Seconds between two rounds of housekeeping: retention, tombstones, unused counters, and for a
#: broker of a pair the check that it still holds its store's lock.
HOUSEKEEPING_INTERVAL = 1.0
#: While the store keeps failing, how often the log says so.
STORE_FAILURE_LOG_INTERVAL = 10.0
#: Messages queued for one rpc connection before more are dropped: a peer that asks and never
#: reads costs at most this many replies of at most 64 KiB (history pages are bounded).
RPC_HWM = 64
_SNDMORE = int(zmq.SNDMORE)
_NOBLOCK_SNDMORE = int(zmq.NOBLOCK | zmq.SNDMORE)


class _Sent(enum.Enum):
    """What became of a message for one connection (ROUTER_MANDATORY tells a gone one)."""

    SENT = enum.auto()
    FULL = enum.auto()  # its queue is at the high-water mark
    GONE = enum.auto()


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
        # Metrics first (its extra may be missing), then the store: a store another broker holds
        # is refused before anything else is made.
        self.metrics = Metrics(*config.metrics) if config.metrics is not None else None
        self._own_store = store is None and config.db is not None
        if store is None and config.db is not None:
            # A database two brokers share (an active/standby pair) is opened without its lock:
            # which of them is active is decided in run().
            store = open_store(config.db, history_limit=config.history_limit, lock=False)
        self.store = store
        self.config = config
        self._clock = clock
        self._wallclock = wallclock
        #: A store that more than one broker may open (PostgreSQL) has one active broker, the one
        #: holding its lock; any other is the standby. A store only one broker can open at all
        #: (an SQLite file) makes its broker the active one.
        self._locking = store if isinstance(store, LockingStore) else None
        self.role = "standby" if self._locking is not None else "active"
        self._authority: Authority | None = None
        try:  # a store that cannot be read now is closed again
            self.core = self._new_core()
        except BaseException:
            self._close_store()
            raise
        super().__init__(context)
        self.endpoints = config.endpoints
        self._auth: ThreadAuthenticator | None = None
        self._next_beat = clock()
        self._failing_since: float | None = None
        self._next_failure_log = 0.0
        self._waker = transport.Waker()

    def _new_core(self) -> BrokerCore:
        """The core of an active broker, with what the store holds now (a broker that takes over
        from another starts from what that one left)."""
        store, config = self.store, self.config
        if config.secure:
            claims = store.claims() if store is not None else {}
            self._authority = Authority(config.allowlist, open_registration=config.open_registration, claims=claims)
        core = BrokerCore(self._clock(), config, store=store, authority=self._authority, wallclock=self._wallclock)
        core.role = self.role
        return core

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
        if self.metrics is not None:  # before "listening", which says the broker is all there
            host, port = self.metrics.start()
            self._publish_snapshot(self._clock())
            log.info("metrics: http://%s/metrics (Prometheus)", f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
        log.info("zchat broker listening: ingest %s (PULL), feed %s (XPUB), rpc %s (ROUTER)", e.ingest, e.feed, e.rpc)
        log.info(
            "security: %s", "CURVE on all sockets" if self.config.secure else "open (no authentication, no encryption)"
        )
        return self.endpoints

    def _start_authenticator(self, authority: Authority) -> None:
        """ZAP, in pyzmq's authenticator thread: a key connects only if the authority knows it.
        Each accepted connection's frames then carry the key as their ``User-Id``."""

        broker = self

        class Keys:
            def callback(self, domain: str, key: bytes) -> bool:
                # The broker's authority of the moment: a broker that takes over reloads it.
                return (broker._authority or authority).may_connect(key.decode("ascii"))

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
        if self.metrics is not None:
            self.metrics.close()
        super().close()  # LINGER is 0 but for the feed after a shutdown notice
        self._waker.close()
        self._close_store()

    def _close_store(self) -> None:
        if self._own_store and self.store is not None:
            self.store.close()
            self._own_store = False

    # --- the loop ------------------------------------------------------------------------------

    def run(self) -> None:
        """Serve until :meth:`stop` — as the standby until this broker holds its store's lock, if
        it is one of a pair — then publish the shutdown notice."""
        while True:
            if self.role == "standby" and not self._standby():
                break
            if not self._serve():
                break
        log.info("zchat broker stopped")

    def _standby(self) -> bool:
        """Wait as the standby: bound, answering every request ``standby`` (so clients move on),
        publishing nothing but answers to readiness probes, until this broker takes the lock
        (True) or is stopped (False)."""
        assert self._locking is not None
        if not self._locking.try_lock_active():
            log.info("standby: another broker is active on %s; taking over when it goes", self._locking.where)
        poller = zmq.Poller()
        for sock in (self.ingest, self.rpc, self.feed):
            poller.register(sock, zmq.POLLIN)
        wake = self._waker.fileno()
        poller.register(wake, zmq.POLLIN)
        clock, next_try, next_snapshot = self._clock, 0.0, 0.0
        while True:
            if (now := clock()) >= next_try:
                if self._locking.try_lock_active():
                    break
                next_try = now + STANDBY_POLL_MS / 1000
            if now >= next_snapshot:
                self._publish_snapshot(now)
                next_snapshot = now + HOUSEKEEPING_INTERVAL
            ready = dict(poller.poll(max(0, math.ceil((next_try - clock()) * 1000))))
            if wake in ready:
                return False
            # Posts: not a standby's business (clients move on). A batch at most, as on the
            # other sockets: a flood here must not keep the standby from its lock or its stop.
            for _ in range(BATCH if self.ingest in ready else 0):
                if not _drop(self.ingest):
                    break
            for _ in range(BATCH if self.feed in ready else 0):
                try:
                    msg = self.feed.recv(transport.NOBLOCK)
                except zmq.Again:
                    break
                # It answers probes, so a client that asks it first hears "standby" at once.
                if (answer := probe_answer(msg, p.format_ts(self._wallclock()))) is not None:
                    self.feed.send(answer[0], _SNDMORE)
                    self.feed.send(answer[1])
            for _ in range(BATCH if self.rpc in ready else 0):
                try:
                    frames = self.rpc.recv_multipart(transport.NOBLOCK)
                except zmq.Again:
                    break
                reply = standby_answer(frames)
                if reply is not None:
                    self._route(reply[0], reply[2])
        self.role = "active"
        before, self.core = self.core, self._new_core()
        # The broker's counters and uptime are the process's: they go on across roles.
        self.core.counters, self.core.started = before.counters, before.started
        self._next_beat = self._clock()
        log.info("active: this broker holds %s now (epoch %s)", self._locking.where, self.core.epoch)
        return True

    def _serve(self) -> bool:
        """Serve as the active broker until stopped (False: then the shutdown notice goes out) or,
        on a store of a pair, until this broker no longer holds its lock (True: standby again)."""
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
            housekeeping = now >= next_housekeeping
            if housekeeping:
                core.housekeeping()
                if self.store is not None:
                    self.store.plan_retention(self._wallclock())  # the clock that stamped the tombstones
                next_housekeeping = now + HOUSEKEEPING_INTERVAL
            failed = self._commit_and_send()
            if (housekeeping or failed) and self._lost_lock():
                self._publish_snapshot(now)
                return True
            if housekeeping:
                self._publish_snapshot(now)
            # Retention a little at a time, once the batch is out (see Store.trim).
            trimming = self.store is not None and self.store.trim()
        core.begin(clock())
        core.shutdown()
        self._commit_and_send()
        self.feed.setsockopt(zmq.LINGER, SHUTDOWN_LINGER_MS)
        return False

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
            except Exception as exc:
                _contain(exc)

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
            except Exception as exc:
                _contain(exc)

    def _drain_feed(self) -> None:
        for _ in range(BATCH):
            try:
                msg = self.feed.recv(transport.NOBLOCK)
            except zmq.Again:
                return
            try:
                self.core.subscription(msg)
            except Exception as exc:
                _contain(exc)

    def _commit_and_send(self) -> bool:
        """Store the batch in one transaction; then, only if that worked, publish it, deliver it
        and send its replies. A failed commit sends the refusals instead (see BrokerCore.undo).
        Returns whether the commit failed."""
        core, store = self.core, self.store
        batch = core.finish()
        failed = False
        if store is not None and store.staged:
            try:
                store.commit()
            except StoreError as exc:
                store.rollback()
                batch = core.undo()
                self._store_failed(exc)
                failed = True
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
            sent = self._route(route, payload)
            if sent is not _Sent.SENT:
                if sent is _Sent.GONE:
                    core.unreachable(route)
                core.dropped()
        for reply in batch.replies:
            if (sent := self._route(*reply[::2])) is not _Sent.SENT:
                # A reply's connection may be no session's (any peer may ask for stats and
                # leave): counted, with no search through the sessions for it. A session whose
                # connection is gone finds out at its next delivery.
                if sent is _Sent.GONE:
                    core.counters.routes_lost += 1
                core.counters.replies_dropped += 1
        return failed

    def _lost_lock(self) -> bool:
        """Whether this broker of a pair no longer holds its store's lock: then it gives way at
        once. (The fence is the store: nothing is published before its commit, and a broker whose
        database session ended commits nothing more.)"""
        if self._locking is None or self._locking.holds_lock():
            return False
        log.error("lost the lock on %s: another broker may be active; standing by", self._locking.where)
        self.role = self.core.role = "standby"
        return True

    def _route(self, route: bytes, payload: bytes) -> _Sent:
        """Send ``payload`` to one connection."""
        try:
            self.rpc.send(route, _NOBLOCK_SNDMORE)
            self.rpc.send(b"", _NOBLOCK_SNDMORE)
            self.rpc.send(payload, transport.NOBLOCK)
        except zmq.Again:
            return _Sent.FULL
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            return _Sent.GONE
        return _Sent.SENT

    def _publish_snapshot(self, now: float) -> None:
        """Hand the metrics endpoint this moment's numbers (between batches: nothing half done)."""
        if self.metrics is None:
            return
        store = self.store
        kind = "none" if store is None else "postgresql" if is_postgres(store.where) else "sqlite"
        self.metrics.publish(
            Snapshot(
                taken=now,
                stats=self.core.stats(now),
                role=self.role,
                history=self.core.history_id,
                store=kind,
                store_failing=self._failing_since is not None,
                hwm={"feed": self.config.feed_hwm, "rpc": RPC_HWM},
            )
        )

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


def _drop(sock: zmq.Socket[bytes]) -> bool:
    """Read and drop one message from ``sock``; False when there was none."""
    try:
        sock.recv_multipart(transport.NOBLOCK)
    except zmq.Again:
        return False
    return True


def _contain(exc: Exception) -> None:
    """A bug must cost one message, never the broker. (Called from an ``except`` block: a
    ``with`` block per message would cost the hottest loop a context manager each.)"""
    if isinstance(exc, StoreError):
        # Not a bug: the store could not be read. The batch's commit fails for it too (see
        # Store.commit), which says so in the log and tells everyone in the batch to try again.
        log.debug("a read of the store failed: %s", exc)
    else:
        log.error("internal error on a message; dropped it", exc_info=exc)


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
