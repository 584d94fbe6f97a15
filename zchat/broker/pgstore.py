"""The history in PostgreSQL: :class:`PostgresStore`, the :class:`~zchat.broker.store.Store` of a
broker whose history lives on a database server rather than on its own disk, so that another
broker (a standby) can take it over.

It keeps what :class:`~zchat.broker.store.SQLiteStore` keeps, with the same guarantees: staged
writes land in one transaction per :meth:`PostgresStore.commit`, and a failed one leaves nothing;
a room's events are unique by ``(room, seq)`` (a second writer of the same seq fails its batch
instead of overwriting history); pages are bounded in bytes; retention counts messages and keeps
presence apart; search is PostgreSQL's full-text search (``to_tsvector('simple', …)`` in a GIN
index: words are lower-cased, not stemmed, and every word must match).

One connection (psycopg 3, autocommit, each batch in an explicit transaction sent as one
pipeline) does all the broker's reads and writes. When it is lost — the server restarted, the
backend terminated, the network gone — the operation that finds out connects again at once: a
read asks again, a commit first asks whether its batch landed before the connection went, and
sends it again if not. Only a server that cannot be reached fails the operation, with a
:class:`StoreError` of one line, and is then tried once a second. A store that held the active
lock (:meth:`PostgresStore.try_lock_active`) takes it again on reconnecting, and stops writing
(:class:`StoreLocked`) if another broker holds it, or held it meanwhile: this broker's idea of the
rooms is then stale.

Durability is the server's: with its default ``synchronous_commit = on`` a committed batch
survives a crash of the broker and of the database server alike. The server's write-ahead log
belongs to the server (every database on it), so :meth:`PostgresStore.wal_size` is 0.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import TupleRow

from zchat.broker.store import (
    DEFAULT_HISTORY_LIMIT,
    MAX_PAGE_BYTES,
    TOMBSTONE_SECONDS,
    Page,
    SessionRecord,
    Staged,
    Staging,
    StoredEvent,
    StoreError,
    StoreLocked,
    TopicRecord,
    _Trim,
    _trim_backlog,
    _within,
    paged,
    redact,
    refusals,
    refusals_json,
    search_words,
)

__all__ = ["LOCK_KEY", "PostgresStore"]


class _QuietLostPipeline(logging.Filter):
    """psycopg warns, twice, of the pipeline it could not end on a connection that is gone; the
    store's own error already says the connection was lost, once."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("error ignored terminating <psycopg.Pipeline")


logging.getLogger("psycopg").addFilter(_QuietLostPipeline())

Connection = psycopg.Connection[TupleRow]
_T = TypeVar("_T")

#: The session-level advisory lock the active broker of a store holds ("zchat:a"). Advisory locks
#: are per database, so a database holds one store. pg_locks shows it as classid 8020840, objid
#: 1635007073, objsubid 1.
LOCK_KEY = int.from_bytes(b"zchat:a", "big")
#: A transaction-level lock that makes creating the schema one opener's job at a time ("zchat:s");
#: not LOCK_KEY, which an active broker holds for as long as it runs.
SCHEMA_KEY = int.from_bytes(b"zchat:s", "big")
#: After a failed attempt to connect, operations fail at once until this many seconds have
#: passed: a server that is down costs the broker's loop one connection attempt a second, not
#: one per batch.
RECONNECT_INTERVAL = 1.0
#: libpq settings for what the URL leaves unsaid: a dead server or network shows as an error in
#: seconds, not after TCP's own minutes, while the broker's loop waits.
CLIENT_DEFAULTS = {
    "connect_timeout": "5",
    "keepalives": "1",
    "keepalives_idle": "5",
    "keepalives_interval": "2",
    "keepalives_count": "3",
    "tcp_user_timeout": "10000",
    "application_name": "zchat broker",
}
#: The same on the server's end of the connection, for this session alone: a broker host that
#: vanishes frees its backend, and so the active lock, in about 11 s instead of the server's
#: default two hours. A statement waiting on another's lock gives up rather than stall the loop.
SESSION_SETTINGS = {
    "tcp_keepalives_idle": "5",
    "tcp_keepalives_interval": "2",
    "tcp_keepalives_count": "3",
    "tcp_user_timeout": "10000",
    "lock_timeout": "5s",
}

