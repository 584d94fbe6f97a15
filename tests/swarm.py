"""Load worker for the 200-client test: one process, N clients served by one thread, in #general.

Each client sends M messages, then the loop reads until every client has every message of the
whole swarm (the expected total), checking for each client: each message exactly once, in seq
order, each sender's in its order. One thread polls all the clients' sockets (`Client.sockets`)
and then lets each client handle its input (`Client.poll(0)`), as an event loop serving many
sessions would. Prints one JSON line: {"clients": N, "ok": how many passed, "errors": [...]}.
Bounded in time.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field

import zmq

from zchat.client.shell import Client
from zchat.protocol import Endpoints, Event

DEADLINE = 120.0


@dataclass
class Tally:
    """What one client has seen so far."""

    client: Client
    seen: set[tuple[str, str]] = field(default_factory=set)
    last_seq: int = 0
    next_from: dict[str, int] = field(default_factory=dict)
    error: str | None = None

    def take(self, event: Event) -> None:
        nick = self.client.nick
        if event.seq > 0:
            assert event.seq > self.last_seq, f"{nick}: seq {event.seq} after {self.last_seq}"
            self.last_seq = event.seq
        if event.kind != "message":
            return
        key = (event.nick, event.text)
        assert key not in self.seen, f"{nick}: twice {key}"
        self.seen.add(key)
        n = int(event.text.split()[1])
        assert n == self.next_from.get(event.nick, 0), f"{nick}: {event.nick} out of order"
        self.next_from[event.nick] = n + 1


def main() -> None:
    ingest, feed, rpc, prefix, count, messages, expected = sys.argv[1:8]
    endpoints = Endpoints(ingest, feed, rpc)
    total = int(expected)
    with zmq.Context() as ctx:
        clients = [
            # send_timeout: here a confirmation may wait behind 10 000 events on two busy cores.
            Client(f"{prefix}c{i}", endpoints=endpoints, context=ctx, since=0, timeout=10, send_timeout=DEADLINE)
            for i in range(int(count))
        ]
        tallies = [Tally(c) for c in clients]
        for c in clients:
            c.connect()
        for c in clients:
            for n in range(int(messages)):
                c.say(f"{c.nick} {n}")
        deadline = time.monotonic() + DEADLINE
        busy = [t for t in tallies if len(t.seen) < total]
        while busy and time.monotonic() < deadline:
            poller = zmq.Poller()
            for t in busy:
                for sock in t.client.sockets:
                    poller.register(sock, zmq.POLLIN)
            poller.poll(100)
            for t in busy:
                try:
                    for event in t.client.poll(0):
                        t.take(event)
                except AssertionError as exc:
                    t.error = str(exc)
            busy = [t for t in busy if len(t.seen) < total and t.error is None]
        for t in tallies:
            if t.error is None and len(t.seen) < total:
                c = t.client
                state = f"{c.state}, {len(c.pending)} pending, {len(c.failed)} failed"
                t.error = f"{c.nick}: only {len(t.seen)} of {total} in time ({state})"
            if t.error is None:
                try:
                    t.client.wait_sent(30)
                except Exception as exc:
                    t.error = f"{type(exc).__name__}: {exc}"
        for c in clients:
            c.close()
    errors = [t.error for t in tallies if t.error is not None]
    print(json.dumps({"clients": len(clients), "ok": len(clients) - len(errors), "errors": errors[:5]}))


if __name__ == "__main__":
    main()
