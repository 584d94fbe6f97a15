"""The broker's history: every room's and inbox's events, sessions, claims and topics, durably.

:class:`Store` is the interface the broker core writes through and reads from; it has two
implementations with the same guarantees, :class:`SQLiteStore` here (the zero-setup default)
and :class:`zchat.broker.pgstore.PostgresStore`. What a store owns:

- **Events** of rooms and inboxes, as the JSON the broker published, under ``(room, seq)``.
  Writes are *staged* (:meth:`Store.append`, :meth:`Store.save_session`, …) and land together in
  :meth:`Store.commit`, one transaction per batch; the broker publishes a batch only after its
  commit returned, and a failed commit leaves nothing behind (:meth:`Store.rollback`).
- **Retention counted in messages**: each room keeps its newest ``history_limit`` events that are
  not presence (joins and leaves), and of presence only what is newer than the oldest kept
  message, at most ``history_limit`` of it — so a flood of joins can never push real messages
  out. :meth:`Store.plan_retention` works out, about once a second, what the rooms written
  since its last call must lose; :meth:`Store.trim` removes it a little at a time, after each
  batch is sent (a second's worth at once stalled the broker's loop for tens of ms).
- **Sessions** (so a restarted broker lets clients resume silently) and, for an hour after a
  session ends, its tombstone (the last post number it had committed, so a late resend is still
  recognised); nicks registered by CURVE keys; room topics; how far each inbox has been read.
- **Search**: the text of room messages in a full-text index (SQLite FTS5; PostgreSQL's own).

Pages of history are bounded in bytes as well as in events. A store knows nothing of sockets
or of the protocol beyond (room, seq, JSON bytes).

:func:`open_store` opens the store a ``--db`` value names (a file, ``:memory:``, or a
``postgresql://`` URL) for one broker to own; both stores are also :class:`Portable`, what
``zchat store copy`` reads one with and fills the other.

SQLite durability, with ``journal_mode=WAL`` and ``synchronous=NORMAL``: a committed batch
survives a crash of the broker process (it is in the WAL, which the OS writes out); a power loss
or kernel crash can lose the batches committed since the last WAL checkpoint, never corrupt the
file. The write-ahead log is bounded: checkpoints run in a thread of their own, off the broker's
loop; past :data:`WAL_RESTART_BYTES` that thread has the log started again from its beginning
(holding the broker's commits off for the last few pages and a sync), and a commit that still
leaves the log past :data:`WAL_LIMIT_BYTES` truncates it.
"""

from __future__ import annotations

import abc
import contextlib
import fcntl
import itertools
import json
import logging
import os
import secrets
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol, runtime_checkable
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from zchat.errors import ZChatError

log = logging.getLogger("zchat.broker")

__all__ = [
    "DEFAULT_HISTORY_LIMIT",
    "MAX_PAGE_BYTES",
    "LockingStore",
    "Page",
    "Portable",
    "SQLiteStore",
    "SessionRecord",
    "Store",
    "StoreError",
    "StoreLocked",
    "StoredEvent",
    "TopicRecord",
    "is_postgres",
    "open_store",
    "redact",
    "refusals",
    "refusals_json",
]

#: Events kept per room (messages; presence is kept apart, see the module docstring).
DEFAULT_HISTORY_LIMIT = 10_000
#: Largest page of history or search results, in bytes of event JSON: a peer that asks and
#: never reads costs at most this much per queued reply (node.js buffers 80 KiB per request
#: header, nginx 64 KiB per proxied response buffer by default).
MAX_PAGE_BYTES = 64 * 1024
#: Seconds between two WAL checkpoints (made off the broker's loop; one with nothing to copy
#: costs microseconds).
CHECKPOINT_INTERVAL = 0.05
#: A log past this size is started again from its beginning. SQLite does that at the start of a
#: write transaction only if every page in the log is in the database file; under steady writes
#: a checkpoint made meanwhile never finds it so, and the log grew to WAL_LIMIT_BYTES, whose
#: truncation stalled the loop for 15-45 ms several times a second at 5 000 posts a second. The
#: checkpoint thread copies what it can while the broker writes, then holds the broker's commits
#: off while it copies the pages written meanwhile and syncs (1-2 ms). A small log is also a
#: faster one: written over in place, not grown (measured at 5 000 posts a second, p99 latency
#: with restarts past 2, 4, 8 and 24 MB: 2.3, 2.3, 3.3 and 6.9 ms).
WAL_RESTART_BYTES = 4 * 1024 * 1024
#: A WAL past this size is truncated by the commit that finds it so (a pause of tens of ms for
#: the batch that does it; at ~300 bytes an event that is ~100 000 events). With the restarts
#: above, only a burst the checkpoint thread cannot keep up with gets there.
WAL_LIMIT_BYTES = 32 * 1024 * 1024
#: How long a commit waits for the checkpointer's lock before it fails.
BUSY_TIMEOUT_MS = 2000
#: Events :meth:`Store.trim` removes in one transaction (both stores): twice the events of the
#: last commit (so retention keeps up with any rate), at least this many (at 5 000 posts a
#: second, a pause of well under a millisecond now and then instead of tens of ms once a second).
RETAIN_CHUNK = 32
#: Events :meth:`Store.retain` removes in one transaction (it removes everything planned).
RETAIN_ALL_CHUNK = 4096
#: How long an ended session's last post number is remembered, in seconds.
TOMBSTONE_SECONDS = 3600.0
#: Messages whose text waits before the search index takes them together. FTS5 writes a new
#: segment of its index with every transaction that adds to it: for a commit of one message
#: that was 5 of its 9 pages of log and ~115k instructions. Waiting texts are indexed by the
#: commit that brings them to this many (under a millisecond of work), by
#: :meth:`SQLiteStore.plan_retention` (about once a second), before every search and on close;
#: a store that was not closed indexes them when it opens.
INDEX_BATCH = 64

