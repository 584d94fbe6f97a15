"""The broker's numbers for Prometheus (``zchat broker --metrics HOST:PORT``).

prometheus_client serves them over HTTP from a thread of its own, and that thread never touches
the broker: the broker's loop publishes a :class:`Snapshot` — its ``stats``, its role, its store
and its sockets, taken between two batches — once per housekeeping round (a second), by swapping
in one new object, and each scrape turns the latest snapshot into metrics. A scrape therefore
sees numbers at most about a second old, all from the same moment;
``zchat_snapshot_age_seconds`` says how old, and grows if the loop stops turning.

prometheus_client is an optional extra (``zchat[metrics]``), imported only when metrics are
asked for.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from zchat.errors import ZChatError

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from prometheus_client.metrics_core import Metric

__all__ = ["COUNTER_HELP", "GAUGE_HELP", "ROLES", "Metrics", "Snapshot"]

#: What a broker can be; ``zchat_role`` has a series for each, 1 for the one it is.
ROLES = ("active", "standby")

#: Every counter of ``stats`` (:class:`zchat.broker.core.Counters`), exported as
#: ``zchat_<name>_total``, and what it counts.
COUNTER_HELP = {
    "received": "Posts accepted and published (or delivered, if private).",
    "rejected": "Well-formed posts refused (too long, sender not in the room), answered by an error.",
    "dropped_malformed": "Frames that are not zchat protocol, on any socket.",
    "dropped_unknown_session": "Posts whose session token is unknown or expired.",
    "dropped_wrong_identity": "Posts or requests carrying the token of another key's session.",
    "duplicates": "Resent posts already committed (answered 'duplicate').",
    "out_of_order": "Posts ahead of the next expected number (answered once per gap).",
    "rate_limited": "Posts refused because their sender exceeded its rate.",
    "private": "Private messages stored and delivered.",
    "requests": "Rpc requests answered.",
    "requests_limited": "Rpc requests refused: the connection asked too fast.",
    "hellos_limited": "Hellos refused: too many from one connection, address or key.",
    "sessions_refused": "Hellos refused by a cap on sessions (total, per key, per address).",
    "moves_limited": "Joins, parts, nick, away and topic changes refused as too fast.",
    "rooms_refused": "Joins refused: too many rooms (per session, or on the broker).",
    "claims_refused": "First claims of a nick refused: too many (per key, or on the broker).",
    "weak_routes": "Session requests from a routing id too short or not chosen by the client.",
    "published": "Events put on the feed.",
    "delivered": "Events sent to one session's rpc connection.",
    "routes_lost": "Sends to a route whose connection is gone.",
    "deliveries_dropped": "Deliveries dropped at an rpc connection's high-water mark (repaired from history).",
    "replies_dropped": "Replies not sent: the asker's queue was full, or it left.",
    "joins": "Sessions begun.",
    "leaves": "Sessions ended by their client.",
    "timeouts": "Sessions ended because their lease ran out.",
    "resumed": "Hellos that continued a session.",
    "stalls": "Times the broker found itself stalled and granted leases a grace.",
    "store_failures": "Batches whose store commit failed (nothing of them was sent).",
}

#: The gauges of ``stats``: its key -> (metric name, help).
GAUGE_HELP = {
    "uptime_s": ("zchat_uptime_seconds", "Seconds since the broker started."),
    "sessions": ("zchat_sessions", "Live sessions."),
    "rooms": ("zchat_rooms", "Rooms in memory (with members, or used in the last batch)."),
    "tombstones": ("zchat_tombstones", "Ended sessions whose last post number is still remembered."),
    "claims": ("zchat_claims", "Nicks claimed by open registration (secure mode), kept for good."),
    "store_bytes": ("zchat_store_bytes", "Bytes the history store takes (file and WAL, or tables on the server)."),
    "wal_bytes": (
        "zchat_wal_bytes",
        "Bytes of the SQLite write-ahead log (0 for PostgreSQL: its WAL is the server's).",
    ),
    "secure": ("zchat_secure", "1 if the broker requires CURVE, else 0."),
}


@dataclass(frozen=True)
class Snapshot:
    """What a scrape shows, taken by the broker's loop between two batches."""

    #: Monotonic time it was taken.
    taken: float
    #: ``BrokerCore.stats``: the counters and the gauges above.
    stats: Mapping[str, object]
    role: str
    #: The history's id, and the kind of store: "sqlite", "postgresql" or "none".
    history: str
    store: str
    #: Whether the last commit failed.
    store_failing: bool
    #: Each socket's send high-water mark, in messages (what one peer may have queued on it).
    hwm: Mapping[str, int]


