"""`zchat store copy` as an operator runs it (a real process), between a SQLite file and a real
PostgreSQL database, and a broker started on the copy serving clients; also how `--db` takes a
PostgreSQL URL on the command line."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq
from conftest import ZCHAT, ThreadBroker, child_env, start_broker_process, wait_for
from pgserver import PgServer

from zchat import protocol as p
from zchat.broker.pgstore import PostgresStore
from zchat.broker.store import Portable, SessionRecord, SQLiteStore, TopicRecord
from zchat.client.shell import Client

pytestmark = pytest.mark.postgres

TS = "2026-01-01T00:00:00.000Z"


def build_history(store: Portable, rooms: dict[str, int], *, batch: int = 5000) -> None:
    """Events as a broker would have stored them — messages (searchable), every 50th a join,
    private messages in inboxes — and a live session, a tombstone, a claim, a topic and a read
    mark, straight through the store's own API."""
    for room, count in rooms.items():
        for seq in range(1, count + 1):
            if room.startswith("@"):
                ev = p.Event(seq, TS, room, "private", "alice", f"psst {seq}", to="bob")
                store.append(room, seq, p.encode(ev))
            elif seq % 50 == 0:
                store.append(room, seq, p.encode(p.Event(seq, TS, room, "join", "bob", "bob joined")), presence=True)
            else:
                text = f"message {seq} of {room} {'deploy' if seq % 7 == 0 else 'coffee'}"
                store.append(room, seq, p.encode(p.Event(seq, TS, room, "message", "alice", text)), text=text)
            if seq % batch == 0:
                store.commit()
    # Alive in no room: when its lease lapses on a broker started on the copy, no room hears it.
    store.save_session(SessionRecord("live-token", "alice", None, "127.0.0.1", "@alice~x", [], 7))
    store.save_session(SessionRecord("old-token", "carol", None, None, "@carol~y", [], 3, ended=time.time()))
    store.claim("alice", "K" * 40)
    store.set_topic("general", TopicRecord("ship it", "alice", TS))
    store.set_read("@bob~x", 2)
    store.commit()


def copy(source: str, target: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*ZCHAT, "store", "copy", "--from", source, "--to", target, *extra],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=120,
    )


def everything(store: Portable) -> tuple[object, ...]:
    """All a store holds, comparable across the two kinds."""
    events = []
    after = None
    while chunk := store.export(after, 1000):
        events += chunk
        after = chunk[-1].room, chunk[-1].seq
    sessions = sorted(store.sessions(), key=lambda r: r.token)
    return store.id, events, sessions, store.claims(), store.topics(), store.reads()


def test_a_100k_event_sqlite_history_copied_to_postgresql_serves_a_broker_that_carries_on(
    tmp_path: Path, pg_dsn: str, pg_server: PgServer, ctx: zmq.Context[zmq.Socket[bytes]]
) -> None:
    db = tmp_path / "history.sqlite3"
    source = SQLiteStore(db)
    build_history(source, {"general": 60_000, "dev": 39_000, "@bob~x": 1_000})
    history, newest = source.id, source.page("general", None, 200)
    found = source.search("general", "deploy", 20)
    source.close()

    started = time.monotonic()
    done = copy(str(db), pg_dsn)
    took = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    summary = done.stdout.strip()
    assert "\n" not in summary and done.stderr == ""
    assert summary.startswith("Copied 100,000 events (2 rooms and 1 inbox; 97,020 searchable), 1 session and")
    assert f"history id {history}" in summary and pg_server.password not in summary
    print(f"copied 100 000 events SQLite -> PostgreSQL in {took:.1f} s (the command, start to end)")

    b = ThreadBroker(ctx, db=pg_dsn)
    try:
        assert (b.store.id, b.broker.core.history_id) == (history, history)
        with Client("dave", ["general", "dev"], endpoints=b.endpoints, context=ctx) as dave:
            *shown, joined = dave.history("general", 201)
            assert [p.encode(e) for e in shown] == newest.events  # the same events, byte for byte
            assert (joined.kind, joined.nick, joined.seq) == ("join", "dave", 60_001)  # seq goes on
            assert b.store.search("general", "deploy", 20) == found
            dave.say("after the move")
            said = wait_for(dave, lambda e: e.kind == "message" and e.text == "after the move")
            assert (said.room, said.seq) == ("general", 60_002)
            dave.say("and in dev", room="dev")
            assert wait_for(dave, lambda e: e.kind == "message" and e.room == "dev").seq == 39_002
    finally:
        b.stop()


