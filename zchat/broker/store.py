"""The broker's history: every room event and every accepted message id, in SQLite.

:class:`Store` owns the database file: the schema, WAL mode, one transaction per drained batch,
retention per room, the dedupe record of each client message (sender, id, time: columns of its
event, so one insert per message), nicks registered by CURVE keys, and the reads that serve
history requests and restore a restarted broker (each room's last ``seq``, recent ids). Writes
are staged by :meth:`Store.append` / :meth:`Store.claim` and land together in :meth:`Store.commit`; the
broker publishes a batch only after its commit returned. It knows nothing of sockets or of the
protocol beyond (room, seq, JSON bytes).

Durability, with ``journal_mode=WAL`` and ``synchronous=NORMAL``: a committed batch survives a
crash of the broker process (it is in the WAL, which the OS writes out); a power loss or kernel
crash can lose the batches committed since the last WAL checkpoint, never corrupt the file.
Those events were already published, so clients that saw them keep them, and the broker
continues ``seq`` from what the file holds.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path

__all__ = ["DEFAULT_HISTORY_LIMIT", "Store"]

#: Seconds between two WAL checkpoints (made off the broker's loop; see Store.__init__).
CHECKPOINT_INTERVAL = 1.0

#: Events kept per room; older ones are deleted as new ones arrive.
DEFAULT_HISTORY_LIMIT = 10_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    room TEXT NOT NULL,
    seq INTEGER NOT NULL,
    data BLOB NOT NULL,
    sender TEXT,  -- with msg_id and at: the dedupe record of a message a client sent
    msg_id TEXT,
    at REAL,
    PRIMARY KEY (room, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS owners (nick TEXT PRIMARY KEY, key TEXT NOT NULL) WITHOUT ROWID;
"""


class Store:
    """Room history and the dedupe window in one SQLite file (or ``:memory:``)."""

    def __init__(self, path: str | os.PathLike[str], *, history_limit: int = DEFAULT_HISTORY_LIMIT) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self.history_limit = history_limit
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, one transaction per batch.
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._migrate()
        # Names this history: a client that sees it change knows old seqs mean nothing here.
        self._db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('id', ?)", (secrets.token_hex(8),))
        self.id = str(self._db.execute("SELECT value FROM meta WHERE key = 'id'").fetchone()[0])
        self._events: list[tuple[str, int, bytes, str | None, str | None, float | None]] = []
        self._claims: list[tuple[str, str]] = []
        self._stop = threading.Event()
        self._checkpointer: threading.Thread | None = None
        if self.path != ":memory:":
            # SQLite's automatic checkpoint runs inside a commit and stalls it for milliseconds
            # now and then: on the broker's loop that is everyone's latency. A thread with its
            # own connection checkpoints instead (sqlite3 releases the GIL while it works).
            self._db.execute("PRAGMA wal_autocheckpoint=0")
            self._checkpointer = threading.Thread(target=self._checkpoints, name="zchat-checkpoint", daemon=True)
            self._checkpointer.start()

    def _migrate(self) -> None:
        """Bring a file written by an older zchat up to this schema, keeping its history."""
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(events)")}
        for name, kind in (("sender", "TEXT"), ("msg_id", "TEXT"), ("at", "REAL")):
            if name not in columns:
                self._db.execute(f"ALTER TABLE events ADD COLUMN {name} {kind}")

    def _checkpoints(self) -> None:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            while not self._stop.wait(CHECKPOINT_INTERVAL):
                db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        finally:
            db.close()

    def close(self) -> None:
        self._stop.set()
        if self._checkpointer is not None:
            self._checkpointer.join()
        self._db.close()

    # --- writes: staged, then committed as one transaction ---------------------------------------

    def append(self, room: str, seq: int, data: bytes, sent: tuple[str, str, float] | None = None) -> None:
        """Stage event ``room``/``seq``; ``sent`` = (sender, message id, wall time) for a message
        a client sent, so a restarted broker can still recognise its resend."""
        sender, msg_id, at = sent or (None, None, None)
        self._events.append((room, seq, data, sender, msg_id, at))

    def claim(self, nick: str, key: str) -> None:
        """Record that CURVE ``key`` registered ``nick`` (open registration)."""
        self._claims.append((nick, key))

    @property
    def staged(self) -> bool:
        return bool(self._events or self._claims)

    def commit(self) -> None:
        """Write everything staged in one transaction, then apply retention to touched rooms."""
        if not self.staged:
            return
        events, claims = self._events, self._claims
        self._events, self._claims = [], []
        db = self._db
        db.execute("BEGIN")
        try:
            db.executemany(
                "INSERT OR REPLACE INTO events (room, seq, data, sender, msg_id, at) VALUES (?, ?, ?, ?, ?, ?)", events
            )
            db.executemany("INSERT OR IGNORE INTO owners (nick, key) VALUES (?, ?)", claims)
            newest: dict[str, int] = {}
            for room, seq, *_ in events:
                newest[room] = max(seq, newest.get(room, 0))
            db.executemany(
                "DELETE FROM events WHERE room = ? AND seq <= ?",
                [(room, seq - self.history_limit) for room, seq in newest.items() if seq > self.history_limit],
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    # --- reads ----------------------------------------------------------------------------------

    def size(self) -> int:
        """Bytes on disk: the database file and its write-ahead log (0 for ``:memory:``)."""
        if self.path == ":memory:":
            return 0
        return sum(p.stat().st_size for p in (Path(self.path), Path(self.path + "-wal")) if p.exists())

    def last_seqs(self) -> dict[str, int]:
        """Each room's newest ``seq``: a restarted broker continues from these."""
        return dict(self._db.execute("SELECT room, MAX(seq) FROM events GROUP BY room").fetchall())

    def first_seq(self, room: str) -> int:
        """Oldest ``seq`` still stored for ``room`` (0 if none)."""
        row = self._db.execute("SELECT MIN(seq) FROM events WHERE room = ?", (room,)).fetchone()
        return int(row[0] or 0)

    def range(self, room: str, after: int, limit: int) -> list[bytes]:
        """Up to ``limit`` events of ``room`` with ``seq > after``, oldest first."""
        rows = self._db.execute(
            "SELECT data FROM events WHERE room = ? AND seq > ? ORDER BY seq LIMIT ?", (room, after, limit)
        )
        return [bytes(r[0]) for r in rows]

    def claims(self) -> dict[str, str]:
        """Nicks registered by keys: ``{nick: z85 key}``."""
        return dict(self._db.execute("SELECT nick, key FROM owners").fetchall())

    def sent_since(self, at: float) -> Iterable[tuple[str, str, str, int, float]]:
        """Dedupe records newer than ``at`` among the stored events, oldest first: a restarted
        broker reloads its window from these (so the window also ends where retention does)."""
        return self._db.execute(
            "SELECT sender, msg_id, room, seq, at FROM events WHERE msg_id IS NOT NULL AND at >= ? ORDER BY at", (at,)
        ).fetchall()