class Metrics:
    """The HTTP endpoint and what it serves. :meth:`start` binds it; :meth:`publish` is for
    the broker's loop, everything else for any thread."""

    def __init__(self, host: str, port: int) -> None:
        try:
            from prometheus_client import CollectorRegistry  # noqa: PLC0415 (an optional extra)
        except ImportError:
            raise ZChatError("--metrics needs prometheus_client: pip install 'zchat[metrics]'") from None
        self.host, self.port = host, port
        self._snapshot: Snapshot | None = None
        self._published = threading.Condition()
        self.published = 0  # snapshots published so far
        # A registry of its own: only the broker's numbers, not the process's default collectors.
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> tuple[str, int]:
        """Serve on host:port (port 0: any free one); returns where it listens."""
        from prometheus_client import start_http_server  # noqa: PLC0415 (an optional extra)

        try:
            self._server, self._thread = start_http_server(self.port, addr=self.host, registry=self.registry)
        except OSError as exc:
            raise ZChatError(f"cannot serve metrics on {self.host}:{self.port}: {exc.strerror or exc}") from None
        self.port = int(self._server.server_port)
        return self.host, self.port

    def publish(self, snapshot: Snapshot) -> None:
        with self._published:
            self._snapshot = snapshot  # one reference, swapped whole: a scrape sees one snapshot
            self.published += 1
            self._published.notify_all()

    def wait_published(self, count: int, timeout: float) -> bool:
        """Wait until at least ``count`` snapshots were published (at most ``timeout`` s)."""
        with self._published:
            return self._published.wait_for(lambda: self.published >= count, timeout)

    @property
    def snapshot(self) -> Snapshot | None:
        return self._snapshot

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None


class _Collector:
    """Makes metrics of the latest snapshot, on the HTTP thread, at each scrape."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.metrics_core import (  # noqa: PLC0415 (an optional extra)
            CounterMetricFamily,
            GaugeMetricFamily,
            InfoMetricFamily,
        )

        snap = self._metrics.snapshot
        if snap is None:
            return
        stats = snap.stats
        for name, help_text in COUNTER_HELP.items():
            yield CounterMetricFamily(f"zchat_{name}", help_text, value=_number(stats.get(name)))
        for key, (name, help_text) in GAUGE_HELP.items():
            yield GaugeMetricFamily(name, help_text, value=_number(stats.get(key)))
        role = GaugeMetricFamily("zchat_role", "1 for the role the broker has now, 0 for the others.", labels=["role"])
        for r in ROLES:
            role.add_metric([r], 1 if r == snap.role else 0)
        yield role
        yield InfoMetricFamily(
            "zchat_broker",
            "This broker run: its epoch, the id of the history it serves, and its kind of store.",
            value={"epoch": str(stats.get("epoch", "")), "history": snap.history, "store": snap.store},
        )
        yield GaugeMetricFamily(
            "zchat_store_failing", "1 while the store's commits fail (nothing is being sent), else 0.",
            value=int(snap.store_failing),
        )  # fmt: skip
        hwm = GaugeMetricFamily(
            "zchat_socket_hwm_messages",
            "Messages one peer may have queued on the socket before more to it are dropped.",
            labels=["socket"],
        )
        for socket, limit in snap.hwm.items():
            hwm.add_metric([socket], limit)
        yield hwm
        yield GaugeMetricFamily(
            "zchat_snapshot_age_seconds",
            "Seconds since the broker's loop took these numbers (about 1 while it runs; more if it is stuck).",
            value=time.monotonic() - snap.taken,
        )


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) else 0.0
