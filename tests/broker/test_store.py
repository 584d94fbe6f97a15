"""The history store: what every implementation of :class:`zchat.broker.store.Store` must do (one
suite, run against each), then what only the SQLite file does (its lock, its WAL, migrations)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from zchat.broker import store as store_module
from zchat.broker.store import (
    Portable,
    SessionRecord,
    SQLiteStore,
    Store,
    StoredEvent,
    StoreError,
    StoreLocked,
    TopicRecord,
)

MakeStore = Callable[..., Portable]
ROOM = "general"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeStore]:
    """Stores of one implementation, closed after the test: each a new SQLite file, or a
    PostgresStore on the test's own database (so one store a test)."""
    made: list[Portable] = []

    def make(history_limit: int = store_module.DEFAULT_HISTORY_LIMIT) -> Portable:
        if request.param == "postgres":
            from zchat.broker.pgstore import PostgresStore  # noqa: PLC0415 (an optional extra)

            made.append(PostgresStore(request.getfixturevalue("pg_dsn"), history_limit=history_limit))
        else:
            made.append(SQLiteStore(tmp_path / f"h{len(made)}.db", history_limit=history_limit))
        return made[-1]

    yield make
    for s in made:
        s.close()


def event(seq: int, kind: str = "message", text: str = "") -> bytes:
    return json.dumps({"seq": seq, "kind": kind, "text": text or f"m{seq}"}).encode()


def seqs(data: list[bytes]) -> list[int]:
    return [json.loads(d)["seq"] for d in data]


def add(s: Store, room: str, first: int, last: int, kind: str = "message") -> None:
    for seq in range(first, last + 1):
        s.append(room, seq, event(seq, kind), presence=kind in ("join", "leave"), text=f"m{seq}")
    s.commit()


# --- what every store does ------------------------------------------------------------------------------


def test_committed_events_come_back_in_seq_order_by_page(make_store: MakeStore) -> None:
    s = make_store()
    add(s, ROOM, 1, 10)
    page = s.page(ROOM, 3, 4)
    assert (seqs(page.events), page.upto, page.more) == ([4, 5, 6, 7], 7, True)
    page = s.page(ROOM, 7, 100)
    assert (seqs(page.events), page.upto, page.more) == ([8, 9, 10], 10, False)
    page = s.page(ROOM, 10, 5)
    assert (page.events, page.upto, page.more) == ([], 10, False)
    newest = s.page(ROOM, None, 3)
    assert (seqs(newest.events), newest.more) == ([8, 9, 10], True)


def test_nothing_is_visible_before_commit_and_a_rollback_forgets_it(make_store: MakeStore) -> None:
    s = make_store()
    s.append(ROOM, 1, event(1))
    assert s.staged and s.page(ROOM, 0, 10).events == [] and s.last_seq(ROOM) == 0
    s.rollback()
    assert not s.staged
    s.commit()
    assert s.last_seq(ROOM) == 0


def test_first_and_last_seq_per_room(make_store: MakeStore) -> None:
    s = make_store()
    add(s, ROOM, 1, 3)
    add(s, "dev", 1, 7)
    assert (s.first_seq(ROOM), s.last_seq(ROOM), s.last_seq("dev"), s.last_seq("nowhere")) == (1, 3, 7, 0)


def test_a_page_is_bounded_in_bytes_and_says_where_it_stopped(make_store: MakeStore) -> None:
    s = make_store()
    for seq in range(1, 21):
        s.append(ROOM, seq, json.dumps({"seq": seq, "text": "x" * 5000}).encode())
    s.commit()
    page = s.page(ROOM, 0, 1000, max_bytes=20_000)
    assert (seqs(page.events), page.upto, page.more) == ([1, 2, 3], 3, True)
    assert seqs(s.page(ROOM, 0, 1000, max_bytes=10).events) == [1]  # always at least one


def test_retention_counts_messages_and_keeps_presence_apart(make_store: MakeStore) -> None:
    s = make_store(history_limit=5)
    add(s, ROOM, 1, 3)  # three messages
    add(s, ROOM, 4, 103, kind="join")  # then a flood of 100 joins
    add(s, ROOM, 104, 104)
    s.retain(time.time())
    page = s.page(ROOM, 0, 1000)
    kept = seqs(page.events)
    assert [k for k in kept if k <= 3 or k == 104] == [1, 2, 3, 104]  # no message was pushed out
    assert len(kept) == 4 + 5  # and presence is down to its own limit
    add(s, ROOM, 105, 110)  # six more messages: the oldest go, and presence older than them
    s.retain(time.time())
    assert seqs(s.page(ROOM, 0, 1000).events) == [106, 107, 108, 109, 110]
    assert s.first_seq(ROOM) == 106


