"""zchat: multi-user chat over ZeroMQ.

The public API for bots and tools: :class:`Client` (one session), :class:`Bot` (handlers on a
run loop), :class:`Event` (what the feed carries), the error hierarchy, and :class:`Broker` to run
one in-process. The wire protocol itself is in :mod:`zchat.protocol` and ``docs/protocol.md``.

The names are loaded when first used (PEP 562), so that importing any part of zchat, such as
the command line starting up, does not load all of it first.
"""

from __future__ import annotations

import importlib

# Not typing.TYPE_CHECKING: importing typing would cost the start-up that this module saves
# (type checkers treat any TYPE_CHECKING as true).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from zchat.broker.shell import Broker
    from zchat.client.bot import Bot
    from zchat.client.shell import Client, Feed
    from zchat.errors import LocalProtocolError, Refused, RemoteProtocolError, Unreachable, ZChatError
    from zchat.protocol import Endpoints, Event

#: Each public name -> the module that defines it.
_SOURCES = {
    "Bot": "zchat.client.bot",
    "Broker": "zchat.broker.shell",
    "Client": "zchat.client.shell",
    "Endpoints": "zchat.protocol",
    "Event": "zchat.protocol",
    "Feed": "zchat.client.shell",
    "LocalProtocolError": "zchat.errors",
    "Refused": "zchat.errors",
    "RemoteProtocolError": "zchat.errors",
    "Unreachable": "zchat.errors",
    "ZChatError": "zchat.errors",
}

__all__ = [
    "Bot",
    "Broker",
    "Client",
    "Endpoints",
    "Event",
    "Feed",
    "LocalProtocolError",
    "Refused",
    "RemoteProtocolError",
    "Unreachable",
    "ZChatError",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    source = _SOURCES.get(name)
    if source is None:
        raise AttributeError(f"module 'zchat' has no attribute {name!r}")
    value = getattr(importlib.import_module(source), name)
    globals()[name] = value  # found directly from now on
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
