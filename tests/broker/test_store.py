"""Store on real SQLite files (and ``:memory:``), and BrokerCore restarted on the same file."""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import msgspec
import pytest

from zchat import protocol as p
from zchat.broker.config import BrokerConfig
from zchat.broker.core import DEDUPE_WINDOW, BrokerCore
from zchat.broker.store import Store

ROOM = "general"


def data(room: str, seq: int) -> bytes:
    return p.encode(p.Event(seq, "2024-01-01T00:00:00.000Z", room, "message", "bob", f"{room} {seq}"))


def stored_seqs(store: Store, room: str) -> list[int]:
    return [p.decode_event(d).seq for d in store.range(room, 0, 1_000_000)]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "sub" / "zchat.db"  # the parent directory does not exist yet


@pytest.fixture
def store(db: Path) -> Iterator[Store]:
    s = Store(db)
    yield s
    s.close()


# --- events -------------------------------------------------------------------------------------


def test_committed_events_come_back_in_seq_order_with_after_and_limit(store: Store) -> None:
    for seq in (3, 1, 5, 2, 4):  # staged out of order
        store.append(ROOM, seq, data(ROOM, seq))
    store.append("dev", 1, data("dev", 1))
    store.commit()
    assert store.range(ROOM, 0, 100) == [data(ROOM, n) for n in range(1, 6)]
    assert store.range(ROOM, 2, 2) == [data(ROOM, 3), data(ROOM, 4)]
    assert store.range(ROOM, 4, 100) == [data(ROOM, 5)]
    assert store.range(ROOM, 5, 100) == []
    assert store.range("dev", 0, 100) == [data("dev", 1)]
    assert store.range("nowhere", 0, 100) == []
    assert all(isinstance(d, bytes) for d in store.range(ROOM, 0, 100))


def test_nothing_is_visible_before_commit(store: Store, db: Path) -> None:
    other = Store(db)  # a second connection to the same file
    try:
        store.append(ROOM, 1, data(ROOM, 1), ("alice", "m1", 100.0))
        assert store.staged
        for s in (store, other):
            assert s.range(ROOM, 0, 10) == []
            assert s.last_seqs() == {}
            assert s.first_seq(ROOM) == 0
            assert list(s.sent_since(0.0)) == []
        store.commit()
        assert not store.staged
        for s in (store, other):
            assert s.range(ROOM, 0, 10) == [data(ROOM, 1)]
            assert list(s.sent_since(0.0)) == [("alice", "m1", ROOM, 1, 100.0)]
    finally:
        other.close()


def test_last_seqs_and_first_seq_per_room(store: Store) -> None:
    assert store.last_seqs() == {}
    for room, upto in ((ROOM, 7), ("dev", 3)):
        for seq in range(1, upto + 1):
            store.append(room, seq, data(room, seq))
    store.commit()
    assert store.last_seqs() == {ROOM: 7, "dev": 3}
    assert store.first_seq(ROOM) == 1
    assert store.first_seq("nowhere") == 0
    store.append("dev", 4, data("dev", 4))
    store.commit()
    assert store.last_seqs() == {ROOM: 7, "dev": 4}


@pytest.mark.parametrize("batch", [1, 4, 12])
def test_retention_keeps_the_newest_history_limit_events_per_room(db: Path, batch: int) -> None:
    store = Store(db, history_limit=5)
    try:
        for seq in range(1, 4):
            store.append("dev", seq, data("dev", seq))
        for seq in range(1, 13):
            store.append(ROOM, seq, data(ROOM, seq))
            if seq % batch == 0:
                store.commit()
        assert stored_seqs(store, ROOM) == [8, 9, 10, 11, 12]
        assert store.first_seq(ROOM) == 8
        assert store.last_seqs() == {ROOM: 12, "dev": 3}
        assert stored_seqs(store, "dev") == [1, 2, 3]  # under the limit: untouched
        assert store.range(ROOM, 0, 2) == [data(ROOM, 8), data(ROOM, 9)]
    finally:
        store.close()


