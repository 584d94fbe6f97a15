"""How the full-screen client presents things, as pure functions: no terminal needed to test them.

This module owns the look of the interactive client: the stable colour of each nick, when a line
mentions you, how an event's parts (:func:`zchat.term.render.event_parts`, the one place that says
how each kind reads, with every network string made inert) become styled text (``(style, text)``
fragments, prompt_toolkit's formatted-text shape), how a search match reads and which of its
words are highlighted, how a line wraps into rows (at spaces, with a hanging indent under its
text), what the status line and the title line say in the width they have, whose events are
hidden (:class:`IgnoreList`), and how a multi-line paste splits into messages. It never draws,
reads keys, or talks to the network; :mod:`zchat.term.tui` does, with the styles named here
(``class:…``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from prompt_toolkit.utils import get_cwidth

from zchat.protocol import Event
from zchat.term import render

__all__ = [
    "PALETTE",
    "PASTE_CONFIRM_LINES",
    "Fragments",
    "IgnoreList",
    "WindowStatus",
    "connection_label",
    "day_fragments",
    "event_fragments",
    "fold_fragments",
    "found_fragments",
    "highlight",
    "is_mention",
    "match_spans",
    "mentions",
    "nick_color",
    "paste_lines",
    "plain",
    "restyle",
    "rule",
    "status_fragments",
    "text_column",
    "title_fragments",
    "width",
    "wrap",
]

#: prompt_toolkit formatted text: ``(style, text)`` pairs.
Fragments = list[tuple[str, str]]

#: Nick colours: the 12 ANSI colours that read on both dark and light backgrounds (no black,
#: white or grey, which are the background, the text and the notices).
PALETTE = (
    "ansired",
    "ansigreen",
    "ansiyellow",
    "ansiblue",
    "ansimagenta",
    "ansicyan",
    "ansibrightred",
    "ansibrightgreen",
    "ansibrightyellow",
    "ansibrightblue",
    "ansibrightmagenta",
    "ansibrightcyan",
)

#: A paste of more lines than this is sent only after a confirmation.
PASTE_CONFIRM_LINES = 5

#: Characters that may be part of a nick: a mention is the nick with none of these around it.
_NICK_CHARS = "A-Za-z0-9_-"


def nick_color(nick: str) -> str:
    """The colour of ``nick``: the same in every run and every client (nicks are unique
    case-insensitively, so ``Alice`` and ``alice`` share one)."""
    digest = hashlib.blake2s(nick.lower().encode("utf-8", "surrogatepass"), digest_size=4).digest()
    return PALETTE[int.from_bytes(digest, "big") % len(PALETTE)]


def mentions(text: str, nick: str | None) -> bool:
    """Whether ``text`` names ``nick`` as a word (any case): "bob:", "hi Bob!", not "bobby"."""
    if not nick:
        return False
    pattern = rf"(?<![{_NICK_CHARS}]){re.escape(nick)}(?![{_NICK_CHARS}])"
    return re.search(pattern, text, re.IGNORECASE) is not None


def is_mention(event: Event, me: str | None) -> bool:
    """Whether ``event`` is someone else speaking to you: a private message, or a message or
    action that names you."""
    if event.kind not in ("message", "action", "private") or not me or event.nick.lower() == me.lower():
        return False
    return event.kind == "private" or mentions(event.text, me)


def paste_lines(text: str) -> list[str]:
    """The messages a multi-line paste becomes: one per non-blank line, in order (a pasted
    ``\\r\\n`` or ``\\r`` ends a line too; trailing whitespace is dropped, indentation kept)."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return [line.rstrip() for line in lines if line.strip()]


