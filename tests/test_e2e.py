"""End to end: a real broker on loopback and real clients, through the public Client API."""

from __future__ import annotations

from conftest import ClientFactory, collect, wait_for


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