def test_a_reopened_store_keeps_everything_in_wal_mode(db: Path) -> None:
    store = Store(db, history_limit=5)
    for seq in range(1, 9):
        store.append(ROOM, seq, data(ROOM, seq), ("alice", f"m{seq}", 100.0 + seq))
    store.append("dev", 1, data("dev", 1))
    store.commit()
    store.close()

    again = Store(db, history_limit=5)
    try:
        assert again.range(ROOM, 0, 100) == [data(ROOM, n) for n in range(4, 9)]
        assert again.last_seqs() == {ROOM: 8, "dev": 1}
        assert again.first_seq(ROOM) == 4
        # The dedupe records went with the events retention deleted.
        assert list(again.sent_since(0.0)) == [("alice", f"m{n}", ROOM, n, 100.0 + n) for n in range(4, 9)]
        with sqlite3.connect(db) as raw:  # WAL mode is a property of the file
            assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        again.close()


def test_a_store_keeps_its_id_and_another_history_has_another(db: Path, tmp_path: Path) -> None:
    store = Store(db)
    name = store.id
    store.close()
    again = Store(db)
    other = Store(tmp_path / "other.db")
    memory = Store(":memory:")
    try:
        assert again.id == name
        assert len({name, other.id, memory.id}) == 3
    finally:
        for s in (again, other, memory):
            s.close()


def test_memory_store_works_without_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    store = Store(":memory:", history_limit=2)
    try:
        for seq in (1, 2, 3):
            store.append(ROOM, seq, data(ROOM, seq))
        store.commit()
        assert store.range(ROOM, 0, 10) == [data(ROOM, 2), data(ROOM, 3)]
        assert store.last_seqs() == {ROOM: 3}
    finally:
        store.close()
    assert list(tmp_path.iterdir()) == []  # no file named ":memory:"


# --- the dedupe window --------------------------------------------------------------------------


def test_sent_records_are_read_by_age_and_persist(db: Path) -> None:
    store = Store(db)
    for n, at in enumerate((100.0, 200.0, 300.0), 1):
        store.append(ROOM, n, data(ROOM, n), ("alice", f"m{n}", at))
    store.append(ROOM, 4, data(ROOM, 4))  # a broker event: no dedupe record
    store.commit()
    assert store.sent_since(200.0) == [("alice", "m2", ROOM, 2, 200.0), ("alice", "m3", ROOM, 3, 300.0)]
    assert list(store.sent_since(300.5)) == []
    store.close()

    again = Store(db)
    try:
        assert [r[1] for r in again.sent_since(0.0)] == ["m1", "m2", "m3"]
    finally:
        again.close()


# --- commit ---------------------------------------------------------------------------------------


def test_commit_of_nothing_does_not_touch_the_database(store: Store) -> None:
    assert not store.staged
    store.close()
    store.commit()  # a closed connection would raise if it were used
    store.append(ROOM, 1, data(ROOM, 1))
    with pytest.raises(sqlite3.ProgrammingError):
        store.commit()


def test_a_failing_commit_rolls_back_the_whole_batch_and_raises(store: Store, db: Path) -> None:
    store.append(ROOM, 1, data(ROOM, 1))
    store.commit()
    # A batch whose last row breaks a NOT NULL constraint: the rows before it were written
    # inside the transaction and must go with it.
    store.append(ROOM, 2, data(ROOM, 2), ("alice", "m2", 100.0))
    store.append(ROOM, 3, data(ROOM, 3))
    store.claim("dave", "k" * 40)
    store.append(ROOM, 4, cast(bytes, None))
    with pytest.raises(sqlite3.IntegrityError):
        store.commit()
    assert not store.staged  # the failed batch is dropped, not retried with the next one
    other = Store(db)
    try:
        for s in (store, other):
            assert stored_seqs(s, ROOM) == [1]
            assert list(s.sent_since(0.0)) == []
            assert s.claims() == {}
    finally:
        other.close()
    # No transaction was left open: the store goes on working.
    store.append(ROOM, 2, data(ROOM, 2))
    store.commit()
    assert stored_seqs(store, ROOM) == [1, 2]


# --- BrokerCore on a Store, across a restart -------------------------------------------------------


