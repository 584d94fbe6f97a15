"""Authority and the allowlist format, without sockets: who may connect, who may be whom."""

from __future__ import annotations

import pytest
import zmq

from zchat.broker import identity
from zchat.broker.identity import Authority, ClaimRefused, parse_allowlist
from zchat.errors import LocalProtocolError


def key() -> str:
    return zmq.curve_keypair()[0].decode("ascii")


BOB, CAROL, EVE = key(), key(), key()
#: A valid z85 key that starts with '#', the comment character.
HASH_KEY = "#" + BOB[1:]


# --- parse_allowlist -------------------------------------------------------------------------------


def test_allowlist_lines_comments_and_case() -> None:
    text = f"""\
# who may connect
{BOB} bob
   {BOB}   Bobby   # bob's second nick, a trailing comment

{CAROL}\tCarol
{HASH_KEY} hashy
"""
    assert parse_allowlist(text) == {BOB: {"bob", "bobby"}, CAROL: {"carol"}, HASH_KEY: {"hashy"}}


def test_empty_allowlist() -> None:
    assert parse_allowlist("") == {}
    assert parse_allowlist("# nobody yet\n\n") == {}


@pytest.mark.parametrize(
    ("line", "why"),
    [
        (f"{BOB}", "expected '<40-character z85 public key> <nick>'"),
        (f"{BOB} bob extra", "expected"),
        (f"{BOB[:-1]} bob", "expected"),  # 39 characters
        (f"{BOB}x bob", "expected"),  # 41
        ("bob " + BOB, "expected"),  # the wrong way round
        (f"{BOB[:-1]}~ bob", "expected"),  # '~' is not z85
        (f"{BOB} 9lives", "invalid nick '9lives'"),
        (f"{BOB} b*b", "invalid nick"),
    ],
)
def test_bad_allowlist_lines_name_the_source_and_line(line: str, why: str) -> None:
    with pytest.raises(LocalProtocolError) as exc:
        parse_allowlist(f"# header\n{CAROL} carol\n{line}\n", "/etc/zchat/allow")
    assert str(exc.value).startswith("/etc/zchat/allow:3: ")
    assert why in str(exc.value)


# --- Authority ------------------------------------------------------------------------------------------


def test_allowlist_authority() -> None:
    auth = Authority({BOB: {"Bob", "bobby"}, CAROL: ["carol"]})
    assert auth.may_connect(BOB) and auth.may_connect(CAROL)
    assert not auth.may_connect(EVE)
    assert auth.nicks(BOB) == {"bob", "bobby"}
    assert auth.nicks(EVE) == set()
    # A nick of one's own, in any case: allowed, and nothing new to persist.
    assert auth.check(BOB, "BOB") is False
    assert auth.check(BOB, "bobby") is False
    with pytest.raises(LocalProtocolError, match="belongs to another key"):
        auth.check(CAROL, "bob")
    with pytest.raises(LocalProtocolError, match="may not use nick 'dave'"):
        auth.check(BOB, "dave")
    with pytest.raises(LocalProtocolError):
        auth.check(EVE, "eve")  # known to nobody: without open registration, no nick at all
    assert auth.nicks(BOB) == {"bob", "bobby"}  # refusals claim nothing


def test_open_registration_first_claim_wins() -> None:
    auth = Authority({BOB: {"bob"}}, open_registration=True)
    assert auth.may_connect(EVE)  # anyone may connect...
    assert auth.check(EVE, "Eve") is True  # ...and claim a free nick: True = persist this
    assert auth.check(EVE, "eve") is False  # already hers
    assert auth.nicks(EVE) == {"eve"}
    with pytest.raises(LocalProtocolError, match="belongs to another key"):
        auth.check(CAROL, "EVE")
    with pytest.raises(LocalProtocolError, match="belongs to another key"):
        auth.check(EVE, "bob")  # allowlisted nicks are never up for grabs
    assert auth.check(EVE, "eve2") is True  # one key, several nicks
    assert auth.nicks(EVE) == {"eve", "eve2"}


def test_claims_are_reloaded_and_the_allowlist_wins_over_them() -> None:
    # As a restarted broker builds it: the store's claims, {nick: key}.
    auth = Authority({BOB: {"bob"}}, open_registration=True, claims={"dave": CAROL, "Bob": EVE})
    assert auth.nicks(CAROL) == {"dave"}
    assert auth.check(CAROL, "dave") is False
    with pytest.raises(LocalProtocolError):
        auth.check(EVE, "dave")
    # A claim that contradicts the allowlist does not take bob's nick.
    assert auth.check(BOB, "bob") is False
    with pytest.raises(LocalProtocolError):
        auth.check(EVE, "bob")


def test_claims_let_their_keys_connect_without_open_registration() -> None:
    auth = Authority({}, claims={"dave": CAROL})
    assert auth.may_connect(CAROL)
    assert not auth.may_connect(EVE)
    assert auth.check(CAROL, "dave") is False


def test_claims_are_bounded_per_key_and_in_all(monkeypatch: pytest.MonkeyPatch) -> None:
    auth = Authority({BOB: {"bob"}}, open_registration=True, claims={"dave": CAROL, "Bob": EVE})
    assert auth.claims == 1  # dave; eve's old claim on bob lost to the allowlist
    for i in range(identity.CLAIMS_PER_KEY):
        assert auth.check(EVE, f"eve{i}") is True
    with pytest.raises(ClaimRefused, match=f"claimed {identity.CLAIMS_PER_KEY} nicks.*eve0, eve1, eve10, eve11, …"):
        auth.check(EVE, "one-more")
    assert auth.check(EVE, "eve3") is False  # her own still work
    auth.unclaim("eve3")  # (a batch not stored) gives its place back
    assert auth.check(EVE, "one-more") is True
    assert auth.claims == 1 + identity.CLAIMS_PER_KEY

    monkeypatch.setattr(identity, "MAX_CLAIMS", auth.claims + 1)
    assert auth.check(CAROL, "carol") is True
    with pytest.raises(ClaimRefused, match="as many nick claims as it may"):
        auth.check(key(), "fresh")  # a fresh key, within its own bound
    assert auth.check(CAROL, "dave") is False and auth.check(BOB, "bob") is False  # owned nicks still work
    assert "one-more" in auth.nicks(EVE) and auth.owner("fresh") is None
