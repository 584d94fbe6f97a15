"""The broker's settings: one object from the command line (or a test) to the shell and the core.

:class:`BrokerConfig` holds everything an operator can choose about a broker — where it binds,
its store, its leases, its limits and its security — so that each layer reads what it needs from
one place instead of relaying keywords. It is plain data: it opens nothing and checks only what
no later layer could (each value's range is the command line's or the caller's business).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from zchat.broker.ratelimit import DEFAULT_BURST, DEFAULT_RATE
from zchat.broker.store import DEFAULT_HISTORY_LIMIT
from zchat.keys import CONFIG_DIR
from zchat.protocol import Endpoints

__all__ = ["DEFAULT_DB", "FEED_HWM", "BrokerConfig"]

#: Where the history lives unless told otherwise.
DEFAULT_DB = str(CONFIG_DIR / "history.sqlite3")
#: Per-subscriber queue on the feed (messages). Past it, that subscriber (only) loses messages
#: and repairs them from history: the broker never blocks on a slow reader (no XPUB_NODROP).
#: 10 000 rides out a ~1 s stall at full speed at a few MB of memory per stalled subscriber.
FEED_HWM = 10_000


@dataclass(frozen=True, kw_only=True)
class BrokerConfig:
    """What a broker is told to be. Times are seconds."""

    endpoints: Endpoints = field(default_factory=Endpoints.from_host_port)
    #: Where history, sessions and claims live: a SQLite file, ``:memory:`` for a throwaway
    #: broker, a ``postgresql://`` URL, or None for no store at all (no backlog, no gap repair,
    #: no dedupe across restarts).
    db: str | None = DEFAULT_DB
    history_limit: int = DEFAULT_HISTORY_LIMIT
    feed_hwm: int = FEED_HWM
    #: How often clients heartbeat; a session lapses after ``missed_heartbeats`` missed ones.
    heartbeat: float = 2.0
    missed_heartbeats: int = 3
    #: Messages per second one sender may sustain (0: unlimited), and its burst.
    rate: float = DEFAULT_RATE
    burst: int = DEFAULT_BURST
    #: Hellos per second one address (open mode) or key (secure mode) may send, and the burst:
    #: a team behind one NAT reconnecting after a broker restart is one burst.
    hello_rate: float = 20.0
    hello_burst: int = 256
    #: Sessions the broker holds at once, and per address in open mode (per key in secure mode
    #: it is a fixed 16: one person's devices and bots).
    max_sessions: int = 10_000
    max_sessions_per_peer: int = 512
    #: Secure mode: the broker's (public, secret) z85 CURVE keypair. None runs open.
    curve: tuple[str, str] | None = None
    #: Secure mode: which client key may use which nicks (``{key: {nick, …}}``).
    allowlist: Mapping[str, set[str]] = field(default_factory=dict)
    #: Secure mode: any key may connect, and the first key to use a nick owns it.
    open_registration: bool = False
    #: (host, port) to serve Prometheus metrics on over HTTP (port 0: any free one); None: none.
    metrics: tuple[str, int] | None = None

    @property
    def secure(self) -> bool:
        return self.curve is not None

    @property
    def lease(self) -> float:
        """How long a session lives without a heartbeat."""
        return self.heartbeat * self.missed_heartbeats
