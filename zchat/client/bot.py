"""A small framework for chat bots: a :class:`Bot` that calls your function for each message.

It owns the bot's run loop (connect, dispatch, keep the session alive, stop cleanly) on top of
:class:`zchat.client.shell.Client`. Your handler gets the bot and the event and may return a reply,
which goes to the event's room. The bot ignores its own messages so an echo cannot loop. It
knows nothing of sockets or the wire format.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from zchat.client.shell import Client
from zchat.protocol import Event

__all__ = ["Bot", "Handler"]

log = logging.getLogger("zchat.bot")

#: A message handler: returns the text to answer with, or ``None`` to stay quiet.
Handler = Callable[["Bot", Event], "str | None"]


class Bot:
    """Runs handlers for the messages in its rooms.

    >>> bot = Bot("echo", ["general"])                   # doctest: +SKIP
    >>> @bot.on_message
    ... def echo(bot, event):
    ...     return f"{event.nick} said: {event.text}"
    >>> bot.run()
    """

    def __init__(self, nick: str, rooms: Iterable[str] = ("general",), **client_options: Any) -> None:
        self.nick = nick
        self.client = Client(nick, rooms, **client_options)
        self._handlers: list[Handler] = []
        self._stopping = False

    def on_message(self, handler: Handler) -> Handler:
        """Register ``handler`` for every message and action from someone else (a decorator)."""
        self._handlers.append(handler)
        return handler

    def say(self, text: str, room: str | None = None) -> str:
        return self.client.say(text, room)

    def stop(self) -> None:
        """Make :meth:`run` return after the event at hand."""
        self._stopping = True

    def run(self, *, idle_timeout: float | None = None) -> None:
        """Connect and dispatch until :meth:`stop` (which may be called from a signal handler),
        or until ``idle_timeout`` seconds pass without an event."""
        with self.client as client:
            last_event = time.monotonic()
            while not self._stopping:
                events = client.poll(0.2)
                for event in events:
                    self.dispatch(event)
                if events:
                    last_event = time.monotonic()
                elif idle_timeout is not None and time.monotonic() - last_event > idle_timeout:
                    return

    def dispatch(self, event: Event) -> None:
        # The client's nick, not the one the bot started with: it follows a set_nick().
        me = self.client.nick or self.nick
        if event.kind not in ("message", "action") or event.nick.lower() == me.lower():
            return
        for handler in self._handlers:
            try:
                reply = handler(self, event)
            except Exception:
                # One bad message must not take the bot offline.
                log.exception("handler %s failed on %r", getattr(handler, "__name__", handler), event.text)
                continue
            if reply:
                self.client.say(reply, event.room)
