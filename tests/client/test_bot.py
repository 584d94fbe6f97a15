"""The bot framework's dispatch, without a broker: which events reach the handlers."""

from __future__ import annotations

from zchat import Bot
from zchat.protocol import Event


def message(nick: str, text: str = "hi") -> Event:
    return Event(1, "2026-01-01T00:00:00.000Z", "general", "message", nick, text)


def test_a_bot_never_answers_itself_even_after_a_nick_change() -> None:
    bot = Bot("echo", ["general"])
    heard: list[str] = []

    @bot.on_message
    def note(_bot: Bot, event: Event) -> None:
        heard.append(event.nick)

    bot.dispatch(message("alice"))
    bot.dispatch(message("ECHO"))  # itself, in any case
    bot.client.session.nick = "echo2"  # as a set_nick() reply leaves it
    bot.dispatch(message("echo2"))
    bot.dispatch(message("echo"))  # someone who took the old nick is someone else
    assert heard == ["alice", "echo"]
    bot.client.close()