_SCHEMA_VERSION = "1"
_TABLES = ("meta", "events", "owners", "sessions", "topics", "reads")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key text PRIMARY KEY, value text NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    room text COLLATE "C" NOT NULL,  -- compared byte by byte: the same order on any server locale
    seq bigint NOT NULL,
    data bytea NOT NULL,  -- the event's JSON as published
    presence boolean NOT NULL DEFAULT false,  -- a join or leave: retained apart from messages
    text text,  -- a room message's text, searchable; NULL for every other event
    PRIMARY KEY (room, seq)
);
CREATE INDEX IF NOT EXISTS events_by_kind ON events (room, presence, seq);
CREATE INDEX IF NOT EXISTS events_search ON events USING gin (to_tsvector('simple', text)) WHERE text IS NOT NULL;
CREATE TABLE IF NOT EXISTS owners (nick text PRIMARY KEY, key text NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (
    token text PRIMARY KEY,
    nick text NOT NULL,
    identity text,
    peer text,
    inbox text NOT NULL,
    rooms text[] NOT NULL,
    acked bigint NOT NULL,
    away text,
    ended double precision,  -- wall time the session ended (a tombstone), NULL while it lives
    refused text  -- its latest posts refused for good, {"n": "why"}; NULL for none
);
-- (A database of an earlier zchat 0.2; an older one reads and writes this one as before.)
ALTER TABLE sessions ADD COLUMN IF NOT EXISTS refused text;
CREATE TABLE IF NOT EXISTS topics (room text PRIMARY KEY, text text NOT NULL, nick text NOT NULL, ts text NOT NULL);
CREATE TABLE IF NOT EXISTS reads (inbox text PRIMARY KEY, seq bigint NOT NULL);
"""


class PostgresStore(Staging):
    """The :class:`~zchat.broker.store.Store` in a PostgreSQL database, named by a libpq URL
    (``postgresql://user[:password]@host[:port]/dbname[?…]``; a password may also come from
    ``PGPASSWORD`` or ``~/.pgpass``). Opening it creates the schema if the database has none.
    It does not take the active lock: a broker that is to write calls :meth:`try_lock_active`
    (:func:`zchat.broker.store.open_store` does)."""

    def __init__(self, dsn: str, *, history_limit: int = DEFAULT_HISTORY_LIMIT) -> None:
        self.where = redact(dsn)
        self.history_limit = history_limit
        try:
            given = conninfo_to_dict(dsn)
        except psycopg.ProgrammingError as exc:
            raise StoreError(f"cannot open the history store {self.where}: {_one_line(exc)}") from None
        self._params: dict[str, Any] = {**CLIENT_DEFAULTS, **given, "client_encoding": "UTF8"}
        self._db: Connection | None = None
        self._closed = False
        self._next_connect = 0.0
        #: Why the connection was lost, while it is.
        self._lost: str | None = None
        #: The active lock's term (meta 'term') while this store holds the lock, else None.
        self._term: int | None = None
        #: Why this store may not write, and as what error: it lost the active lock, or a batch
        #: the broker took for failed was stored after all. Until it takes the lock anew.
        self._stale: tuple[type[StoreError], str] | None = None
        #: The first event of a batch whose commit lost its connection before it could tell.
        self._in_doubt: tuple[str, int, bytes] | None = None
        self._events: list[tuple[str, int, bytes, bool, str | None]] = []
        self._staged = Staged()
        self._touched: set[str] = set()
        #: What retention still has to remove, by room (see plan_retention).
        self._backlog: dict[str, _Trim] = {}
        self._last_commit = 0  # events of the last commit
        try:
            db = self._connect()
            self._create_schema(db)
            row = db.execute("SELECT value FROM meta WHERE key = 'id'").fetchone()
        except psycopg.Error as exc:
            self.close()
            raise StoreError(f"cannot open the history store {self.where}: {_one_line(exc)}") from None
        except StoreError:
            self.close()
            raise
        assert row is not None
        self.id = str(row[0])

    # --- the connection ---------------------------------------------------------------------------

    def _connect(self) -> Connection:
        """A new connection, set up; raises psycopg.Error."""
        db = psycopg.connect(**self._params, autocommit=True)
        try:
            encoding = db.execute("SHOW server_encoding").fetchone()
            if encoding is None or encoding[0] != "UTF8":
                raise StoreError(
                    f"the database of {self.where} has encoding {encoding[0] if encoding else '?'}; zchat needs UTF8"
                    " (createdb --encoding UTF8 --template template0 …)"
                )
            db.execute(
                "SELECT " + ", ".join("set_config(%s, %s, false)" for _ in SESSION_SETTINGS),
                [v for item in SESSION_SETTINGS.items() for v in item],
            )
        except BaseException:
            db.close()
            raise
        self._db = db
        self._lost = None
        return db

    def _create_schema(self, db: Connection) -> None:
        with db.transaction():
            db.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_KEY,))
            present = {
                str(row[0])
                for row in db.execute(
                    "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() AND tablename = ANY(%s)",
                    (list(_TABLES),),
                )
            }
            version = None
            if "meta" in present:
                row = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
                version = row[0] if row else None
            if present and version is None:
                # Someone else's tables of the same names: reusing them would fail in odd places.
                raise StoreError(
                    f"the database of {self.where} has tables that are not a zchat store's"
                    f" ({', '.join(sorted(present))}): give zchat a database of its own"
                )
            if version not in (None, _SCHEMA_VERSION):
                raise StoreError(
                    f"the history store {self.where} has schema {version}, which this zchat does not know"
                    " (written by a newer zchat?)"
                )
            db.execute(_SCHEMA)
            db.execute(
                "INSERT INTO meta (key, value) VALUES ('id', %s), ('schema', %s) ON CONFLICT (key) DO NOTHING",
                (secrets.token_hex(8), _SCHEMA_VERSION),
            )

    def _connection(self) -> Connection:
        """The connection, made again if it was lost (at most once per :data:`RECONNECT_INTERVAL`).
        A store that held the active lock must hold it again, with no one else having held it
        meanwhile; a batch whose commit was in doubt is looked for."""
        if self._db is not None:
            return self._db
        if self._closed:
            raise StoreError(f"the history store {self.where} is closed")
        now = time.monotonic()
        if now < self._next_connect:
            raise StoreError(f"the history store {self.where} is unreachable: {self._lost}")
        try:
            db = self._connect()
            if self._term is not None:
                self._relock(db)
            if self._in_doubt is not None and _landed(db, self._in_doubt):
                self._stale = (
                    StoreError,
                    (
                        f"a batch that this broker took for failed (its connection to {self.where} broke during the"
                        " commit) was stored after all: this broker's rooms are stale (restart it)"
                    ),
                )
            self._in_doubt = None
        except psycopg.Error as exc:
            self._drop(exc)
            self._lost = _one_line(exc)
            self._next_connect = now + RECONNECT_INTERVAL
            raise StoreError(f"the history store {self.where} is unreachable: {self._lost}") from None
        return db

    def _relock(self, db: Connection) -> None:
        """Take back the active lock after a reconnection, or stop writing (raises psycopg.Error
        if the server cannot say, leaving that question to the next reconnection)."""
        if not _one(db, "SELECT pg_try_advisory_lock(%s)", LOCK_KEY):
            why = "another broker holds it now"
        elif int(str(_one(db, "SELECT value FROM meta WHERE key = 'term'"))) != self._term:
            db.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
            why = "another broker was active meanwhile: this broker's rooms are stale (restart it)"
        else:
            return
        self._term = None
        self._stale = StoreLocked, f"this broker lost its connection to the history store {self.where}, and {why}"
        raise self._stale[0](self._stale[1])

    def _drop(self, exc: psycopg.Error) -> None:
        """Forget a connection that an error broke (the next operation connects again)."""
        db = self._db
        if db is not None and (db.closed or db.broken):
            self._lost = _one_line(exc)
            self._db = None
            db.close()

    @contextlib.contextmanager
    def _using(self, doing: str) -> Iterator[Connection]:
        """The connection for one operation; a failure becomes :class:`StoreError` saying
        ``doing`` (:class:`_Lost` if the connection went)."""
        try:
            yield self._connection()
        except psycopg.Error as exc:
            self._drop(exc)
            if self._db is None:
                raise _Lost(f"{doing} {self.where}: lost the connection: {self._lost}") from None
            raise StoreError(f"{doing} {self.where}: {_one_line(exc)}") from None

    def _retrying(self, doing: str, work: Callable[[Connection], _T]) -> _T:
        """``work`` on the connection, and once more on a new one if that one turns out lost (a
        server restart, a terminated backend): ``work`` must be safe to repeat."""
        try:
            with self._using(doing) as db:
                return work(db)
        except _Lost:
            with self._using(doing) as db:
                return work(db)

    def _rows(self, query: str, *params: object) -> list[TupleRow]:
        """What a read returns. A read that fails fails the batch built on it, at its commit."""
        try:
            return self._retrying("could not read the history store", lambda db: db.execute(query, params).fetchall())
        except StoreError as exc:
            self._failed = str(exc)
            raise

    def close(self) -> None:
        """Close the connection (which frees the active lock). Safe to call twice."""
        self._closed = True
        db, self._db = self._db, None
        if db is not None:
            db.close()

    # --- the active lock --------------------------------------------------------------------------

    def try_lock_active(self) -> bool:
        """Become the store's one active broker, if no other is: True if this store holds the
        active lock now (a session-level advisory lock on its connection, freed when the
        connection ends, however it ends). Never blocks on the lock and never raises: a store
        that cannot reach its server is not active. Each new holder counts a new term in
        ``meta``, by which a holder that lost its connection learns whether another held it.
        A broker that becomes active this way builds its rooms from the store."""
        if self._term is not None and self.holds_lock():
            return True
        self._term = None  # a new hold, not the old one taken back

        def lock(db: Connection) -> int | None:
            if not _one(db, "SELECT pg_try_advisory_lock(%s)", LOCK_KEY):
                return None
            try:
                term = _one(
                    db,
                    "INSERT INTO meta (key, value) VALUES ('term', '1')"
                    " ON CONFLICT (key) DO UPDATE SET value = (meta.value::bigint + 1)::text RETURNING value",
                )
            except psycopg.Error:
                with contextlib.suppress(psycopg.Error):  # no term, no hold: let another have it
                    db.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
                raise
            return int(str(term))

        try:
            self._term = self._retrying("could not take the active lock of", lock)
        except StoreError:
            return False
        if self._term is None:
            return False
        self._stale = None
        return True

    def holds_lock(self) -> bool:
        """Whether this store holds the active lock on a connection that still works (one
        round trip to the server). False once the connection was lost or its backend was
        terminated; never raises, never reconnects."""
        db = self._db
        if self._term is None or db is None:
            return False
        try:
            held = _one(
                db,
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted"
                " AND objsubid = 1 AND ((classid::bigint << 32) | objid::bigint) = %s",
                LOCK_KEY,
            )
        except psycopg.Error as exc:
            self._drop(exc)
            return False
        return bool(held)

    def lock_holder(self) -> str:
        """Who holds the active lock, for people: its backend's pid, address and application."""
        try:
            rows = self._retrying(
                "could not read the locks of",
                lambda db: db.execute(
                    "SELECT l.pid, a.client_addr, a.application_name FROM pg_locks l"
                    " LEFT JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted"
                    " AND l.objsubid = 1 AND ((l.classid::bigint << 32) | l.objid::bigint) = %s",
                    (LOCK_KEY,),
                ).fetchall(),
            )
        except StoreError:
            return "unknown"
        if not rows:
            return "nobody now"
        pid, address, application = rows[0]
        return f"backend pid {pid}, {address or 'local socket'}, {application or 'no application name'}"

    # --- writes: staged, then committed as one transaction ----------------------------------------

    def append(self, room: str, seq: int, data: bytes, *, presence: bool = False, text: str | None = None) -> None:
        # PostgreSQL's text holds no NUL character (JSON may); the search text is only searched.
        self._events.append((room, seq, data, presence, None if text is None else text.replace("\0", " ")))

    @property
    def staged(self) -> bool:
        # A failed read counts: the shell must commit (and so fail, and undo) the batch built on it.
        return bool(self._events or self._staged or self._failed is not None)

    def rollback(self) -> None:
        self._failed = None
        self._events, self._staged = [], Staged()

    def commit(self) -> None:
        if not self.staged:
            return
        try:
            if self._stale is not None:
                raise self._stale[0](self._stale[1])
            self._check_reads()
            # The first event (if any) tells, should the connection break during the commit,
            # whether the batch landed before it broke.
            marker = self._events[0][:3] if self._events else None
            try:
                self._commit_once()
            except _Lost:
                self._recommit(marker)
        except StoreError:
            self.rollback()
            raise
        self._touched.update(room for room, *_ in self._events)
        self._last_commit = len(self._events)
        self.rollback()

    def _recommit(self, marker: tuple[str, int, bytes] | None) -> None:
        """The connection went during the commit: did the batch land before it went? A new
        connection tells, and if it did not, carries the batch now (so a server restart or a
        terminated backend costs the broker nothing). What cannot be told is looked for by the
        next connection."""
        try:
            landed = marker is not None and self._retrying("could not store a batch in", lambda db: _landed(db, marker))
        except StoreError:
            self._in_doubt = marker
            raise
        if landed:
            return
        try:
            self._commit_once()
        except _Lost:
            self._in_doubt = marker
            raise

    def _commit_once(self) -> None:
        with self._using("could not store a batch in") as db, db.pipeline(), db.transaction():
            # One round trip for the whole batch: the statements, then the commit's answer.
            self._write(db)

    def _write(self, db: Connection) -> None:
        cur, staged = db.cursor(), self._staged
        if self._events:
            rooms, seqs, datas, presences, texts = (list(column) for column in zip(*self._events, strict=True))
            # One statement for any number of events; a plain INSERT: a seq already stored means
            # another writer, and the batch must fail rather than overwrite what was published.
            cur.execute(
                "INSERT INTO events (room, seq, data, presence, text) SELECT * FROM"
                " unnest(%b::text[], %b::bigint[], %b::bytea[], %b::boolean[], %b::text[])",
                (rooms, seqs, datas, presences, texts),
            )
        if staged.sessions:
            cur.executemany(
                "INSERT INTO sessions (token, nick, identity, peer, inbox, rooms, acked, away, ended, refused)"
                " VALUES (%s, %s, %s, %s, %s, %s::text[], %s, %s, %s, %s) ON CONFLICT (token) DO UPDATE SET"
                " nick = EXCLUDED.nick, identity = EXCLUDED.identity, peer = EXCLUDED.peer, inbox = EXCLUDED.inbox,"
                " rooms = EXCLUDED.rooms, acked = EXCLUDED.acked, away = EXCLUDED.away, ended = EXCLUDED.ended,"
                " refused = EXCLUDED.refused",
                [
                    (
                        r.token,
                        r.nick,
                        r.identity,
                        r.peer,
                        r.inbox,
                        r.rooms,
                        r.acked,
                        _no_nul(r.away),
                        r.ended,
                        refusals_json(r.refused),
                    )
                    for r in staged.sessions.values()
                ],
            )
        if staged.acked:
            acked = [(a, t) for t, a in staged.acked.items()]
            cur.executemany("UPDATE sessions SET acked = %s WHERE token = %s", acked)
        if staged.claims:
            cur.executemany("INSERT INTO owners (nick, key) VALUES (%s, %s) ON CONFLICT DO NOTHING", staged.claims)
        if gone := [(room,) for room, topic in staged.topics.items() if topic is None]:
            cur.executemany("DELETE FROM topics WHERE room = %s", gone)
        if kept := [(r, _no_nul(t.text), t.nick, t.ts) for r, t in staged.topics.items() if t is not None]:
            cur.executemany(
                "INSERT INTO topics (room, text, nick, ts) VALUES (%s, %s, %s, %s) ON CONFLICT (room) DO UPDATE SET"
                " text = EXCLUDED.text, nick = EXCLUDED.nick, ts = EXCLUDED.ts",
                kept,
            )
        if staged.reads:
            cur.executemany(
                "INSERT INTO reads (inbox, seq) VALUES (%s, %s) ON CONFLICT (inbox) DO UPDATE SET seq = EXCLUDED.seq",
                list(staged.reads.items()),
            )

    # --- reads ------------------------------------------------------------------------------------

    def size(self) -> int:
        """Bytes the store's tables and indexes take on the server (0 if it cannot tell)."""
        try:
            row = self._retrying(
                "could not measure",
                lambda db: db.execute(
                    "SELECT sum(pg_total_relation_size(to_regclass(t))) FROM unnest(%s::text[]) t", (list(_TABLES),)
                ).fetchone(),
            )
        except StoreError:
            return 0
        return int(row[0] or 0) if row else 0

    def wal_size(self) -> int:
        """0: the write-ahead log is the server's, shared by every database on it."""
        return 0

    def last_seq(self, room: str) -> int:
        return int(self._rows("SELECT max(seq) FROM events WHERE room = %s", room)[0][0] or 0)

    def first_seq(self, room: str) -> int:
        return int(self._rows("SELECT min(seq) FROM events WHERE room = %s", room)[0][0] or 0)

    def page(self, room: str, after: int | None, limit: int, max_bytes: int = MAX_PAGE_BYTES) -> Page:
        if after is None:
            rows = self._rows("SELECT seq, data FROM events WHERE room = %s ORDER BY seq DESC LIMIT %s", room, limit)
        else:
            rows = self._rows(
                "SELECT seq, data FROM events WHERE room = %s AND seq > %s ORDER BY seq LIMIT %s",
                room,
                after,
                limit + 1,
            )
        return paged(self, room, rows, after=after, limit=limit, max_bytes=max_bytes)

    def search(self, room: str, query: str, limit: int, before: int | None = None) -> list[bytes]:
        words = search_words(query)
        if not words:
            return []
        # plainto_tsquery: people type text, not tsquery syntax; every word must match. The
        # expression is the index's own, and the NOT NULL its condition, so the index serves it.
        rows = self._rows(
            "SELECT seq, data FROM events WHERE room = %s AND text IS NOT NULL"
            " AND to_tsvector('simple', text) @@ plainto_tsquery('simple', %s) AND seq < %s"
            " ORDER BY seq DESC LIMIT %s",
            room,
            " ".join(words),
            before if before is not None else 2**62,
            limit,
        )
        return [d for _, d in _within(rows, MAX_PAGE_BYTES)]

    def sessions(self) -> list[SessionRecord]:
        rows = self._rows("SELECT token, nick, identity, peer, inbox, rooms, acked, away, ended, refused FROM sessions")
        return [SessionRecord(t, n, i, p, b, list(r), a, w, e, refusals(x)) for t, n, i, p, b, r, a, w, e, x in rows]

    def claims(self) -> dict[str, str]:
        return {str(nick): str(key) for nick, key in self._rows("SELECT nick, key FROM owners")}

    def topic(self, room: str) -> TopicRecord | None:
        rows = self._rows("SELECT text, nick, ts FROM topics WHERE room = %s", room)
        return TopicRecord(*rows[0]) if rows else None

    def read(self, inbox: str) -> int:
        rows = self._rows("SELECT seq FROM reads WHERE inbox = %s", inbox)
        return int(rows[0][0]) if rows else 0

    # --- copying (Portable) -------------------------------------------------------------------------

    def export(self, after: tuple[str, int] | None, limit: int) -> list[StoredEvent]:
        room, seq = after if after is not None else ("", 0)  # before any room: names are never empty
        rows = self._rows(
            "SELECT room, seq, data, presence, text FROM events WHERE (room, seq) > (%s, %s)"
            " ORDER BY room, seq LIMIT %s",
            room,
            seq,
            limit,
        )
        return [StoredEvent(*row) for row in rows]

    def streams(self) -> dict[str, tuple[int, int, int]]:
        rows = self._rows("SELECT room, min(seq), max(seq), count(*) FROM events GROUP BY room")
        return {room: (first, last, count) for room, first, last, count in rows}

    def searchable(self) -> int:
        return int(self._rows("SELECT count(text) FROM events")[0][0])

    def topics(self) -> dict[str, TopicRecord]:
        return {room: TopicRecord(text, nick, ts) for room, text, nick, ts in self._rows("SELECT * FROM topics")}

    def reads(self) -> dict[str, int]:
        return {str(inbox): int(seq) for inbox, seq in self._rows("SELECT inbox, seq FROM reads")}

    def set_id(self, history: str) -> None:
        self._retrying(
            "could not write the history store",
            lambda db: db.execute("UPDATE meta SET value = %s WHERE key = 'id'", (history,)),
        )
        self.id = history

    def clear(self) -> None:
        self._retrying(
            "could not empty the history store",
            lambda db: db.execute("TRUNCATE events, sessions, owners, topics, reads"),
        )
        self._touched.clear()
        self._backlog.clear()

    # --- retention --------------------------------------------------------------------------------

    def plan_retention(self, now: float) -> None:
        rooms, self._touched = self._touched, set()
        limit = self.history_limit
        try:
            with self._using("could not apply retention in") as db:
                for room in rooms:
                    self._plan(
                        room,
                        _first_seq(db, room),
                        _nth_newest(db, room, False, limit),
                        _nth_newest(db, room, True, limit),
                    )
                db.execute("DELETE FROM sessions WHERE ended IS NOT NULL AND ended < %s", (now - TOMBSTONE_SECONDS,))
        except StoreError:
            self._touched |= rooms  # tried again next time; the broker's next commit says if the server is gone

    def _trim(self, budget: int) -> bool:
        if not self._backlog:
            return False
        try:
            with self._using("could not apply retention in") as db, db.transaction():

                def remove(room: str, start: int, end: int, presence_only: bool) -> int:
                    where = "room = %s AND seq >= %s AND seq < %s" + (" AND presence" if presence_only else "")
                    return db.execute(f"DELETE FROM events WHERE {where}", (room, start, end)).rowcount

                def nth_presence(room: str, start: int, n: int) -> int | None:
                    row = db.execute(
                        "SELECT seq FROM events WHERE room = %s AND presence AND seq >= %s"
                        " ORDER BY seq OFFSET %s LIMIT 1",
                        (room, start, n),
                    ).fetchone()
                    return None if row is None else int(row[0])

                _trim_backlog(self._backlog, budget, remove, nth_presence)
        except StoreError:
            # (Where each room got to is no longer known: planned again next time.)
            self._touched.update(self._backlog)
            self._backlog.clear()
            return False
        self._last_commit = 0
        return bool(self._backlog)


class _Lost(StoreError):
    """The connection went during an operation (a new one may do it)."""


def _landed(db: Connection, marker: tuple[str, int, bytes]) -> bool:
    """Whether the event ``(room, seq, data)`` is stored."""
    room, seq, data = marker
    row = db.execute("SELECT data FROM events WHERE room = %s AND seq = %s", (room, seq)).fetchone()
    return row is not None and bytes(row[0]) == data


def _nth_newest(db: Connection, room: str, presence: bool, n: int) -> int | None:
    """The seq of the ``n``-th newest event of ``room`` of that presence, if it has that many."""
    row = db.execute(
        "SELECT seq FROM events WHERE room = %s AND presence = %s ORDER BY seq DESC OFFSET %s LIMIT 1",
        (room, presence, n - 1),
    ).fetchone()
    return int(row[0]) if row else None


def _first_seq(db: Connection, room: str) -> int:
    """Oldest ``seq`` still stored for ``room`` (0 if none)."""
    row = db.execute("SELECT min(seq) FROM events WHERE room = %s", (room,)).fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def _one(db: Connection, query: str, *params: object) -> object:
    row = db.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def _no_nul(text: str | None) -> str | None:
    """``text`` as PostgreSQL's text can hold it: a NUL becomes U+FFFD (the event itself, with
    the exact text, is stored as published)."""
    return None if text is None else text.replace("\0", "\ufffd")


def _one_line(exc: BaseException) -> str:
    """An error's message on one line (libpq's run over several)."""
    return "; ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__
