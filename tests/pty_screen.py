"""`zchat join` in a real pseudo-terminal, with the screen it draws.

A full-screen client redraws only the cells that change, with cursor moves in between, so a
test cannot look for its lines in the raw output. :class:`Term` feeds everything the child writes
to a terminal emulator (pyte) and waits, bounded, for the *screen* to show what the test wants;
the raw output stays available for escape-code checks (colours, the bell). Nothing sleeps: every
wait is a blocking read of the pty that ends on the condition or the deadline.
"""

from __future__ import annotations

import re
import signal
import sys
import time
import unicodedata
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pexpect
import pyte
from conftest import child_env

from zchat.protocol import Endpoints

__all__ = ["ROOT", "TIMEOUT", "Term", "colour_codes", "ready", "spawn_join", "terminals"]

#: Bound on every wait.
TIMEOUT = 10.0
#: Run children from the repository root so ``-m zchat`` finds the package even uninstalled.
ROOT = Path(__file__).resolve().parent.parent
_SGR = re.compile(r"\x1b\[([0-9;]*)m")
_HIDE_CURSOR, _SHOW_CURSOR = "\x1b[?25l", "\x1b[?25h"
#: How long the rest of a frame that a read split may take to arrive: it was written at once.
_REST_OF_FRAME = 0.5


class Term:
    """A child process on a ``rows`` x ``cols`` pty, and the screen it has drawn so far."""

    def __init__(self, child: Any, rows: int, cols: int) -> None:
        self.child = child
        self.screen = pyte.Screen(cols, rows)
        self._stream = pyte.Stream(self.screen)
        #: Everything the child has written.
        self.raw = ""
        self.ended = False

    @property
    def lines(self) -> list[str]:
        """The screen's rows, trailing blanks removed."""
        return [row.rstrip() for row in self.screen.display]

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def send(self, keys: str) -> None:
        self.child.send(keys)

    def _read(self, timeout: float) -> None:
        try:
            data = self.child.read_nonblocking(65536, timeout=max(timeout, 0.01))
        except pexpect.TIMEOUT:
            return
        except pexpect.EOF:
            self.ended = True
            return
        self.raw += data
        self._stream.feed(data)

    def wait(self, condition: str | Callable[[Term], bool], timeout: float = TIMEOUT) -> None:
        """Read until ``condition`` (a regular expression searched in the screen's text, or a
        predicate) holds; fail after ``timeout`` seconds, showing the screen."""
        check = condition if callable(condition) else lambda t: re.search(condition, t.text) is not None
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if check(self):
                # A read can end inside a frame (the pty splits large writes), showing a screen
                # that is part new, part old: the condition holds only on a whole frame.
                if self._frame_done():
                    return
                before = len(self.raw)
                self._read(min(left, _REST_OF_FRAME))
                if len(self.raw) == before:
                    return  # nothing more came: it was whole (a frame that leaves the cursor hidden)
                continue
            if left <= 0 or self.ended:
                raise AssertionError(f"screen never matched {condition!r}:\n{self.text}")
            self._read(left)

    def _frame_done(self) -> bool:
        """Whether the last frame prompt_toolkit began has ended: it hides the cursor when it
        starts drawing and shows it again when it is done."""
        began = self.raw.rfind(_HIDE_CURSOR)
        return began < 0 or self.raw.find(_SHOW_CURSOR, began) >= 0

    def drain(self) -> None:
        """Take in whatever the child has written by now (without waiting for more)."""
        while True:
            before = len(self.raw)
            self._read(0.01)
            if len(self.raw) == before:
                return

    def cell(self, needle: str) -> Any:
        """The screen cell (a pyte Char: its colour, bold, strikethrough…) where the last row that
        shows ``needle`` shows its first character."""
        for y in range(len(self.lines) - 1, -1, -1):
            x = self.lines[y].find(needle)
            if x >= 0:
                # Columns are cells: a wide character before ``needle`` takes two of them.
                column = sum(2 if _wide(ch) else 1 for ch in self.lines[y][:x])
                return self.screen.buffer[y][column]
        raise AssertionError(f"{needle!r} is not on the screen:\n{self.text}")

    @property
    def input_line(self) -> str:
        """The bottom row: the input line."""
        return self.lines[-1]

    def status_line(self) -> str:
        return self.lines[-2]

    def exit_status(self) -> tuple[int | None, int | None]:
        """Wait (bounded) for the child to end; its exit status and the signal that killed it."""
        self.wait(lambda t: t.ended)
        self.child.close()
        assert "Traceback" not in self.raw
        status: tuple[int | None, int | None] = (self.child.exitstatus, self.child.signalstatus)
        return status


def _wide(ch: str) -> bool:
    return unicodedata.east_asian_width(ch) in ("W", "F")


#: SGR parameters that set a colour: 16 colours, bright ones, 256 and true colour (38/48).
_COLOURS = {*range(30, 39), *range(40, 49), *range(90, 98), *range(100, 108)}


def colour_codes(raw: str) -> list[str]:
    """Every SGR sequence in ``raw`` that sets a colour."""
    return [f"\x1b[{params}m" for params in _SGR.findall(raw) if {int(p) for p in params.split(";") if p} & _COLOURS]


def spawn_join(
    endpoints: Endpoints,
    *extra: str,
    nick: str = "bob",
    rows: int = 24,
    cols: int = 100,
    env: dict[str, str] | None = None,
) -> Term:
    """`zchat join --nick NICK` on a pty (not waited for: see :func:`ready`)."""
    e = endpoints
    args = ["-m", "zchat", "join", "--nick", nick, "--ingest", e.ingest, "--feed", e.feed, "--rpc", e.rpc, *extra]
    environment = {k: v for k, v in child_env().items() if k != "NO_COLOR"}
    environment["TERM"] = "xterm-256color"
    environment.update(env or {})
    child = pexpect.spawn(
        sys.executable, args, env=environment, cwd=ROOT, dimensions=(rows, cols), timeout=TIMEOUT, encoding="utf-8"
    )
    return Term(child, rows, cols)


def ready(term: Term, nick: str = "bob") -> Term:
    """Wait until ``term`` shows its own join, the status line and the input line."""
    term.wait(rf"-- {re.escape(nick)} joined")
    term.wait(lambda t: t.input_line.startswith("#") and "connected" in t.status_line())
    return term


def terminals() -> Iterator[Callable[..., Term]]:
    """For a fixture: ``spawn_join`` then :func:`ready`; every child is killed and reaped afterwards."""
    started: list[Term] = []

    def spawn(*args: Any, **kw: Any) -> Term:
        term = spawn_join(*args, **kw)
        started.append(term)
        return ready(term, kw.get("nick", "bob"))

    yield spawn
    for term in started:
        if term.child.isalive():
            term.child.kill(signal.SIGKILL)
            term.child.wait()  # bounded: nothing outlives SIGKILL
        term.child.close(force=True)