def event_fragments(
    event: Event, *, me: str | None, show_room: bool = False, time_format: str = render.DEFAULT_TIME_FORMAT
) -> Fragments:
    """``event``'s :func:`render.event_parts` as styled text; its characters are exactly
    :func:`render.format_event`'s, and its text is the last fragment (see :func:`text_column`).

    Nicks get :func:`nick_color` (``class:nick``, plus ``class:own`` for yours), the time
    ``class:time``, joins and the like ``class:system``, errors ``class:error``, private
    messages ``class:private``, and the text of what :func:`is_mention` finds ``class:mention``.
    """
    parts = render.event_parts(event, time_format=time_format)
    prefix = f"{parts.clock} "
    out: Fragments = [("class:time", prefix)]
    if show_room and parts.room:
        room = f"#{parts.room} "
        out.append(("class:room", room))
        prefix += room
    text = parts.indented(" " * len(prefix) + "  ")
    mark = f"class:{parts.style}" if parts.style else ""
    if parts.nick is None:  # an error or a notice: the whole line in its kind's style
        return [*out, (mark, f"{parts.mark} "), (mark, text)]
    # Colour, "own" and mentions are about who sent it and to whom, so they go by the nicks
    # themselves rather than their inert spelling.
    own = me is not None and event.nick.lower() == me.lower()
    nick_style = f"class:nick {nick_color(event.nick)}" + (" class:own" if own else "")
    text_style = "class:mention" if is_mention(event, me) else ""
    if parts.to is not None:  # a private message
        to = event.to or ""
        to_style = f"class:nick {nick_color(to)}" + (" class:own" if me and to.lower() == me.lower() else "")
        out += [
            (mark, "["),
            (nick_style, parts.nick),
            (mark, " → "),
            (to_style, parts.to),
            (mark, "] "),
            (text_style, text),
        ]
    elif parts.shape == "action":
        out += [(mark, "* "), (nick_style, parts.nick), (mark, " "), (text_style, text)]
    else:
        out += [(nick_style, parts.nick), (mark, ": "), (text_style, text)]
    return out


# FTS5's default tokenizer (unicode61), which the broker's search uses: words are runs of letters
# and digits, compared without case or diacritics.
_WORD = re.compile(r"[^\W_]+")


def _word_key(word: str) -> str:
    return "".join(ch for ch in unicodedata.normalize("NFKD", word.casefold()) if not unicodedata.combining(ch))


def match_spans(text: str, query: str) -> list[tuple[int, int]]:
    """Where in ``text`` the words of ``query`` are, as the broker's search matches them: whole
    words, any case, accents or none."""
    wanted = {_word_key(w) for w in _WORD.findall(query)}
    return [m.span() for m in _WORD.finditer(text) if _word_key(m.group()) in wanted]


def highlight(line: Fragments, query: str) -> Fragments:
    """An :func:`event_fragments` line with the words of ``query`` in its text (the last
    fragment) styled ``class:found`` (take its :func:`text_column` before: the text is then
    several fragments)."""
    if not line:
        return line
    style, text = line[-1]
    out: Fragments = []
    at = 0
    for start, end in match_spans(text, query):
        out += [(style, text[at:start]), (f"{style} class:found".strip(), text[start:end])]
        at = end
    out.append((style, text[at:]))
    return [*line[:-1], *((s, t) for s, t in out if t)] or line


def found_fragments(
    event: Event,
    query: str,
    *,
    me: str | None,
    time_format: str = render.DEFAULT_TIME_FORMAT,
    today: dt.date | None = None,
) -> tuple[Fragments, int]:
    """A search match and its text column: ``#812 30 Nov 14:55 alice: the deploy went out``, its
    seq (what ``/goto`` takes) first, the day when it is not ``today``, the words found
    highlighted."""
    day = render.local_day(event.ts)
    today = today or dt.date.today()
    if day is not None and day != today:
        time_format = f"%d %b {time_format}" if day.year == today.year else f"%d %b %Y {time_format}"
    line: Fragments = [("class:seq", f"#{event.seq} "), *event_fragments(event, me=me, time_format=time_format)]
    return highlight(line, query), text_column(line)


def fold_fragments(events: Sequence[Event], *, time_format: str = render.DEFAULT_TIME_FORMAT) -> Fragments:
    """A burst of joins and leaves (oldest first) as one line at the time of the first:
    ``10:00 -- joined: alice, bob; left: dave``; a burst of one reads as that event does."""
    # The first event's line with the burst's text: the head and style stay event_fragments'.
    line = event_fragments(events[0], me=None, time_format=time_format)
    if len(events) == 1:
        return line
    style, _ = line[-1]
    return [*line[:-1], (style, render.fold_text(events))]


def day_fragments(day: dt.date) -> Fragments:
    return [("class:system", render.day_line(day))]


def text_column(line: Fragments) -> int:
    """Where the text of an :func:`event_fragments` line starts (after ``10:00 alice: ``): the
    column wrapped rows continue at."""
    return width(line[:-1])


def restyle(line: Fragments, style: str) -> Fragments:
    """``line`` with ``style`` added to every fragment, after (so over) their own styles."""
    return [(f"{old} {style}".strip(), text) for old, text in line]


def width(line: Iterable[tuple[str, str]]) -> int:
    """The cells ``line`` takes on a terminal (wide characters count two)."""
    return sum(get_cwidth(ch) for _, text in line for ch in text)


