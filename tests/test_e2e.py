"""End to end: a real broker on loopback and real clients, through the public Client API."""

from __future__ import annotations

import json

import pytest
import zmq
from conftest import ClientFactory, ThreadBroker, collect, wait_for

from zchat import transport
from zchat.client.feed import Feed
from zchat.errors import Refused
from zchat.protocol import decode_event, room_topic


def test_two_clients_exchange_messages_and_see_joins(connect: ClientFactory) -> None:
    alice = connect("alice")
    bob = connect("bob")
    joined = wait_for(alice, lambda e: e.kind == "join" and e.nick == "bob")
    assert joined.text == "bob joined"

    alice.say("hi bob")
    got = wait_for(bob, lambda e: e.kind == "message")
    assert (got.nick, got.text, got.room) == ("alice", "hi bob", "general")
    # alice sees her own message once, under her own nick: never as someone else's
    mine = wait_for(alice, lambda e: e.kind == "message")
    assert (mine.nick, mine.text, mine.seq) == ("alice", "hi bob", got.seq)

    bob.say("hello alice")
    assert wait_for(alice, lambda e: e.kind == "message").nick == "bob"
    bob.close()
    left = wait_for(alice, lambda e: e.kind == "leave")
    assert (left.nick, left.text, left.reason) == ("bob", "bob left (quit)", "quit")


def test_seq_is_gapless_per_room(connect: ClientFactory) -> None:
    alice = connect("alice", ["general", "dev"])
    for n in range(10):
        alice.say(f"g{n}", "general")
        alice.say(f"d{n}", "dev")
    alice.wait_sent(5)
    events = collect(alice, 20, lambda e: e.kind == "message")
    for room in ("general", "dev"):
        seqs = [e.seq for e in events if e.room == room]
        assert seqs == list(range(seqs[0], seqs[0] + 10))


def test_rooms_are_isolated_even_when_one_name_prefixes_another(
    connect: ClientFactory, broker: ThreadBroker, ctx: zmq.Context[zmq.Socket[bytes]]
) -> None:
    dev = connect("devfan", ["dev"])
    ops = connect("opsfan", ["devops"])
    # A plain subscriber to the documented topic of room "dev", as a bot would do it.
    raw = Feed(ctx, broker.endpoints.feed, [room_topic("dev")])
    try:
        raw.wait_live(5)
        for n in range(5):
            ops.say(f"ops {n}")
        ops.wait_sent(5)
        dev.say("end of test")
        dev.wait_sent(5)
        seen = collect(dev, 1, lambda e: e.kind == "message")
        assert [e.text for e in seen] == ["end of test"]
        raw_texts: list[str] = []
        while "end of test" not in raw_texts and raw.socket.poll(5000):
            for topic, payload in raw.drain():
                assert topic == b"#dev:"
                raw_texts.append(decode_event(payload).text)
        assert "end of test" in raw_texts and not any(t.startswith("ops") for t in raw_texts)
    finally:
        raw.close()
    assert all(e.room == "devops" for e in collect(ops, 5, lambda e: e.kind == "message"))


def test_duplicate_nick_refused_case_insensitively(connect: ClientFactory) -> None:
    connect("alice")
    with pytest.raises(Refused) as refused:
        connect("ALICE")
    assert refused.value.code == "nick_taken"
    assert "ALICE" in str(refused.value)


def test_payload_nick_is_ignored(
    broker: ThreadBroker, connect: ClientFactory, ctx: zmq.Context[zmq.Socket[bytes]]
) -> None:
    observer = connect("observer")
    with ctx.socket(zmq.DEALER) as rpc, ctx.socket(zmq.PUSH) as push:
        for s in (rpc, push):
            s.setsockopt(zmq.LINGER, 0)
        rpc.setsockopt(zmq.ROUTING_ID, transport.new_route())
        rpc.connect(broker.endpoints.rpc)
        push.connect(broker.endpoints.ingest)
        hello = {"type": "hello", "protocol": 2, "nick": "eve", "rooms": ["general"]}
        rpc.send_multipart([b"", json.dumps(hello).encode()])
        assert rpc.poll(5000), "no hello reply"
        token = json.loads(rpc.recv_multipart()[-1])["token"]
        post = {"token": token, "room": "general", "text": "i am bob", "nick": "bob"}
        push.send(json.dumps(post).encode())
        got = wait_for(observer, lambda e: e.kind == "message")
    assert (got.nick, got.text) == ("eve", "i am bob")
