"""The store's own ceiling: how many messages a second SQLite takes in zchat's schema, with no
broker, no sockets and nothing else on the machine's cores.

``python -m benchmarks.ceiling`` writes N room messages (the bench's ~100-byte texts, stamped as
the broker stamps them) into a fresh store in a temp dir, committed in batches of B, two ways:

- ``sqlite3``: the schema's inserts, bare (``executemany`` of prepared rows, one transaction a
  batch), with and without the search index: what SQLite itself can do here;
- ``SQLiteStore``: the broker's own store (``append`` per message, ``commit`` per batch), as the
  broker drives it: what zchat's store can do here.

It bounds what any broker with the store on can reach on this machine, whatever its own cost per
message: issue 13's target of 0.8 × the C proxy's throughput at 1 → 1 (~930 000 msgs/s here) is
several times what SQLite takes. The numbers go to stdout as a Markdown table.
"""

from __future__ import annotations

import argparse
import functools
import sqlite3
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from zchat import protocol as p
from zchat.broker.store import _SCHEMA, SQLiteStore

__all__ = ["main"]

_INSERT_EVENT = "INSERT INTO events (room, seq, data, presence, gid) VALUES (?, ?, ?, ?, ?)"
_INSERT_TEXT = "INSERT INTO search (rowid, text, room, seq) VALUES (?, ?, ?, ?)"


def _messages(n: int, text_bytes: int) -> list[tuple[int, bytes, str]]:
    """``n`` stamped room messages: (seq, the event as stored, its text)."""
    ts = p.format_ts(time.time())
    out = []
    for seq in range(1, n + 1):
        text = f"message {seq} " + "x" * max(0, text_bytes - 16)
        out.append((seq, p.encode(p.Event(seq, ts, "general", "message", "bench", text)), text))
    return out


def _bare(path: Path, messages: list[tuple[int, bytes, str]], batch: int, *, search: bool) -> None:
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(_SCHEMA)
        for start in range(0, len(messages), batch):
            chunk = messages[start : start + batch]
            db.execute("BEGIN IMMEDIATE")
            db.executemany(_INSERT_EVENT, [("general", seq, data, 0, seq) for seq, data, _ in chunk])
            if search:
                db.executemany(_INSERT_TEXT, [(seq, text, "general", seq) for seq, _, text in chunk])
            db.execute("COMMIT")
    finally:
        db.close()


def _store(path: Path, messages: list[tuple[int, bytes, str]], batch: int) -> None:
    store = SQLiteStore(path, history_limit=len(messages))
    try:
        for start in range(0, len(messages), batch):
            for seq, data, text in messages[start : start + batch]:
                store.append("general", seq, data, text=text)
            store.commit()
    finally:
        store.close()


def _rate(write: Callable[[Path], None], n: int) -> float:
    """Messages a second ``write`` (of ``n`` messages) takes into a fresh file."""
    with tempfile.TemporaryDirectory(prefix="zchat-ceiling-") as tmp:
        started = time.perf_counter()
        write(Path(tmp) / "history.sqlite3")
        return n / (time.perf_counter() - started)


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.ceiling", description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=200_000, help="N messages per run [200 000]")
    ap.add_argument("--batch", type=int, action="append", help="B messages per commit (repeatable) [1, 64, 1000]")
    ap.add_argument("--text-bytes", type=int, default=100, help="bytes of text per message [100]")
    args = ap.parse_args()
    n = max(100, min(args.messages, 5_000_000))  # bounded: a run is seconds, not hours
    messages = _messages(n, args.text_bytes)
    print(f"# SQLite's ceiling in zchat's schema: {n:,} messages, WAL, synchronous=NORMAL, one process\n")
    print("| batch | sqlite3, no search index | sqlite3, with search index | zchat SQLiteStore (search index) |")
    print("|--:|--:|--:|--:|")
    for batch in args.batch or [1, 64, 1000]:
        # (a commit per message is slow: fewer of them, as the rate is all that is reported)
        count = n if batch > 1 else min(n, 20_000)
        few = messages[:count]
        writers = [
            functools.partial(_bare, messages=few, batch=batch, search=False),
            functools.partial(_bare, messages=few, batch=batch, search=True),
            functools.partial(_store, messages=few, batch=batch),
        ]
        rates = [_rate(write, count) for write in writers]
        print(f"| {batch} | " + " | ".join(f"{r:,.0f} msgs/s".replace(",", " ") for r in rates) + " |")


if __name__ == "__main__":
    main()