def rule(label: str, columns: int, style: str) -> Fragments:
    """A row of ``columns`` cells: ``label`` in the middle of a horizontal line (``─── new ───``)."""
    label = f" {label} "[:columns]
    left = (columns - len(label)) // 2
    return [(style, "─" * left + label + "─" * (columns - left - len(label)))]


#: One cell of a line being wrapped: its style, its character and the cells it takes.
_Cell = tuple[str, str, int]


def wrap(line: Fragments, columns: int, indent: int = 0) -> list[Fragments]:
    """``line`` (styled text without newlines) as rows of at most ``columns`` cells.

    Rows break at spaces (which the break swallows), and inside a word only when the word is
    longer than a row. Rows after the first begin with ``indent`` spaces, the hanging indent
    under the text; it is cut to half the row so that a long head still leaves room for text.
    """
    columns = max(1, columns)
    hang: list[_Cell] = [("", " ", 1)] * min(indent, columns // 2)
    words: list[tuple[bool, list[_Cell]]] = []  # runs of spaces and of other characters, in order
    for style, text in line:
        for ch in text:
            space = ch == " "
            if not words or words[-1][0] != space:
                words.append((space, []))
            words[-1][1].append((style, ch, get_cwidth(ch)))
    rows: list[list[_Cell]] = []
    row: list[_Cell] = []
    used = start = 0  # cells in the row, and how many of them are the hanging indent

    def new_row() -> None:
        nonlocal row, used, start
        while len(row) > start and row[-1][1] == " ":  # the spaces at a break go with it
            row.pop()
        rows.append(row)
        row, used, start = list(hang), len(hang), len(hang)

    for space, cells in words:
        if space:
            if rows and len(row) == start:
                continue  # a row after a break does not start with the spaces of the break
            keep = cells[: max(0, columns - used)]
            row += keep
            used += len(keep)
            continue
        size = sum(cell[2] for cell in cells)
        if used + size > columns and _has_text(row[start:]) and size <= columns - len(hang):
            new_row()
        for cell in cells:  # fits now, or is longer than any row: broken where the row is full
            if used + cell[2] > columns:
                if _has_text(row[start:]):
                    new_row()
                else:  # only spaces before it: they give way
                    row, used = row[:start], start
                if used + cell[2] > columns:  # and if need be the indent too
                    row, used, start = [], 0, 0
            row.append(cell)
            used += cell[2]
    new_row()
    return [_fragments(r) for r in rows]


def _has_text(cells: list[_Cell]) -> bool:
    return any(ch != " " for _, ch, _ in cells)


def _fragments(cells: list[_Cell]) -> Fragments:
    out: Fragments = []
    for style, ch, _ in cells:
        if out and out[-1][0] == style:
            out[-1] = (style, out[-1][1] + ch)
        else:
            out.append((style, ch))
    return out


def connection_label(state: str) -> str:
    """What the status line says about a :attr:`Client.state`."""
    return state if state in ("connected", "reconnecting") else "offline"


class IgnoreList:
    """The nicks you ignore, for this run of the client: their messages, actions, private
    messages, joins, leaves and nick changes are not shown (a topic they set is: it is the
    room's). An ignored nick that changes nick stays ignored under the new one."""

    #: The kinds of an ignored person's events that are hidden.
    HIDDEN = frozenset({"message", "action", "private", "join", "leave", "nick"})

    def __init__(self) -> None:
        self._nicks: dict[str, str] = {}  # lower case -> as written

    def __contains__(self, nick: str) -> bool:
        return nick.lower() in self._nicks

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._nicks.values(), key=str.lower))

    def __len__(self) -> int:
        return len(self._nicks)

    def add(self, nick: str) -> bool:
        """Ignore ``nick``; False if it was already."""
        if nick in self:
            return False
        self._nicks[nick.lower()] = nick
        return True

    def remove(self, nick: str) -> bool:
        """Stop ignoring ``nick``; False if it was not."""
        return self._nicks.pop(nick.lower(), None) is not None

    def hides(self, event: Event) -> bool:
        """Whether ``event`` is not shown."""
        return event.kind in self.HIDDEN and event.nick in self

    def follow(self, event: Event) -> None:
        """Someone ignored changed nick: ignore the new one (and not the old one, which someone
        else may take)."""
        if event.kind == "nick" and event.new_nick and self.remove(event.nick):
            self.add(event.new_nick)