def test_retention_is_planned_then_removed_a_bounded_chunk_at_a_time(make_store: MakeStore) -> None:
    s = make_store(history_limit=5)
    add(s, ROOM, 1, 300)
    add(s, ROOM, 301, 500, kind="join")
    add(s, ROOM, 501, 501)
    s.plan_retention(time.time())
    assert s.first_seq(ROOM) == 1  # planned, nothing removed yet

    def count() -> int:
        return len(s.page(ROOM, 0, 1000).events)

    removed, more = [], True
    while more:
        before = count()
        more = s.trim()
        removed.append(before - count())
    # Each transaction removes at most twice the last commit's events, or RETAIN_CHUNK.
    assert max(removed) <= store_module.RETAIN_CHUNK and len(removed) > 5
    # What retain() at once leaves (see test_retention_counts_messages_and_keeps_presence_apart).
    assert seqs(s.page(ROOM, 0, 1000).events) == [*range(297, 301), *range(496, 502)]
    assert not s.trim()
    add(s, ROOM, 502, 801)  # a big commit: retention keeps pace with it
    s.plan_retention(time.time())
    assert s.trim() is False and seqs(s.page(ROOM, 0, 1000).events) == [*range(797, 802)]


def test_search_finds_every_word_newest_first_and_keeps_to_its_room(make_store: MakeStore) -> None:
    s = make_store()
    texts = ["deploy started", "coffee", "Deploy FINISHED", "finished the deploy"]
    for seq, text in enumerate(texts, 1):
        s.append(ROOM, seq, json.dumps({"seq": seq, "text": text}).encode(), text=text)
    s.append("dev", 1, b'{"seq":1,"text":"deploy dev"}', text="deploy dev")
    s.commit()
    found = [json.loads(d)["text"] for d in s.search(ROOM, "finished deploy", 10)]
    assert found == ["finished the deploy", "Deploy FINISHED"]
    assert [json.loads(d)["seq"] for d in s.search(ROOM, "deploy", 10, before=3)] == [1]
    assert s.search(ROOM, '"', 10) == s.search(ROOM, "OR NEAR(", 10) == []  # no query syntax errors


def test_a_nul_character_in_a_search_is_a_space(make_store: MakeStore) -> None:
    s = make_store()
    s.append(ROOM, 1, b'{"seq":1,"text":"deploy done"}', text="deploy done")
    s.commit()
    assert s.search(ROOM, "deploy\0done", 10) == s.search(ROOM, "\0deploy", 10) == [b'{"seq":1,"text":"deploy done"}']
    assert s.search(ROOM, "\0", 10) == []


def test_sessions_tombstones_claims_topics_and_reads_round_trip(make_store: MakeStore) -> None:
    s = make_store()
    alive = SessionRecord("t1", "alice", None, "10.0.0.1", "@alice~x", ["dev", "general"], 4, "lunch")
    s.save_session(alive)
    s.save_session(SessionRecord("t2", "bob", "K" * 40, None, "@bob", [], 9, ended=1000.0, refused={7: "too long"}))
    s.set_acked("t1", 5)
    s.claim("bob", "K" * 40)
    s.set_topic(ROOM, TopicRecord("ship it", "alice", "2026-01-01T00:00:00.000Z"))
    s.set_read("@bob", 3)
    s.commit()
    by_token = {r.token: r for r in s.sessions()}
    assert by_token["t1"] == SessionRecord("t1", "alice", None, "10.0.0.1", "@alice~x", ["dev", "general"], 5, "lunch")
    assert (by_token["t2"].ended, by_token["t2"].refused) == (1000.0, {7: "too long"})
    assert (s.claims(), s.topic(ROOM), s.read("@bob"), s.read("@nobody")) == (
        {"bob": "K" * 40}, TopicRecord("ship it", "alice", "2026-01-01T00:00:00.000Z"), 3, 0,
    )  # fmt: skip
    s.set_acked("t1", 6)  # the common case: only the number moves
    s.set_topic(ROOM, None)
    s.commit()
    assert {r.token: r.acked for r in s.sessions()}["t1"] == 6 and s.topic(ROOM) is None
    s.retain(1000.0 + store_module.TOMBSTONE_SECONDS + 1)  # old tombstones go
    assert [r.token for r in s.sessions()] == ["t1"]


