"""The Client's requests about the session and the rooms on real sockets, against a real broker:
nick changes (open and secure mode), away messages, topics, search and the inbox's history.

Every wait is bounded and ends on an event or a reply; nothing sleeps.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import zmq
from conftest import ClientFactory, ThreadBroker, wait_for

from zchat.client.shell import Client
from zchat.errors import LocalProtocolError, Refused, ZChatError
from zchat.protocol import Event
from zchat.transport import Curve

Context = zmq.Context[zmq.Socket[bytes]]


def refusal(call: Callable[..., object], *args: object) -> str:
    """The code of the :class:`Refused` that ``call(*args)`` raises."""
    with pytest.raises(Refused) as refused:
        call(*args)
    return refused.value.code


def test_a_nick_change_is_announced_and_the_session_speaks_as_the_new_nick(connect: ClientFactory) -> None:
    alice = connect("alice")
    bob = connect("bob")
    wait_for(alice, lambda e: e.kind == "join" and e.nick == "bob")
    assert bob.set_nick("robert") == "robert" == bob.nick
    renamed = wait_for(alice, lambda e: e.kind == "nick")
    assert (renamed.nick, renamed.new_nick, renamed.text) == ("bob", "robert", "bob is now known as robert")
    bob.say("it is me")
    bob.wait_sent()  # confirmed as robert's: the session knows its new nick
    assert wait_for(alice, lambda e: e.kind == "message").nick == "robert"
    assert refusal(bob.set_nick, "Alice") == "nick_taken"
    assert refusal(bob.set_nick, "robert") == "no_change"
    assert bob.set_nick("Robert") == "Robert"  # only the case: allowed
    with pytest.raises(LocalProtocolError, match="invalid nick"):
        bob.set_nick("no spaces")
    assert alice.who() == ["alice", "Robert"]


def test_in_secure_mode_a_nick_change_moves_to_that_nicks_inbox(ctx: Context) -> None:
    server, bob_key, carol_key = (tuple(k.decode() for k in zmq.curve_keypair()) for _ in range(3))
    allowed = {bob_key[0]: {"bob", "robert"}, carol_key[0]: {"carol"}}
    broker = ThreadBroker(ctx, heartbeat=2.0, curve=server, allowlist=allowed)
    clients: list[Client] = []

    def join(nick: str, key: tuple[str, ...]) -> Client:
        client = Client(nick, endpoints=broker.endpoints, context=ctx, curve=Curve(server[0], key[0], key[1]))
        clients.append(client)
        return client.connect()

    try:
        carol = join("carol", carol_key)
        carol.msg("robert", "waiting for you")  # robert has no session: it waits in @robert
        assert wait_for(carol, lambda e: e.code == "offline").text.startswith("robert is offline")
        bob = join("bob", bob_key)
        assert bob.inbox == "@bob"
        assert refusal(bob.set_nick, "eve") == "nick_not_allowed"  # not bob's key's nick
        bob.set_nick("robert")
        assert bob.inbox == "@robert"
        waiting = wait_for(bob, lambda e: e.kind == "private")
        assert (waiting.room, waiting.nick, waiting.text) == ("@robert", "carol", "waiting for you")
        assert [e.text for e in bob.history(bob.inbox)] == ["waiting for you"]
    finally:
        for client in clients:
            client.close()
        broker.stop()


def test_away_shows_in_who_and_tells_whoever_writes(connect: ClientFactory) -> None:
    alice = connect("alice")
    bob = connect("bob")
    assert bob.away("  lunch ") == "lunch"
    names = alice.names()
    assert (names.room, names.nicks, names.away) == ("general", ["alice", "bob"], {"bob": "lunch"})
    alice.msg("bob", "are you there?")
    notice = wait_for(alice, lambda e: e.kind == "system" and e.code == "away")
    assert (notice.text, notice.seq) == ("bob is away: lunch", 0)
    assert wait_for(bob, lambda e: e.kind == "private").text == "are you there?"
    assert bob.away() is None
    assert alice.names().away == {}


def test_topics_are_set_asked_and_cleared_and_followed_by_the_session(connect: ClientFactory) -> None:
    alice = connect("alice")
    bob = connect("bob")
    assert alice.topic(text="plans for Friday") == "plans for Friday"
    topic = wait_for(bob, lambda e: e.kind == "topic")
    assert (topic.nick, topic.text, topic.reason) == ("alice", "plans for Friday", None)
    assert bob.session.topics == {"general": "plans for Friday"}
    assert bob.topic() == "plans for Friday"
    assert bob.names().topic == "plans for Friday"
    assert alice.topic(text="") is None
    cleared = wait_for(bob, lambda e: e.kind == "topic")
    assert (cleared.text, cleared.reason) == ("alice cleared the topic", "cleared")
    assert bob.session.topics == {}
    assert bob.topic("#elsewhere") is None  # asking: any room
    with pytest.raises(ZChatError, match="not in room 'elsewhere'"):
        bob.topic("elsewhere", "mine")  # setting: our rooms only
    carol = connect("carol", rooms=["dev"])
    carol.topic("dev", "dev things")
    dave = connect("dave", rooms=["general", "dev"])
    assert dave.session.topics == {"dev": "dev things"}  # from the hello


def test_search_finds_whole_words_newest_first_and_pages(connect: ClientFactory) -> None:
    alice = connect("alice")
    for text in ["deploy at noon", "lunch first", "Deploy done", "redeploy later", "deploy again"]:
        alice.say(text)
    alice.wait_sent()
    bob = connect("bob", rooms=["dev"])  # search needs no membership
    found = bob.search("deploy", room="general")
    assert [e.text for e in found] == ["deploy again", "Deploy done", "deploy at noon"]
    assert found[0].seq > found[1].seq > found[2].seq
    page = bob.search("DEPLOY", room="#general", limit=2)
    older = bob.search("deploy", room="general", limit=2, before=page[-1].seq)
    assert [e.text for e in page + older] == ["deploy again", "Deploy done", "deploy at noon"]
    assert bob.search("deploy noon", room="general")[0].text == "deploy at noon"  # every word
    assert bob.search("nothing-like-it", room="general") == []
    with pytest.raises(LocalProtocolError, match="nothing to search"):
        bob.search("  ")


@pytest.fixture
def trio(connect: ClientFactory) -> Iterator[tuple[Client, Client, Client]]:
    alice, bob, carol = connect("alice"), connect("bob"), connect("carol")
    yield alice, bob, carol


def test_the_inbox_history_is_ours_alone(trio: tuple[Client, Client, Client]) -> None:
    alice, bob, carol = trio
    alice.msg("bob", "one")
    carol.msg("bob", "two")
    bob.msg("alice", "three")
    delivered = {wait_for(bob, lambda e: e.kind == "private").text for _ in range(3)}
    assert delivered == {"one", "two", "three"}  # (all stored: now the history has them)
    inbox: list[Event] = bob.history(bob.inbox)
    assert {(e.nick, e.to, e.text) for e in inbox} == {
        ("alice", "bob", "one"),
        ("carol", "bob", "two"),
        ("bob", "alice", "three"),
    }
    assert [e.seq for e in inbox] == [1, 2, 3] and {e.room for e in inbox} == {bob.inbox}
    assert [e.seq for e in bob.history(bob.inbox, limit=10, after=1)] == [2, 3]
    with pytest.raises(LocalProtocolError, match="not this session's inbox"):
        bob.history(alice.inbox)
