"""The wire protocol, without sockets: rules, topics, inboxes, routes, endpoints, decoding and timestamps."""

from __future__ import annotations

import re
import sys
import threading
import time
import typing
from datetime import UTC, datetime

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zchat import protocol as p
from zchat.errors import LocalProtocolError, RemoteProtocolError
from zchat.transport import new_route

# --- nick, room, text rules -----------------------------------------------------------------------


@pytest.mark.parametrize("nick", ["a", "Z", "alice", "Alice", "bob_2", "x-y", "a" * 24, "A" + "9" * 23, "a_-_-", "Q-_"])
def test_valid_nicks_are_accepted_unchanged(nick: str) -> None:
    assert p.check_nick(nick) == nick


@pytest.mark.parametrize(
    "nick",
    [
        "",
        "a" * 25,
        "1alice",
        "_alice",
        "-alice",
        "al ice",
        " alice",
        "alice ",
        "alice\n",
        "al:ice",
        "al@ce",
        "#alice",
        "*",
        "alicé",
        "ａlice",  # fullwidth a
        "al\x00ice",
    ],
)
def test_invalid_nicks_are_refused_with_the_rule(nick: str) -> None:
    with pytest.raises(LocalProtocolError) as info:
        p.check_nick(nick)
    assert p.NICK_RULE in str(info.value)
    assert repr(nick) in str(info.value)


@pytest.mark.parametrize("room", ["general", "a", "0", "9lives", "dev-ops", "dev_ops", "a" * 32, "x" + "_-" * 15 + "y"])
def test_valid_rooms_are_accepted_unchanged(room: str) -> None:
    assert p.check_room(room) == room


@pytest.mark.parametrize(
    "room",
    [
        "",
        "a" * 33,
        "General",
        "DEV",
        "deV",
        "#general",
        "_dev",
        "-dev",
        "dev ops",
        "dev:",
        "dév",
        "dev\n",
        "@dev",
        "~dev",
    ],
)
def test_invalid_rooms_are_refused_with_the_rule(room: str) -> None:
    with pytest.raises(LocalProtocolError) as info:
        p.check_room(room)
    assert p.ROOM_RULE in str(info.value)


def test_the_length_boundaries_are_exactly_24_and_32() -> None:
    assert p.check_nick("n" * 24)
    with pytest.raises(LocalProtocolError):
        p.check_nick("n" * 25)
    assert p.check_room("r" * 32)
    with pytest.raises(LocalProtocolError):
        p.check_room("r" * 33)


@pytest.mark.parametrize(
    ("raw", "wire"),
    [
        ("#Dev", "dev"),
        ("dev", "dev"),
        ("  #General  ", "general"),
        ("DEV-ops", "dev-ops"),
        ("#", ""),
        ("##dev", "#dev"),
    ],
)
def test_normalize_room(raw: str, wire: str) -> None:
    assert p.normalize_room(raw) == wire


def test_normalized_rooms_still_have_to_follow_the_rule() -> None:
    assert p.check_room(p.normalize_room(" #Dev ")) == "dev"
    for bad in ("##dev", "#", "#dev ops"):
        with pytest.raises(LocalProtocolError):
            p.check_room(p.normalize_room(bad))