def test_a_failing_commit_keeps_nothing_of_the_batch_and_raises(make_store: MakeStore) -> None:
    s = make_store()
    add(s, ROOM, 1, 2)
    s.append(ROOM, 3, event(3))
    s.append(ROOM, 2, b"not the stored 2")  # collides with what is stored: the batch fails
    s.save_session(SessionRecord("t1", "alice", None, None, "@a", [], 1))
    with pytest.raises(StoreError, match="could not store a batch"):
        s.commit()
    assert not s.staged and s.last_seq(ROOM) == 2 and s.sessions() == []
    assert seqs(s.page(ROOM, 0, 10).events) == [1, 2]


def test_a_nul_character_in_any_text_is_stored_not_a_failed_batch(make_store: MakeStore) -> None:
    s = make_store()
    data = json.dumps({"seq": 1, "text": "before\0after"}).encode()  # JSON may carry a NUL (\\u0000)
    s.append(ROOM, 1, data, text="before\0after")
    s.set_topic(ROOM, TopicRecord("x\0y", "alice", "2026-01-01T00:00:00.000Z"))
    s.save_session(SessionRecord("t1", "alice", None, None, "@a", [ROOM], 1, away="out\0"))
    s.commit()
    assert s.page(ROOM, 0, 10).events == [data]  # the event exactly as published
    assert s.search(ROOM, "after", 10) == s.search(ROOM, "before\0", 10) == [data]
    topic, away = s.topic(ROOM), s.sessions()[0].away
    assert topic is not None and (topic.text[0], topic.text[-1]) == ("x", "y")
    assert away is not None and away.startswith("out")


def test_export_and_the_rest_give_a_copy_everything_in_bounded_pieces(make_store: MakeStore) -> None:
    s = make_store()
    add(s, "b-room", 1, 3)
    s.append("a-room", 1, event(1, "join"), presence=True)
    s.append("a-room", 2, event(2, text="hello world"), text="hello world")
    s.append("@bob~x", 1, b'{"seq":1,"kind":"private"}')
    s.set_topic("a-room", TopicRecord("ship it", "alice", "2026-01-01T00:00:00.000Z"))
    s.set_read("@bob~x", 1)
    s.claim("bob", "K" * 40)
    s.save_session(SessionRecord("t1", "alice", None, None, "@alice~x", ["a-room"], 2))
    s.commit()
    everything = s.export(None, 100)
    assert [(e.room, e.seq) for e in everything] == [
        ("@bob~x", 1), ("a-room", 1), ("a-room", 2), ("b-room", 1), ("b-room", 2), ("b-room", 3),
    ]  # fmt: skip
    assert everything[2] == StoredEvent("a-room", 2, event(2, text="hello world"), False, "hello world")
    assert (everything[1].presence, everything[1].text, everything[0].text) == (True, None, None)
    assert s.export(("a-room", 1), 2) == everything[2:4]  # a page after (room, seq)
    assert s.export(("b-room", 3), 2) == []
    assert s.streams() == {"@bob~x": (1, 1, 1), "a-room": (1, 2, 2), "b-room": (1, 3, 3)}
    assert s.searchable() == 4
    assert s.topics() == {"a-room": TopicRecord("ship it", "alice", "2026-01-01T00:00:00.000Z")}
    assert s.reads() == {"@bob~x": 1}
    history = s.id
    s.set_id("copied-history")
    assert s.id == "copied-history" != history
    s.clear()
    assert (s.streams(), s.searchable(), s.sessions(), s.claims(), s.topics(), s.reads()) == ({}, 0, [], {}, {}, {})
    assert s.id == "copied-history"
    add(s, "b-room", 1, 2)  # and it fills again
    assert [json.loads(d)["seq"] for d in s.search("b-room", "m2", 10)] == [2]


# --- the SQLite file -----------------------------------------------------------------------------------


