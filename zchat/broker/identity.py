"""Who may be whom in secure mode, sans-IO: the allowlist of keys and nicks, and open registration.

:class:`Authority` answers two questions for a broker running CURVE: may a connection with this
client key connect at all (asked by the ZAP handler), and may it use this nick (asked at hello).
Keys come from an allowlist file in the spirit of SSH's ``authorized_keys`` — one
``<z85 public key> <nick>`` per line, ``#`` comments — and, with open registration, from first
claims (the first key to use a nick owns it; claims are persisted by the caller). It holds no
sockets; :func:`load_allowlist` is the one place that reads a file.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from zchat.errors import LocalProtocolError, ZChatError
from zchat.protocol import check_nick

__all__ = ["CLAIMS_PER_KEY", "MAX_CLAIMS", "Authority", "ClaimRefused", "load_allowlist", "parse_allowlist"]

#: Nicks one key may claim by open registration: a person's nick and a few alternates (what
#: NickServ calls grouped nicks). Claims are kept for good, so without a bound one key renaming
#: itself once a second would add 86 400 rows a day to the store. Allowlisted nicks do not count.
CLAIMS_PER_KEY = 16
#: Claims the broker keeps in all: keys cost nothing to make, so a flood of fresh keys (each
#: within its own bound) stops here. Past it only nicks already claimed (or allowlisted) work.
MAX_CLAIMS = 100_000

_Z85_KEY = re.compile(r"[0-9a-zA-Z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}")


def parse_allowlist(text: str, source: str = "allowlist") -> dict[str, set[str]]:
    """``{z85 key: {nick, …}}`` from allowlist text; raises LocalProtocolError naming the line."""
    keys: dict[str, set[str]] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        parts = raw.split()
        # '#' is a z85 character, so only a whole-line or a separate trailing comment is one.
        if not parts or (parts[0].startswith("#") and not _Z85_KEY.fullmatch(parts[0])):
            continue
        if len(parts) > 2 and parts[2].startswith("#"):
            parts = parts[:2]
        if len(parts) != 2 or not _Z85_KEY.fullmatch(parts[0]):
            raise LocalProtocolError(f"{source}:{number}: expected '<40-character z85 public key> <nick>'")
        try:
            nick = check_nick(parts[1])
        except LocalProtocolError as exc:
            raise LocalProtocolError(f"{source}:{number}: {exc}") from None
        keys.setdefault(parts[0], set()).add(nick.lower())
    return keys


class ClaimRefused(LocalProtocolError):
    """A first claim refused by a bound on claims (the nick itself was free)."""


class Authority:
    """Maps CURVE client keys to the nicks they may use."""

    def __init__(
        self,
        allowlist: Mapping[str, Iterable[str]] | None = None,
        *,
        open_registration: bool = False,
        claims: Mapping[str, str] | None = None,
    ) -> None:
        self.open_registration = open_registration
        self._nicks: dict[str, set[str]] = {k: {n.lower() for n in v} for k, v in (allowlist or {}).items()}
        self._owner: dict[str, str] = {n: k for k, nicks in self._nicks.items() for n in nicks}
        #: Nicks each key claimed (open registration), apart from what the allowlist gives it.
        self._claimed: dict[str, set[str]] = {}
        #: Claims in all (those loaded may exceed the bounds: kept, never refused afterwards).
        self.claims = 0
        for nick, key in (claims or {}).items():
            if nick.lower() not in self._owner:  # (the allowlist wins)
                self._owner[nick.lower()] = key
                self._record(key, nick.lower())

    def may_connect(self, key: str) -> bool:
        """The ZAP question: is this key known (or is anyone welcome to register)?"""
        return self.open_registration or key in self._nicks

    def nicks(self, key: str) -> set[str]:
        """The (lower-cased) nicks ``key`` owns."""
        return self._nicks.get(key, set())

    def owner(self, nick: str) -> str | None:
        """The key that owns ``nick``, if any."""
        return self._owner.get(nick.lower())

    def check(self, key: str, nick: str) -> bool:
        """May ``key`` use ``nick``? True means yes and that a new claim must be persisted."""
        owner = self._owner.get(nick.lower())
        if owner == key:
            return False
        if owner is not None:
            raise LocalProtocolError(f"nick {nick!r} belongs to another key")
        if not self.open_registration:
            raise LocalProtocolError(f"this key may not use nick {nick!r}")
        mine = self._claimed.get(key, set())
        if len(mine) >= CLAIMS_PER_KEY:
            raise ClaimRefused(
                f"this key has claimed {len(mine)} nicks, the most one key may: use one of them"
                f" ({', '.join(sorted(mine)[:4])}{', …' if len(mine) > 4 else ''})"
            )
        if self.claims >= MAX_CLAIMS:
            raise ClaimRefused("the broker holds as many nick claims as it may: use a nick your key owns")
        self._owner[nick.lower()] = key
        self._record(key, nick.lower())
        return True

    def _record(self, key: str, nick: str) -> None:
        self._nicks.setdefault(key, set()).add(nick)
        self._claimed.setdefault(key, set()).add(nick)
        self.claims += 1

    def unclaim(self, nick: str) -> None:
        """Take back a claim :meth:`check` just made (the batch it came in was not stored)."""
        key = self._owner.pop(nick.lower(), None)
        if key is not None:
            self._nicks.get(key, set()).discard(nick.lower())
            self._claimed.get(key, set()).discard(nick.lower())
            self.claims -= 1


def load_allowlist(path: Path) -> dict[str, set[str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ZChatError(f"cannot read the allowlist {path}: {exc.strerror}") from None
    try:
        return parse_allowlist(text, str(path))
    except LocalProtocolError as exc:
        raise ZChatError(str(exc)) from None
