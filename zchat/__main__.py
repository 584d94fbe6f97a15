"""The ``zchat`` command and ``python -m zchat``: the command line, quiet on Ctrl-C from the start.

Loading the command line (pyzmq, click, prompt_toolkit) takes a while on a cold start, and an
interrupt meanwhile would print a KeyboardInterrupt traceback from deep inside an import. So
until it is loaded, Ctrl-C just ends the process (there is nothing to clean up yet); from then on
it raises KeyboardInterrupt as usual, which the commands handle (leaving rooms, closing sockets)
and which ends them with status 130. This module imports nothing heavy itself.
"""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType

__all__ = ["main"]

#: The exit status of a command ended by an interrupt: 128 + SIGINT, as shells report it.
INTERRUPTED = 130


def _interrupted_while_loading(signum: int, frame: FrameType | None) -> None:
    os.write(2, b"\n")  # closes the terminal's "^C" echo, as click does
    os._exit(INTERRUPTED)


def main() -> None:
    # A process started with SIGINT ignored (nohup, a background job) keeps ignoring it.
    quiet = signal.getsignal(signal.SIGINT) is signal.default_int_handler
    if quiet:
        signal.signal(signal.SIGINT, _interrupted_while_loading)
    try:
        from zchat import cli  # noqa: PLC0415 (the heavy imports, once Ctrl-C is quiet)

        if quiet:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        status = cli.main()
    except KeyboardInterrupt:  # between click's handling and here: still just an interrupt
        sys.stderr.write("\n")
        status = INTERRUPTED
    sys.exit(status)


if __name__ == "__main__":
    main()