@pytest.mark.parametrize(
    "text",
    [
        "a" * p.MAX_TEXT_BYTES,
        "é" * (p.MAX_TEXT_BYTES // 2),  # 2 bytes each
        "€" * (p.MAX_TEXT_BYTES // 3) + "a",  # 3 bytes each: 4095 + 1
        "😀" * (p.MAX_TEXT_BYTES // 4),  # 4 bytes each
        "a" * (p.MAX_TEXT_BYTES - 2) + "é",
        " x ",
        "multi\nline",
    ],
)
def test_text_of_at_most_4096_utf8_bytes_is_accepted(text: str) -> None:
    assert len(text.encode()) <= p.MAX_TEXT_BYTES
    assert p.check_text(text) == text


@pytest.mark.parametrize(
    "text",
    [
        "a" * (p.MAX_TEXT_BYTES + 1),
        "é" * (p.MAX_TEXT_BYTES // 2) + "a",
        "a" + "é" * (p.MAX_TEXT_BYTES // 2),
        "€" * (p.MAX_TEXT_BYTES // 3) + "ab",
        "😀" * (p.MAX_TEXT_BYTES // 4) + "a",
        "a" * (p.MAX_TEXT_BYTES - 1) + "é",  # 4097 bytes in 4096 characters
        "😀" * p.MAX_TEXT_BYTES,
    ],
)
def test_text_over_4096_utf8_bytes_is_refused(text: str) -> None:
    size = len(text.encode())
    assert size > p.MAX_TEXT_BYTES
    with pytest.raises(LocalProtocolError, match=f"too long \\({size} bytes; limit {p.MAX_TEXT_BYTES}\\)"):
        p.check_text(text)


@pytest.mark.parametrize("text", ["", " ", "   ", "\n", "\t \r\n", "\u3000", " " * 5000])
def test_blank_text_is_refused(text: str) -> None:
    with pytest.raises(LocalProtocolError, match="empty message"):
        p.check_text(text)


@given(st.text(max_size=1200))
def test_check_text_agrees_with_the_utf8_length(text: str) -> None:
    ok = bool(text.strip()) and len(text.encode()) <= p.MAX_TEXT_BYTES
    if ok:
        assert p.check_text(text) == text
    else:
        with pytest.raises(LocalProtocolError):
            p.check_text(text)


# --- topics ---------------------------------------------------------------------------------------


def test_room_topics_never_prefix_one_another() -> None:
    dev, devops = p.room_topic("dev"), p.room_topic("devops")
    assert dev == b"#dev:"
    assert devops == b"#devops:"
    assert not devops.startswith(dev)
    assert not dev.startswith(devops)


@given(
    st.from_regex(r"[a-z0-9][a-z0-9_-]{0,31}", fullmatch=True),
    st.from_regex(r"[a-z0-9][a-z0-9_-]{0,31}", fullmatch=True),
)
def test_a_room_topic_is_a_prefix_only_of_itself(a: str, b: str) -> None:
    assert p.room_topic(a).startswith(p.room_topic(b)) == (a == b)


def test_inbox_names_are_lower_cased_and_never_rooms() -> None:
    assert p.inbox_name("Alice") == "@alice"  # secure mode: one per nick
    assert p.inbox_name("ALICE", "Sbx9Mw_0OQWo") == "@alice~Sbx9Mw_0OQWo"  # open mode: one per session
    assert p.is_inbox(p.inbox_name("dev")) and not p.is_inbox("dev")
    with pytest.raises(LocalProtocolError):
        p.check_room(p.inbox_name("dev"))


def test_the_feed_has_rooms_the_heartbeat_and_probes_and_nothing_else() -> None:
    # Nothing addressed to one session has a topic: it goes to the session's route instead.
    assert p.HEARTBEAT_TOPIC == b"!hb:"
    assert {p.room_topic("dev")[:1], p.HEARTBEAT_TOPIC[:1], p.probe_topic("x")[:1]} == {b"#", b"!", b"~"}
    assert not hasattr(p, "inbox_topic")


def test_probe_topics() -> None:
    topic = p.probe_topic("abc123")
    assert topic == b"~abc123:"
    assert p.is_probe_topic(topic)
    assert not p.is_probe_topic(p.room_topic("general"))
    assert not p.is_probe_topic(p.HEARTBEAT_TOPIC)
    assert not p.is_probe_topic(b"~abc")
    assert not p.is_probe_topic(b"")


# --- endpoints ------------------------------------------------------------------------------------


def test_endpoints_default_layout() -> None:
    e = p.Endpoints.from_host_port()
    assert e == p.Endpoints("tcp://127.0.0.1:5555", "tcp://127.0.0.1:5556", "tcp://127.0.0.1:5557")
    e = p.Endpoints.from_host_port("example.org", 7000)
    assert (e.ingest, e.feed, e.rpc) == ("tcp://example.org:7000", "tcp://example.org:7001", "tcp://example.org:7002")


@pytest.mark.parametrize("host", ["::1", "[::1]"])
def test_endpoints_bracket_ipv6_hosts(host: str) -> None:
    e = p.Endpoints.from_host_port(host, 6000)
    assert e == p.Endpoints("tcp://[::1]:6000", "tcp://[::1]:6001", "tcp://[::1]:6002")


def test_explicit_endpoints_win() -> None:
    e = p.Endpoints.from_host_port("10.0.0.1", 6000, feed="ipc:///tmp/feed")
    assert e == p.Endpoints("tcp://10.0.0.1:6000", "ipc:///tmp/feed", "tcp://10.0.0.1:6002")
    e = p.Endpoints.from_host_port(ingest="tcp://a:1", feed="tcp://b:2", rpc="tcp://c:3")
    assert e == p.Endpoints("tcp://a:1", "tcp://b:2", "tcp://c:3")


# --- decoding -------------------------------------------------------------------------------------


def test_decode_post() -> None:
    post = p.decode_post(b'{"token":"t0k","room":"general","text":"hi","kind":"action","id":"m-1","n":3}')
    assert post == p.Post(token="t0k", room="general", text="hi", kind="action", id="m-1", n=3)
    minimal = p.decode_post(b'{"token":"t","room":"r","text":"x"}')
    assert (minimal.kind, minimal.id, minimal.n, minimal.to) == ("message", None, None, None)
    private = p.decode_post(b'{"token":"t","to":"bob","text":"x","n":1}')
    assert (private.to, private.room) == ("bob", "")


@pytest.mark.parametrize(
    "data",
    [
        b'{"token":"t","room":"r","text":"x","n":0}',  # numbers start at 1
        b'{"token":"t","room":"r","text":"x","n":9007199254740993}',  # past 2**53
        b'{"token":"t","room":"r","text":"x","n":-1}',
        b'{"token":"t","room":"r","text":"x","n":"1"}',
        b'{"token":"' + b"t" * 65 + b'","room":"r","text":"x"}',
        b'{"token":"t","room":"r","text":"x","id":"' + b"i" * 65 + b'"}',
        b'{"token":"t","room":"' + b"r" * 65 + b'","text":"x"}',
        b'{"token":"t","to":"' + b"b" * 65 + b'","text":"x"}',
    ],
)
def test_posts_out_of_range_do_not_decode(data: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        p.decode_post(data)


def test_a_too_long_text_decodes_so_that_its_refusal_is_final() -> None:
    # Refused by check_text ("rejected", the post number used up), not by the decoder: a post
    # that does not decode ("bad_post") never uses its number, and the session's later posts
    # would wait behind it.
    post = p.decode_post(p.encode(p.Post(token="t", room="general", text="x" * 5000, n=1)))
    assert post.n == 1
    with pytest.raises(LocalProtocolError, match="too long"):
        p.check_text(post.text)
    with pytest.raises(RemoteProtocolError):
        p.decode_post(p.encode(p.Post(token="t", room="general", text="x" * (p.MAX_FRAME_BYTES + 1))))


def test_decode_post_ignores_a_claimed_nick() -> None:
    post = p.decode_post(b'{"token":"t","room":"general","text":"hi","nick":"mallory"}')
    assert post == p.Post(token="t", room="general", text="hi")
    assert not hasattr(post, "nick")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            b'{"type":"hello","protocol":2,"nick":"alice","rooms":["dev"],"req":"1"}',
            p.Hello(protocol=2, nick="alice", rooms=["dev"], req="1"),
        ),
        (b'{"type":"hello","nick":"alice"}', p.Hello(protocol=1, nick="alice", rooms=[p.DEFAULT_ROOM])),  # a v1 client
        (b'{"type":"hello","protocol":2,"nick":"a","resume":"tok"}', p.Hello(protocol=2, nick="a", resume="tok")),
        (b'{"type":"heartbeat","token":"t"}', p.Heartbeat(token="t")),
        (b'{"type":"heartbeat","token":"t","inbox_read":7}', p.Heartbeat(token="t", inbox_read=7)),
        (b'{"type":"leave","token":"t"}', p.Leave(token="t", reason="quit")),
        (b'{"type":"join","token":"t","room":"dev"}', p.Join(token="t", room="dev")),
        (b'{"type":"part","token":"t","room":"dev"}', p.Part(token="t", room="dev", reason="")),
        (b'{"type":"part","token":"t","room":"dev","reason":"bye"}', p.Part(token="t", room="dev", reason="bye")),
        (b'{"type":"nick","token":"t","nick":"bob"}', p.Nick(token="t", nick="bob")),
        (b'{"type":"away","token":"t","text":"lunch"}', p.Away(token="t", text="lunch")),
        (b'{"type":"away","token":"t"}', p.Away(token="t", text=None)),
        (b'{"type":"topic","token":"t","room":"dev"}', p.Topic(token="t", room="dev", text=None)),
        (b'{"type":"topic","token":"t","room":"dev","text":""}', p.Topic(token="t", room="dev", text="")),
        (b'{"type":"who"}', p.Who(room=p.DEFAULT_ROOM)),
        (b'{"type":"stats","req":"9"}', p.Stats(req="9")),
        (b'{"type":"history","room":"@bob~x","token":"t"}', p.History(room="@bob~x", token="t", limit=50)),
        (b'{"type":"seqs","rooms":["a","b"]}', p.Seqs(rooms=["a", "b"])),
        (b'{"type":"search","room":"dev","text":"hi","before":9}', p.Search(room="dev", text="hi", before=9)),
    ],
)
def test_decode_request(data: bytes, expected: p.Request) -> None:
    assert p.decode_request(data) == expected
    assert p.decode_request(p.encode(expected)) == expected


@pytest.mark.parametrize(
    "data",
    [
        b'{"type":"history","after":9007199254740993}',  # past 2**53
        b'{"type":"history","after":-1}',
        b'{"type":"history","limit":0}',
        b'{"type":"history","limit":1001}',
        b'{"type":"search","text":"hi","limit":101}',
        b'{"type":"search","text":""}',
        b'{"type":"search","text":"' + b"w" * 201 + b'"}',
        b'{"type":"heartbeat","token":"t","inbox_read":9007199254740993}',
        b'{"type":"hello","protocol":1001,"nick":"a"}',
        b'{"type":"hello","protocol":2,"nick":"a","rooms":[' + b",".join([b'"r"'] * 65) + b"]}",
        b'{"type":"hello","protocol":2,"nick":"a","resume":"' + b"t" * 65 + b'"}',
        b'{"type":"who","req":"' + b"q" * 65 + b'"}',
        b'{"type":"away","token":"t","text":"' + b"a" * 201 + b'"}',
        b'{"type":"topic","token":"t","text":"' + b"a" * 401 + b'"}',
        b'{"type":"leave","token":"t","reason":"' + b"a" * 1001 + b'"}',
    ],
)
def test_requests_out_of_range_are_invalid(data: bytes) -> None:
    with pytest.raises(RemoteProtocolError, match=r"invalid request: .* - at `\$\."):
        p.decode_request(data)


def test_a_delivery_wraps_an_event_and_only_a_delivery_holds_one() -> None:
    ev = p.Event(1, "2026-12-01T14:57:23.079Z", "@bob~x", "private", "alice", "hi", to="bob", n=6)
    message = p.decode_reply(p.delivery(p.encode(ev)))
    assert list(message) == ["type", "event"]
    assert p.delivered_event(message) == ev
    assert p.delivered_event(p.decode_reply(b'{"type":"heartbeat","ok":true,"req":"1","acked":0}')) is None
    with pytest.raises(RemoteProtocolError, match="invalid delivery"):
        p.delivered_event({"type": "event", "event": {"seq": "1"}})


def test_new_routes_are_long_random_and_never_start_with_a_zero_byte() -> None:
    routes = {new_route() for _ in range(1000)}
    assert len(routes) == 1000
    assert all(len(r) >= p.MIN_ROUTE_BYTES and r[0] != 0 for r in routes)


def test_encoded_requests_carry_their_type_tag() -> None:
    assert msgspec.json.decode(p.encode(p.Who(room="dev")))["type"] == "who"


def test_decode_event() -> None:
    ev = p.Event(3, "2024-01-01T00:00:00.000Z", "general", "error", "*", "no", id="m1", reason="r", code="c")
    assert p.decode_event(p.encode(ev)) == ev
    plain = p.decode_event(b'{"seq":1,"ts":"x","room":"general","kind":"join","nick":"a","text":"a joined"}')
    assert (plain.seq, plain.id, plain.reason, plain.code) == (1, None, None, None)
    # defaults are left out on the wire
    assert b"code" not in p.encode(plain)


GARBAGE = [
    b"",
    b" ",
    b"\x00",
    b"\xff\xfe\xfd",
    b"\xc3\x28",  # invalid UTF-8
    b'{"token":"t","room":"r","text":"\xff"}',  # invalid UTF-8 inside a string
    b"{",
    b"{not json}",
    b"null",
    b"42",
    b'"a string"',
    b"[]",
    b"[1,2,3]",
    b"{}",
    b'{"token":5,"room":"r","text":"x"}',
    b'{"token":"t","room":"r","text":"x","kind":"shout"}',
    b'{"token":"t","room":"r","text":"x"}garbage',
    b'{"type":"nope"}',
    b'{"type":"hello","nick":5}',
    b'{"type":"hello","rooms":"general"}',
    b'{"seq":"1","ts":"x","room":"r","kind":"k","nick":"n","text":"t"}',
    b'{"seq":1e400,"ts":"x","room":"r","kind":"k","nick":"n","text":"t"}',
    b'{"seq":' + b"9" * 400 + b',"ts":"x","room":"r","kind":"k","nick":"n","text":"t"}',
    b'{"token":"t","room":"r","text":"\\ud800"}',  # lone surrogate
    b"[" * 100_000,
    b'{"x":' * 50_000,
    # deeply nested values in fields the structs do not know: a hostile peer's cheapest trick
    b'{"token":"t","room":"r","text":"x","extra":' + b"[" * 50_000 + b"]" * 50_000 + b"}",
    b'{"type":"stats","extra":' + b"[" * 50_000 + b"]" * 50_000 + b"}",
    b'{"seq":1,"ts":"x","room":"r","kind":"k","nick":"n","text":"t","x":' + b'{"a":' * 30_000 + b"1" + b"}" * 30_001,
]


@pytest.mark.parametrize("data", GARBAGE, ids=lambda d: repr(d[:24]))
def test_garbage_raises_remote_protocol_error_and_nothing_else(data: bytes) -> None:
    # anything but RemoteProtocolError (RecursionError, UnicodeDecodeError, ...) fails the test
    for decode in (p.decode_post, p.decode_request, p.decode_event, p.decode_reply):
        try:
            decode(data)
        except RemoteProtocolError as exc:
            assert "\n" not in str(exc)  # one line, for the person at the terminal


def test_every_garbage_input_is_refused_by_the_post_and_request_decoders() -> None:
    for data in GARBAGE:
        for decode in (p.decode_post, p.decode_request):
            with pytest.raises(RemoteProtocolError):
                decode(data)


def test_decode_errors_say_what_was_wrong() -> None:
    with pytest.raises(RemoteProtocolError, match="malformed post"):
        p.decode_post(b"{")
    with pytest.raises(RemoteProtocolError, match=r"invalid request.*\$\.type"):
        p.decode_request(b'{"type":"nope"}')
    with pytest.raises(RemoteProtocolError, match="invalid event"):
        p.decode_event(b"{}")


# --- timestamps -----------------------------------------------------------------------------------

_TS = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")


@pytest.mark.parametrize(
    ("t", "expected"),
    [
        (0.0, "1970-01-01T00:00:00.000Z"),
        (1.5, "1970-01-01T00:00:01.500Z"),
        (1_700_000_000.25, "2023-11-14T22:13:20.250Z"),
        (1_700_000_000.125, "2023-11-14T22:13:20.125Z"),
        (1_700_000_000.9990234375, "2023-11-14T22:13:20.999Z"),  # exactly representable
        (1_700_000_001.0, "2023-11-14T22:13:21.000Z"),
        (951_782_400.5, "2000-02-29T00:00:00.500Z"),
    ],
)
def test_format_ts(t: float, expected: str) -> None:
    assert p.format_ts(t) == expected


def test_format_ts_cache_does_not_leak_between_seconds() -> None:
    # the seconds part is cached: alternating seconds must still each be right
    a, b = 1_600_000_000.5, 1_700_000_000.75
    for _ in range(3):
        assert p.format_ts(a) == "2020-09-13T12:26:40.500Z"
        assert p.format_ts(b) == "2023-11-14T22:13:20.750Z"


def test_format_ts_is_thread_safe() -> None:
    """The seconds cache is shared by every thread of a process: a broker thread and a client
    thread (the in-process Broker; every test here) must never get each other's seconds."""
    base = 1_700_000_000
    want = {s: time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(base + s)) for s in range(3)}
    wrong: list[tuple[int, str]] = []

    def hammer(offset: int) -> None:
        for n in range(30_000):
            s = (n + offset) % 3
            ts = p.format_ts(base + s + 0.5)
            if not ts.startswith(want[s]):
                wrong.append((s, ts))
                return

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        threads = [threading.Thread(target=hammer, args=(k,)) for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    finally:
        sys.setswitchinterval(interval)
    assert wrong == []


@given(st.floats(min_value=0, max_value=4_102_444_800, allow_nan=False))  # up to 2100
def test_format_ts_is_iso8601_utc_with_milliseconds(t: float) -> None:
    ts = p.format_ts(t)
    assert _TS.fullmatch(ts), ts
    shown = datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()
    # milliseconds are truncated, never rounded up into the next second
    assert shown <= t < shown + 0.001 + 1e-6


# --- properties -----------------------------------------------------------------------------------

_json_leaf = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
_json = st.recursive(
    _json_leaf,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
_fields = ["token", "room", "text", "kind", "id", "type", "req", "nick", "rooms", "seq", "ts", "code", "reason", "n"]
_fields += ["to", "protocol", "resume", "after", "limit", "before", "inbox_read", "event", "expected"]
_json_objects = st.dictionaries(st.sampled_from(_fields), _json, max_size=8)
_wire_like = st.one_of(
    st.binary(max_size=300),
    _json.map(p.encode),
    _json_objects.map(p.encode),
    # arbitrary bytes inside a JSON string
    st.tuples(st.sampled_from(_fields), st.binary(max_size=12)).map(
        lambda t: b'{"type":"stats","token":"t","room":"r","text":"x","' + t[0].encode() + b'":"' + t[1] + b'"}'
    ),
    # valid JSON with a byte flipped or cut short
    st.tuples(_json_objects.map(p.encode), st.integers(min_value=0), st.integers(min_value=0, max_value=255)).map(
        lambda t: t[0][: t[1] % (len(t[0]) + 1)] + bytes([t[2]]) + t[0][t[1] % (len(t[0]) + 1) + 1 :]
    ),
)


@settings(max_examples=300, deadline=None)
@given(_wire_like)
def test_decoders_return_a_value_or_raise_remote_protocol_error(data: bytes) -> None:
    for decode, kind in (
        (p.decode_post, p.Post),
        (p.decode_request, typing.get_args(p.Request)),
        (p.decode_event, p.Event),
    ):
        try:
            value = decode(data)
        except RemoteProtocolError:
            continue
        assert isinstance(value, kind)


_rooms = st.from_regex(r"[a-z0-9][a-z0-9_-]{0,31}", fullmatch=True)
_texts = st.text(min_size=1, max_size=1100).filter(lambda t: bool(t.strip()) and len(t.encode()) <= p.MAX_TEXT_BYTES)
_posts = st.builds(
    p.Post,
    token=st.text(max_size=40),
    room=_rooms,
    text=_texts,
    kind=st.sampled_from(["message", "action"]),
    id=st.none() | st.text(max_size=p.MAX_ID_CHARS),
)


@settings(max_examples=200, deadline=None)
@given(_posts)
def test_valid_posts_round_trip(post: p.Post) -> None:
    data = p.encode(post)
    assert b"\n" not in data  # one line on the wire
    assert p.decode_post(data) == post
    p.check_room(post.room)
    p.check_text(post.text)


@settings(max_examples=100, deadline=None)
@given(
    st.builds(
        p.Event,
        seq=st.integers(min_value=0, max_value=2**63 - 1),
        ts=st.text(max_size=30),
        room=_rooms,
        kind=st.sampled_from(["message", "action", "join", "leave", "system", "error", "ready"]),
        nick=st.text(max_size=24),
        text=st.text(max_size=200),
        id=st.none() | st.text(max_size=10),
        reason=st.none() | st.text(max_size=10),
        code=st.none() | st.text(max_size=10),
        n=st.none() | st.integers(min_value=1, max_value=p.MAX_SEQ),
        expected=st.none() | st.integers(min_value=1, max_value=p.MAX_SEQ),
        new_nick=st.none() | st.text(max_size=24),
    )
)
def test_events_round_trip(ev: p.Event) -> None:
    assert p.decode_event(p.encode(ev)) == ev
