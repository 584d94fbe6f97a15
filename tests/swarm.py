"""Load worker for the 200-client test: one process, N clients (a thread each) in #general.

Each client sends M messages, then reads until it has every message of the whole swarm (the
expected total), and checks: each exactly once, in seq order, each sender's in its order.
Prints one JSON line: {"clients": N, "ok": how many passed, "errors": [...]}. Bounded in time.
"""

from __future__ import annotations

import json
import sys
import threading
import time

import zmq

from zchat.client import Client
from zchat.protocol import Endpoints

DEADLINE = 120.0


def run_client(client: Client, messages: int, expected: int, errors: list[str]) -> None:
    try:
        # Each client joins in its own thread, so none sits idle (without heartbeats) while
        # the others join.
        client.connect()
        for n in range(messages):
            client.say(f"{client.nick} {n}")
        seen: set[tuple[str, str]] = set()
        last_seq = 0
        next_from: dict[str, int] = {}
        deadline = time.monotonic() + DEADLINE
        while len(seen) < expected:
            event = client.recv(max(0.0, deadline - time.monotonic()))
            if event is None:
                state = f"{client.state}, {len(client.pending)} pending, {len(client.failed)} failed"
                raise AssertionError(f"{client.nick}: only {len(seen)} of {expected} in time ({state})")
            if event.seq > 0:
                assert event.seq > last_seq, f"{client.nick}: seq {event.seq} after {last_seq}"
                last_seq = event.seq
            if event.kind != "message":
                continue
            key = (event.nick, event.text)
            assert key not in seen, f"{client.nick}: twice {key}"
            seen.add(key)
            n = int(event.text.split()[1])
            assert n == next_from.get(event.nick, 0), f"{client.nick}: {event.nick} out of order"
            next_from[event.nick] = n + 1
        client.wait_sent(30)
    except Exception as exc:
        errors.append(f"{type(exc).__name__}: {exc}")


def main() -> None:
    ingest, feed, rpc, prefix, count, messages, expected = sys.argv[1:8]
    endpoints = Endpoints(ingest, feed, rpc)
    errors: list[str] = []
    with zmq.Context() as ctx:
        clients = [
            Client(f"{prefix}c{i}", endpoints=endpoints, context=ctx, since=0, timeout=10) for i in range(int(count))
        ]
        threads = [threading.Thread(target=run_client, args=(c, int(messages), int(expected), errors)) for c in clients]
        for t in threads:
            t.start()
        for t in threads:
            t.join(DEADLINE + 40)
        for c in clients:
            if c.state != "new":
                c.close()
    print(json.dumps({"clients": len(clients), "ok": len(clients) - len(errors), "errors": errors[:5]}))


if __name__ == "__main__":
    main()