def test_a_reopened_file_keeps_everything_and_its_id(tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    s = SQLiteStore(db)
    add(s, ROOM, 1, 3)
    history = s.id
    s.close()
    again = SQLiteStore(db)
    assert (again.id, again.last_seq(ROOM)) == (history, 3)
    again.close()
    other = SQLiteStore(tmp_path / "other.db")
    assert other.id != history
    other.close()


def test_memory_store_works_without_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    s = SQLiteStore(":memory:")
    add(s, ROOM, 1, 2)
    assert (s.last_seq(ROOM), s.size(), s.wal_size()) == (2, 0, 0)
    s.close()
    assert list(tmp_path.iterdir()) == []


def test_a_second_store_on_the_same_file_is_refused_naming_the_holder(tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    first = SQLiteStore(db)
    with pytest.raises(StoreLocked, match=rf"{db} is in use by another broker \(pid {os.getpid()}\)"):
        SQLiteStore(db)
    first.close()
    SQLiteStore(db).close()  # free again once closed


def test_the_lock_dies_with_its_process(tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    code = f"from zchat.broker.store import SQLiteStore; s = SQLiteStore({str(db)!r}); print('locked', flush=True)"
    code += "; input()"
    with subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as holder:
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
            with pytest.raises(StoreLocked, match=f"pid {holder.pid}"):
                SQLiteStore(db)
            os.kill(holder.pid, signal.SIGKILL)
            holder.wait(5)
            SQLiteStore(db).close()
        finally:
            holder.kill()


def test_texts_wait_for_the_index_but_every_committed_message_is_searchable(tmp_path: Path) -> None:
    s = SQLiteStore(tmp_path / "h.db", history_limit=5)
    try:
        add(s, ROOM, 1, 8)  # fewer than INDEX_BATCH: their texts wait
        assert len(s._unindexed) == 8
        assert seqs(s.search(ROOM, "m7", 10)) == [7]  # a search indexes them first
        assert s._unindexed == []
        add(s, ROOM, 9, 12)
        s.retain(time.time())  # retention indexes what waits, then removes texts with their messages
        assert seqs(s.page(ROOM, 0, 100).events) == [8, 9, 10, 11, 12]
        indexed = [row[0] for row in s._db.execute("SELECT seq FROM search ORDER BY seq")]
        assert indexed == [8, 9, 10, 11, 12]
        add(s, ROOM, 13, 12 + store_module.INDEX_BATCH)  # a commit that makes them enough indexes them
        assert s._unindexed == []
    finally:
        s.close()


def test_texts_a_store_left_waiting_when_its_process_died_are_indexed_when_it_opens(tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    s = SQLiteStore(db)
    add(s, ROOM, 1, 5)
    s._unindexed = []  # the process dies: what waited in its memory is gone
    s.close()
    s = SQLiteStore(db)
    try:
        assert seqs(s.search(ROOM, "m3", 10)) == [3]
        add(s, ROOM, 6, 6)
        assert seqs(s.search(ROOM, "m6", 10)) == [6]
        indexed = [row[0] for row in s._db.execute("SELECT seq FROM search ORDER BY seq")]
        assert indexed == [1, 2, 3, 4, 5, 6]  # each once
    finally:
        s.close()


def write_steadily(s: SQLiteStore, events: int, *, per_commit: int, pause: float = 0.0) -> tuple[int, int]:
    """Write ``events`` 1 KB events in commits of ``per_commit``, as a broker's batches, ``pause``
    seconds apart (a broker's loop between batches: the checkpoint thread's time to copy), for at
    most 20 s; returns how many were written and the biggest write-ahead log seen."""
    seq, biggest = 0, 0
    deadline = time.monotonic() + 20
    while seq < events and time.monotonic() < deadline:
        for _ in range(per_commit):
            seq += 1
            s.append(ROOM, seq, json.dumps({"seq": seq, "text": "x" * 1000}).encode())
        s.commit()
        biggest = max(biggest, s.wal_size())
        if pause:
            time.sleep(pause)  # (pacing the load, not waiting for a condition)
    return seq, biggest


def test_the_write_ahead_log_stays_bounded_under_steady_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "WAL_LIMIT_BYTES", 1 << 20)
    monkeypatch.setattr(store_module, "CHECKPOINT_INTERVAL", 0.05)
    s = SQLiteStore(tmp_path / "h.db")
    try:
        # 8 MiB of events in batches, as a busy broker writes them: the log must not keep it all.
        seq, biggest = write_steadily(s, 8000, per_commit=100)
        assert seq == 8000
        assert biggest < 4 << 20, f"the WAL grew to {biggest} bytes"
    finally:
        s.close()


def test_under_steady_writes_the_log_is_started_again_before_it_needs_truncating(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "WAL_RESTART_BYTES", 1 << 20)
    monkeypatch.setattr(store_module, "WAL_LIMIT_BYTES", 1 << 40)  # never truncated: restarts bound it
    s = SQLiteStore(tmp_path / "h.db")
    try:
        # 12 MiB of events in small commits, paced as a busy broker writes them.
        seq, biggest = write_steadily(s, 12_000, per_commit=10, pause=0.001)
        assert seq == 12_000
        assert biggest < 6 << 20, f"the WAL grew to {biggest} bytes"
        assert seqs(s.page(ROOM, 11_990, 100).events) == list(range(11_991, 12_001))
    finally:
        s.close()


def test_a_schema_1_file_is_migrated_keeping_its_history(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    old = sqlite3.connect(db)
    old.executescript(
        "CREATE TABLE events (room TEXT NOT NULL, seq INTEGER NOT NULL, data BLOB NOT NULL, sender TEXT,"
        " msg_id TEXT, at REAL, PRIMARY KEY (room, seq)) WITHOUT ROWID;"
        " CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
        " INSERT INTO meta VALUES ('id', 'old-history');"
    )
    old.execute("INSERT INTO events VALUES ('general', 1, ?, NULL, NULL, NULL)", (event(1, "join"),))
    old.execute("INSERT INTO events VALUES ('general', 2, ?, 'alice', 'x-1', 1.0)", (event(2, text="old deploy"),))
    old.commit()
    old.close()
    s = SQLiteStore(db)
    try:
        assert (s.id, seqs(s.page(ROOM, 0, 10).events)) == ("old-history", [1, 2])
        assert [json.loads(d)["text"] for d in s.search(ROOM, "deploy", 5)] == ["old deploy"]
        add(s, ROOM, 3, 3)
    finally:
        s.close()


def test_a_file_whose_sessions_keep_no_refusals_gets_them(tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    s = SQLiteStore(db)
    s.save_session(SessionRecord("t1", "alice", None, None, "@a", ["general"], 3))
    s.commit()
    s.close()
    old = sqlite3.connect(db)  # as an earlier zchat 0.2 left it
    old.executescript(
        "ALTER TABLE sessions RENAME TO newer;"
        " CREATE TABLE sessions (token TEXT PRIMARY KEY, nick TEXT NOT NULL, identity TEXT, peer TEXT,"
        " inbox TEXT NOT NULL, rooms TEXT NOT NULL, acked INTEGER NOT NULL, away TEXT, ended REAL) WITHOUT ROWID;"
        " INSERT INTO sessions SELECT token, nick, identity, peer, inbox, rooms, acked, away, ended FROM newer;"
        " DROP TABLE newer;"
    )
    old.close()
    s = SQLiteStore(db)
    try:
        assert [(r.token, r.acked, r.refused) for r in s.sessions()] == [("t1", 3, {})]
        s.save_session(SessionRecord("t1", "alice", None, None, "@a", ["general"], 4, refused={4: "no"}))
        s.commit()
        assert [(r.acked, r.refused) for r in s.sessions()] == [(4, {4: "no"})]
    finally:
        s.close()


def test_an_unusable_file_is_one_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "not-a-db"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match=f"cannot open the history store {bad}"):
        SQLiteStore(bad)
    SQLiteStore(tmp_path / "fine.db").close()


def test_a_failed_read_is_a_store_error_and_fails_the_batch_built_on_it(tmp_path: Path) -> None:
    s = SQLiteStore(tmp_path / "h.db")
    try:
        add(s, ROOM, 1, 1)
        s.append(ROOM, 2, event(2))  # staged before the read, as the broker's core does
        s._db.execute("ALTER TABLE reads RENAME TO gone")  # (a disk that fails under one table)
        with pytest.raises(StoreError, match="could not read the history store"):
            s.read("@alice")
        s._db.execute("ALTER TABLE gone RENAME TO reads")
        assert s.read("@alice") == 0  # reads work again...
        with pytest.raises(StoreError, match="rests on a failed read"):
            s.commit()  # ...but the batch rested on the failed one
        assert s.last_seq(ROOM) == 1 and not s.staged
        add(s, ROOM, 2, 2)
        assert s.last_seq(ROOM) == 2
    finally:
        s.close()