_SCHEMA_VERSION = "2"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    room TEXT NOT NULL,
    seq INTEGER NOT NULL,
    data BLOB NOT NULL,
    presence INTEGER NOT NULL DEFAULT 0,  -- a join or leave: retained apart from messages
    gid INTEGER,  -- a searchable message's number in the store: its row in the search index
    PRIMARY KEY (room, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS events_by_kind ON events (room, presence, seq);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS owners (nick TEXT PRIMARY KEY, key TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sessions (
    token TEXT PRIMARY KEY,
    nick TEXT NOT NULL,
    identity TEXT,
    peer TEXT,
    inbox TEXT NOT NULL,
    rooms TEXT NOT NULL,  -- JSON list
    acked INTEGER NOT NULL,
    away TEXT,
    ended REAL,  -- wall time the session ended (a tombstone), NULL while it lives
    refused TEXT  -- its latest posts refused for good, {"n": "why"}; NULL for none
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS topics (
    room TEXT PRIMARY KEY, text TEXT NOT NULL, nick TEXT NOT NULL, ts TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS reads (inbox TEXT PRIMARY KEY, seq INTEGER NOT NULL) WITHOUT ROWID;
-- columnsize=0: no per-row token counts (only ranking reads them; search orders by seq): 11 %
-- fewer instructions per message inserted and removed. A file made before keeps its counts;
-- the queries are the same for both.
CREATE VIRTUAL TABLE IF NOT EXISTS search USING fts5(text, room UNINDEXED, seq UNINDEXED, columnsize=0);
"""


class StoreError(ZChatError):
    """The store cannot do what was asked (a commit failed, the file is unusable)."""


class StoreLocked(StoreError):
    """Another broker holds the store."""


@dataclass
class SessionRecord:
    """A session as the store keeps it (its lease is not kept: a restarted broker grants a new one)."""

    token: str
    nick: str
    identity: str | None
    peer: str | None
    inbox: str
    rooms: list[str]
    acked: int = 0
    away: str | None = None
    #: Wall time the session ended (a tombstone), None while it lives.
    ended: float | None = None
    #: Its latest posts refused for good: post number -> why.
    refused: dict[int, str] = field(default_factory=dict)


def refusals_json(refused: dict[int, str]) -> str | None:
    """How both stores keep a session's refusals: a JSON object, or NULL for none."""
    return json.dumps({str(n): why for n, why in refused.items()}) if refused else None


def refusals(stored: str | None) -> dict[int, str]:
    """A session's refusals as :func:`refusals_json` stored them."""
    return {int(n): str(why) for n, why in json.loads(stored).items()} if stored else {}


@dataclass(frozen=True)
class TopicRecord:
    text: str
    nick: str
    ts: str


@dataclass
class Page:
    """Stored events of one room in ``seq`` order, and what they cover: every event of the room
    with ``after < seq <= upto`` that is still kept is in ``events`` (a seq in that range that is
    missing was dropped by retention)."""

    events: list[bytes] = field(default_factory=list)
    upto: int = 0
    #: After ``after``: the page was cut by its limit or its bytes (ask again after ``upto``).
    #: The newest page (``after`` None): older events are kept than it holds.
    more: bool = False


class StoredEvent(NamedTuple):
    """One stored event as a copy moves it: where it is, what it is, and its search text."""

    room: str
    seq: int
    data: bytes
    presence: bool
    #: The text in the search index (room messages), None for events that are not searchable.
    text: str | None


class Store(Protocol):
    """What the broker needs of a history store (see the module docstring)."""

    #: Names this history: a client that sees it change knows old seqs mean nothing here.
    id: str
    #: Where it is, for people (a path, or a database without its password).
    where: str
    history_limit: int

    # --- writes: staged, then committed as one transaction -----------------------------------------

    def append(self, room: str, seq: int, data: bytes, *, presence: bool = False, text: str | None = None) -> None:
        """Stage event ``room``/``seq``; ``text`` (room messages) goes to the search index."""

    def save_session(self, record: SessionRecord) -> None:
        """Stage a session as it is now (also its end: ``record.ended`` set)."""

    def set_acked(self, token: str, acked: int) -> None:
        """Stage a session's newest committed post number (the common case: no other change)."""

    def claim(self, nick: str, key: str) -> None:
        """Stage that CURVE ``key`` registered ``nick`` (open registration)."""

    def set_topic(self, room: str, topic: TopicRecord | None) -> None: ...

    def set_read(self, inbox: str, seq: int) -> None: ...

    @property
    def staged(self) -> bool: ...

    def commit(self) -> None:
        """Write everything staged in one transaction; raises :class:`StoreError` if it could not,
        leaving nothing of the batch behind. A read that raised :class:`StoreError` since the last
        commit or rollback makes it fail too: the batch may rest on what could not be read."""

    def rollback(self) -> None:
        """Forget everything staged (and a failed read with it)."""

    # --- reads ------------------------------------------------------------------------------------

    def last_seq(self, room: str) -> int: ...

    def first_seq(self, room: str) -> int: ...

    def page(self, room: str, after: int | None, limit: int, max_bytes: int = MAX_PAGE_BYTES) -> Page:
        """Events with ``seq > after``, oldest first; with ``after`` None the newest ``limit``."""

    def search(self, room: str, query: str, limit: int, before: int | None = None) -> list[bytes]:
        """Messages of ``room`` containing every word of ``query``, newest first."""

    def sessions(self) -> list[SessionRecord]:
        """Every stored session and tombstone."""

    def claims(self) -> dict[str, str]: ...

    def topic(self, room: str) -> TopicRecord | None: ...

    def read(self, inbox: str) -> int: ...

    def plan_retention(self, now: float) -> None:
        """Work out what retention removes from the rooms written since the last call (removed
        by :meth:`trim`); forget tombstones older than :data:`TOMBSTONE_SECONDS` before wall time
        ``now``."""

    def trim(self) -> bool:
        """Remove a bounded part of what retention has to remove, in one transaction; True while
        more remains. Never raises: a failure is tried again after the next plan."""

    def retain(self, now: float) -> None:
        """Plan retention and carry it out completely."""

    def size(self) -> int:
        """Bytes the store takes (0 if it cannot tell)."""

    def wal_size(self) -> int:
        """Bytes of its write-ahead log (0 if it has none)."""

    def close(self) -> None: ...


@runtime_checkable
class LockingStore(Store, Protocol):
    """A store that several brokers may open at once (a database server): the one that holds its
    lock is the active broker of the pair; the others stand by."""

    def try_lock_active(self) -> bool:
        """Take the lock if it is free (never waits); True if this store holds it now."""

    def holds_lock(self) -> bool:
        """Whether this store still holds the lock (False once its connection is gone; never raises)."""


class Portable(Store, Protocol):
    """A store as ``zchat store copy`` reads and fills it: everything it holds, in bounded
    pieces, and the means to check a copy. The broker needs none of this."""

    def export(self, after: tuple[str, int] | None, limit: int) -> list[StoredEvent]:
        """Up to ``limit`` events after ``(room, seq)`` ``after`` in (room, seq) order (of the
        store's own ordering of room names); with ``after`` None, from the first."""

    def streams(self) -> dict[str, tuple[int, int, int]]:
        """Every room and inbox holding events: its (first seq, last seq, number of events)."""

    def searchable(self) -> int:
        """Events in the search index."""

    def topics(self) -> dict[str, TopicRecord]: ...

    def reads(self) -> dict[str, int]: ...

    def set_id(self, history: str) -> None:
        """Name the store's history ``history`` from now on (a copy keeps its source's name)."""

    def clear(self) -> None:
        """Delete everything the store holds but its id."""


def is_postgres(db: str) -> bool:
    """Whether a ``--db`` value names a PostgreSQL database rather than a SQLite file."""
    return db.startswith(("postgresql://", "postgres://"))


def redact(db: str) -> str:
    """``db`` fit to show: a PostgreSQL URL without its password (in the user part or the
    query), anything else as it is."""
    if not is_postgres(db):
        return db
    parts = urlsplit(db)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hosts = netloc.rpartition("@")
        netloc = f"{userinfo.partition(':')[0]}@{hosts}"
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "password"])
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def open_store(db: str, *, history_limit: int = DEFAULT_HISTORY_LIMIT, lock: bool = True) -> Portable:
    """The store ``db`` names — a SQLite file, ``:memory:``, or a ``postgresql://`` (or
    ``postgres://``) URL — opened for one broker (or one copy) to own: a store that another
    broker holds raises :class:`StoreLocked`, any other failure :class:`StoreError`, one line.
    ``lock=False`` opens a PostgreSQL store without taking its lock: the broker of a pair takes
    it when it becomes the active one (an SQLite file is always locked: one broker per file)."""
    if not is_postgres(db):
        return SQLiteStore(db, history_limit=history_limit)
    try:
        from zchat.broker.pgstore import PostgresStore  # noqa: PLC0415 (psycopg is an optional extra)
    except ImportError as exc:
        if not (exc.name or "").startswith("psycopg"):
            raise
        raise StoreError(
            f"{redact(db)} is a PostgreSQL database, and the PostgreSQL store needs psycopg:"
            " pip install 'zchat[postgres]'"
        ) from None
    store = PostgresStore(db, history_limit=history_limit)
    if lock and not store.try_lock_active():
        holder = store.lock_holder()
        store.close()
        raise StoreLocked(
            f"the history store {store.where} is in use by another broker ({holder}); one store, one broker"
        )
    return store


class Staged:
    """What a batch writes besides its events, held until the store commits it or forgets it:
    sessions (whole), acked numbers of sessions not otherwise written, nick claims, topics (None:
    cleared) and read marks. One place for both stores; each keeps its own events, shaped for its
    database."""

    def __init__(self) -> None:
        self.sessions: dict[str, SessionRecord] = {}
        self.acked: dict[str, int] = {}
        self.claims: list[tuple[str, str]] = []
        self.topics: dict[str, TopicRecord | None] = {}
        self.reads: dict[str, int] = {}

    def __bool__(self) -> bool:
        return bool(self.sessions or self.acked or self.claims or self.topics or self.reads)

    def save_session(self, record: SessionRecord) -> None:
        self.sessions[record.token] = record
        self.acked.pop(record.token, None)  # the record carries it

    def set_acked(self, token: str, acked: int) -> None:
        if token in self.sessions:
            self.sessions[token].acked = acked
        else:
            self.acked[token] = acked


class Staging(abc.ABC):
    """What both stores do alike: the staging writes besides events, into their :class:`Staged`;
    a read that failed, which fails the batch built on it (see :meth:`Store.commit`); and the
    bookkeeping of retention, planned per room and carried out in bounded steps."""

    where: str
    _staged: Staged
    #: Why a read failed since the last commit or rollback: the batch's commit must fail too.
    _failed: str | None = None
    #: Retention's plan for each room that has something to remove (see :func:`_trim_backlog`).
    _backlog: dict[str, _Trim]
    #: Events of the last commit.
    _last_commit: int

    @abc.abstractmethod
    def plan_retention(self, now: float) -> None: ...

    @abc.abstractmethod
    def _trim(self, budget: int) -> bool:
        """Carry out about ``budget`` events of the backlog in one transaction; True while more
        remains."""

    def retain(self, now: float) -> None:
        self.plan_retention(now)
        while self._trim(RETAIN_ALL_CHUNK):
            pass

    def trim(self) -> bool:
        # Twice the last commit's events, so retention keeps pace with any rate; a second's worth
        # of deletes at once stalled the broker's loop for tens of ms (on both stores).
        return self._trim(max(RETAIN_CHUNK, 2 * self._last_commit))

    def _plan(self, room: str, first: int, message: int | None, presence: int | None) -> None:
        """Plan ``room``'s retention (see :func:`_retention_plan`), or drop its plan if there
        is nothing left to remove."""
        plan = _retention_plan(first, message, presence)
        if plan is None:
            self._backlog.pop(room, None)
        else:
            self._backlog[room] = plan

    def _check_reads(self) -> None:
        """Refuse to commit a batch that rests on a failed read."""
        if self._failed is not None:
            raise StoreError(f"could not store a batch in {self.where}: it rests on a failed read ({self._failed})")

    def save_session(self, record: SessionRecord) -> None:
        self._staged.save_session(record)

    def set_acked(self, token: str, acked: int) -> None:
        self._staged.set_acked(token, acked)

    def claim(self, nick: str, key: str) -> None:
        self._staged.claims.append((nick, key))

    def set_topic(self, room: str, topic: TopicRecord | None) -> None:
        self._staged.topics[room] = topic

    def set_read(self, inbox: str, seq: int) -> None:
        self._staged.reads[inbox] = seq


class SQLiteStore(Staging):
    """The :class:`Store` in one SQLite file (or ``:memory:``), owned by one broker at a time."""

    def __init__(self, path: str | os.PathLike[str], *, history_limit: int = DEFAULT_HISTORY_LIMIT) -> None:
        self.path = self.where = str(path)
        self._wal_path = self.path + "-wal"
        #: Held by every write transaction of the broker's connection (uncontended but for the
        #: checkpoint thread's restarts, see WAL_RESTART_BYTES).
        self._writing = threading.Lock()
        self.history_limit = history_limit
        self._lock_file: int | None = None
        if self.path != ":memory:":
            try:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
                self._lock()
            except OSError as exc:
                raise StoreError(f"cannot open the history store {self.path}: {exc.strerror or exc}") from None
        try:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, one transaction per batch.
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            # After a checkpoint resets the log, the file shrinks back to this size.
            self._db.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES // 4}")
            migrated = self._migrate()
            self._db.executescript(_SCHEMA)
            if "refused" not in {row[1] for row in self._db.execute("PRAGMA table_info(sessions)")}:
                # A file of an earlier zchat 0.2 (an older one reads and writes this one as before).
                self._db.execute("ALTER TABLE sessions ADD COLUMN refused TEXT")
            if migrated:
                # The search index of a schema-1 file: its stored messages, once.
                self._db.execute(
                    "INSERT INTO search (rowid, text, room, seq)"
                    " SELECT gid, json_extract(data, '$.text'), room, seq FROM events WHERE gid IS NOT NULL"
                )
            self._db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('id', ?)", (secrets.token_hex(8),))
            self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('schema', ?)", (_SCHEMA_VERSION,))
            self.id = str(self._db.execute("SELECT value FROM meta WHERE key = 'id'").fetchone()[0])
        except sqlite3.Error as exc:
            self._unlock()
            raise StoreError(f"cannot open the history store {self.path}: {exc}") from None
        self._events: list[tuple[str, int, bytes, int, int | None]] = []
        self._texts: list[tuple[int, str, str, int]] = []
        self._gid = int(self._db.execute("SELECT COALESCE(MAX(gid), 0) FROM events").fetchone()[0])
        self._staged = Staged()
        #: Texts of committed messages not yet in the search index (see INDEX_BATCH), oldest first.
        self._unindexed: list[tuple[int, str, str, int]] = []
        try:
            self._index_the_rest()
        except sqlite3.Error as exc:
            self._db.close()
            self._unlock()
            raise StoreError(f"cannot open the history store {self.path}: {exc}") from None
        self._touched: set[str] = set()
        #: What retention still has to remove, by room (see plan_retention).
        self._backlog: dict[str, _Trim] = {}
        self._last_commit = 0  # events of the last commit
        self._stop = threading.Event()
        self._checkpointing = threading.Lock()
        self._checkpointer: threading.Thread | None = None
        if self.path != ":memory:":
            # SQLite's automatic checkpoint runs inside a commit and stalls it for milliseconds
            # now and then: on the broker's loop that is everyone's latency. A thread with its
            # own connection checkpoints instead (sqlite3 releases the GIL while it works).
            self._db.execute("PRAGMA wal_autocheckpoint=0")
            self._checkpointer = threading.Thread(target=self._checkpoints, name="zchat-checkpoint", daemon=True)
            self._checkpointer.start()

    # --- ownership ---------------------------------------------------------------------------

    def _lock(self) -> None:
        """One broker per store: an exclusive lock on ``<path>.lock``, held while the store is
        open and released by the kernel when the process dies (kill -9 included)."""
        lock_path = self.path + ".lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise StoreLocked(
                f"the history store {self.path} is in use by another broker (pid {holder}); one store, one broker"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_file = fd

    def _unlock(self) -> None:
        if self._lock_file is not None:
            os.close(self._lock_file)  # closing the descriptor releases the flock
            self._lock_file = None

    def _migrate(self) -> bool:
        """Bring a file written by an older zchat up to this schema, keeping its history; True
        if it was one."""
        tables = {row[0] for row in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "events" not in tables:
            return False
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(events)")}
        if "presence" in columns:
            return False
        # Schema 1: dedupe records were columns of the events; joins and leaves were not told apart.
        with self._transaction() as db:
            for name in ("sender", "msg_id", "at"):
                if name in columns:
                    db.execute(f"ALTER TABLE events DROP COLUMN {name}")
            db.execute("ALTER TABLE events ADD COLUMN presence INTEGER NOT NULL DEFAULT 0")
            db.execute("ALTER TABLE events ADD COLUMN gid INTEGER")
            db.execute("UPDATE events SET presence = 1 WHERE json_extract(data, '$.kind') IN ('join', 'leave')")
            messages = db.execute(
                "SELECT room, seq FROM events WHERE json_extract(data, '$.kind') IN ('message', 'action')"
            ).fetchall()
            db.executemany(
                "UPDATE events SET gid = ? WHERE room = ? AND seq = ?",
                [(gid, room, seq) for gid, (room, seq) in enumerate(messages, 1)],
            )
        return True

    def _checkpoints(self) -> None:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        try:
            page = int(db.execute("PRAGMA page_size").fetchone()[0])
            while not self._stop.wait(CHECKPOINT_INTERVAL):
                with self._checkpointing, contextlib.suppress(sqlite3.Error):  # a failed one is retried
                    _, frames, _ = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    if frames * page > WAL_RESTART_BYTES:
                        # The pages written during that one, with no commit meanwhile: the log
                        # is then all in the database, and the next commit starts it again.
                        with self._writing:
                            db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        finally:
            db.close()

    def _index_the_rest(self) -> None:
        """Index the messages a store that was not closed left waiting (see INDEX_BATCH): those
        numbered past the newest in the index. (Texts are indexed in the order of their numbers,
        and retention removes a message and its text in one transaction.)"""
        row = self._db.execute("SELECT rowid FROM search ORDER BY rowid DESC LIMIT 1").fetchone()
        indexed = int(row[0]) if row else 0
        if self._gid > indexed:
            with self._transaction() as db:
                db.execute(
                    "INSERT INTO search (rowid, text, room, seq)"
                    " SELECT gid, json_extract(data, '$.text'), room, seq FROM events WHERE gid > ?",
                    (indexed,),
                )
            log.info("indexed %d messages for search that %s had not", self._gid - indexed, self.path)

    def _index(self) -> None:
        """Write the texts waiting for the search index, in a transaction of their own."""
        if self._unindexed:
            with self._transaction() as db:
                db.executemany(_INSERT_SEARCH, self._unindexed)
            self._unindexed = []

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):  # (else they are indexed when it opens next)
            self._index()
        self._stop.set()
        if self._checkpointer is not None:
            self._checkpointer.join()
            self._checkpointer = None
        self._db.close()
        self._unlock()

    # --- writes: staged, then committed as one transaction ---------------------------------------

    def append(self, room: str, seq: int, data: bytes, *, presence: bool = False, text: str | None = None) -> None:
        gid = None
        if text is not None:
            self._gid += 1
            gid = self._gid
            self._texts.append((gid, text, room, seq))
        self._events.append((room, seq, data, int(presence), gid))

    @property
    def staged(self) -> bool:
        # A failed read counts: the shell must commit (and so fail, and undo) the batch built on it.
        return bool(self._events or self._staged or self._failed is not None)

    def rollback(self) -> None:
        if self._texts:
            self._gid = self._texts[0][0] - 1  # the numbers of what was never written are free again
        self._clear()

    def _clear(self) -> None:
        self._events, self._texts, self._staged, self._failed = [], [], Staged(), None

    def commit(self) -> None:
        if not self.staged:
            return
        index = len(self._unindexed) + len(self._texts) >= INDEX_BATCH
        try:
            self._check_reads()
            with self._transaction():
                self._write(index)
        except sqlite3.Error as exc:
            self.rollback()
            raise StoreError(f"could not store a batch in {self.path}: {exc}") from None
        except StoreError:
            self.rollback()
            raise
        self._touched.update(room for room, *_ in self._events)
        self._last_commit = len(self._events)
        if index:
            self._unindexed = []
        else:
            self._unindexed += self._texts
        self._clear()
        try:
            self._bound_wal()
        except sqlite3.Error as exc:  # the batch is stored; the log is truncated next time
            log.warning("could not truncate the write-ahead log of %s: %s", self.path, exc)

    def _bound_wal(self) -> None:
        """Under steady writes the checkpoint thread may never find the log between two
        transactions: past its limit, the writer itself truncates it, between two transactions.
        SQLite refuses a checkpoint while another runs (SQLITE_BUSY at once, no busy wait), so the
        two take turns: this waits for at most the passive one in progress."""
        if self.wal_size() > WAL_LIMIT_BYTES:
            with self._checkpointing:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed if the block ends normally, rolled back otherwise."""
        db = self._db
        with self._writing:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                # Also after a failed COMMIT: SQLite may leave the transaction open then (its
                # docs say to roll back; an error says it already was), and one left open would
                # refuse every later BEGIN and show this connection's reads a batch never stored.
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                raise

    def _write(self, index: bool) -> None:
        """The staged writes; with ``index``, the waiting texts and the batch's own go into the
        search index too (else the batch's wait, see INDEX_BATCH)."""
        db, staged = self._db, self._staged
        _insert_events(db, self._events)
        if index:
            db.executemany(_INSERT_SEARCH, self._unindexed)
            db.executemany(_INSERT_SEARCH, self._texts)
        # (Each statement only if it has rows: most batches are posts, and an empty executemany
        # still costs a statement lookup.)
        if staged.sessions:
            db.executemany(
                "INSERT OR REPLACE INTO sessions"
                " (token, nick, identity, peer, inbox, rooms, acked, away, ended, refused)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        r.token,
                        r.nick,
                        r.identity,
                        r.peer,
                        r.inbox,
                        json.dumps(r.rooms),
                        r.acked,
                        r.away,
                        r.ended,
                        refusals_json(r.refused),
                    )
                    for r in staged.sessions.values()
                ],
            )
        if staged.acked:
            db.executemany("UPDATE sessions SET acked = ? WHERE token = ?", [(a, t) for t, a in staged.acked.items()])
        if staged.claims:
            db.executemany("INSERT OR IGNORE INTO owners (nick, key) VALUES (?, ?)", staged.claims)
        if staged.topics:
            db.executemany(
                "DELETE FROM topics WHERE room = ?", [(r,) for r, topic in staged.topics.items() if topic is None]
            )
            db.executemany(
                "INSERT OR REPLACE INTO topics (room, text, nick, ts) VALUES (?, ?, ?, ?)",
                [(r, topic.text, topic.nick, topic.ts) for r, topic in staged.topics.items() if topic is not None],
            )
        if staged.reads:
            db.executemany("INSERT OR REPLACE INTO reads (inbox, seq) VALUES (?, ?)", list(staged.reads.items()))

    # --- reads ----------------------------------------------------------------------------------

    def size(self) -> int:
        """Bytes on disk: the database file and its write-ahead log (0 for ``:memory:``)."""
        if self.path == ":memory:":
            return 0
        return sum(p.stat().st_size for p in (Path(self.path), Path(self.path + "-wal")) if p.exists())

    def wal_size(self) -> int:
        if self.path == ":memory:":
            return 0
        try:
            return os.stat(self._wal_path).st_size  # (after every commit: no Path object)
        except FileNotFoundError:
            return 0

    def _rows(self, query: str, *params: object) -> list[Any]:
        """What a read returns; a failure is a :class:`StoreError`, and fails the batch built on
        it at its commit."""
        try:
            return self._db.execute(query, params).fetchall()
        except sqlite3.Error as exc:
            self._failed = f"could not read the history store {self.path}: {exc}"
            raise StoreError(self._failed) from None

    def _indexed(self) -> None:
        """Every committed message in the search index, for a read that needs them all."""
        try:
            self._index()
        except sqlite3.Error as exc:
            self._failed = f"could not index waiting messages for search in {self.path}: {exc}"
            raise StoreError(self._failed) from None

    def last_seq(self, room: str) -> int:
        return int(self._rows("SELECT MAX(seq) FROM events WHERE room = ?", room)[0][0] or 0)

    def first_seq(self, room: str) -> int:
        """Oldest ``seq`` still stored for ``room`` (0 if none)."""
        return int(self._rows("SELECT MIN(seq) FROM events WHERE room = ?", room)[0][0] or 0)

    def page(self, room: str, after: int | None, limit: int, max_bytes: int = MAX_PAGE_BYTES) -> Page:
        if after is None:
            rows = self._rows("SELECT seq, data FROM events WHERE room = ? ORDER BY seq DESC LIMIT ?", room, limit)
        else:
            rows = self._rows(
                "SELECT seq, data FROM events WHERE room = ? AND seq > ? ORDER BY seq LIMIT ?", room, after, limit + 1
            )
        return paged(self, room, rows, after=after, limit=limit, max_bytes=max_bytes)

    def search(self, room: str, query: str, limit: int, before: int | None = None) -> list[bytes]:
        words = search_words(query)
        if not words:
            return []
        try:
            self._index()  # every committed message is searchable
        except sqlite3.Error as exc:  # (a failing disk: what is indexed is still searched)
            log.warning("could not index waiting messages for search in %s: %s", self.path, exc)
        # Each word as a quoted FTS5 string: people type text, not FTS5 query syntax.
        match = " ".join('"' + w.replace('"', '""') + '"' for w in words)
        rows = self._rows(
            "SELECT e.data FROM search s JOIN events e ON e.room = s.room AND e.seq = s.seq"
            " WHERE search MATCH ? AND s.room = ? AND s.seq < ? ORDER BY s.seq DESC LIMIT ?",
            match,
            room,
            before if before is not None else 2**62,
            limit,
        )
        return [bytes(d) for _, d in _within(((0, row[0]) for row in rows), MAX_PAGE_BYTES)]

    def sessions(self) -> list[SessionRecord]:
        rows = self._rows("SELECT token, nick, identity, peer, inbox, rooms, acked, away, ended, refused FROM sessions")
        return [
            SessionRecord(t, n, i, p, b, list(json.loads(r)), a, w, e, refusals(x))
            for t, n, i, p, b, r, a, w, e, x in rows
        ]

    def claims(self) -> dict[str, str]:
        """Nicks registered by keys: ``{nick: z85 key}``."""
        return dict(self._rows("SELECT nick, key FROM owners"))

    def topic(self, room: str) -> TopicRecord | None:
        rows = self._rows("SELECT text, nick, ts FROM topics WHERE room = ?", room)
        return TopicRecord(*rows[0]) if rows else None

    def read(self, inbox: str) -> int:
        rows = self._rows("SELECT seq FROM reads WHERE inbox = ?", inbox)
        return int(rows[0][0]) if rows else 0

    # --- copying (Portable) -------------------------------------------------------------------------

    def export(self, after: tuple[str, int] | None, limit: int) -> list[StoredEvent]:
        self._indexed()  # texts come from the search index
        room, seq = after if after is not None else ("", 0)  # before any room: names are never empty
        # A range scan of the primary key (row values compare in its order), each message's text
        # from the search index by its rowid.
        rows = self._rows(
            "SELECT e.room, e.seq, e.data, e.presence, s.text FROM events e LEFT JOIN search s ON s.rowid = e.gid"
            " WHERE (e.room, e.seq) > (?, ?) ORDER BY e.room, e.seq LIMIT ?",
            room,
            seq,
            limit,
        )
        return [StoredEvent(r, q, bytes(d), bool(p), t) for r, q, d, p, t in rows]

    def streams(self) -> dict[str, tuple[int, int, int]]:
        rows = self._rows("SELECT room, MIN(seq), MAX(seq), COUNT(*) FROM events GROUP BY room")
        return {room: (first, last, count) for room, first, last, count in rows}

    def searchable(self) -> int:
        self._indexed()
        return int(self._rows("SELECT COUNT(*) FROM search")[0][0])

    def topics(self) -> dict[str, TopicRecord]:
        rows = self._rows("SELECT room, text, nick, ts FROM topics")
        return {room: TopicRecord(text, nick, ts) for room, text, nick, ts in rows}

    def reads(self) -> dict[str, int]:
        return dict(self._rows("SELECT inbox, seq FROM reads"))

    def set_id(self, history: str) -> None:
        try:
            with self._transaction() as db:
                db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('id', ?)", (history,))
        except sqlite3.Error as exc:
            raise StoreError(f"could not write the history store {self.path}: {exc}") from None
        self.id = history

    def clear(self) -> None:
        try:
            with self._transaction() as db:
                for table in ("events", "search", "sessions", "owners", "topics", "reads"):
                    db.execute(f"DELETE FROM {table}")
            # Nothing is left to index or to trim: texts still waiting would take numbers given anew.
            self._gid = 0
            self._unindexed = []
            self._touched.clear()
            self._backlog.clear()
            self._bound_wal()
        except sqlite3.Error as exc:
            raise StoreError(f"could not empty the history store {self.path}: {exc}") from None

    # --- retention --------------------------------------------------------------------------------

    def plan_retention(self, now: float) -> None:
        rooms, self._touched = self._touched, set()
        try:
            self._index()  # first: retention removes texts from the index by number
            db, limit = self._db, self.history_limit
            for room in rooms:
                self._plan(room, _first_seq(db, room), _nth_newest(db, room, 0, limit), _nth_newest(db, room, 1, limit))
            with self._transaction() as db:
                db.execute("DELETE FROM sessions WHERE ended IS NOT NULL AND ended < ?", (now - TOMBSTONE_SECONDS,))
        except sqlite3.Error:
            self._touched |= rooms  # tried again next time; the broker's next commit says if the disk is gone

    def _trim(self, budget: int) -> bool:
        if not self._backlog:
            return False
        try:
            with self._transaction() as db:

                def remove(room: str, start: int, end: int, presence_only: bool) -> int:
                    where = "room = ? AND seq >= ? AND seq < ?" + (" AND presence = 1" if presence_only else "")
                    # The index by its own rowids (a filter on its other columns would scan it).
                    db.execute(
                        f"DELETE FROM search WHERE rowid IN (SELECT gid FROM events WHERE {where} AND gid IS NOT NULL)",
                        (room, start, end),
                    )
                    return int(db.execute(f"DELETE FROM events WHERE {where}", (room, start, end)).rowcount)

                def nth_presence(room: str, start: int, n: int) -> int | None:
                    row = db.execute(
                        "SELECT seq FROM events WHERE room = ? AND presence = 1 AND seq >= ?"
                        " ORDER BY seq LIMIT 1 OFFSET ?",
                        (room, start, n),
                    ).fetchone()
                    return None if row is None else int(row[0])

                _trim_backlog(self._backlog, budget, remove, nth_presence)
        except sqlite3.Error:
            # (Where each room got to is no longer known: planned again next time.)
            self._touched.update(self._backlog)
            self._backlog.clear()
            return False
        self._last_commit = 0
        try:
            self._bound_wal()
        except sqlite3.Error as exc:
            log.warning("could not truncate the write-ahead log of %s: %s", self.path, exc)
        return bool(self._backlog)


@dataclass
class _Trim:
    """Retention's plan for one room: remove every event from ``start`` up to ``everything``,
    then presence up to ``presence`` (seqs, end excluded)."""

    start: int
    everything: int
    presence: int


def _retention_plan(first: int, message: int | None, presence: int | None) -> _Trim | None:
    """Retention's plan for a room whose oldest event is ``first``, of the seqs of its oldest
    message and oldest presence to keep (None: it has no more than it keeps): every event older
    than that message, and presence older than that presence. None if that is nothing."""
    everything = first if message is None else message
    plan = _Trim(first, everything, max(everything, presence or 0))
    return plan if plan.start < plan.presence else None


def _trim_backlog(
    backlog: dict[str, _Trim],
    budget: int,
    remove: Callable[[str, int, int, bool], int],
    nth_presence: Callable[[str, int, int], int | None],
) -> None:
    """Carry out ``backlog`` in the caller's transaction, about ``budget`` events of it: in each
    room every event from the plan's start up to ``everything``, at most ``budget`` seqs at a
    time, then presence up to ``presence``, at most ``budget`` of it. ``remove(room, start, end,
    presence_only)`` removes a range of seqs (end excluded) and says how many events it removed;
    ``nth_presence(room, start, n)`` is the seq of the ``n``-th presence from ``start`` (from 0)."""
    while budget > 0 and backlog:
        room, plan = next(iter(backlog.items()))
        if plan.start < plan.everything:  # every event: at most ``budget`` seqs
            end, presence_only = min(plan.everything, plan.start + budget), False
        else:  # presence among the messages kept: at most ``budget`` of it
            nth = nth_presence(room, plan.start, budget)
            end, presence_only = (plan.presence if nth is None else min(plan.presence, nth)), True
        budget -= max(1, remove(room, plan.start, end, presence_only))
        plan.start = end
        if end >= plan.presence:
            del backlog[room]


_INSERT_SEARCH = "INSERT INTO search (rowid, text, room, seq) VALUES (?, ?, ?, ?)"
#: Events are inserted (a (room, seq) already stored fails the batch: history is never written
#: over) in statements of this many rows (then one by one): one statement for many
#: rows costs SQLite 40 % less per row than executemany's statement per row.
_EVENT_CHUNKS = (256, 64, 16)
_INSERT_EVENTS = "INSERT INTO events (room, seq, data, presence, gid) VALUES "
_INSERT_EVENT_ROWS = {n: _INSERT_EVENTS + ", ".join(["(?, ?, ?, ?, ?)"] * n) for n in _EVENT_CHUNKS}


def _insert_events(db: sqlite3.Connection, rows: list[tuple[str, int, bytes, int, int | None]]) -> None:
    """Insert staged events, in as few statements as the chunk sizes allow. (Not so the search
    index: into FTS5, statements of many rows cost more per row than executemany, measured.)"""
    start = 0
    for size in _EVENT_CHUNKS:
        sql = _INSERT_EVENT_ROWS[size]
        while len(rows) - start >= size:
            db.execute(sql, list(itertools.chain.from_iterable(rows[start : start + size])))
            start += size
    if start < len(rows):
        db.executemany(_INSERT_EVENTS + "(?, ?, ?, ?, ?)", rows[start:])


def _first_seq(db: sqlite3.Connection, room: str) -> int:
    """Oldest ``seq`` still stored for ``room`` (0 if none), for retention: a failure is its own."""
    return int(db.execute("SELECT MIN(seq) FROM events WHERE room = ?", (room,)).fetchone()[0] or 0)


def _nth_newest(db: sqlite3.Connection, room: str, presence: int, n: int) -> int | None:
    """The seq of the ``n``-th newest event of ``room`` of that presence, if it has that many."""
    row = db.execute(
        "SELECT seq FROM events WHERE room = ? AND presence = ? ORDER BY seq DESC LIMIT 1 OFFSET ?",
        (room, presence, n - 1),
    ).fetchone()
    return int(row[0]) if row else None


def paged(
    store: Store, room: str, rows: list[tuple[int, bytes]], *, after: int | None, limit: int, max_bytes: int
) -> Page:
    """The :meth:`Store.page` of ``room`` made of the ``(seq, data)`` rows a store read for it:
    with ``after`` None its newest ``limit`` events, newest first; else up to ``limit + 1``
    events after ``after``, oldest first (one more than fits tells that more follow)."""
    if after is None:
        kept = _within(rows, max_bytes)
        older = bool(kept) and store.first_seq(room) < kept[-1][0]
        return Page([d for _, d in reversed(kept)], kept[0][0] if kept else 0, older)
    kept = _within(rows[:limit], max_bytes)
    if len(kept) < len(rows):
        return Page([d for _, d in kept], kept[-1][0] if kept else after, True)
    return Page([d for _, d in kept], max(after, store.last_seq(room)), False)


def search_words(query: str) -> list[str]:
    """The words of a search. A NUL separates words like a space: it would end an FTS5 string
    early ("unterminated string"), and PostgreSQL's text holds none."""
    return query.replace("\0", " ").split()


def _within(rows: Iterable[tuple[int, bytes]], max_bytes: int) -> list[tuple[int, bytes]]:
    """The leading rows whose data fits in ``max_bytes`` (always at least one)."""
    out: list[tuple[int, bytes]] = []
    total = 0
    for seq, data in rows:
        total += len(data)
        if out and total > max_bytes:
            break
        out.append((seq, data))
    return out
