"""zchat: multi-user chat over ZeroMQ.

The public API for bots and tools: :class:`Client` (one session), :class:`Bot` (handlers on a
run loop), :class:`Event` (what the feed carries), the error hierarchy, and :class:`Broker` to run
one in-process. The wire protocol itself is in :mod:`zchat.protocol` and ``docs/protocol.md``.
"""

from zchat.broker.shell import Broker
from zchat.client.bot import Bot
from zchat.client.shell import Client, Feed
from zchat.errors import LocalProtocolError, Refused, RemoteProtocolError, Unreachable, ZChatError
from zchat.protocol import Endpoints, Event

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