def test_a_copy_back_to_sqlite_holds_exactly_what_postgresql_held(tmp_path: Path, pg_dsn: str) -> None:
    pg = PostgresStore(pg_dsn)
    build_history(pg, {"general": 120, "dev": 30, "@bob~x": 5}, batch=40)
    before = everything(pg)
    pg.close()
    back = tmp_path / "back.sqlite3"
    done = copy(pg_dsn, str(back))
    assert done.returncode == 0, done.stderr
    assert "Copied 155 events (2 rooms and 1 inbox; 148 searchable), 1 session and 1 tombstone, 1 claim" in done.stdout
    copied = SQLiteStore(back)
    again = PostgresStore(pg_dsn)
    try:
        assert everything(copied) == before
        for words in ("deploy", "coffee 119", "message of dev"):
            for room in ("general", "dev"):
                assert copied.search(room, words, 50) == again.search(room, words, 50)
        assert copied.search("general", "deploy", 50, before=100) == again.search("general", "deploy", 50, before=100)
    finally:
        copied.close()
        again.close()


def test_a_target_holding_a_history_is_refused_unless_forced(tmp_path: Path, pg_dsn: str) -> None:
    source, target = tmp_path / "a.sqlite3", tmp_path / "b.sqlite3"
    for path, rooms in ((source, {"general": 10}), (target, {"elsewhere": 3})):
        s = SQLiteStore(path)
        build_history(s, rooms)
        s.close()
    refused = copy(str(source), str(target))
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr.strip() == (
        f"Error: {target} holds a history already: copying into it would mix two histories"
        " (--force empties it first, and what it holds is lost)"
    )
    done = copy(str(source), str(target), "--force")
    assert done.returncode == 0, done.stderr
    s, t = SQLiteStore(source), SQLiteStore(target)
    try:
        assert everything(t) == everything(s) and t.streams() == {"general": (1, 10, 10)}
    finally:
        s.close()
        t.close()


def test_a_store_in_use_a_missing_file_and_the_same_store_are_each_one_line(
    tmp_path: Path, pg_dsn: str, ctx: zmq.Context[zmq.Socket[bytes]]
) -> None:
    db = tmp_path / "h.sqlite3"
    s = SQLiteStore(db)
    build_history(s, {"general": 5})
    s.close()
    b = ThreadBroker(ctx, db=pg_dsn)
    try:
        busy = copy(str(db), pg_dsn)
        assert busy.returncode == 1
        assert busy.stderr.startswith("Error: the history store postgresql://zchat@127.0.0.1:")
        assert "is in use by another broker (backend pid " in busy.stderr and busy.stderr.count("\n") == 1
    finally:
        b.stop()
    missing = copy(str(tmp_path / "nope.sqlite3"), pg_dsn)
    assert (missing.returncode, missing.stderr) == (1, f"Error: --from {tmp_path / 'nope.sqlite3'}: no such file\n")
    same = copy(pg_dsn, pg_dsn)
    assert (same.returncode, same.stderr) == (1, "Error: --from and --to name the same store\n")
    assert not (tmp_path / "nope.sqlite3").exists()


def test_a_broker_on_postgresql_logs_where_without_the_password(pg_server: PgServer, pg_dsn: str) -> None:
    bp = start_broker_process(db=pg_dsn)
    assert bp.stop() == 0  # and with it, its whole log read
    where = pg_dsn.replace(f":{pg_server.password}@", "@")
    assert any(f"history: {where} (keeping 10000 events a room)" in line for line in bp.log), bp.log
    assert not [line for line in bp.log if pg_server.password in line]


#: `zchat` as on a machine without the postgres extra: importing psycopg fails.
WITHOUT_PSYCOPG = "import sys; sys.modules['psycopg'] = None; from zchat.__main__ import main; main()"


def test_a_postgresql_url_without_psycopg_is_one_line_naming_the_extra(tmp_path: Path) -> None:
    url = "postgresql://zchat:hunter2@127.0.0.1:5/history"
    for args in (["broker", "--db", url], ["store", "copy", "--from", url, "--to", str(tmp_path / "x.db")]):
        done = subprocess.run(
            [sys.executable, "-c", WITHOUT_PSYCOPG, *args], capture_output=True, text=True, env=child_env(), timeout=30
        )
        assert done.returncode == 1
        lines = [line for line in done.stderr.splitlines() if not line.startswith("20")]  # not the log's lines
        assert lines == [
            "Error: postgresql://zchat@127.0.0.1:5/history is a PostgreSQL database, and the PostgreSQL store needs"
            " psycopg: pip install 'zchat[postgres]'"
        ]
        assert "hunter2" not in done.stderr


def test_the_search_texts_of_a_copy_are_the_sources(tmp_path: Path, pg_dsn: str) -> None:
    db = tmp_path / "h.sqlite3"
    s = SQLiteStore(db)
    s.append("general", 1, json.dumps({"seq": 1, "text": "shown"}).encode(), text="indexed words differ")
    s.commit()
    s.close()
    assert copy(str(db), pg_dsn).returncode == 0
    pg = PostgresStore(pg_dsn)
    try:
        assert pg.search("general", "indexed differ", 5) == [b'{"seq": 1, "text": "shown"}']
        assert pg.search("general", "shown", 5) == []
    finally:
        pg.close()
