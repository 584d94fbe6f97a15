"""The zchat error hierarchy: one root, and a split by who is at fault.

Like h11's Local/RemoteProtocolError, every error zchat raises says whose fault it is: our own
caller (:class:`LocalProtocolError`), the peer that sent us bytes (:class:`RemoteProtocolError`),
the broker refusing a well-formed request (:class:`Refused`), or the network (:class:`Unreachable`).
Messages are one line, written for the person at the terminal. No I/O happens here.
"""

from __future__ import annotations

__all__ = [
    "LocalProtocolError",
    "Refused",
    "RemoteProtocolError",
    "Unreachable",
    "ZChatError",
]


class ZChatError(Exception):
    """Root of every error zchat raises on purpose."""


class LocalProtocolError(ZChatError):
    """Our caller asked for something the protocol does not allow (a bad nick, a long text)."""


class RemoteProtocolError(ZChatError):
    """The peer sent bytes that are not valid zchat protocol."""


class Refused(ZChatError):
    """The broker understood the request and said no (nick taken, unknown session, ...)."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class Unreachable(ZChatError):
    """The broker did not answer in time: it is down, or not at that address."""