class Broker:
    """A BrokerCore on a Store in ``db``, committing after each call like the broker shell."""

    def __init__(self, db: Path, wall: list[float]) -> None:
        self.store = Store(db)
        tokens = itertools.count(1)
        self.core = BrokerCore(
            1000.0,
            BrokerConfig(heartbeat=2.0),
            store=self.store,
            wallclock=lambda: wall[0],
            new_token=lambda: f"token-{next(tokens)}",
        )

    def request(self, req: p.Request) -> dict[str, object]:
        reply, _ = self.core.request([b"peer", b"", p.encode(req)], 1000.0)
        self.store.commit()
        assert reply is not None and reply[:2] == [b"peer", b""]
        return p.decode_reply(reply[-1])

    def hello(self, nick: str, rooms: list[str]) -> str:
        reply = self.request(p.Hello(nick=nick, rooms=rooms))
        assert reply["ok"] is True, reply
        assert reply["history"] == self.store.id  # the history a client reads is named by the file
        return str(reply["token"])

    def post(self, token: str, room: str, text: str, msg_id: str) -> list[tuple[bytes, p.Event]]:
        out = self.core.ingest([p.encode({"token": token, "room": room, "text": text, "id": msg_id})], 1000.0)
        self.store.commit()
        return [(topic, p.decode_event(payload)) for topic, payload in out]

    def history(self, room: str) -> list[p.Event]:
        reply = self.request(p.History(room=room, after=0, limit=100))
        return msgspec.convert(reply["events"], list[p.Event])

    def close(self) -> None:
        self.store.close()


def test_a_restarted_core_continues_seqs_and_drops_resent_duplicates(db: Path) -> None:
    wall = [1_700_000_000.0]
    first = Broker(db, wall)
    token = first.hello("alice", [ROOM, "dev"])  # join: seq 1 in both rooms
    [(topic, hi)] = first.post(token, ROOM, "hi", "m1")
    assert (topic, hi.seq, hi.id) == (p.room_topic(ROOM), 2, "m1")
    [(_, dev)] = first.post(token, "dev", "in dev", "m2")
    assert dev.seq == 2
    [(topic, dup)] = first.post(token, ROOM, "hi", "m1")  # resent before the restart
    assert (topic, dup.kind, dup.seq, dup.dup_of, dup.id) == (b"@alice:", "duplicate", 0, 2, "m1")
    first.close()  # the broker process dies; its file stays

    wall[0] += 60.0
    second = Broker(db, wall)
    try:
        assert second.core.epoch != first.core.epoch  # a new run...
        assert second.store.id == first.store.id  # ...of the same history: no reset for clients
        assert (second.core.seq(ROOM), second.core.seq("dev")) == (2, 2)
        token = second.hello("Alice", [ROOM])  # a new session, a new join event
        for msg_id, room, dup_of in (("m1", ROOM, 2), ("m2", "dev", 2)):
            [(topic, dup)] = second.post(token, ROOM, "resent", msg_id)
            assert (topic, dup.kind, dup.room, dup.dup_of, dup.id) == (b"@alice:", "duplicate", room, dup_of, msg_id)
        [(_, new)] = second.post(token, ROOM, "after the restart", "m3")
        assert new.seq == 4
        history = second.history(ROOM)
        assert [e.seq for e in history] == [1, 2, 3, 4]  # no seq used twice
        assert [(e.kind, e.text) for e in history] == [
            ("join", "alice joined"),
            ("message", "hi"),
            ("join", "Alice joined"),
            ("message", "after the restart"),
        ]
        assert second.core.counters.duplicates == 2
    finally:
        second.close()


def test_a_core_restarted_after_the_dedupe_window_accepts_the_id_again(db: Path) -> None:
    wall = [1_700_000_000.0]
    first = Broker(db, wall)
    token = first.hello("alice", [ROOM])
    assert first.post(token, ROOM, "hi", "m1")[0][1].seq == 2
    first.close()

    wall[0] += DEDUPE_WINDOW + 1
    second = Broker(db, wall)
    try:
        token = second.hello("alice", [ROOM])
        [(topic, again)] = second.post(token, ROOM, "hi", "m1")
        assert (topic, again.kind, again.seq) == (p.room_topic(ROOM), "message", 4)
    finally:
        second.close()