@dataclass(frozen=True)
class WindowStatus:
    """A window as the status line shows it: ``2:#dev(3)``."""

    number: int
    name: str
    unread: int = 0
    mentioned: bool = False

    def label(self, current: bool) -> str:
        if current:
            return f"[{self.number}:{self.name}]"
        return f"{self.number}:{self.name}" + (f"({self.unread})" if self.unread else "")

    @property
    def style(self) -> str:
        return "class:status.mention" if self.mentioned else "class:status.unread" if self.unread else "class:status"


def status_fragments(
    nick: str,
    windows: Sequence[WindowStatus],
    current: int | None,
    state: str,
    *,
    columns: int,
    scrolled: bool = False,
    away: bool = False,
) -> Fragments:
    """The status line, ``columns`` cells wide: `` bob [1:#general] 2:#dev(3) +2 … connected ``
    (``bob(away)`` while you are away).

    The connection (and ``more below`` while scrolled up) is always shown, at the right, apart
    from the rest. Left of it, as far as they fit: the current window, the windows that name you,
    those with unread messages, your nick, then the quiet windows; the windows left out are
    counted (``+2``, in the style of the busiest of them). What is shown keeps its order: the
    nick, then the windows by number.
    """
    right: Fragments = []
    if scrolled:
        right += [("class:status.more", "more below"), ("class:status", "  ")]
    label = connection_label(state)
    right.append((f"class:status.{label}", f"{label} "))
    if width(right) >= columns:
        right = right[-1:]
    budget = columns - width(right) - 2  # two spaces at least between the windows and the connection
    here = next((w for w in windows if w.number == current), None)
    others = [w for w in windows if w is not here]
    busy = sorted((w for w in others if w.unread or w.mentioned), key=lambda w: not w.mentioned)
    quiet = [w for w in others if not (w.unread or w.mentioned)]
    # What may be shown, most wanted first, each with its place in the line (the nick's is first).
    wanted: list[tuple[int, tuple[str, str]]] = [(w.number, (w.style, w.label(False))) for w in busy]
    wanted.append((-1, ("class:status.nick", f"{nick}(away)" if away else nick)))
    wanted += [(w.number, (w.style, w.label(False))) for w in quiet]

    head = here.label(True) if here is not None else "(no room)"
    room_for = budget - 1 - len(_more(len(others)))  # after a space, before the count of the others
    if len(head) > room_for:
        head = head[: max(1, room_for - 2)] + "…" + head[-1]
    shown = [(here.number if here is not None else 0, ("class:status.current", head))]
    used = 1 + len(head)
    for n, (place, fragment) in enumerate(wanted):
        left_out = sum(1 for p, _ in wanted[n + 1 :] if p != -1)
        if used + 1 + width([fragment]) + len(_more(left_out)) > budget:
            break
        shown.append((place, fragment))
        used += 1 + width([fragment])
    placed = {place for place, _ in shown}
    hidden = [w for w in others if w.number not in placed]

    out: Fragments = []
    for _, fragment in sorted(shown, key=lambda item: item[0]):
        out += [("class:status", " "), fragment]
    out = _clip(out, budget)  # only where even the current window's number does not fit
    if hidden and width(out) + len(_more(len(hidden))) <= budget:
        busiest = min(hidden, key=lambda w: (not w.mentioned, not w.unread))
        out += [("class:status", " "), (busiest.style, _more(len(hidden)).strip())]
    out.append(("class:status", " " * (columns - width(out) - width(right))))
    return _clip(out + right, columns)


def title_fragments(name: str, topic: str | None, columns: int) -> Fragments:
    """The title line above the messages, ``columns`` cells wide: the window and its topic
    (``#general: plans for Friday``), cut with ``…`` where it does not fit. The topic comes
    from the network: made inert, on one line."""
    text = f" {name}" + (f": {render.inert(' '.join(topic.split()))}" if topic else "")
    if width([("", text)]) > columns:
        text = plain(_clip([("", text)], max(0, columns - 1))) + "…"
    return [("class:title", text + " " * max(0, columns - width([("", text)])))]


def _clip(line: Fragments, cells: int) -> Fragments:
    """``line`` cut to at most ``cells`` cells."""
    kept: list[_Cell] = []
    for style, text in line:
        for ch in text:
            cells -= get_cwidth(ch)
            if cells < 0:
                return _fragments(kept)
            kept.append((style, ch, 0))
    return line


def _more(hidden: int) -> str:
    """What the windows left out of the status line take there: `` +3``."""
    return f" +{hidden}" if hidden else ""


def plain(fragments: Iterable[tuple[str, str]]) -> str:
    """The text of ``fragments``, without styles."""
    return "".join(text for _, text in fragments)
